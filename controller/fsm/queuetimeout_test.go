package fsm_test

import (
	"errors"
	"math"
	"testing"

	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// submitWithTimeout submits a job at 1000 ms that may wait 60 s queued.
func submitWithTimeout(id string) *gantrypb.SubmitJobCmd {
	m := submit(id)
	m.Spec.QueueTimeoutMs = 60_000
	return m
}

func timeout(id string, atMs int64) *gantrypb.QueueTimeoutCmd {
	return &gantrypb.QueueTimeoutCmd{JobId: id, Error: "still queued after 1m0s: waiting for 1 free GPU", AtMs: atMs}
}

func TestQueueTimeoutFailsAQueuedJob(t *testing.T) {
	h := newHarness(t)
	h.mustOK(submitWithTimeout("j"))
	h.obs.take()
	h.mustOK(timeout("j", 61_000))
	j := h.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_FAILED || j.Error != "still queued after 1m0s: waiting for 1 free GPU" ||
		j.FinishedAtMs != 61_000 || j.Events != 1 {
		t.Fatalf("job after its queue timeout = %v", j)
	}
	evs := h.events("j")
	if len(evs) != 1 || evs[0].Kind != string(lifecycle.EventQueueTimeout) || evs[0].Message != j.Error || evs[0].Ts != 61 {
		t.Fatalf("events = %v, want one queue_timeout event with the error", evs)
	}
	// Watchers hear of it: the event, then the failed job.
	calls := h.obs.take()
	if len(calls) != 1 || len(calls[0].Events["j"]) != 1 || calls[0].Jobs["j"].GetState() != gantrypb.JobState_JOB_STATE_FAILED {
		t.Fatalf("observer saw %v", calls)
	}
	// A second timeout entry (a new leader that had not seen the first
	// applied) changes nothing.
	if err, _ := h.apply(timeout("j", 62_000)).(error); !errors.Is(err, lifecycle.ErrNotQueued) {
		t.Fatalf("second timeout = %v, want ErrNotQueued", err)
	}
	if j := h.job("j"); j.FinishedAtMs != 61_000 || len(h.events("j")) != 1 {
		t.Fatalf("second timeout rewrote the job: %v", j)
	}
}

// The leader decided while the job was queued, but the job was placed
// before the timeout entry was applied: every voter refuses the entry at
// its place in the log and the job keeps running.
func TestQueueTimeoutAfterPlacementRefused(t *testing.T) {
	h := newHarness(t)
	h.mustOK(submitWithTimeout("j"))
	rs := h.batch(assign("j", "n1", 0), timeout("j", 61_000), ingest("n1", started("j", 1)))
	if rs[0] != nil || rs[2] == nil {
		t.Fatalf("assign/ingest responses = %v", rs)
	}
	if err, _ := rs[1].(error); !errors.Is(err, lifecycle.ErrNotQueued) || errors.Is(err, fsm.ErrSkipped) {
		t.Fatalf("timeout after placement = %v, want ErrNotQueued (refused, not skipped)", rs[1])
	}
	j := h.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_RUNNING || j.Error != "" || j.FinishedAtMs != 0 {
		t.Fatalf("job = %v, want it still running", j)
	}
	if h.f.Skipped() != 0 {
		t.Fatalf("skipped = %d: a refused request is not a bad entry", h.f.Skipped())
	}
}

func TestQueueTimeoutRefusals(t *testing.T) {
	h := newHarness(t)
	h.mustOK(submitWithTimeout("j"))
	h.mustOK(submit("forever")) // no queue_timeout
	huge := submit("huge")      // a hand-made entry: created_at + timeout overflows
	huge.Spec.QueueTimeoutMs = math.MaxInt64
	h.mustOK(huge)
	h.mustOK(submitWithTimeout("cancelled"))
	h.mustOK(&gantrypb.CancelJobCmd{JobId: "cancelled", AtMs: 2000})
	for _, tt := range []struct {
		name string
		m    *gantrypb.QueueTimeoutCmd
		want error
	}{
		{"before the deadline", timeout("j", 60_999), lifecycle.ErrNotDue},
		{"a job without a queue timeout", timeout("forever", 1<<40), lifecycle.ErrNotDue},
		{"a timeout too large to add", timeout("huge", math.MaxInt64), lifecycle.ErrNotDue},
		{"a cancelled job", timeout("cancelled", 61_000), lifecycle.ErrNotQueued},
		{"an unknown job", timeout("nope", 61_000), lifecycle.ErrJobNotFound},
	} {
		if err, _ := h.apply(tt.m).(error); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	for id, want := range map[string]gantrypb.JobState{
		"j": gantrypb.JobState_JOB_STATE_QUEUED, "forever": gantrypb.JobState_JOB_STATE_QUEUED,
		"huge":      gantrypb.JobState_JOB_STATE_QUEUED,
		"cancelled": gantrypb.JobState_JOB_STATE_CANCELLED,
	} {
		if got := h.job(id).State; got != want {
			t.Errorf("job %s is %s, want %s", id, got, want)
		}
	}
	// Exactly at the deadline is due.
	h.mustOK(timeout("j", 61_000))
}
