package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func openTest(t *testing.T) (*Spool, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, path
}

func point(job string, step int64) *gantrypb.Record {
	return &gantrypb.Record{
		JobId: job,
		Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{
			Step: proto.Int64(step), Ts: float64(step), Values: map[string]float64{"loss": 1 / float64(step+1)},
		}},
	}
}

func gpu() *gantrypb.Record {
	return &gantrypb.Record{Body: &gantrypb.Record_Gpu{Gpu: &gantrypb.GPUSample{
		Gpus: []*gantrypb.GPUStat{{Index: 0, UtilizationPct: 50}},
	}}}
}

func logChunk(job string, n int) *gantrypb.Record {
	return &gantrypb.Record{JobId: job, Body: &gantrypb.Record_Log{Log: &gantrypb.LogChunk{Data: bytes.Repeat([]byte{'x'}, n)}}}
}

func mustAppend(t *testing.T, s *Spool, recs ...*gantrypb.Record) uint64 {
	t.Helper()
	idx, err := s.Append(recs...)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return idx
}

func mustRead(t *testing.T, s *Spool, after uint64, maxRecords, maxBytes int) []Entry {
	t.Helper()
	es, err := s.Read(after, maxRecords, maxBytes)
	if err != nil {
		t.Fatalf("Read(%d, %d, %d): %v", after, maxRecords, maxBytes, err)
	}
	return es
}

func indexes(es []Entry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Index
	}
	return out
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func assertPending(t *testing.T, s *Spool, wantN int, wantOldest uint64) {
	t.Helper()
	n, oldest, err := s.Pending()
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	if n != wantN || oldest != wantOldest {
		t.Fatalf("Pending = (%d, %d), want (%d, %d)", n, oldest, wantN, wantOldest)
	}
}

func TestAppendReadAckRoundTrip(t *testing.T) {
	s, _ := openTest(t)
	in := []*gantrypb.Record{point("j1", 0), point("j1", 1), gpu(), logChunk("j1", 10)}
	last := mustAppend(t, s, in...)
	if last != 4 {
		t.Fatalf("last index = %d, want 4", last)
	}
	es := mustRead(t, s, 0, 0, 0)
	if got := indexes(es); !equalU64(got, []uint64{1, 2, 3, 4}) {
		t.Fatalf("indexes = %v", got)
	}
	for i, e := range es {
		if !proto.Equal(e.Record, in[i]) {
			t.Errorf("entry %d = %v, want %v", i, e.Record, in[i])
		}
		if e.Record == in[i] {
			t.Errorf("entry %d aliases the appended record", i)
		}
	}
	if err := s.Ack(4); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if es := mustRead(t, s, 0, 0, 0); len(es) != 0 {
		t.Fatalf("after ack, Read = %v", indexes(es))
	}
	assertPending(t, s, 0, 0)
	// Indexes are never reused after an ack.
	if idx := mustAppend(t, s, point("j1", 2)); idx != 5 {
		t.Fatalf("index after ack = %d, want 5", idx)
	}
}

func TestAppendEmptyAndNil(t *testing.T) {
	s, _ := openTest(t)
	if idx, err := s.Append(); err != nil || idx != 0 {
		t.Fatalf("Append() = %d, %v; want 0, nil", idx, err)
	}
	r := point("j", 1)
	if _, err := s.Append(r, nil); !errors.Is(err, ErrNilRecord) {
		t.Fatalf("Append with nil = %v, want ErrNilRecord", err)
	}
	if r.Seq != 0 {
		t.Fatalf("failed Append changed Seq to %d", r.Seq)
	}
	assertPending(t, s, 0, 0)
}

