package fsm_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func submitGang(id string, nodes, gpus uint32) *gantrypb.SubmitJobCmd {
	return &gantrypb.SubmitJobCmd{JobId: id, AtMs: 1000, Spec: &gantrypb.JobSpec{Name: id, Run: "torchrun",
		Resources: &gantrypb.Resources{Gpus: gpus, Nodes: nodes}}}
}

func assignGang(id string, nodes ...string) *gantrypb.AssignGangCmd {
	m := &gantrypb.AssignGangCmd{JobId: id, MasterAddr: "10.0.0.1", MasterPort: 29500, AtMs: 2000}
	for _, n := range nodes {
		m.Ranks = append(m.Ranks, &gantrypb.GangRank{NodeId: n, Gpus: []uint32{0, 1}})
	}
	return m
}

func logRec(job string, seq, off uint64, data string) *gantrypb.Record {
	return &gantrypb.Record{JobId: job, Seq: seq, Body: &gantrypb.Record_Log{Log: &gantrypb.LogChunk{Offset: off, Data: []byte(data)}}}
}

// runningGang brings a 2-node gang to running on n1 (rank 0) and n2.
func (h *harness) runningGang(id string) {
	h.t.Helper()
	h.mustOK(submitGang(id, 2, 2))
	h.mustOK(assignGang(id, "n1", "n2"))
	h.mustOK(ingest("n1", started(id, 1)))
	if s := h.job(id).State; s != gantrypb.JobState_JOB_STATE_ASSIGNED {
		h.t.Fatalf("after rank 0 started the job is %s, want assigned (rank 1 has not started)", s)
	}
	h.mustOK(ingest("n2", started(id, 1)))
	if s := h.job(id).State; s != gantrypb.JobState_JOB_STATE_RUNNING {
		h.t.Fatalf("after every rank started the job is %s, want running", s)
	}
}

func TestGangAssignIsOneEntryAllOrNothing(t *testing.T) {
	h := newHarness(t)
	h.mustOK(submitGang("g", 2, 2))
	bad := []*gantrypb.AssignGangCmd{
		assignGang("g", "n1"),             // too few ranks
		assignGang("g", "n1", "n1"),       // two ranks on one node
		assignGang("g", "n1", "n2", "n3"), // too many
		{JobId: "g", Ranks: assignGang("g", "n1", "n2").Ranks, MasterAddr: "x"},                                                                                // no port
		{JobId: "g", Ranks: []*gantrypb.GangRank{nil, nil}, MasterAddr: "x", MasterPort: 1},                                                                    // hostile: nil ranks
		{JobId: "g", Ranks: []*gantrypb.GangRank{{NodeId: "a/b", Gpus: []uint32{0, 1}}, {NodeId: "n2", Gpus: []uint32{0, 1}}}, MasterAddr: "x", MasterPort: 1}, // bad id
		{JobId: "g", Ranks: []*gantrypb.GangRank{{NodeId: "n1", Gpus: []uint32{0}}, {NodeId: "n2", Gpus: []uint32{0, 1}}}, MasterAddr: "x", MasterPort: 1},     // too few GPUs
		{JobId: "g", Ranks: assignGang("g", "n1", "n2").Ranks, MasterAddr: "x", MasterPort: 70000},                                                             // port out of range
	}
	for i, m := range bad {
		if _, ok := h.apply(m).(error); !ok {
			t.Fatalf("bad assign %d accepted", i)
		}
		if j := h.job("g"); j.State != gantrypb.JobState_JOB_STATE_QUEUED || len(j.Ranks) != 0 {
			t.Fatalf("bad assign %d left %s with %d ranks", i, j.State, len(j.Ranks))
		}
	}
	// A single-node assignment of a gang is refused too.
	if _, ok := h.apply(assign("g", "n1", 0, 1)).(error); !ok {
		t.Fatal("assign_job of a multi-node job accepted")
	}
	h.mustOK(assignGang("g", "n1", "n2"))
	j := h.job("g")
	if len(j.Ranks) != 2 || j.Node != "n1" || j.Ranks[1].Node != "n2" || j.MasterPort != 29500 ||
		lifecycle.RankOf(j, "n2").Rank != 1 || j.State != gantrypb.JobState_JOB_STATE_ASSIGNED {
		t.Fatalf("job = %v", j)
	}
	if _, ok := h.apply(assignGang("g", "n3", "n4")).(error); !ok {
		t.Fatal("second assignment accepted")
	}
}

