package fsm_test

import (
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// submitRequeue submits a job whose stalls requeue it, at most max times.
func (h *harness) submitRequeue(id string, max uint32) {
	h.t.Helper()
	sub := submit(id)
	sub.Spec.Health = &gantrypb.HealthSpec{OnStall: lifecycle.PolicyRequeue, MaxRequeues: max}
	h.mustOK(sub)
}

func (h *harness) logText(id string) string {
	h.t.Helper()
	var data []byte
	if err := h.st.View(func(tx *store.Tx) error { data, _ = tx.Logs(id, 0, 1<<20); return nil }); err != nil {
		h.t.Fatal(err)
	}
	return string(data)
}

// TestRequeuePolicy: a stall with on_stall requeue stops the run through
// the cancel path; its exit keeps what it reported as an attempt (I2) and
// queues the job again; the next attempt runs under its own run id, with
// its seqs and log placed after the first's, and ends the job.
func TestRequeuePolicy(t *testing.T) {
	h := newHarness(t)
	h.submitRequeue("j", 0)
	h.mustOK(assign("j", "n1", 0))
	h.mustOK(ingest("n1", started("j", 1), point("j", 2, map[string]float64{"loss": 0.9}),
		logRec("j", 3, 0, "attempt one\n"), condRec("j", 4, lifecycle.CondStalled, true, 0)))
	j := h.job("j")
	if !j.CancelRequested || !strings.HasPrefix(j.RequeueReason, "stalled: ") {
		t.Fatalf("cancel %v requeue %q, want the run stopped to be requeued", j.CancelRequested, j.RequeueReason)
	}
	if evs := h.events("j"); !strings.Contains(evs[len(evs)-1].Message, "policy requeue: stopping the job to run it again (attempt 2 of at most 3)") {
		t.Errorf("stall event %q does not say what the policy does", evs[len(evs)-1].Message)
	}
	tail := strings.Repeat("x", 5000) + "é the end"
	h.mustOK(ingest("n1", exitRec("j", 5, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, FinalMetrics: map[string]float64{"best": 1},
		Reason: string(lifecycle.ReasonCancelled), LogTail: tail})))
	j = h.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_QUEUED || j.Attempt != 1 || j.Node != "" || len(j.Gpus) != 0 || j.CancelRequested || len(j.Conditions) != 0 {
		t.Fatalf("after the stopped run: state %s attempt %d node %q gpus %v cancel %v conditions %v; want queued attempt 1 with nothing held",
			j.State, j.Attempt, j.Node, j.Gpus, j.CancelRequested, j.Conditions)
	}
	if len(j.Attempts) != 1 {
		t.Fatalf("attempts %v, want the first kept", j.Attempts)
	}
	a := j.Attempts[0]
	if a.Node != "n1" || a.FinalMetrics["loss"] != 0.9 || a.FinalMetrics["best"] != 1 || a.Signal != "SIGTERM" ||
		!strings.HasPrefix(a.Reason, "stalled") || a.FirstSeq != 1 || a.LastSeq != 5 || a.LogEnd != uint64(len("attempt one\n")) {
		t.Errorf("attempt kept as %v", a)
	}
	if len(a.LogTail) > 2048 || !strings.HasSuffix(a.LogTail, "é the end") {
		t.Errorf("attempt log tail of %d bytes ending %q; want its last 2 KiB at most", len(a.LogTail), a.LogTail[max(0, len(a.LogTail)-12):])
	}
	if j.QueuedAtMs != 9000 {
		t.Errorf("queued_at %d, want the exit's time 9000", j.QueuedAtMs)
	}

	// The next attempt: assigned again (to another node), run id "j~1".
	h.mustOK(assign("j", "n2", 1))
	run := lifecycle.RunID("j", 1)
	// Records of the old run replayed by n1 are duplicates; the new run's
	// from any node but n2 are refused; a later attempt's are refused.
	res := h.apply(ingest("n1", point("j", 2, map[string]float64{"loss": 0.9})))
	if r := res.(fsm.IngestResult); r.Duplicates != 1 || r.Stored != 0 {
		t.Errorf("replay of the first attempt: %+v, want one duplicate", r)
	}
	res = h.apply(ingest("n1", point(run, 1, map[string]float64{"loss": 7})))
	if r := res.(fsm.IngestResult); r.Rejected != 1 {
		t.Errorf("attempt 2's record from n1: %+v, want rejected", r)
	}
	res = h.apply(ingest("n2", point(lifecycle.RunID("j", 2), 1, map[string]float64{"loss": 7}), point("j~x", 1, nil)))
	if r := res.(fsm.IngestResult); r.Rejected != 2 {
		t.Errorf("records of an attempt that does not exist: %+v, want rejected", r)
	}
	res = h.apply(ingest("n2", point("j", 6, map[string]float64{"loss": 7})))
	if r := res.(fsm.IngestResult); r.Stored != 0 {
		t.Errorf("n2 wrote into the first attempt: %+v", r)
	}

	h.mustOK(ingest("n2", started(run, 1), point(run, 2, map[string]float64{"loss": 0.5}), logRec(run, 3, 0, "attempt two\n")))
	j = h.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_RUNNING || j.StartedAtMs != 3000 {
		t.Fatalf("attempt 2: state %s started %d", j.State, j.StartedAtMs)
	}
	pts := h.points("j")
	if len(pts) != 2 || pts[0].Seq != 2 || pts[1].Seq != 7 {
		t.Fatalf("points %v, want seqs 2 and 7 (the second attempt's seq 2 after the first's 5)", pts)
	}
	log := h.logText("j")
	if !strings.HasPrefix(log, "attempt one\n") || !strings.HasSuffix(log, "attempt two\n") || !strings.Contains(log, "attempt 1 of 3 stopped") {
		t.Errorf("log %q, want both attempts with the line between", log)
	}
	h.mustOK(ingest("n2", exitRec(run, 4, &gantrypb.JobExit{ExitCode: code(0), Ts: 20})))
	j = h.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_SUCCEEDED || j.FinalMetrics["loss"] != 0.5 || len(j.Attempts) != 1 {
		t.Errorf("end: state %s final %v attempts %d", j.State, j.FinalMetrics, len(j.Attempts))
	}
	ev := eventKinds(h.events("j"))
	if ev != "stalled,requeued" {
		t.Errorf("events %q", ev)
	}
	if got := alertKinds(h.alerts()); got != "1:stalled,2:requeued,3:job_succeeded" {
		t.Errorf("alerts %s", got)
	}
}

