package fsm_test

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/controller/admission"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// TestRequeueKeepsDroppedKeysEvent: an exit whose final metrics take the
// job past limits.MaxKeysPerJob records metric_keys_dropped at the exit's
// seq; the requeue must not write its requeued event over it.
func TestRequeueKeepsDroppedKeysEvent(t *testing.T) {
	h := newHarness(t)
	h.submitRequeue("j", 0)
	h.mustOK(assign("j", "n1", 0))
	h.mustOK(ingest("n1", started("j", 1), point("j", 2, map[string]float64{"loss": 1}), condRec("j", 3, lifecycle.CondStalled, true)))
	final := map[string]float64{}
	for i := range limits.MaxKeysPerJob + 5 {
		final[fmt.Sprintf("k%05d", i)] = 1
	}
	h.mustOK(ingest("n1", exitRec("j", 4, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, FinalMetrics: final, Reason: string(lifecycle.ReasonCancelled)})))
	j := h.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_QUEUED || j.DroppedMetricKeys == 0 {
		t.Fatalf("state %s dropped %d: the test tests nothing", j.State, j.DroppedMetricKeys)
	}
	evs := h.events("j")
	if got := eventKinds(evs); !strings.Contains(got, string(lifecycle.EventMetricKeysDropped)) || !strings.Contains(got, string(lifecycle.EventRequeued)) {
		t.Errorf("events %q (count %d), want both %s and %s kept", got, j.Events, lifecycle.EventMetricKeysDropped, lifecycle.EventRequeued)
	}
	if uint64(len(evs)) != j.Events {
		t.Errorf("job counts %d events, %d stored", j.Events, len(evs))
	}
}

// TestRequeueLongJobID: a job id of the longest length a submit takes
// must still run its later attempts: their run ids ("id~N") are longer.
func TestRequeueLongJobID(t *testing.T) {
	h := newHarness(t)
	id := strings.Repeat("x", limits.MaxIDBytes)
	h.submitRequeue(id, 0)
	h.mustOK(assign(id, "n1", 0))
	h.mustOK(ingest("n1", started(id, 1), condRec(id, 2, lifecycle.CondStalled, true)))
	h.mustOK(ingest("n1", exitRec(id, 3, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, Reason: string(lifecycle.ReasonCancelled)})))
	h.mustOK(assign(id, "n1", 0))
	run := lifecycle.RunID(id, 1)
	// The agent's hello lists the run as active; the leader must take it.
	if err := admission.CheckHello(&gantrypb.Hello{NodeId: "n1", ActiveJobs: []string{run}}); err != nil {
		t.Errorf("hello of the agent running attempt 2: %v", err)
	}
	h.mustOK(ingest("n1", started(run, 1)))
	if j := h.job(id); j.State != gantrypb.JobState_JOB_STATE_RUNNING {
		t.Errorf("attempt 2 of a %d-byte job id: state %s, want running (its records were refused)", len(id), j.State)
	}
}

// TestRequeueQueueTimeoutLeaderClock: a requeued job waits anew by the
// leader's clock, the one its queue deadline is checked against: an agent
// whose clock is behind must not make the job time out at once.
func TestRequeueQueueTimeoutLeaderClock(t *testing.T) {
	h := newHarness(t)
	sub := submit("j")
	sub.Spec.QueueTimeoutMs = 10_000
	sub.Spec.Health = &gantrypb.HealthSpec{OnIdle: lifecycle.PolicyRequeue}
	h.mustOK(sub)
	h.mustOK(assign("j", "n1", 0))
	h.mustOK(ingest("n1", started("j", 1), condRec("j", 2, lifecycle.CondIdleGPUs, true, 0)))
	// The exit arrives an hour after the submit by the leader's clock; the
	// agent's clock says 2 s.
	exit := ingest("n1", exitRec("j", 3, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 2, Reason: string(lifecycle.ReasonCancelled)}))
	exit.AtMs = 3_600_000
	h.mustOK(exit)
	if j := h.job("j"); j.State != gantrypb.JobState_JOB_STATE_QUEUED {
		t.Fatalf("state %s, want queued again", j.State)
	}
	res := h.apply(&gantrypb.QueueTimeoutCmd{JobId: "j", Error: "still queued", AtMs: 3_600_001})
	if err, ok := res.(error); !ok || !strings.Contains(err.Error(), "not due") {
		t.Errorf("queue timeout 1 ms after the requeue (timeout 10 s) was applied (%v): the deadline counts from the agent's clock", res)
	}
}

