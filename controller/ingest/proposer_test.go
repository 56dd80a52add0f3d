package ingest

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/proto/flat"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// lines returns n training lines (20 metrics each, about 450 bytes) of job.
func lines(job string, from, n int) []*gantrypb.Record {
	out := make([]*gantrypb.Record, n)
	for i := range out {
		vals := make(map[string]float64, 20)
		for k := range 20 {
			vals[fmt.Sprintf("metric_%02d", k)] = float64(from+i) + float64(k)/100
		}
		out[i] = &gantrypb.Record{JobId: job, Seq: uint64(from + i), Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{
			Step: proto.Int64(int64(from + i)), Values: vals}}}
	}
	return out
}

// decode returns the records of an entry, as a voter decodes them.
func decode(t *testing.T, e *entry) []*gantrypb.Record {
	t.Helper()
	var cmd gantrypb.IngestCmd
	if err := proto.Unmarshal(e.raw, &cmd); err != nil {
		t.Fatal(err)
	}
	if len(cmd.Records) != e.n {
		t.Fatalf("entry decodes to %d records, counted %d", len(cmd.Records), e.n)
	}
	return cmd.Records
}

// stoppedClock is a clock that never moves.
func stoppedClock() func() time.Time {
	at := time.Unix(1e9, 0)
	return func() time.Time { return at }
}

// drain cuts entries until the budget or the queues run out, as the
// proposer's loop would propose them.
func drain(p *proposer) []*entry {
	var out []*entry
	for e := p.next(); e != nil; e = p.next() {
		out = append(out, e)
	}
	return out
}

// TestProposerServesAQuietNodeNext: with one node's flood queued far
// beyond the in-flight budget, a quiet node's line is proposed at once
// through the express lane, budget spent or not; a quiet node with more
// than a trickle waits for the budget, and then takes turns with the
// flood, one entry each.
func TestProposerServesAQuietNodeNext(t *testing.T) {
	p := newProposer(nil, 4<<10, 8<<10, nil)
	p.now = stoppedClock() // no rate measured: the budget stays 8 KiB
	flood := p.register("flood")
	for i := 1; i <= 50; i++ {
		if err := p.offer(flood, uint64(i), nil, lines("job-a", 20*i, 20)); err != nil {
			t.Fatal(err)
		}
	}
	inflight := drain(p)
	if len(inflight) == 0 || len(inflight) > 3 {
		t.Fatalf("%d entries in flight, want 1 to 3 for a budget of two entries' bytes", len(inflight))
	}
	quiet := p.register("quiet")
	if err := p.offer(quiet, 7, nil, lines("job-b", 1, 1)); err != nil {
		t.Fatal(err)
	}
	e := p.next()
	if e == nil || e.q != quiet || !slices.Equal(e.ids, []uint64{7}) || len(decode(t, e)) != 1 {
		t.Fatalf("with the budget spent, the next entry is %+v, want the quiet node's batch 7 by the express lane", e)
	}
	if e := p.next(); e != nil {
		t.Fatalf("an entry of %s was cut with the budget spent and no trickle waiting", e.q.node)
	}

	// More than a trickle: 60 lines, some 27 KiB, over expressBytes.
	if err := p.offer(quiet, 8, nil, lines("job-b", 2, 60)); err != nil {
		t.Fatal(err)
	}
	if e := p.next(); e != nil {
		t.Fatalf("an entry of %s went past the spent budget with a backlog", e.q.node)
	}
	p.release(e)
	for _, f := range inflight {
		p.release(f)
	}
	// Both now have nothing in flight: they take turns, the flood first
	// (its batches came first), then the quiet node, then the flood.
	var order []string
	for range 3 {
		e := p.next()
		if e == nil {
			t.Fatal("nothing to propose with the budget free")
		}
		order = append(order, e.q.node)
	}
	if !slices.Equal(order, []string{"flood", "quiet", "flood"}) {
		t.Fatalf("entries went to %v, want the two nodes in turn", order)
	}
}