func TestGangRankFailureFailsTheJobNamingTheRank(t *testing.T) {
	h := newHarness(t)
	h.runningGang("g")
	// Rank 0 logs metrics and a log line; rank 1 too (its points are
	// counted, not stored; its log is its own).
	h.mustOK(ingest("n1", point("g", 2, map[string]float64{"loss": 2}), point("g", 3, map[string]float64{"loss": 1}), logRec("g", 4, 0, "rank0\n")))
	h.mustOK(ingest("n2", point("g", 2, map[string]float64{"loss": 9}), logRec("g", 3, 0, "rank1 says hi\n")))
	h.mustOK(ingest("n2", exitRec("g", 4, &gantrypb.JobExit{ExitCode: code(3), Ts: 10})))
	j := h.job("g")
	if lifecycle.IsTerminal(j.State) {
		t.Fatalf("job is %s while rank 0 still runs (I2: terminal only once every rank exited)", j.State)
	}
	if j.Ranks[1].State != gantrypb.JobState_JOB_STATE_FAILED {
		t.Fatalf("rank 1 is %s", j.Ranks[1].State)
	}
	// Rank 0 is cancelled by the scheduler and drains its last line.
	h.mustOK(ingest("n1", point("g", 5, map[string]float64{"loss": 0.5}),
		exitRec("g", 6, &gantrypb.JobExit{Signal: "SIGTERM", Reason: "cancelled", Ts: 11, FinalMetrics: map[string]float64{"loss": 0.5}})))
	j = h.job("g")
	if j.State != gantrypb.JobState_JOB_STATE_FAILED || !strings.Contains(j.Error, "rank 1 (node n2)") ||
		!strings.Contains(j.Error, "exited with code 3") || j.ExitCode == nil || *j.ExitCode != 3 {
		t.Fatalf("state=%s error=%q exit=%v", j.State, j.Error, j.ExitCode)
	}
	if want := map[string]float64{"loss": 0.5, "step": 5}; !maps.Equal(j.FinalMetrics, want) {
		t.Fatalf("final = %v, want rank 0's last line %v", j.FinalMetrics, want)
	}
	if got := len(h.points("g")); got != 3 || j.Ranks[1].Points != 1 {
		t.Fatalf("stored %d points (want rank 0's 3), rank 1 counted %d", got, j.Ranks[1].Points)
	}
	// Rank 1's point is its own series, apart from the job's.
	if pts := h.points(store.RankKey("g", 1)); len(pts) != 1 || pts[0].Seq != 2 || j.Ranks[1].LatestMetrics["loss"] != 9 {
		t.Fatalf("rank 1 series %v, latest %v", pts, j.Ranks[1].LatestMetrics)
	}
	_ = h.st.View(func(tx *store.Tx) error {
		if d, _ := tx.Logs(store.RankKey("g", 1), 0, 100); string(d) != "rank1 says hi\n" {
			t.Errorf("rank 1 log = %q", d)
		}
		if d, _ := tx.Logs("g", 0, 100); string(d) != "rank0\n" {
			t.Errorf("rank 0 log = %q", d)
		}
		return nil
	})
}

func TestGangSucceedsWithRank0Final(t *testing.T) {
	h := newHarness(t)
	h.runningGang("g")
	h.mustOK(ingest("n1", point("g", 2, map[string]float64{"loss": 1}),
		exitRec("g", 3, &gantrypb.JobExit{ExitCode: code(0), Ts: 10, FinalMetrics: map[string]float64{"loss": 1}})))
	if s := h.job("g").State; s != gantrypb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("job is %s with rank 1 still running", s)
	}
	h.mustOK(ingest("n2", exitRec("g", 2, &gantrypb.JobExit{ExitCode: code(0), Ts: 12, FinalMetrics: map[string]float64{"other": 7}})))
	j := h.job("g")
	if j.State != gantrypb.JobState_JOB_STATE_SUCCEEDED || !maps.Equal(j.FinalMetrics, map[string]float64{"loss": 1, "step": 2}) ||
		j.FinishedAtMs != 12000 {
		t.Fatalf("job = %s %v finished %d", j.State, j.FinalMetrics, j.FinishedAtMs)
	}
}

