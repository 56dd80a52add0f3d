package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func update(t *testing.T, s *Store, fn func(*Tx) error) {
	t.Helper()
	if err := s.Update(fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func view(t *testing.T, s *Store, fn func(*Tx) error) {
	t.Helper()
	if err := s.View(fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}

func TestOpenCreatesSchema(t *testing.T) {
	s := openTest(t)
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, name := range topBuckets {
			if tx.Bucket(name) == nil {
				t.Errorf("bucket %s missing", name)
			}
		}
		v := tx.Bucket(bucketMeta).Get(keySchema)
		if v == nil || binary.BigEndian.Uint64(v) != SchemaVersion {
			t.Errorf("schema version = %v, want %d", v, SchemaVersion)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Open starts from nothing: the state is rebuilt from Raft on every start.
func TestOpenDiscardsStaleState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	update(t, s, func(tx *Tx) error { return tx.PutJob(&gantrypb.Job{Id: "old"}) })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	view(t, s, func(tx *Tx) error {
		if _, err := tx.Job("old"); !errors.Is(err, ErrNotFound) {
			t.Errorf("job from a previous run survived Open: err=%v", err)
		}
		return nil
	})
}

// writeSchemaFile makes a bbolt file that claims schema version v.
func writeSchemaFile(t *testing.T, path string, v uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		return b.Put(keySchema, u64(v))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestSchemaMismatchRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "future.db")
	writeSchemaFile(t, path, SchemaVersion+1)
	if db, err := openDB(path); !errors.Is(err, ErrSchema) {
		if db != nil {
			db.Close()
		}
		t.Fatalf("openDB of a newer schema: err=%v, want ErrSchema", err)
	}

	// The same image as a snapshot: Restore refuses it and the live state
	// stays usable.
	s := openTest(t)
	update(t, s, func(tx *Tx) error { return tx.PutJob(&gantrypb.Job{Id: "keep"}) })
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(bytes.NewReader(img)); !errors.Is(err, ErrSchema) {
		t.Fatalf("Restore of a newer schema: err=%v, want ErrSchema", err)
	}
	view(t, s, func(tx *Tx) error {
		if _, err := tx.Job("keep"); err != nil {
			t.Errorf("live state damaged by a refused restore: %v", err)
		}
		return nil
	})
}

func TestRestoreGarbageRefused(t *testing.T) {
	s := openTest(t)
	update(t, s, func(tx *Tx) error { return tx.PutJob(&gantrypb.Job{Id: "keep"}) })
	if err := s.Restore(bytes.NewReader(bytes.Repeat([]byte("not a bolt file"), 1000))); err == nil {
		t.Fatal("Restore accepted garbage")
	}
	view(t, s, func(tx *Tx) error {
		_, err := tx.Job("keep")
		return err
	})
}

func TestJobsAndNodes(t *testing.T) {
	s := openTest(t)
	update(t, s, func(tx *Tx) error {
		for _, id := range []string{"c", "a", "b"} {
			if err := tx.PutJob(&gantrypb.Job{Id: id, State: gantrypb.JobState_JOB_STATE_QUEUED}); err != nil {
				return err
			}
		}
		if err := tx.PutNode(&gantrypb.Node{Id: "n2"}); err != nil {
			return err
		}
		return tx.PutNode(&gantrypb.Node{Id: "n1", Hostname: "h"})
	})
	view(t, s, func(tx *Tx) error {
		var ids []string
		if err := tx.Jobs(func(j *gantrypb.Job) bool { ids = append(ids, j.Id); return true }); err != nil {
			return err
		}
		if got := join(ids); got != "a,b,c" {
			t.Errorf("Jobs order = %s, want a,b,c", got)
		}
		ids = nil
		if err := tx.Jobs(func(j *gantrypb.Job) bool { ids = append(ids, j.Id); return false }); err != nil {
			return err
		}
		if len(ids) != 1 {
			t.Errorf("Jobs did not stop when fn returned false: %v", ids)
		}
		ids = nil
		if err := tx.JobsNewestFirst(func(j *gantrypb.Job) bool { ids = append(ids, j.Id); return len(ids) < 2 }); err != nil {
			return err
		}
		if got := join(ids); got != "c,b" {
			t.Errorf("JobsNewestFirst stopping after 2 = %s, want c,b", got)
		}
		if _, err := tx.Job("zzz"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Job(zzz) err = %v, want ErrNotFound", err)
		}
		if _, err := tx.Node("zzz"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Node(zzz) err = %v, want ErrNotFound", err)
		}
		nodes, err := tx.Nodes()
		if err != nil {
			return err
		}
		if len(nodes) != 2 || nodes[0].Id != "n1" || nodes[0].Hostname != "h" || nodes[1].Id != "n2" {
			t.Errorf("Nodes = %v", nodes)
		}
		return nil
	})
}

func TestHighWaterAndAppliedIndex(t *testing.T) {
	s := openTest(t)
	view(t, s, func(tx *Tx) error {
		if tx.HighWater(StreamKeyJob("j")) != 0 || tx.AppliedIndex() != 0 {
			t.Error("fresh store has non-zero marks")
		}
		return nil
	})
	update(t, s, func(tx *Tx) error {
		if err := tx.SetHighWater(StreamKeyJob("j"), 7); err != nil {
			return err
		}
		return tx.SetAppliedIndex(99)
	})
	view(t, s, func(tx *Tx) error {
		if got := tx.HighWater(StreamKeyJob("j")); got != 7 {
			t.Errorf("HighWater = %d, want 7", got)
		}
		// Job and node streams are distinct even for the same id.
		if got := tx.HighWater(StreamKeyNode("j")); got != 0 {
			t.Errorf("node stream shares the job stream's mark: %d", got)
		}
		if got := tx.AppliedIndex(); got != 99 {
			t.Errorf("AppliedIndex = %d, want 99", got)
		}
		return nil
	})
}

// putPoints stores points 1..n of job in transactions of random sizes, so
// open chunks are reopened across transactions as well as appended within
// one.
func putPoints(t *testing.T, s *Store, job string, n int) {
	t.Helper()
	for seq := uint64(1); seq <= uint64(n); {
		end := min(seq+uint64(rand.IntN(400)), uint64(n))
		update(t, s, func(tx *Tx) error {
			for ; seq <= end; seq++ {
				step := int64(seq * 10)
				if err := tx.PutPoint(job, &gantrypb.MetricPoint{Seq: seq, Step: &step, Ts: 1.7e9 + float64(seq)/8,
					Values: map[string]float64{"v": float64(seq), "noise": rand.Float64()}}); err != nil {
					return err
				}
			}
			return nil
		})
	}
}

func seqsOf(pts []*gantrypb.MetricPoint) []uint64 {
	out := make([]uint64, len(pts))
	for i, p := range pts {
		out[i] = p.Seq
	}
	return out
}

func span(from, to uint64) []uint64 {
	var out []uint64
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func TestPointsPaging(t *testing.T) {
	s := openTest(t)
	// 3000 points make several chunks, and seqs cross the 255/256 byte
	// boundary, which only sorts right with big-endian keys.
	putPoints(t, s, "j", 3000)
	putPoints(t, s, "other", 5)
	tests := []struct {
		after uint64
		limit int
		want  []uint64
	}{
		{0, 10, span(1, 10)},
		{10, 10, span(11, 20)},
		{250, 10, span(251, 260)},
		{2995, 10, span(2996, 3000)},
		{3000, 10, nil},
		{10000, 10, nil},
		{0, 0, span(1, 3000)}, // no limit
		{2998, -1, span(2999, 3000)},
	}
	for _, tt := range tests {
		view(t, s, func(tx *Tx) error {
			pts, err := tx.Points("j", tt.after, tt.limit)
			if err != nil {
				return err
			}
			if got := seqsOf(pts); !equalU64(got, tt.want) {
				t.Errorf("Points(after=%d, limit=%d) = %v, want %v", tt.after, tt.limit, got, tt.want)
			}
			for _, p := range pts {
				if p.Values["v"] != float64(p.Seq) || p.GetStep() != int64(p.Seq*10) {
					t.Errorf("point %d has the wrong payload: %v", p.Seq, p)
				}
			}
			return nil
		})
	}
	// Walking the pages visits each point exactly once.
	var all []uint64
	after := uint64(0)
	for {
		var page []*gantrypb.MetricPoint
		view(t, s, func(tx *Tx) (err error) { page, err = tx.Points("j", after, 7); return err })
		if len(page) == 0 {
			break
		}
		all = append(all, seqsOf(page)...)
		after = page[len(page)-1].Seq
	}
	if !equalU64(all, span(1, 3000)) {
		t.Fatalf("paging visited %d points, want 1..3000 in order", len(all))
	}
	view(t, s, func(tx *Tx) error {
		pts, err := tx.Points("nope", 0, 10)
		if err != nil || len(pts) != 0 {
			t.Errorf("Points of an unknown job = %v, %v", pts, err)
		}
		return nil
	})
}

func TestLastPoints(t *testing.T) {
	s := openTest(t)
	putPoints(t, s, "j", 3000)
	tests := []struct {
		n    int
		want []uint64
	}{
		{3, span(2998, 3000)},
		{1, []uint64{3000}},
		{2500, span(501, 3000)},
		{5000, span(1, 3000)},
		{0, nil},
		{-1, nil},
	}
	for _, tt := range tests {
		view(t, s, func(tx *Tx) error {
			pts, err := tx.LastPoints("j", tt.n)
			if err != nil {
				return err
			}
			if got := seqsOf(pts); !equalU64(got, tt.want) {
				t.Errorf("LastPoints(%d) = %v..., want %v", tt.n, head(got), head(tt.want))
			}
			return nil
		})
	}
	view(t, s, func(tx *Tx) error {
		pts, err := tx.LastPoints("nope", 5)
		if err != nil || pts != nil {
			t.Errorf("LastPoints of an unknown job = %v, %v", pts, err)
		}
		return nil
	})
}

func TestEvents(t *testing.T) {
	s := openTest(t)
	update(t, s, func(tx *Tx) error {
		for seq := uint64(1); seq <= 5; seq++ {
			if err := tx.PutEvent("j", &gantrypb.JobEvent{Seq: seq, Kind: "k", Count: seq}); err != nil {
				return err
			}
		}
		return nil
	})
	view(t, s, func(tx *Tx) error {
		evs, err := tx.Events("j", 2, 2)
		if err != nil {
			return err
		}
		if len(evs) != 2 || evs[0].Seq != 3 || evs[1].Seq != 4 || evs[1].Count != 4 {
			t.Errorf("Events(after=2, limit=2) = %v", evs)
		}
		return nil
	})
}

func TestLogs(t *testing.T) {
	s := openTest(t)
	// Chunks "hello " @0, "world" @6, "!!" @11, then a hole, "tail" @20.
	update(t, s, func(tx *Tx) error {
		for _, c := range []struct {
			off  uint64
			data string
		}{{6, "world"}, {0, "hello "}, {11, "!!"}, {20, "tail"}} {
			if err := tx.PutLog("j", c.off, []byte(c.data)); err != nil {
				return err
			}
		}
		return nil
	})
	tests := []struct {
		name     string
		offset   uint64
		max      int
		want     string
		wantNext uint64
	}{
		{"all contiguous", 0, 100, "hello world!!", 13},
		{"across chunk boundaries", 4, 100, "o world!!", 13},
		{"from a chunk start", 6, 100, "world!!", 13},
		{"middle of a chunk", 8, 100, "rld!!", 13},
		{"middle of the last contiguous chunk", 12, 100, "!", 13},
		{"limit inside the first chunk", 0, 3, "hel", 3},
		{"limit across a boundary", 3, 5, "lo wo", 8},
		{"limit at a boundary", 0, 6, "hello ", 6},
		{"at the hole", 13, 100, "", 13},
		{"inside the hole", 15, 100, "", 15},
		{"after the hole", 20, 100, "tail", 24},
		{"middle of the last chunk", 22, 100, "il", 24},
		{"past the end", 24, 100, "", 24},
		{"far past the end", 1000, 100, "", 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			view(t, s, func(tx *Tx) error {
				got, next := tx.Logs("j", tt.offset, tt.max)
				if string(got) != tt.want || next != tt.wantNext {
					t.Errorf("Logs(%d, %d) = %q, %d; want %q, %d", tt.offset, tt.max, got, next, tt.want, tt.wantNext)
				}
				return nil
			})
		})
	}
	view(t, s, func(tx *Tx) error {
		got, next := tx.Logs("nope", 5, 10)
		if got != nil || next != 5 {
			t.Errorf("Logs of an unknown job = %q, %d", got, next)
		}
		return nil
	})
	// Reading a whole log in small pieces gives the same bytes.
	var all []byte
	view(t, s, func(tx *Tx) error {
		off := uint64(0)
		for {
			b, next := tx.Logs("j", off, 4)
			if len(b) == 0 {
				break
			}
			all = append(all, b...)
			off = next
		}
		return nil
	})
	if string(all) != "hello world!!" {
		t.Fatalf("paged read = %q", all)
	}
}

func TestGPUSampleRetention(t *testing.T) {
	s := openTest(t)
	const r = GPUSampleRetention
	// Seqs are dense in real life; writing only the ones around the window
	// edge exercises the same deletes without 3600 puts.
	seqs := append(span(1, 5), span(r-2, r+3)...)
	update(t, s, func(tx *Tx) error {
		for _, seq := range seqs {
			if err := tx.PutGPUSample("n1", &gantrypb.GPUSample{Seq: seq, Ts: float64(seq)}); err != nil {
				return err
			}
		}
		return tx.PutGPUSample("n2", &gantrypb.GPUSample{Seq: 1})
	})
	view(t, s, func(tx *Tx) error {
		all, err := tx.GPUSamples("n1", 1<<20)
		if err != nil {
			return err
		}
		var got []uint64
		for _, g := range all {
			got = append(got, g.Seq)
		}
		// r+1..r+3 deleted 1..3; 4 and 5 are still inside the window.
		want := append([]uint64{4, 5}, span(r-2, r+3)...)
		if !equalU64(got, want) {
			t.Errorf("samples kept = %v, want %v", got, want)
		}
		last, err := tx.GPUSamples("n1", 2)
		if err != nil {
			return err
		}
		if len(last) != 2 || last[0].Seq != r+2 || last[1].Seq != r+3 {
			t.Errorf("GPUSamples(2) = %v, want the two newest, oldest first", last)
		}
		other, err := tx.GPUSamples("n2", 10)
		if err != nil || len(other) != 1 {
			t.Errorf("another node's samples were touched: %v, %v", other, err)
		}
		if none, _ := tx.GPUSamples("n1", 0); none != nil {
			t.Errorf("GPUSamples(0) = %v", none)
		}
		return nil
	})
}

func TestImageRestoreRoundTrip(t *testing.T) {
	src := openTest(t)
	update(t, src, func(tx *Tx) error {
		if err := tx.PutJob(&gantrypb.Job{Id: "a", Points: 2}); err != nil {
			return err
		}
		if err := tx.SetAppliedIndex(10); err != nil {
			return err
		}
		return tx.PutPoint("a", &gantrypb.MetricPoint{Seq: 1})
	})
	im, err := src.Image()
	if err != nil {
		t.Fatal(err)
	}
	if got := src.OpenReadTxns(); got != 1 {
		t.Errorf("OpenReadTxns with an image held = %d, want 1", got)
	}
	// Written after the image was taken: must not be in it.
	update(t, src, func(tx *Tx) error { return tx.PutJob(&gantrypb.Job{Id: "later"}) })
	var buf bytes.Buffer
	if _, err := im.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	im.Release()
	im.Release() // safe twice
	if got := src.OpenReadTxns(); got != 0 {
		t.Errorf("OpenReadTxns after Release = %d, want 0", got)
	}

	dst := openTest(t)
	update(t, dst, func(tx *Tx) error { return tx.PutJob(&gantrypb.Job{Id: "replaced"}) })
	if err := dst.Restore(&buf); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	view(t, dst, func(tx *Tx) error {
		var ids []string
		if err := tx.Jobs(func(j *gantrypb.Job) bool { ids = append(ids, j.Id); return true }); err != nil {
			return err
		}
		if join(ids) != "a" {
			t.Errorf("jobs after restore = %v, want [a]", ids)
		}
		if tx.AppliedIndex() != 10 {
			t.Errorf("applied index after restore = %d, want 10", tx.AppliedIndex())
		}
		pts, err := tx.Points("a", 0, 0)
		if err != nil || len(pts) != 1 {
			t.Errorf("points after restore = %v, %v", pts, err)
		}
		return nil
	})
	// The restored store takes writes.
	update(t, dst, func(tx *Tx) error { return tx.PutJob(&gantrypb.Job{Id: "b"}) })
	if _, err := os.Stat(dst.path + ".restore"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("restore left its temporary file behind: %v", err)
	}
}

func TestOpenReadTxnsCountsView(t *testing.T) {
	s := openTest(t)
	if got := s.OpenReadTxns(); got != 0 {
		t.Fatalf("fresh store has %d open read txns", got)
	}
	inside := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.View(func(*Tx) error {
			close(inside)
			<-release
			return nil
		})
	}()
	<-inside
	if got := s.OpenReadTxns(); got != 1 {
		t.Errorf("OpenReadTxns during a View = %d, want 1", got)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 2*time.Second, func() bool { return s.OpenReadTxns() == 0 }, "the read txn to close")
}

func TestValuesAreCopies(t *testing.T) {
	s := openTest(t)
	update(t, s, func(tx *Tx) error { return tx.PutJob(&gantrypb.Job{Id: "a", Error: "original"}) })
	var j *gantrypb.Job
	view(t, s, func(tx *Tx) (err error) { j, err = tx.Job("a"); return err })
	// Use after the transaction: must still hold the value and not fault.
	update(t, s, func(tx *Tx) error { return tx.PutJob(&gantrypb.Job{Id: "a", Error: "changed"}) })
	if j.Error != "original" {
		t.Fatalf("job read earlier changed under us: %q", j.Error)
	}
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

func head(s []uint64) []uint64 {
	if len(s) > 5 {
		return s[:5]
	}
	return s
}

func join(s []string) string {
	var b bytes.Buffer
	for i, v := range s {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(v)
	}
	return b.String()
}

// TestJobsWhereDecodesOnlyKept: keep sees every job's stored state and
// finished time (read without decoding the job), and fn gets exactly the
// kept jobs, decoded whole, in id order.
func TestJobsWhereDecodesOnlyKept(t *testing.T) {
	s := openTest(t)
	code := int32(0)
	jobs := []*gantrypb.Job{
		{Id: "a", State: gantrypb.JobState_JOB_STATE_SUCCEEDED, FinishedAtMs: 1000, ExitCode: &code, LogTail: "x"},
		{Id: "b", State: gantrypb.JobState_JOB_STATE_RUNNING, Node: "n1", Gpus: []uint32{0, 3},
			LatestMetrics: map[string]float64{"loss": 0.5}, Spec: &gantrypb.JobSpec{Name: "train"}},
		{Id: "c", State: gantrypb.JobState_JOB_STATE_FAILED, FinishedAtMs: 5000},
		{Id: "d", State: gantrypb.JobState_JOB_STATE_QUEUED},
	}
	update(t, s, func(tx *Tx) error {
		for _, j := range jobs {
			if err := tx.PutJob(j); err != nil {
				return err
			}
		}
		return nil
	})
	type peek struct {
		state    gantrypb.JobState
		finished int64
	}
	var seen []peek
	var got []string
	view(t, s, func(tx *Tx) error {
		return tx.JobsWhere(func(st gantrypb.JobState, fin int64) bool {
			seen = append(seen, peek{st, fin})
			return st == gantrypb.JobState_JOB_STATE_RUNNING || fin >= 5000
		}, func(j *gantrypb.Job) bool {
			got = append(got, j.Id)
			if j.Id == "b" && (j.Spec.GetName() != "train" || j.LatestMetrics["loss"] != 0.5 || len(j.Gpus) != 2) {
				t.Errorf("job b decoded as %v", j)
			}
			return true
		})
	})
	want := []peek{{jobs[0].State, 1000}, {jobs[1].State, 0}, {jobs[2].State, 5000}, {jobs[3].State, 0}}
	if len(seen) != len(want) {
		t.Fatalf("keep saw %v, want %v", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Errorf("keep saw %v for job %s, want %v", seen[i], jobs[i].Id, want[i])
		}
	}
	if join(got) != "b,c" {
		t.Errorf("fn got %v, want b,c", got)
	}
	// A damaged job value is an error naming it, not a panic or a skip.
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketJobs).Put([]byte("e"), []byte{0x1a, 0xff}) }); err != nil {
		t.Fatal(err)
	}
	err := s.View(func(tx *Tx) error {
		return tx.JobsWhere(func(gantrypb.JobState, int64) bool { return false }, func(*gantrypb.Job) bool { return true })
	})
	if err == nil {
		t.Error("JobsWhere over a damaged job: no error")
	}
}