// TestRequeueBounded: past max_requeues the policy cancels.
func TestRequeueBounded(t *testing.T) {
	h := newHarness(t)
	h.submitRequeue("j", 1)
	h.mustOK(assign("j", "n1", 0))
	h.mustOK(ingest("n1", started("j", 1), condRec("j", 2, lifecycle.CondHung, true)))
	h.mustOK(ingest("n1", exitRec("j", 3, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, Reason: string(lifecycle.ReasonCancelled)})))
	h.mustOK(assign("j", "n1", 0))
	run := lifecycle.RunID("j", 1)
	h.mustOK(ingest("n1", started(run, 1), condRec(run, 2, lifecycle.CondHung, true)))
	j := h.job("j")
	if !j.CancelRequested || j.RequeueReason != "" {
		t.Fatalf("second hang: cancel %v requeue %q, want a plain cancel", j.CancelRequested, j.RequeueReason)
	}
	if evs := h.events("j"); !strings.Contains(evs[len(evs)-1].Message, "requeued 1 times already (max_requeues 1): cancelling") {
		t.Errorf("event %q", evs[len(evs)-1].Message)
	}
	h.mustOK(ingest("n1", exitRec(run, 3, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 19, Reason: string(lifecycle.ReasonCancelled)})))
	if j := h.job("j"); j.State != gantrypb.JobState_JOB_STATE_CANCELLED || j.Attempt != 1 {
		t.Errorf("state %s attempt %d, want cancelled on attempt 1", j.State, j.Attempt)
	}
}