func TestGangCancelReachesTerminalCancelled(t *testing.T) {
	h := newHarness(t)
	h.runningGang("g")
	h.mustOK(&gantrypb.CancelJobCmd{JobId: "g", AtMs: 3000})
	for _, n := range []string{"n1", "n2"} {
		h.mustOK(ingest(n, exitRec("g", 2, &gantrypb.JobExit{Signal: "SIGTERM", Reason: "cancelled", Ts: 10})))
	}
	if j := h.job("g"); j.State != gantrypb.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("job = %s %q", j.State, j.Error)
	}
}

// Only the nodes holding a rank may write into a gang, each into its own
// rank: a third node's records are refused, and a rank's node cannot end
// another rank.
func TestGangRecordsOnlyFromRankNodes(t *testing.T) {
	h := newHarness(t)
	h.runningGang("g")
	res := h.mustOK(ingest("n3", exitRec("g", 2, &gantrypb.JobExit{ExitCode: code(1), Ts: 10})))
	if r, ok := res.(fsm.IngestResult); !ok || r.Rejected != 1 {
		t.Fatalf("foreign record: %+v", res)
	}
	j := h.job("g")
	for _, r := range j.Ranks {
		if r.State != gantrypb.JobState_JOB_STATE_RUNNING {
			t.Fatalf("rank %d is %s after a foreign node's exit record", r.Rank, r.State)
		}
	}
}