// TestProposerCutsAndCoalesces: a batch over the entry cap is cut into
// several entries in order and acked with the last; small batches of one
// node share an entry and are all acked with it.
func TestProposerCutsAndCoalesces(t *testing.T) {
	p := newProposer(nil, 4<<10, 1<<30, nil)
	q := p.register("n")
	big := lines("job-a", 1, 40) // about 18 KiB
	if err := p.offer(q, 1, nil, big); err != nil {
		t.Fatal(err)
	}
	for i := uint64(2); i <= 4; i++ {
		if err := p.offer(q, i, nil, lines("job-a", 39+int(i), 1)); err != nil {
			t.Fatal(err)
		}
	}
	es := drain(p)
	var got []*gantrypb.Record
	var acks []uint64
	for i, e := range es {
		got = append(got, decode(t, e)...)
		acks = append(acks, e.ids...)
		if e.bytes > 4<<10 && e.n > 1 {
			t.Errorf("entry %d holds %d bytes in %d records, over the cap", i, e.bytes, e.n)
		}
		if i < len(es)-1 && len(e.ids) > 0 && e.ids[len(e.ids)-1] == 1 && len(got) < len(big) {
			t.Errorf("batch 1 acked with entry %d before all its records were in", i)
		}
	}
	if len(es) < 5 {
		t.Fatalf("%d entries for 18 KiB under a 4 KiB cap", len(es))
	}
	if !slices.Equal(acks, []uint64{1, 2, 3, 4}) {
		t.Fatalf("acks %v, want 1..4 in order", acks)
	}
	for i, r := range got {
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d has seq %d: order lost", i, r.Seq)
		}
	}
	if last := es[len(es)-1]; !slices.Contains(last.ids, 4) || len(last.ids) < 2 {
		t.Fatalf("the small batches were not coalesced: last entry acks %v", last.ids)
	}
}

// TestProposerNewSessionDropsOldQueue: a node's new session drops what the
// old one had queued, and the old one can queue no more, so nothing read
// before a reconnect is proposed after the replay.
func TestProposerNewSessionDropsOldQueue(t *testing.T) {
	p := newProposer(nil, 4<<10, 1<<30, nil)
	old := p.register("n")
	if err := p.offer(old, 1, nil, lines("job-a", 1, 2)); err != nil {
		t.Fatal(err)
	}
	cur := p.register("n")
	if err := p.offer(old, 2, nil, lines("job-a", 3, 2)); !errors.Is(err, errSessionGone) {
		t.Fatalf("offer on a replaced session: %v, want errSessionGone", err)
	}
	if err := p.offer(cur, 9, nil, lines("job-a", 1, 4)); err != nil {
		t.Fatal(err)
	}
	es := drain(p)
	if len(es) != 1 || es[0].q != cur || !slices.Equal(es[0].ids, []uint64{9}) {
		t.Fatalf("entries %v, want only the new session's batch 9", es)
	}
	p.unregister(cur)
	if err := p.offer(cur, 10, nil, lines("job-a", 5, 1)); !errors.Is(err, errSessionGone) {
		t.Fatalf("offer on an ended session: %v, want errSessionGone", err)
	}
}

// flatLines returns lines of job in the flat form, indexing their own key
// table, as one agent batch carries them.
func flatLines(job string, from, n int, names ...string) ([]string, []*gantrypb.Record) {
	var tab flat.Table
	recs := make([]*gantrypb.Record, n)
	for i := range recs {
		p := &gantrypb.MetricPoint{Step: proto.Int64(int64(from + i)), Values: map[string]float64{}}
		for k, name := range names {
			p.Values[name] = float64(from+i) + float64(k)/10
		}
		tab.Flatten(p)
		recs[i] = &gantrypb.Record{JobId: job, Seq: uint64(from + i), Body: &gantrypb.Record_Point{Point: p}}
	}
	return tab.Keys(), recs
}