// TestRequeueYieldsToUserAndToSuccess: a user's cancel during a requeue
// ends the job; a run that finished on its own before the stop landed has
// ended, successfully; a queued requeued job cancelled keeps its metrics.
func TestRequeueYieldsToUserAndToSuccess(t *testing.T) {
	h := newHarness(t)
	stall := func(id string) {
		h.submitRequeue(id, 0)
		h.mustOK(assign(id, "n1", 0))
		h.mustOK(ingest("n1", started(id, 1), point(id, 2, map[string]float64{"loss": 2}), condRec(id, 3, lifecycle.CondStalled, true)))
	}
	stall("user")
	h.mustOK(&gantrypb.CancelJobCmd{JobId: "user", AtMs: 6000})
	h.mustOK(ingest("n1", exitRec("user", 4, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, Reason: string(lifecycle.ReasonCancelled)})))
	if j := h.job("user"); j.State != gantrypb.JobState_JOB_STATE_CANCELLED || len(j.Attempts) != 0 {
		t.Errorf("user's cancel: state %s attempts %d", j.State, len(j.Attempts))
	}

	stall("done")
	h.mustOK(ingest("n1", exitRec("done", 4, &gantrypb.JobExit{ExitCode: code(0), Ts: 9})))
	if j := h.job("done"); j.State != gantrypb.JobState_JOB_STATE_SUCCEEDED || j.Attempt != 0 {
		t.Errorf("finished on its own: state %s attempt %d", j.State, j.Attempt)
	}

	stall("queued")
	h.mustOK(ingest("n1", exitRec("queued", 4, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, Reason: string(lifecycle.ReasonCancelled)})))
	h.mustOK(&gantrypb.CancelJobCmd{JobId: "queued", AtMs: 10_000})
	j := h.job("queued")
	if j.State != gantrypb.JobState_JOB_STATE_CANCELLED || j.FinalMetrics["loss"] != 2 || !strings.Contains(j.Error, "queued for attempt 2") {
		t.Errorf("cancelled while requeued: state %s final %v error %q", j.State, j.FinalMetrics, j.Error)
	}
}

// TestRequeueQueueTimeout: a requeued job's queue timeout counts from when
// it was queued again, and its event takes a seq after the first attempt's.
func TestRequeueQueueTimeout(t *testing.T) {
	h := newHarness(t)
	sub := submit("j")
	sub.Spec.QueueTimeoutMs = 1000
	sub.Spec.Health = &gantrypb.HealthSpec{OnIdle: lifecycle.PolicyRequeue}
	h.mustOK(sub)
	h.mustOK(assign("j", "n1", 0))
	h.mustOK(ingest("n1", started("j", 1), condRec("j", 2, lifecycle.CondIdleGPUs, true, 0)))
	h.mustOK(ingest("n1", exitRec("j", 3, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 50, Reason: string(lifecycle.ReasonCancelled)})))
	if due, ok := lifecycle.QueueDeadlineMs(h.job("j")); !ok || due != 51_000 {
		t.Fatalf("deadline %d, want 51000 (queued again at 50 s)", due)
	}
	if err, ok := h.apply(&gantrypb.QueueTimeoutCmd{JobId: "j", Error: "x", AtMs: 50_500}).(error); !ok || !strings.Contains(err.Error(), "not due") {
		t.Fatalf("early timeout: %v", err)
	}
	h.mustOK(&gantrypb.QueueTimeoutCmd{JobId: "j", Error: "still queued", AtMs: 51_000})
	evs := h.events("j")
	if len(evs) != 3 || evs[2].Kind != string(lifecycle.EventQueueTimeout) || evs[2].Seq != 4 {
		t.Errorf("events %v, want idle_gpus, requeued and the timeout at seq 4", evs)
	}
}