func TestSeqsDensePerStream(t *testing.T) {
	s, _ := openTest(t)
	batches := [][]*gantrypb.Record{
		{point("a", 0), point("b", 0), gpu(), point("a", 1)},
		{gpu(), point("b", 1), point("a", 2)},
		{point("c", 0)},
	}
	for _, b := range batches {
		mustAppend(t, s, b...)
	}
	want := map[string][]uint64{"a": {1, 2, 3}, "b": {1, 2}, "": {1, 2}, "c": {1}}
	got := map[string][]uint64{}
	// The passed-in records are modified...
	for _, b := range batches {
		for _, r := range b {
			got[r.JobId] = append(got[r.JobId], r.Seq)
		}
	}
	checkStreams(t, "passed-in records", got, want)
	// ...and the stored ones carry the same seqs.
	got = map[string][]uint64{}
	for _, e := range mustRead(t, s, 0, 0, 0) {
		got[e.Record.JobId] = append(got[e.Record.JobId], e.Record.Seq)
	}
	checkStreams(t, "stored records", got, want)
}

func checkStreams(t *testing.T, what string, got, want map[string][]uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: streams = %v, want %v", what, got, want)
	}
	for k, w := range want {
		if !equalU64(got[k], w) {
			t.Errorf("%s: stream %q seqs = %v, want %v", what, k, got[k], w)
		}
	}
}