// TestRequeueForgedRunIDs: run ids that are not the canonical id of the
// job's current attempt write nothing, from the node that runs it too.
func TestRequeueForgedRunIDs(t *testing.T) {
	h := newHarness(t)
	h.submitRequeue("j", 0)
	h.mustOK(assign("j", "n1", 0))
	h.mustOK(ingest("n1", started("j", 1), condRec("j", 2, lifecycle.CondStalled, true)))
	h.mustOK(ingest("n1", exitRec("j", 3, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, Reason: string(lifecycle.ReasonCancelled)})))
	h.mustOK(assign("j", "n1", 0))
	before := h.job("j")
	for _, run := range []string{"j~01", "j~0", "j~1~1", "j~2", "j~4294967297", "j~+1", "j~1 ", "~1", "j~"} {
		res := h.apply(ingest("n1", point(run, 1, map[string]float64{"loss": 7}), exitRec(run, 2, &gantrypb.JobExit{ExitCode: code(0), Ts: 10})))
		if r, ok := res.(fsm.IngestResult); !ok || r.Stored != 0 {
			t.Errorf("run id %q: %+v, want nothing stored", run, res)
		}
	}
	if j := h.job("j"); j.State != before.State || j.Points != before.Points || j.Attempt != 1 {
		t.Errorf("job changed by forged run ids: state %s points %d attempt %d", j.State, j.Points, j.Attempt)
	}
}

// TestRequeueGangKeepsDroppedKeysEvent: as TestRequeueKeepsDroppedKeysEvent,
// for rank 0's exit of a multi-node job.
func TestRequeueGangKeepsDroppedKeysEvent(t *testing.T) {
	h := newHarness(t)
	sub := submitGang("g", 2, 2)
	sub.Spec.Health = &gantrypb.HealthSpec{OnStall: lifecycle.PolicyRequeue}
	h.mustOK(sub)
	h.mustOK(assignGang("g", "n1", "n2"))
	h.mustOK(ingest("n1", started("g", 1), point("g", 2, map[string]float64{"loss": 1}), condRec("g", 3, lifecycle.CondHung, true)))
	h.mustOK(ingest("n2", started("g", 1)))
	final := map[string]float64{}
	for i := range limits.MaxKeysPerJob + 1 {
		final[fmt.Sprintf("k%05d", i)] = 1
	}
	stop := &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, Reason: string(lifecycle.ReasonCancelled)}
	h.mustOK(ingest("n1", exitRec("g", 4, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, FinalMetrics: final, Reason: string(lifecycle.ReasonCancelled)})))
	h.mustOK(ingest("n2", exitRec("g", 2, stop)))
	j := h.job("g")
	if j.State != gantrypb.JobState_JOB_STATE_QUEUED || j.DroppedMetricKeys == 0 {
		t.Fatalf("state %s dropped %d: the test tests nothing", j.State, j.DroppedMetricKeys)
	}
	if evs := h.events("g"); uint64(len(evs)) != j.Events || !strings.Contains(eventKinds(evs), string(lifecycle.EventMetricKeysDropped)) {
		t.Errorf("events %q, job counts %d", eventKinds(evs), j.Events)
	}
	// The next attempt's first record and a queue timeout land after both.
	h.mustOK(assignGang("g", "n1", "n2"))
	run := lifecycle.RunID("g", 1)
	h.mustOK(ingest("n1", started(run, 1), condRec(run, 2, lifecycle.CondHung, true)))
	if evs := h.events("g"); uint64(len(evs)) != h.job("g").Events {
		t.Errorf("after attempt 2's first event: events %q, job counts %d", eventKinds(evs), h.job("g").Events)
	}
}

// TestRequeueSeqWrapCannotRewriteEarlierAttempt: the node running a later
// attempt cannot, with a seq near 2^64, make seq_base + seq wrap around
// and overwrite an earlier attempt's events (which another node wrote).
func TestRequeueSeqWrapCannotRewriteEarlierAttempt(t *testing.T) {
	h := newHarness(t)
	h.submitRequeue("j", 0)
	h.mustOK(assign("j", "n1", 0))
	h.mustOK(ingest("n1", started("j", 1), condRec("j", 2, lifecycle.CondStalled, true)))
	h.mustOK(ingest("n1", exitRec("j", 3, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, Reason: string(lifecycle.ReasonCancelled)})))
	h.mustOK(assign("j", "n2", 0))
	run := lifecycle.RunID("j", 1)
	base := h.job("j").SeqBase
	before := eventKinds(h.events("j"))
	wrap := math.MaxUint64 - base + 3 // base + wrap is 2: the stall's event
	forged := &gantrypb.Record{JobId: run, Seq: wrap, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{
		Ts: 10, Kind: "forged", Message: "attempt 1 never stalled"}}}
	h.apply(ingest("n2", started(run, 1), forged))
	if after := eventKinds(h.events("j")); !strings.HasPrefix(after, before) {
		t.Errorf("events %q before, %q after: n2 rewrote attempt 1's history", before, after)
	}
}
