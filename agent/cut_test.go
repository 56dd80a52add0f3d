package agent

import (
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// TestCutWhileHeldSpoolsEverything: a job held to its share while
// the link is up must go back to spooling everything once the link is
// cut (no acks can come then): its lines and exit reach the spool.
func TestCutWhileHeldSpoolsEverything(t *testing.T) {
	const id = "flood"
	const lines = 4 * jobSpoolShare
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	var up atomic.Bool
	up.Store(true)
	a.linkUp = up.Load
	a.start(&gantrypb.StartJob{JobId: id, Spec: &gantrypb.JobSpec{Run: `awk 'BEGIN { for (i = 1; i <= ` +
		strconv.Itoa(lines) + `; i++) printf "{\"step\": %d, \"loss\": %d}\n", i, i }' >> "$GANTRY_METRICS_FILE"`}})
	waitFor(t, "the job held back", func() bool {
		a.mu.Lock()
		j := a.jobs[id]
		a.mu.Unlock()
		return j != nil && j.holding.Load()
	})
	up.Store(false) // the link is cut: nothing will be acked now
	waitFor(t, "every line and the exit spooled during the cut", func() bool {
		es := jobEntries(t, sp, id)
		return len(es) > 0 && es[len(es)-1].Record.GetExit() != nil
	})
}