func TestSurvivesReopen(t *testing.T) {
	s, path := openTest(t)
	mustAppend(t, s, point("a", 0), point("a", 1), gpu())
	if err := s.Ack(1); err != nil {
		t.Fatal(err)
	}
	if err := s.PutJob("a", []byte("running")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer func() {
		if err := s2.Close(); err != nil {
			t.Error(err)
		}
	}()
	assertPending(t, s2, 2, 2)
	es := mustRead(t, s2, 0, 0, 0)
	if got := indexes(es); !equalU64(got, []uint64{2, 3}) {
		t.Fatalf("unacked after reopen = %v, want [2 3]", got)
	}
	if es[0].Record.JobId != "a" || es[0].Record.Seq != 2 {
		t.Fatalf("entry 2 = %v", es[0].Record)
	}
	a, g := point("a", 2), gpu()
	if idx := mustAppend(t, s2, a, g); idx != 5 {
		t.Fatalf("index after reopen = %d, want 5", idx)
	}
	if a.Seq != 3 || g.Seq != 2 {
		t.Fatalf("seqs after reopen: a=%d node=%d, want 3 and 2", a.Seq, g.Seq)
	}
	jobs, err := s2.Jobs()
	if err != nil {
		t.Fatal(err)
	}
	if string(jobs["a"]) != "running" {
		t.Fatalf("jobs after reopen = %v", jobs)
	}
}

func TestOpenFileModeAndLock(t *testing.T) {
	s, path := openTest(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Fatalf("mode = %o, want 600", m)
	}
	_ = s

	// A second opener (another agent on the same data dir) fails instead
	// of hanging on the file lock.
	defer func(d time.Duration) { openTimeout = d }(openTimeout)
	openTimeout = 50 * time.Millisecond
	s2, err := Open(path)
	if err == nil {
		_ = s2.Close()
		t.Fatal("second Open of a locked file succeeded")
	}
	if !errors.Is(err, bolt.ErrTimeout) || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second Open = %v, want a lock timeout", err)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		v := make([]byte, 8)
		binary.BigEndian.PutUint64(v, schemaVersion+1)
		return b.Put(keyVersion, v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path)
	if !errors.Is(err, ErrNewerSchema) {
		if s != nil {
			_ = s.Close()
		}
		t.Fatalf("Open = %v, want ErrNewerSchema", err)
	}
	if !strings.Contains(err.Error(), "version 2") {
		t.Errorf("error does not name the version: %v", err)
	}
}

func TestRead(t *testing.T) {
	s, _ := openTest(t)
	var recs []*gantrypb.Record
	for i := range 10 {
		recs = append(recs, logChunk("j", 100+i%2)) // sizes alternate, all > 100 bytes
	}
	mustAppend(t, s, recs...)
	size := proto.Size(recs[0]) // every stored record is within 2 bytes of this

	tests := []struct {
		name       string
		after      uint64
		maxRecords int
		maxBytes   int
		want       []uint64
	}{
		{"all", 0, 0, 0, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{"after", 7, 0, 0, []uint64{8, 9, 10}},
		{"after last", 10, 0, 0, nil},
		{"after beyond", 100, 0, 0, nil},
		{"max records", 2, 3, 0, []uint64{3, 4, 5}},
		{"max bytes", 0, 0, 3*size + 3, []uint64{1, 2, 3}},
		{"max bytes below one", 4, 0, 1, []uint64{5}},
		{"both limits, records first", 0, 2, 100 * size, []uint64{1, 2}},
		{"both limits, bytes first", 0, 5, 2*size + 2, []uint64{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := indexes(mustRead(t, s, tt.after, tt.maxRecords, tt.maxBytes))
			if !equalU64(got, tt.want) {
				t.Fatalf("Read(%d, %d, %d) = %v, want %v", tt.after, tt.maxRecords, tt.maxBytes, got, tt.want)
			}
		})
	}
}

func TestReadReturnsOneBigRecord(t *testing.T) {
	s, _ := openTest(t)
	big := logChunk("j", 1<<20)
	mustAppend(t, s, big, point("j", 1))
	es := mustRead(t, s, 0, 10, 1024)
	if len(es) != 1 || es[0].Index != 1 {
		t.Fatalf("Read = %v, want just the big record", indexes(es))
	}
	if got := len(es[0].Record.GetLog().GetData()); got != 1<<20 {
		t.Fatalf("big record has %d bytes of data", got)
	}
}

func TestReadCopiesOut(t *testing.T) {
	s, _ := openTest(t)
	mustAppend(t, s, logChunk("j", 64))
	es := mustRead(t, s, 0, 0, 0)
	// Deleting and overwriting the pages must not change what Read returned.
	if err := s.Ack(1); err != nil {
		t.Fatal(err)
	}
	for range 50 {
		mustAppend(t, s, logChunk("k", 64))
	}
	if err := s.Ack(1000); err != nil {
		t.Fatal(err)
	}
	if d := es[0].Record.GetLog().GetData(); !bytes.Equal(d, bytes.Repeat([]byte{'x'}, 64)) || es[0].Record.JobId != "j" {
		t.Fatalf("record changed after its txn ended: %v", es[0].Record)
	}
}

func TestAck(t *testing.T) {
	s, _ := openTest(t)
	var recs []*gantrypb.Record
	for i := range 10 {
		recs = append(recs, point("j", int64(i)))
	}
	mustAppend(t, s, recs...)

	steps := []struct {
		ack        uint64
		wantN      int
		wantOldest uint64
	}{
		{0, 10, 1},
		{3, 7, 4},
		{3, 7, 4}, // repeated
		{2, 7, 4}, // stale
		{9, 1, 10},
		{10, 0, 0},
		{10, 0, 0},
		{50, 0, 0}, // beyond the end
	}
	for _, st := range steps {
		if err := s.Ack(st.ack); err != nil {
			t.Fatalf("Ack(%d): %v", st.ack, err)
		}
		assertPending(t, s, st.wantN, st.wantOldest)
		es := mustRead(t, s, 0, 0, 0)
		if len(es) != st.wantN || (len(es) > 0 && es[0].Index != st.wantOldest) {
			t.Fatalf("after Ack(%d): Read = %v", st.ack, indexes(es))
		}
	}
}

func TestAckLarge(t *testing.T) {
	// Enough entries to span many pages, so a skipped key during the delete
	// loop would show up.
	s, _ := openTest(t)
	var recs []*gantrypb.Record
	for i := range 5000 {
		recs = append(recs, point("j", int64(i)))
	}
	mustAppend(t, s, recs...)
	if err := s.Ack(4321); err != nil {
		t.Fatal(err)
	}
	assertPending(t, s, 5000-4321, 4322)
	es := mustRead(t, s, 0, 0, 0)
	if len(es) != 5000-4321 || es[0].Index != 4322 {
		t.Fatalf("Read after Ack: %d entries, first %v", len(es), es[0].Index)
	}
	if err := s.Ack(5000); err != nil {
		t.Fatal(err)
	}
	if es := mustRead(t, s, 0, 0, 0); len(es) != 0 {
		t.Fatalf("left %d entries", len(es))
	}
}

func TestAppendedSignal(t *testing.T) {
	s, _ := openTest(t)
	select {
	case <-s.Appended():
		t.Fatal("signal before any Append")
	default:
	}
	// Several appends without a reader must not block and collapse into one.
	for i := range 3 {
		mustAppend(t, s, point("j", int64(i)))
	}
	select {
	case <-s.Appended():
	default:
		t.Fatal("no signal after Append")
	}
	select {
	case <-s.Appended():
		t.Fatal("more than one pending signal")
	default:
	}

	// A waiting sender is woken by an Append from another goroutine.
	done := make(chan []Entry)
	go func() {
		<-s.Appended()
		es, err := s.Read(3, 0, 0)
		if err != nil {
			t.Error(err)
		}
		done <- es
	}()
	mustAppend(t, s, point("j", 3))
	select {
	case es := <-done:
		if len(es) != 1 || es[0].Index != 4 {
			t.Fatalf("woken reader read %v", indexes(es))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiting reader not woken")
	}
	// A failed Append does not signal.
	if _, err := s.Append(nil); err == nil {
		t.Fatal("Append(nil) succeeded")
	}
	select {
	case <-s.Appended():
		t.Fatal("signal after failed Append")
	default:
	}
}

func TestConcurrentAppend(t *testing.T) {
	s, _ := openTest(t)
	const (
		writers = 6
		batches = 20
		perB    = 5
	)
	streams := []string{"", "a", "b"}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for b := range batches {
				var recs []*gantrypb.Record
				for i := range perB {
					recs = append(recs, point(streams[(w+b+i)%len(streams)], int64(i)))
				}
				if _, err := s.Append(recs...); err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		})
	}
	wg.Wait()

	es := mustRead(t, s, 0, 0, 0)
	if len(es) != writers*batches*perB {
		t.Fatalf("stored %d records, want %d", len(es), writers*batches*perB)
	}
	last := map[string]uint64{}
	for i, e := range es {
		if e.Index != uint64(i+1) {
			t.Fatalf("entry %d has index %d", i, e.Index)
		}
		// In index order every stream's seqs are 1, 2, 3, ...: unique,
		// dense and in append order.
		id := e.Record.JobId
		if e.Record.Seq != last[id]+1 {
			t.Fatalf("stream %q: seq %d after %d", id, e.Record.Seq, last[id])
		}
		last[id] = e.Record.Seq
	}
	var total uint64
	for _, n := range last {
		total += n
	}
	if total != writers*batches*perB {
		t.Fatalf("seq totals %v", last)
	}
}

func TestForgetStream(t *testing.T) {
	s, _ := openTest(t)
	a, b := point("a", 0), point("b", 0)
	mustAppend(t, s, a, b)
	if err := s.ForgetStream("a"); err != nil {
		t.Fatal(err)
	}
	if err := s.ForgetStream("a"); err != nil {
		t.Fatalf("second ForgetStream: %v", err)
	}
	if err := s.ForgetStream(""); !errors.Is(err, ErrEmptyID) {
		t.Fatalf("ForgetStream(\"\") = %v, want ErrEmptyID", err)
	}
	var keys []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSeqs).ForEach(func(k, _ []byte) error {
			keys = append(keys, string(k))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(keys) != "[sb]" {
		t.Fatalf("counter keys = %q, want only b's", keys)
	}
	b2 := point("b", 1)
	mustAppend(t, s, b2)
	if b2.Seq != 2 {
		t.Fatalf("other stream's seq = %d, want 2", b2.Seq)
	}
}

func TestJobs(t *testing.T) {
	s, _ := openTest(t)
	data := []byte("state-1")
	if err := s.PutJob("j1", data); err != nil {
		t.Fatal(err)
	}
	data[0] = 'X' // the stored value must not alias the caller's slice
	if err := s.PutJob("j2", []byte("state-2")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutJob("j2", []byte("state-2b")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutJob("", nil); !errors.Is(err, ErrEmptyID) {
		t.Fatalf("PutJob(\"\") = %v", err)
	}
	jobs, err := s.Jobs()
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2 || string(jobs["j1"]) != "state-1" || string(jobs["j2"]) != "state-2b" {
		t.Fatalf("Jobs = %q", jobs)
	}
	if err := s.DeleteJob("j1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteJob("j1"); err != nil {
		t.Fatalf("second DeleteJob: %v", err)
	}
	if err := s.DeleteJob("missing"); err != nil {
		t.Fatalf("DeleteJob(missing): %v", err)
	}
	jobs, err = s.Jobs()
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || string(jobs["j2"]) != "state-2b" {
		t.Fatalf("Jobs after delete = %q", jobs)
	}
}

func BenchmarkAppendAck(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "spool.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	}()
	const batch = 100
	recs := make([]*gantrypb.Record, batch)
	for i := range recs {
		recs[i] = point("bench", int64(i))
	}
	b.ReportAllocs()
	for b.Loop() {
		last, err := s.Append(recs...)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Ack(last); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
}

// TestAppendWithJob: records and job state land in one transaction. The
// state function sees the index of the last record; when it fails, neither
// the records nor the state are written and the seqs are not consumed.
func TestAppendWithJob(t *testing.T) {
	s, path := openTest(t)
	var seen uint64
	last, err := s.AppendWithJob("a", func(l uint64) ([]byte, error) {
		seen = l
		return []byte(fmt.Sprintf("offset=2 exit=%d", l)), nil
	}, point("a", 1), point("a", 2))
	if err != nil {
		t.Fatalf("AppendWithJob: %v", err)
	}
	if last != 2 || seen != 2 {
		t.Fatalf("last = %d, state saw %d; want 2", last, seen)
	}

	boom := errors.New("boom")
	failed := []*gantrypb.Record{point("a", 3)}
	if _, err := s.AppendWithJob("a", func(uint64) ([]byte, error) { return nil, boom }, failed...); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want %v", err, boom)
	}
	if failed[0].Seq != 0 {
		t.Fatalf("failed append left seq %d on the record", failed[0].Seq)
	}

	// No records: only the state moves (offsets past skipped lines).
	if idx, err := s.AppendWithJob("a", func(l uint64) ([]byte, error) {
		if l != 0 {
			t.Errorf("state saw last %d for no records", l)
		}
		return []byte("offset=3"), nil
	}); err != nil || idx != 0 {
		t.Fatalf("AppendWithJob without records = %d, %v", idx, err)
	}

	// What a crash leaves: reopen and look.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	jobs, err := s2.Jobs()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(jobs["a"]); got != "offset=3" {
		t.Fatalf("job state = %q, want %q", got, "offset=3")
	}
	es := mustRead(t, s2, 0, 0, 0)
	if len(es) != 2 {
		t.Fatalf("%d records after reopen, want 2 (the failed append must leave none)", len(es))
	}
	next := mustAppend(t, s2, point("a", 3))
	if es, _ := s2.Read(next-1, 0, 0); len(es) != 1 || es[0].Record.Seq != 3 {
		t.Fatalf("seq after a failed append = %v, want 3 (dense)", es)
	}
}

func TestAppendWithJobErrors(t *testing.T) {
	s, _ := openTest(t)
	state := func(uint64) ([]byte, error) { return []byte("x"), nil }
	tests := []struct {
		name  string
		id    string
		state func(uint64) ([]byte, error)
		recs  []*gantrypb.Record
		want  error
	}{
		{"empty id", "", state, nil, ErrEmptyID},
		{"nil state", "a", nil, nil, ErrNilState},
		{"nil record", "a", state, []*gantrypb.Record{nil}, ErrNilRecord},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.AppendWithJob(tt.id, tt.state, tt.recs...); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	if jobs, err := s.Jobs(); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs after failed calls = %v, %v", jobs, err)
	}
}