// TestLastPointTs: the newest point's timestamp, from the head or, once
// the head has been folded away, from the last chunk.
func TestLastPointTs(t *testing.T) {
	s := openTest(t)
	view(t, s, func(tx *Tx) error {
		if _, ok, err := tx.LastPointTs("none"); ok || err != nil {
			t.Errorf("job without points: ok=%v err=%v", ok, err)
		}
		return nil
	})
	for _, n := range []int{1, 3000} {
		job := fmt.Sprint("j", n)
		putPoints(t, s, job, n)
		view(t, s, func(tx *Tx) error {
			ts, ok, err := tx.LastPointTs(job)
			if want := 1.7e9 + float64(n)/8; !ok || err != nil || ts != want {
				t.Errorf("%s: LastPointTs = %v, %v, %v; want %v", job, ts, ok, err, want)
			}
			return nil
		})
	}
}

// TestReadTxnsStartedCounts: every View is one more read transaction.
func TestReadTxnsStartedCounts(t *testing.T) {
	s := openTest(t)
	before := s.ReadTxnsStarted()
	for range 3 {
		view(t, s, func(*Tx) error { return nil })
	}
	if got := s.ReadTxnsStarted() - before; got != 3 {
		t.Errorf("3 Views started %d read txns", got)
	}
}
