package agent

import (
	"context"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// TestThrottleEventsSpooled: the agent's health loop spools gpu_throttled
// once for a GPU of the job kept throttled past the host's window, and
// gpu_throttled_cleared once when it is not any more.
func TestThrottleEventsSpooled(t *testing.T) {
	oldEval := healthEvalEvery
	healthEvalEvery = 10 * time.Millisecond
	t.Cleanup(func() { healthEvalEvery = oldEval })
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	a.cfg.Health.ThrottleAfter = 200 * time.Millisecond
	j := &job{a: a.Agent, id: "hot", state: &gantrypb.AgentJob{JobId: "hot", Gpus: []uint32{0}, Spec: &gantrypb.JobSpec{}}}
	j.publish()
	a.mu.Lock()
	a.jobs[j.id] = j
	a.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	wait := j.startHealth(ctx, false)
	defer func() { cancel(); wait() }()

	count := func() (on, off int) {
		for _, e := range eventsOf(t, sp, "hot") {
			switch lifecycle.EventKind(e.Kind) {
			case lifecycle.EventGPUThrottled:
				on++
			case lifecycle.EventGPUThrottledCleared:
				off++
			}
		}
		return on, off
	}
	// feed samples GPU 0 with mask, as the sampler would, until done.
	feed := func(what string, mask uint64, done func(on, off int) bool) {
		t.Helper()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		deadline := time.Now().Add(10 * time.Second)
		for !done(count()) {
			if time.Now().After(deadline) {
				on, off := count()
				t.Fatalf("no %s: %d gpu_throttled, %d cleared", what, on, off)
			}
			a.healthSample(&gantrypb.GPUSample{Gpus: []*gantrypb.GPUStat{{Index: 0, UtilizationPct: 97, PowerW: 390,
				PowerLimitW: 400, ThrottleReasons: 0x1 | mask}}})
			<-tick.C
		}
	}
	feed("gpu_throttled", 0x40, func(on, _ int) bool { return on > 0 })
	// Still throttled for several windows: still one event.
	n := 0
	feed("a longer episode", 0x40, func(int, int) bool { n++; return n > 40 })
	feed("gpu_throttled_cleared", 0, func(_, off int) bool { return off > 0 })
	if on, off := count(); on != 1 || off != 1 {
		t.Errorf("%d gpu_throttled, %d cleared; want one each", on, off)
	}
	for _, e := range eventsOf(t, sp, "hot") {
		if e.Kind == string(lifecycle.EventGPUThrottled) && e.Message == "" {
			t.Errorf("event without a message: %+v", e)
		}
	}
}