func TestGangLostRanksAndNodeUpWithoutRank(t *testing.T) {
	h := newHarness(t)
	h.mustOK(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n1"}, AtMs: 1})
	h.mustOK(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n2"}, AtMs: 1})
	h.runningGang("g")
	h.mustOK(&gantrypb.NodeDownCmd{NodeId: "n2", AtMs: 4000})
	h.mustOK(&gantrypb.EndJobCmd{JobId: "g", State: gantrypb.JobState_JOB_STATE_LOST, Error: "rank 1: node n2 unreachable", AtMs: 5000})
	j := h.job("g")
	if j.State != gantrypb.JobState_JOB_STATE_LOST || j.Ranks[1].State != gantrypb.JobState_JOB_STATE_LOST ||
		j.Ranks[0].State != gantrypb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("job %s, ranks %s %s", j.State, j.Ranks[0].State, j.Ranks[1].State)
	}
	// The survivor's exit (after the scheduler's cancel) ends its rank
	// without rewriting the terminal job.
	h.mustOK(ingest("n1", exitRec("g", 2, &gantrypb.JobExit{Signal: "SIGTERM", Reason: "cancelled", Ts: 10})))
	j = h.job("g")
	if j.State != gantrypb.JobState_JOB_STATE_LOST || j.Ranks[0].State != gantrypb.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("job %s, rank 0 %s", j.State, j.Ranks[0].State)
	}

	// A rank's agent coming back without the job loses the gang.
	h.runningGang("g2")
	h.mustOK(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n2"}, ActiveJobs: nil, AtMs: 6000})
	j = h.job("g2")
	if j.State != gantrypb.JobState_JOB_STATE_LOST || j.Ranks[1].State != gantrypb.JobState_JOB_STATE_LOST ||
		!strings.Contains(j.Error, "rank 1") {
		t.Fatalf("job %s %q, rank 1 %s", j.State, j.Error, j.Ranks[1].State)
	}
	// A rank of an ended job that never started on its node is lost when
	// that node comes back without it, so it is no stray forever.
	h.mustOK(submitGang("g4", 2, 2))
	h.mustOK(assignGang("g4", "n1", "n2"))
	h.mustOK(ingest("n1", started("g4", 1)))
	h.mustOK(&gantrypb.EndJobCmd{JobId: "g4", State: gantrypb.JobState_JOB_STATE_LOST, Error: "x", AtMs: 8000})
	h.mustOK(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n2"}, AtMs: 9000})
	if r := h.job("g4").Ranks[1]; r.State != gantrypb.JobState_JOB_STATE_LOST {
		t.Fatalf("never-started rank of an ended gang is %s after its node came back without it", r.State)
	}
	// Coming back with it (re-adopted) changes nothing.
	h.runningGang("g3")
	h.mustOK(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n2"}, ActiveJobs: []string{"g3"}, AtMs: 7000})
	if s := h.job("g3").State; s != gantrypb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("re-adopted gang is %s", s)
	}
}

// TestGangHealthAndAlerts: a multi-node job's end is alerted like a
// single-node job's, rank 0's health conditions are the job's, and
// another rank's stay in that rank's own events.
func TestGangHealthAndAlerts(t *testing.T) {
	h := newHarness(t)
	h.runningGang("g")
	before := len(h.alerts())
	h.mustOK(ingest("n2", condRec("g", 2, lifecycle.CondStalled, true)))
	if j := h.job("g"); len(j.Conditions) != 0 {
		t.Fatalf("rank 1's condition set on the job: %v", j.Conditions)
	}
	h.mustOK(ingest("n1", condRec("g", 2, lifecycle.CondStalled, true)))
	if j := h.job("g"); len(j.Conditions) != 1 || j.Conditions[0].Kind != lifecycle.CondStalled {
		t.Fatalf("rank 0's condition not on the job: %v", j.Conditions)
	}
	h.mustOK(ingest("n1", exitRec("g", 3, &gantrypb.JobExit{ExitCode: code(0), Ts: 10})))
	h.mustOK(ingest("n2", exitRec("g", 3, &gantrypb.JobExit{ExitCode: code(0), Ts: 11})))
	if j := h.job("g"); j.State != gantrypb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job is %s", j.State)
	}
	got := alertKinds(h.alerts()[before:])
	if !strings.Contains(got, ":"+lifecycle.CondStalled) || !strings.HasSuffix(got, ":job_succeeded") || strings.Count(got, ":stalled") != 1 {
		t.Fatalf("alerts %q: want rank 0's stalled once and the job's end", got)
	}
	var rank1 []*gantrypb.JobEvent
	if err := h.st.View(func(tx *store.Tx) (err error) {
		rank1, err = tx.Events(store.RankKey("g", 1), 0, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(rank1, func(e *gantrypb.JobEvent) bool { return e.Kind == lifecycle.CondStalled }) {
		t.Fatalf("rank 1's condition not in its events: %v", rank1)
	}
}

// A gang that ends keeps no current condition, as a single-node job does
// (finish, applyExit): rank 0's stalled must not outlive the job.
func TestGangEndClearsConditions(t *testing.T) {
	h := newHarness(t)
	h.runningGang("g")
	h.mustOK(ingest("n1", condRec("g", 2, lifecycle.CondStalled, true)))
	h.mustOK(ingest("n1", exitRec("g", 3, &gantrypb.JobExit{ExitCode: code(0), Ts: 10})))
	h.mustOK(ingest("n2", exitRec("g", 2, &gantrypb.JobExit{ExitCode: code(0), Ts: 11})))
	if j := h.job("g"); !lifecycle.IsTerminal(j.State) || len(j.Conditions) != 0 {
		t.Fatalf("ended gang is %s with conditions %v", j.State, j.Conditions)
	}
}

// TestGangConditionAfterRankExitIgnored: a condition rank 0's agent sends
// after rank 0's exit (its check ran as the process ended) changes
// nothing, and above all does not cancel the ranks still running.
func TestGangConditionAfterRankExitIgnored(t *testing.T) {
	h := newHarness(t)
	h.runningGang("g")
	h.mustOK(ingest("n1", exitRec("g", 2, &gantrypb.JobExit{ExitCode: code(0), Ts: 10})))
	c := condRec("g", 3, lifecycle.CondStalled, true)
	h.mustOK(ingest("n1", c))
	if j := h.job("g"); len(j.Conditions) != 0 || j.CancelRequested || j.State != gantrypb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("late condition applied: conditions %v cancel %v state %s", j.Conditions, j.CancelRequested, j.State)
	}
}
