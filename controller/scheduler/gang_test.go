package scheduler

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func gangSpec(nodes, g uint32, pins ...string) *gantrypb.JobSpec {
	return &gantrypb.JobSpec{Run: "x", Resources: &gantrypb.Resources{Gpus: g, Nodes: nodes}, Nodes: pins}
}

func cand(id string, total int, busy ...uint32) Candidate {
	return Candidate{ID: id, GPUs: gpus(n(total, a100)...), Used: used(busy...)}
}

// withUnusable marks GPUs failing or drained, as NodeCandidate does.
func withUnusable(c Candidate, idx ...uint32) Candidate {
	c.Unusable = map[uint32]bool{}
	for _, i := range idx {
		c.Unusable[i] = true
	}
	return c
}

func drainedCand(c Candidate) Candidate {
	c.Drained = true
	return c
}

func placed(ranks []RankPlacement) string {
	var parts []string
	for _, r := range ranks {
		parts = append(parts, fmt.Sprintf("%s%v", r.Node, r.GPUs))
	}
	return strings.Join(parts, " ")
}

func TestPlaceGang(t *testing.T) {
	tests := []struct {
		name  string
		spec  *gantrypb.JobSpec
		cands []Candidate
		want  string // "" = not placed
	}{
		{"fits on two nodes", gangSpec(2, 2), []Candidate{cand("a", 2), cand("b", 2)}, "a[0 1] b[0 1]"},
		{"partial availability holds nothing", gangSpec(2, 2), []Candidate{cand("a", 2), cand("b", 2, 0)}, ""},
		{"one rank per node: a big node is not two ranks", gangSpec(2, 2), []Candidate{cand("a", 8)}, ""},
		{"fragmentation: free GPUs spread thin do not fit", gangSpec(2, 4),
			[]Candidate{cand("a", 8, 0, 1, 2, 3, 4), cand("b", 8, 0, 1, 2, 3, 4), cand("c", 8, 0, 1, 2, 3, 4, 5)}, ""},
		{"best fit: the fullest nodes that fit, big holes stay whole", gangSpec(2, 2),
			[]Candidate{cand("a", 8), cand("b", 8, 0, 1, 2, 3, 4, 5), cand("c", 4, 0, 1), cand("d", 8)}, "b[6 7] c[2 3]"},
		{"ties to the lowest ids, rank 0 the lowest", gangSpec(3, 1),
			[]Candidate{cand("z", 2), cand("m", 2), cand("b", 2), cand("a", 2)}, "a[0] b[0] m[0]"},
		{"pins", gangSpec(2, 1, "c", "d"), []Candidate{cand("a", 2), cand("b", 2), cand("c", 2), cand("d", 2)}, "c[0] d[0]"},
		{"pins that cannot all fit", gangSpec(2, 1, "c", "d"), []Candidate{cand("a", 2), cand("c", 2), cand("d", 2, 0, 1)}, ""},
		{"CPU-only gang", gangSpec(2, 0), []Candidate{cand("a", 0), cand("b", 0)}, "a[] b[]"},
		{"failing and drained GPUs are not free", gangSpec(2, 2),
			[]Candidate{withUnusable(cand("a", 3), 1), cand("b", 2), withUnusable(cand("c", 2), 0)}, "a[0 2] b[0 1]"},
		{"a drained node takes no rank", gangSpec(2, 1),
			[]Candidate{cand("a", 1), drainedCand(cand("b", 8)), cand("c", 1)}, "a[0] c[0]"},
		{"a drained node can leave the gang short", gangSpec(2, 1),
			[]Candidate{cand("a", 1), drainedCand(cand("b", 8))}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ranks, ok := PlaceGang(tt.spec, tt.cands)
			got := ""
			if ok {
				got = placed(ranks)
			}
			if got != tt.want {
				t.Fatalf("PlaceGang = %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("gpu type", func(t *testing.T) {
		h100 := Candidate{ID: "h", GPUs: gpus("NVIDIA H100", "NVIDIA H100"), Used: used()}
		s := gangSpec(2, 2)
		s.Resources.GpuType = "h100"
		if _, ok := PlaceGang(s, []Candidate{h100, cand("a", 2)}); ok {
			t.Fatal("placed on an A100 node")
		}
	})
}

func TestReserveGang(t *testing.T) {
	// a: 1 of 4 free, b: 3 of 4 free, c: 2 of 2 free, d: 2 GPUs (too small).
	cands := []Candidate{cand("a", 4, 0, 1, 2), cand("b", 4, 0), cand("c", 3, 0), cand("d", 2)}
	got := ReserveGang(gangSpec(2, 3), cands)
	// The nodes closest to fitting (most free): b (3 free) and c (2 free);
	// 3 of b's free GPUs, all 2 of c's.
	if len(got) != 2 || !slices.Equal(got["b"], []uint32{1, 2, 3}) || !slices.Equal(got["c"], []uint32{1, 2}) {
		t.Fatalf("ReserveGang = %v", got)
	}
	if ReserveGang(gangSpec(4, 3), cands) != nil {
		t.Fatal("reserved for a job no 4 nodes could hold")
	}
}

func TestCheckFitGang(t *testing.T) {
	fleet := []*gantrypb.Node{up("a", n(2, a100)...), up("b", n(4, a100)...), down("c", n(4, a100)...)}
	for _, tt := range []struct {
		spec *gantrypb.JobSpec
		want string
	}{
		{gangSpec(2, 4), ""}, // b and c (down counts: it comes back)
		{gangSpec(3, 2), ""},
		{gangSpec(3, 4), "the job needs 3 nodes with 4 GPUs each (one rank per node): only 2 do (b, c)"},
		{gangSpec(2, 8), "the job needs 2 nodes with 8 GPUs each (one rank per node): none does"},
		{gangSpec(2, 2, "a", "x"), `node "x" is not registered; nodes: a, b, c`},
		{gangSpec(2, 4, "a", "b"), "the job needs 2 nodes with 4 GPUs each (one rank per node) among the pinned nodes: only 1 does (b)"},
	} {
		err := CheckFit(tt.spec, fleet)
		got := ""
		if err != nil {
			if !errors.Is(err, ErrNeverFits) {
				t.Fatalf("%v: not ErrNeverFits", err)
			}
			got = strings.TrimPrefix(err.Error(), ErrNeverFits.Error()+": ")
		}
		if got != tt.want {
			t.Errorf("CheckFit(%v) = %q, want %q", tt.spec.Resources, got, tt.want)
		}
	}
}

func TestMasterPort(t *testing.T) {
	p := MasterPort("job1", nil)
	if p < MasterPortBase || p >= MasterPortBase+MasterPortSpan || MasterPort("job1", nil) != p {
		t.Fatalf("port %d", p)
	}
	if q := MasterPort("job1", map[uint32]bool{p: true}); q == p {
		t.Fatal("taken port chosen")
	}
}

func (e *env) submitGang(id string, nodes, g uint32, createdMs int64) {
	e.t.Helper()
	e.must(&gantrypb.SubmitJobCmd{JobId: id, Spec: gangSpec(nodes, g), AtMs: createdMs})
}

func (e *env) gangAssigns() []*gantrypb.AssignGangCmd {
	e.raft.mu.Lock()
	defer e.raft.mu.Unlock()
	var out []*gantrypb.AssignGangCmd
	for _, m := range e.raft.cmds {
		if a, ok := m.(*gantrypb.AssignGangCmd); ok {
			out = append(out, a)
		}
	}
	return out
}

func TestReconcileGangOneEntryAndStartsEveryRank(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 2, true)
	e.node("n2", 2, true)
	e.submitGang("g", 2, 2, 1)
	e.s.Reconcile()
	as := e.gangAssigns()
	if len(as) != 1 || len(as[0].Ranks) != 2 || as[0].MasterAddr != "n1.example" || as[0].MasterPort == 0 {
		t.Fatalf("assigns = %v", as)
	}
	if len(e.raft.assigns()) != 0 {
		t.Fatal("a gang was assigned node by node")
	}
	starts := map[string]*gantrypb.StartJob{}
	for _, s := range e.agents.take() {
		if st := s.msg.GetStart(); st != nil {
			starts[s.node] = st
		}
	}
	if len(starts) != 2 || starts["n1"].NodeRank != 0 || starts["n2"].NodeRank != 1 || starts["n2"].Nnodes != 2 ||
		starts["n2"].MasterAddr != "n1.example" || starts["n2"].MasterPort != as[0].MasterPort {
		t.Fatalf("starts = %v", starts)
	}

	// Rank 1 fails: rank 0 is told to cancel.
	e.must(&gantrypb.IngestCmd{NodeId: "n2", AtMs: 5, Records: []*gantrypb.Record{
		{JobId: "g", Seq: 1, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: ptr(int32(3)), Ts: 1}}}}})
	e.s.Reconcile()
	var cancels []string
	for _, s := range e.agents.take() {
		if s.msg.GetCancel() != nil {
			cancels = append(cancels, s.node)
		}
	}
	if !slices.Equal(cancels, []string{"n1"}) {
		t.Fatalf("cancels sent to %v, want rank 0's node only", cancels)
	}
}