func TestRunID(t *testing.T) {
	for _, tt := range []struct {
		run     string
		id      string
		attempt uint32
		ok      bool
	}{
		{"abc", "abc", 0, true}, {"abc~1", "abc", 1, true}, {"abc~20", "abc", 20, true},
		{"abc~0", "", 0, false}, {"abc~01", "", 0, false}, {"abc~21", "", 0, false}, {"abc~", "", 0, false},
		{"~1", "", 0, false}, {"abc~1~1", "", 0, false}, {"abc~-1", "", 0, false},
	} {
		id, n, ok := lifecycle.ParseRunID(tt.run)
		if id != tt.id || n != tt.attempt || ok != tt.ok {
			t.Errorf("ParseRunID(%q) = %q, %d, %v; want %q, %d, %v", tt.run, id, n, ok, tt.id, tt.attempt, tt.ok)
		}
		if tt.ok && lifecycle.RunID(id, n) != tt.run {
			t.Errorf("RunID(%q, %d) = %q", id, n, lifecycle.RunID(id, n))
		}
	}
	if err, ok := newHarness(t).apply(submit("a~1")).(error); !ok {
		t.Errorf("a job id with '~' was taken: %v", err)
	}
}

// TestRequeueGang: a hung multi-node job's ranks are all stopped; once
// the last exit is in, the attempt is kept with every rank as it ended,
// and the next attempt's ranks write fresh streams under their run id
// while rank 0's stay the job's, after the first attempt's.
func TestRequeueGang(t *testing.T) {
	h := newHarness(t)
	sub := submitGang("g", 2, 2)
	sub.Spec.Health = &gantrypb.HealthSpec{OnStall: lifecycle.PolicyRequeue}
	h.mustOK(sub)
	h.mustOK(assignGang("g", "n1", "n2"))
	h.mustOK(ingest("n1", started("g", 1), point("g", 2, map[string]float64{"loss": 3})))
	h.mustOK(ingest("n2", started("g", 1), point("g", 2, map[string]float64{"loss": 3.5}), logRec("g", 3, 0, "rank 1, attempt 1\n")))
	h.mustOK(ingest("n1", condRec("g", 3, lifecycle.CondHung, true)))
	if j := h.job("g"); !j.CancelRequested || j.RequeueReason == "" {
		t.Fatalf("cancel %v requeue %q", j.CancelRequested, j.RequeueReason)
	}
	stop := &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, Reason: string(lifecycle.ReasonCancelled)}
	h.mustOK(ingest("n1", exitRec("g", 4, stop)))
	if j := h.job("g"); j.State != gantrypb.JobState_JOB_STATE_RUNNING || j.Attempt != 0 {
		t.Fatalf("with rank 1 still stopping: state %s attempt %d", j.State, j.Attempt)
	}
	h.mustOK(ingest("n2", exitRec("g", 4, stop)))
	j := h.job("g")
	if j.State != gantrypb.JobState_JOB_STATE_QUEUED || j.Attempt != 1 || len(j.Ranks) != 0 || j.MasterPort != 0 || len(j.Attempts) != 1 {
		t.Fatalf("after both ranks stopped: state %s attempt %d ranks %v port %d", j.State, j.Attempt, j.Ranks, j.MasterPort)
	}
	a := j.Attempts[0]
	if len(a.Ranks) != 2 || a.Ranks[1].Node != "n2" || a.FinalMetrics["loss"] != 3 || a.LastSeq != 4 || a.Node != "n1" {
		t.Errorf("attempt kept as %v", a)
	}
	for _, r := range a.Ranks {
		if r.LatestMetrics != nil || r.FinalMetrics != nil || r.LogTail != "" || r.State != gantrypb.JobState_JOB_STATE_CANCELLED {
			t.Errorf("rank %d kept with what it reported (%v, %q) or state %s; want only how it ended", r.Rank, r.LatestMetrics, r.LogTail, r.State)
		}
	}
	// Both nodes' replays of the first attempt are duplicates.
	for _, n := range []string{"n1", "n2"} {
		if r := h.apply(ingest(n, point("g", 2, nil))).(fsm.IngestResult); r.Duplicates != 1 {
			t.Errorf("%s's replay: %+v, want a duplicate", n, r)
		}
	}
	h.mustOK(assignGang("g", "n2", "n3"))
	run := lifecycle.RunID("g", 1)
	h.mustOK(ingest("n2", started(run, 1), point(run, 2, map[string]float64{"loss": 2})))
	h.mustOK(ingest("n3", started(run, 1), point(run, 2, map[string]float64{"loss": 2.5}), logRec(run, 3, 0, "rank 1, attempt 2\n")))
	if pts := h.points("g"); len(pts) != 2 || pts[1].Seq != 6 {
		t.Errorf("job points %v, want the second attempt's rank 0 point at seq 6", pts)
	}
	var old, cur []byte
	_ = h.st.View(func(tx *store.Tx) error {
		old, _ = tx.Logs(store.RankKey("g", 1), 0, 100)
		cur, _ = tx.Logs(store.RankKey(run, 1), 0, 100)
		return nil
	})
	if string(old) != "rank 1, attempt 1\n" || string(cur) != "rank 1, attempt 2\n" {
		t.Errorf("rank 1 logs %q and %q, want one per attempt", old, cur)
	}
	if j := h.job("g"); store.JobRankKey(j, 1) != store.RankKey(run, 1) || store.JobRankKey(j, 0) != "g" {
		t.Errorf("rank keys %q %q", store.JobRankKey(j, 0), store.JobRankKey(j, 1))
	}
	h.mustOK(ingest("n2", exitRec(run, 3, &gantrypb.JobExit{ExitCode: code(0), Ts: 20})))
	h.mustOK(ingest("n3", exitRec(run, 4, &gantrypb.JobExit{ExitCode: code(0), Ts: 20})))
	if j := h.job("g"); j.State != gantrypb.JobState_JOB_STATE_SUCCEEDED || j.FinalMetrics["loss"] != 2 {
		t.Errorf("end: %s %v", j.State, j.FinalMetrics)
	}
}

