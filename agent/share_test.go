package agent

import (
	"strconv"
	"testing"

	"github.com/gantry-ml/gantry/agent/spool"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// TestJobShareHoldsBackAFlood: with the link up, a job that writes far
// faster than acks come never holds much more than its share of the spool
// (its tails stop reading; the lines wait in its file), and once acks come
// every line is spooled, once and in order, then the exit record.
func TestJobShareHoldsBackAFlood(t *testing.T) {
	const (
		id    = "flood"
		lines = 10 * jobSpoolShare
		// One read of the tail (up to 256 lines, metricsfile's batch) may
		// land past the share, with an event or two.
		most = jobSpoolShare + 256 + 2
	)
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	a.linkUp = func() bool { return true } // this test acks as the controller would
	a.start(&gantrypb.StartJob{JobId: id, Spec: &gantrypb.JobSpec{Run: `awk 'BEGIN { for (i = 1; i <= ` +
		strconv.Itoa(lines) + `; i++) printf "{\"step\": %d, \"loss\": %d}\n", i, i }' >> "$GANTRY_METRICS_FILE"`}})

	step := int64(0)
	rounds := 0
	for exited := false; !exited; rounds++ {
		var es []spool.Entry
		waitFor(t, "the job held back, or its exit", func() bool {
			a.mu.Lock()
			j := a.jobs[id]
			a.mu.Unlock()
			held := j != nil && j.holding.Load()
			es = jobEntries(t, sp, id)
			return held || (len(es) > 0 && es[len(es)-1].Record.GetExit() != nil)
		})
		if n := sp.StreamPending(id); n > most {
			t.Fatalf("the job holds %d records unacked in the spool; its share is %d (at most %d with one read)", n, jobSpoolShare, most)
		}
		for _, e := range es {
			switch {
			case e.Record.GetPoint() != nil:
				if got := e.Record.GetPoint().GetStep(); got != step+1 {
					t.Fatalf("point of step %d after step %d", got, step)
				}
				step++
			case e.Record.GetExit() != nil:
				exited = true
			}
		}
		// The controller acks what was sent.
		if err := sp.AckEntries(es); err != nil {
			t.Fatal(err)
		}
	}
	if step != lines {
		t.Fatalf("%d points spooled before the exit, want %d", step, lines)
	}
	if rounds < lines/most {
		t.Fatalf("the job's %d lines were spooled in %d rounds of acks; held back to its share, it takes %d or more", lines, rounds, lines/most)
	}
}

// jobEntries returns job id's entries in the spool, in order.
func jobEntries(t *testing.T, sp *spool.Spool, id string) []spool.Entry {
	t.Helper()
	all, err := sp.Read(0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []spool.Entry
	for _, e := range all {
		if e.Record.JobId == id {
			out = append(out, e)
		}
	}
	return out
}