func ptr[T any](v T) *T { return &v }

// The anti-starvation rule: a gang that has waited ReserveAfter keeps
// later small jobs off the GPUs it needs, so it runs once running jobs
// end instead of waiting behind a stream of small ones.
func TestGangNotStarvedBySmallJobs(t *testing.T) {
	e := newEnv(t)
	now := time.UnixMilli(1_000_000)
	e.s.now = func() time.Time { return now }
	e.node("n1", 2, true)
	e.node("n2", 2, true)
	// A small job holds one GPU of n1.
	e.submit("small0", 1)
	e.s.Reconcile()
	e.submitGang("big", 2, 2, now.UnixMilli())
	e.s.Reconcile()
	if len(e.gangAssigns()) != 0 {
		t.Fatal("gang placed on busy GPUs")
	}
	// Before the threshold a later small job may take free GPUs.
	e.submit("small1", 1)
	e.s.Reconcile()
	if j := e.job("small1"); j.State != gantrypb.JobState_JOB_STATE_ASSIGNED {
		t.Fatalf("small1 is %s before the reservation threshold", j.State)
	}
	// Past it, later small jobs wait: the gang's GPUs are reserved.
	now = now.Add(e.s.ReserveAfter)
	e.submit("small2", 1)
	e.s.Reconcile()
	if j := e.job("small2"); j.State != gantrypb.JobState_JOB_STATE_QUEUED {
		t.Fatalf("small2 is %s, took GPUs the waiting gang reserved", j.State)
	}
	// The small jobs end; the gang is placed before small2.
	for _, id := range []string{"small0", "small1"} {
		j := e.job(id)
		e.must(&gantrypb.IngestCmd{NodeId: j.Node, AtMs: 5, Records: []*gantrypb.Record{
			{JobId: id, Seq: 1, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: ptr(int32(0)), Ts: 1}}}}})
	}
	e.s.Reconcile()
	if len(e.gangAssigns()) != 1 {
		t.Fatal("gang not placed once the GPUs it reserved were free")
	}
	if j := e.job("small2"); j.State != gantrypb.JobState_JOB_STATE_QUEUED {
		t.Fatalf("small2 is %s", j.State)
	}
}