// TestRequeueGangNotWhenARankFailed: a rank that failed (and so stalled
// the others, which are stopped) fails the job even if the stall's policy
// asks for a requeue: requeue is only for a clean stop.
func TestRequeueGangNotWhenARankFailed(t *testing.T) {
	h := newHarness(t)
	sub := submitGang("g", 2, 2)
	sub.Spec.Health = &gantrypb.HealthSpec{OnStall: lifecycle.PolicyRequeue}
	h.mustOK(sub)
	h.mustOK(assignGang("g", "n1", "n2"))
	h.mustOK(ingest("n2", started("g", 1), exitRec("g", 2, &gantrypb.JobExit{ExitCode: code(1), Ts: 8})))
	h.mustOK(ingest("n1", started("g", 1), condRec("g", 2, lifecycle.CondStalled, true)))
	if j := h.job("g"); j.RequeueReason == "" {
		t.Fatal("the stall did not ask for a requeue; the test tests nothing")
	}
	h.mustOK(ingest("n1", exitRec("g", 3, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9, Reason: string(lifecycle.ReasonCancelled)})))
	if j := h.job("g"); j.State != gantrypb.JobState_JOB_STATE_FAILED || j.Attempt != 0 || j.RequeueReason != "" {
		t.Errorf("state %s attempt %d requeue %q, want failed", j.State, j.Attempt, j.RequeueReason)
	}
}