// TestProposerKeyTables: batches of one node with key tables of their
// own are re-indexed into the queue's table, so they share an entry, and
// each entry's keys name every metric its flat points index.
func TestProposerKeyTables(t *testing.T) {
	p := newProposer(nil, 1<<20, 4<<20, nil)
	q := p.register("n1")
	k1, b1 := flatLines("job-a", 1, 3, "loss", "lr")
	k2, b2 := flatLines("job-a", 4, 3, "acc", "loss")
	if err := p.offer(q, 1, k1, b1); err != nil {
		t.Fatal(err)
	}
	if err := p.offer(q, 2, k2, b2); err != nil {
		t.Fatal(err)
	}
	es := drain(p)
	if len(es) != 1 || !slices.Equal(es[0].ids, []uint64{1, 2}) {
		t.Fatalf("%d entries; want the two batches in one", len(es))
	}
	recs := decode(t, es[0])
	for i, r := range recs {
		step := r.GetPoint().GetStep()
		got := flat.Values(r.GetPoint(), es[0].keys)
		want := map[string]float64{"loss": float64(step), "lr": float64(step) + 0.1}
		if i >= 3 {
			want = map[string]float64{"acc": float64(step), "loss": float64(step) + 0.1}
		}
		if !maps.Equal(got, want) {
			t.Fatalf("record %d: %v, want %v (keys %v)", i, got, want, es[0].keys)
		}
	}
	if len(es[0].keys) != 3 {
		t.Fatalf("entry keys %v, want loss, lr, acc once each", es[0].keys)
	}
}

// TestProposerBudgetFollowsTheApplyRate: the in-flight budget is what Raft
// applies in inflightTarget at the measured rate, never below the floor,
// and an idle spell does not count as a slow apply.
func TestProposerBudgetFollowsTheApplyRate(t *testing.T) {
	const floor = 64 << 10
	p := newProposer(nil, 64<<10, floor, nil)
	at := time.Unix(1e9, 0)
	p.now = func() time.Time { return at }
	q := p.register("n")
	if got := p.budget(); got != floor {
		t.Fatalf("budget with no rate measured = %d, want the floor %d", got, floor)
	}
	// Apply 20 MB/s for a second, entries completing in order, with more
	// queued and in flight all along.
	var inflight []*entry
	for i := 0; at.Before(time.Unix(1e9, 0).Add(time.Second)); i++ {
		if err := p.offer(q, uint64(i+1), nil, lines("job-a", 140*i+1, 140)); err != nil {
			t.Fatal(err)
		}
		inflight = append(inflight, drain(p)...)
		if len(inflight) < 2 {
			continue
		}
		e := inflight[0]
		inflight = inflight[1:]
		at = at.Add(time.Duration(float64(e.bytes) / 20e6 * float64(time.Second)))
		p.release(e)
	}
	want := 20e6 * inflightTarget.Seconds() // 1 MB
	if got := float64(p.budget()); got < 0.8*want || got > 1.2*want {
		t.Fatalf("budget at 20 MB/s = %.0f bytes, want about %.0f", got, want)
	}
	// A long idle spell, then a trickle: the rate is not dragged down by
	// the time nothing was in flight.
	for _, e := range append(inflight, drain(p)...) {
		p.release(e)
	}
	before := p.budget()
	at = at.Add(time.Minute)
	if err := p.offer(q, 1e6, nil, lines("job-a", 1e6, 1)); err != nil {
		t.Fatal(err)
	}
	for _, e := range drain(p) {
		at = at.Add(time.Millisecond)
		p.release(e)
	}
	if got := p.budget(); got != before {
		t.Fatalf("budget after an idle minute = %d, want it unchanged at %d", got, before)
	}
}

// TestProposerMapFormForOlderVoters: while a voter's release does not read
// flat points, entries carry the batches' points in the map form, with no
// key table.
func TestProposerMapFormForOlderVoters(t *testing.T) {
	p := newProposer(nil, 1<<20, 4<<20, func() bool { return false })
	q := p.register("n1")
	keys, recs := flatLines("job-a", 1, 3, "loss", "lr")
	if err := p.offer(q, 1, keys, recs); err != nil {
		t.Fatal(err)
	}
	es := drain(p)
	if len(es) != 1 || len(es[0].keys) != 0 {
		t.Fatalf("%d entries, keys %v; want one entry without a table", len(es), es[0].keys)
	}
	for i, r := range decode(t, es[0]) {
		pt := r.GetPoint()
		step := float64(pt.GetStep())
		if len(pt.KeyIdx) != 0 || len(pt.Vals) != 0 || !maps.Equal(pt.Values, map[string]float64{"loss": step, "lr": step + 0.1}) {
			t.Fatalf("record %d: %v", i, pt)
		}
	}
}