// A gang is lost when a node holding a live rank stays down past the
// grace; a rank that already exited does not hold the job to its node,
// and the survivors of a lost gang are told to cancel.
func TestGangLostAndSurvivorsCancelled(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 2, true)
	e.node("n2", 2, true)
	e.node("n3", 2, true)
	e.submitGang("g", 3, 1, 1)
	e.s.Reconcile()
	for _, n := range []string{"n1", "n2", "n3"} {
		e.must(&gantrypb.IngestCmd{NodeId: n, AtMs: 3, Records: []*gantrypb.Record{
			{JobId: "g", Seq: 1, Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{Pid: 1, Ts: 1}}}}})
	}
	// Rank 2 (n3) finished cleanly; then n3 and n2 go down.
	e.must(&gantrypb.IngestCmd{NodeId: "n3", AtMs: 4, Records: []*gantrypb.Record{
		{JobId: "g", Seq: 2, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: ptr(int32(0)), Ts: 2}}}}})
	down := time.UnixMilli(1_000_000)
	e.s.LostGrace = time.Minute
	e.s.now = func() time.Time { return down.Add(time.Minute) }
	e.must(&gantrypb.NodeDownCmd{NodeId: "n3", AtMs: down.UnixMilli()})
	e.agents.mu.Lock()
	e.agents.connected["n3"] = false
	e.agents.mu.Unlock()
	e.agents.take()
	e.s.Reconcile()
	if s := e.job("g").State; s != gantrypb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("gang %s after the node of an ended rank went down", s)
	}
	e.must(&gantrypb.NodeDownCmd{NodeId: "n2", AtMs: down.UnixMilli()})
	e.agents.mu.Lock()
	e.agents.connected["n2"] = false
	e.agents.mu.Unlock()
	e.s.Reconcile()
	j := e.job("g")
	if j.State != gantrypb.JobState_JOB_STATE_LOST || !strings.Contains(j.Error, "rank 1") ||
		j.Ranks[1].State != gantrypb.JobState_JOB_STATE_LOST || j.Ranks[0].State != gantrypb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("gang %s %q, ranks %v", j.State, j.Error, j.Ranks)
	}
	e.s.Reconcile() // the stray pass
	var cancels []string
	for _, s := range e.agents.take() {
		if s.msg.GetCancel() != nil {
			cancels = append(cancels, s.node)
		}
	}
	if !slices.Equal(cancels, []string{"n1"}) {
		t.Fatalf("cancels to %v, want the survivor n1 only", cancels)
	}
}

func TestFleetReasonsForGangs(t *testing.T) {
	nodes := []*gantrypb.Node{up("a", n(2, a100)...), up("b", n(2, a100)...)}
	busy := runningJob("small0", "a", 0)
	gang := queuedJob("big", gangSpec(2, 2))
	gang.CreatedAtMs = 0
	small := queuedJob("small1", spec(1, "", ""))
	small.CreatedAtMs = 1000

	// Before the threshold: the gang waits for room, the small job fits.
	f := NewFleetAt(nodes, []*gantrypb.Job{busy, gang, small}, 60_000, DefaultReserveAfter)
	if got, want := f.Reason("big"), "waiting for 2 up nodes with 2 free GPUs each; nodes with room now: 1 (b)"; got != want {
		t.Errorf("gang reason %q, want %q", got, want)
	}
	if got := f.Reason("small1"); !strings.HasPrefix(got, "fits now on") {
		t.Errorf("small job before the threshold: %q", got)
	}
	// Past it: the gang holds back GPUs, and the small job says why it waits.
	f = NewFleetAt(nodes, []*gantrypb.Job{busy, gang, small}, DefaultReserveAfter.Milliseconds(), DefaultReserveAfter)
	if got := f.Reason("big"); !strings.Contains(got, "it holds back GPUs on a, b from later jobs") {
		t.Errorf("gang reason past the threshold: %q", got)
	}
	if got, want := f.Reason("small1"), "the free GPUs it fits are held back for multi-node job big, queued longest"; got != want {
		t.Errorf("small job reason %q, want %q", got, want)
	}
	// The scheduler agrees: the small job is not placed.
	e := newEnv(t)
	e.node("a", 2, true)
	e.node("b", 2, true)
	e.s.now = func() time.Time { return time.UnixMilli(DefaultReserveAfter.Milliseconds()) }
	e.must(&gantrypb.SubmitJobCmd{JobId: "small0", Spec: spec(1, "", "a"), AtMs: 0})
	e.s.Reconcile()
	e.submitGang("big", 2, 2, 0)
	e.must(&gantrypb.SubmitJobCmd{JobId: "small1", Spec: spec(1, "", ""), AtMs: 1000})
	e.s.Reconcile()
	if s := e.job("small1").State; s != gantrypb.JobState_JOB_STATE_QUEUED {
		t.Fatalf("small1 %s; the fleet said it waits", s)
	}
}

// The surviving rank of a lost gang still runs (until its cancel lands
// and kill_grace runs out): its GPUs are not free for a new job.
func TestStrayRankGPUsNotReused(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 1, true)
	e.node("n2", 1, true)
	e.submitGang("g", 2, 1, 1)
	e.s.Reconcile()
	for _, n := range []string{"n1", "n2"} {
		e.must(&gantrypb.IngestCmd{NodeId: n, AtMs: 3, Records: []*gantrypb.Record{
			{JobId: "g", Seq: 1, Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{Pid: 1, Ts: 1}}}}})
	}
	down := time.UnixMilli(1_000_000)
	e.s.LostGrace = time.Minute
	e.s.now = func() time.Time { return down.Add(time.Minute) }
	e.must(&gantrypb.NodeDownCmd{NodeId: "n2", AtMs: down.UnixMilli()})
	e.agents.mu.Lock()
	e.agents.connected["n2"] = false
	e.agents.mu.Unlock()
	e.s.Reconcile()
	if j := e.job("g"); j.State != gantrypb.JobState_JOB_STATE_LOST || j.Ranks[0].State != gantrypb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("gang %s, ranks %v", j.State, j.Ranks)
	}
	e.submit("next", 1)
	e.s.Reconcile()
	if j := e.job("next"); j.State != gantrypb.JobState_JOB_STATE_QUEUED {
		t.Fatalf("next is %s on %s %v: placed on the GPU the stray rank 0 still runs on", j.State, j.Node, j.Gpus)
	}
}

// A drained node, or one whose failing GPUs leave too few usable ones,
// can never hold a rank: a gang that needs it reserves nothing, rather
// than hold the other nodes' GPUs back from every later job for as long
// as the drain (or the failed GPU) lasts.
func TestReserveGangSkipsNodesThatCannotHoldARank(t *testing.T) {
	for name, other := range map[string]Candidate{
		"drained":     drainedCand(cand("b", 2)),
		"failing GPU": withUnusable(cand("b", 2), 1),
	} {
		if got := ReserveGang(gangSpec(2, 2), []Candidate{cand("a", 2, 0), other}); got != nil {
			t.Errorf("%s: ReserveGang = %v, want nothing (b can never hold a rank)", name, got)
		}
	}
}
