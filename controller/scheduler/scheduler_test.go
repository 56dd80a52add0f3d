package scheduler

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/command"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func gpus(names ...string) []*gantrypb.GPUInfo {
	out := make([]*gantrypb.GPUInfo, len(names))
	for i, n := range names {
		out[i] = &gantrypb.GPUInfo{Index: uint32(i), Name: n}
	}
	return out
}

func spec(n uint32, gpuType, node string) *gantrypb.JobSpec {
	return &gantrypb.JobSpec{Run: "x", Resources: &gantrypb.Resources{Gpus: n, GpuType: gpuType}, Node: node}
}

func used(idx ...uint32) map[uint32]bool {
	m := map[uint32]bool{}
	for _, i := range idx {
		m[i] = true
	}
	return m
}

func TestPlace(t *testing.T) {
	a100x4 := gpus("NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB")
	h100x2 := gpus("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")
	mixed := gpus("NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB")
	tests := []struct {
		name     string
		spec     *gantrypb.JobSpec
		cands    []Candidate
		wantNode string
		wantGPUs []uint32
		wantOK   bool
	}{
		{"fits", spec(2, "", ""), []Candidate{{ID: "a", GPUs: a100x4}}, "a", []uint32{0, 1}, true},
		{"skips used gpus", spec(2, "", ""), []Candidate{{ID: "a", GPUs: a100x4, Used: used(0, 2)}}, "a", []uint32{1, 3}, true},
		{"skips unhealthy and drained gpus", spec(2, "", ""), []Candidate{{ID: "a", GPUs: a100x4, Used: used(0), Unusable: used(1, 3)}}, "", nil, false},
		{"unusable gpus leave the rest", spec(1, "", ""), []Candidate{{ID: "a", GPUs: a100x4, Unusable: used(0, 1)}}, "a", []uint32{2}, true},
		{"skips a drained node", spec(1, "", ""), []Candidate{{ID: "a", GPUs: a100x4, Drained: true}, {ID: "b", GPUs: h100x2, Used: used(0)}}, "b", []uint32{1}, true},
		{"best fit picks the fullest node that fits", spec(1, "", ""),
			[]Candidate{{ID: "a", GPUs: a100x4}, {ID: "b", GPUs: a100x4, Used: used(0, 1, 2)}, {ID: "c", GPUs: h100x2}},
			"b", []uint32{3}, true},
		{"tie goes to the lowest id", spec(1, "", ""),
			[]Candidate{{ID: "z", GPUs: h100x2}, {ID: "m", GPUs: h100x2}, {ID: "q", GPUs: h100x2}}, "m", []uint32{0}, true},
		{"node pin", spec(1, "", "a"),
			[]Candidate{{ID: "a", GPUs: a100x4}, {ID: "b", GPUs: h100x2, Used: used(0)}}, "a", []uint32{0}, true},
		{"node pin to a full node", spec(1, "", "b"),
			[]Candidate{{ID: "a", GPUs: a100x4}, {ID: "b", GPUs: h100x2, Used: used(0, 1)}}, "", nil, false},
		{"node pin to an absent node", spec(0, "", "nope"), []Candidate{{ID: "a", GPUs: a100x4}}, "", nil, false},
		{"gpu type substring, case-insensitive", spec(1, "h100", ""),
			[]Candidate{{ID: "a", GPUs: a100x4}, {ID: "b", GPUs: h100x2}}, "b", []uint32{0}, true},
		{"gpu type within a mixed node", spec(2, "A100", ""), []Candidate{{ID: "a", GPUs: mixed}}, "a", []uint32{0, 2}, true},
		{"gpu type not enough of it", spec(2, "H100", ""), []Candidate{{ID: "a", GPUs: mixed}}, "", nil, false},
		{"gpu type nowhere", spec(1, "v100", ""), []Candidate{{ID: "a", GPUs: a100x4}}, "", nil, false},
		{"zero gpus fit a gpu-less node", spec(0, "", ""), []Candidate{{ID: "cpu"}}, "cpu", nil, true},
		{"zero gpus fit a full node", spec(0, "", ""), []Candidate{{ID: "a", GPUs: h100x2, Used: used(0, 1)}}, "a", nil, true},
		{"not enough gpus", spec(3, "", ""), []Candidate{{ID: "a", GPUs: h100x2}, {ID: "b", GPUs: a100x4, Used: used(1, 2)}}, "", nil, false},
		{"no candidates", spec(1, "", ""), nil, "", nil, false},
		{"nil spec needs nothing", nil, []Candidate{{ID: "a"}}, "a", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node, got, ok := Place(tt.spec, tt.cands)
			if ok != tt.wantOK || (ok && node != tt.wantNode) || !slices.Equal(got, tt.wantGPUs) {
				t.Fatalf("Place = %q %v %v; want %q %v %v", node, got, ok, tt.wantNode, tt.wantGPUs, tt.wantOK)
			}
			if ok && len(got) != int(tt.spec.GetResources().GetGpus()) {
				t.Fatalf("placed %d gpus, asked %d", len(got), tt.spec.GetResources().GetGpus())
			}
		})
	}
}

// fakeRaft commits commands straight into a real FSM over a real store,
// and records what the scheduler applied.
type fakeRaft struct {
	t      *testing.T
	f      *fsm.FSM
	mu     sync.Mutex
	idx    uint64
	leader atomic.Bool
	cmds   []proto.Message
}

func (r *fakeRaft) Apply(m proto.Message) (any, error) {
	b, err := command.Encode(m)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmds = append(r.cmds, m)
	r.idx++
	resp := r.f.Apply(&raft.Log{Index: r.idx, Type: raft.LogCommand, Data: b})
	if err, ok := resp.(error); ok {
		return nil, err
	}
	return resp, nil
}

func (r *fakeRaft) IsLeader() bool { return r.leader.Load() }

func (r *fakeRaft) assigns() []*gantrypb.AssignJobCmd {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*gantrypb.AssignJobCmd
	for _, m := range r.cmds {
		if a, ok := m.(*gantrypb.AssignJobCmd); ok {
			out = append(out, a)
		}
	}
	return out
}

type sent struct {
	node, key string
	msg       *gantrypb.ControlMessage
}

type fakeAgents struct {
	mu        sync.Mutex
	connected map[string]bool
	sent      []sent
	forgot    []string // "node key"
	fail      error
}

// Addr is a made-up host address per connected node.
func (a *fakeAgents) Addr(node string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.connected[node] {
		return ""
	}
	return node + ".example"
}

func (a *fakeAgents) Forget(node, key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.forgot = append(a.forgot, node+" "+key)
}

func (a *fakeAgents) takeForgot() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.forgot
	a.forgot = nil
	slices.Sort(out)
	return out
}

func (a *fakeAgents) Connected(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.connected[id]
}

func (a *fakeAgents) SendOnce(node, key string, m *gantrypb.ControlMessage) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sent = append(a.sent, sent{node, key, m})
	return a.fail
}

func (a *fakeAgents) take() []sent {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.sent
	a.sent = nil
	return out
}

type env struct {
	t      *testing.T
	st     *store.Store
	raft   *fakeRaft
	agents *fakeAgents
	s      *Scheduler
}

func newEnv(t *testing.T) *env {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	r := &fakeRaft{t: t, f: fsm.New(st, nil, logging.Discard())}
	r.leader.Store(true)
	ag := &fakeAgents{connected: map[string]bool{}}
	return &env{t: t, st: st, raft: r, agents: ag, s: New(st, r, ag, NewWakeup(), logging.Discard())}
}

// must applies a setup command outside the scheduler's record.
func (e *env) must(m proto.Message) {
	e.t.Helper()
	if _, err := e.raft.Apply(m); err != nil {
		e.t.Fatalf("setup %T: %v", m, err)
	}
	e.raft.mu.Lock()
	e.raft.cmds = e.raft.cmds[:len(e.raft.cmds)-1]
	e.raft.mu.Unlock()
}

func (e *env) node(id string, n int, connected bool) {
	e.t.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = "NVIDIA A100"
	}
	e.must(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: id, Gpus: gpus(names...)}, AtMs: 1})
	e.agents.mu.Lock()
	e.agents.connected[id] = connected
	e.agents.mu.Unlock()
}

func (e *env) submit(id string, n uint32) {
	e.t.Helper()
	e.must(&gantrypb.SubmitJobCmd{JobId: id, Spec: spec(n, "", ""), AtMs: 1})
}

func (e *env) job(id string) *gantrypb.Job {
	e.t.Helper()
	var j *gantrypb.Job
	if err := e.st.View(func(tx *store.Tx) (err error) { j, err = tx.Job(id); return err }); err != nil {
		e.t.Fatal(err)
	}
	return j
}

func TestReconcileAssignsAndStarts(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 2, true)
	e.submit("j1", 1)
	e.s.Reconcile()

	as := e.raft.assigns()
	if len(as) != 1 || as[0].JobId != "j1" || as[0].NodeId != "n1" || !slices.Equal(as[0].Gpus, []uint32{0}) || as[0].AtMs == 0 {
		t.Fatalf("assigns = %v", as)
	}
	if j := e.job("j1"); j.State != gantrypb.JobState_JOB_STATE_ASSIGNED || j.Node != "n1" {
		t.Fatalf("job after reconcile = %v", j)
	}
	s := e.agents.take()
	if len(s) != 1 || s[0].node != "n1" || s[0].key != "start/j1" {
		t.Fatalf("sent = %v, want one start/j1 to n1", s)
	}
	st := s[0].msg.GetStart()
	if st == nil || st.JobId != "j1" || !slices.Equal(st.Gpus, []uint32{0}) || st.Spec.GetRun() != "x" {
		t.Fatalf("start message = %v", s[0].msg)
	}

	// The next pass re-sends the start (SendOnce dedupes per session) and
	// assigns nothing new.
	e.s.Reconcile()
	if len(e.raft.assigns()) != 1 {
		t.Fatal("an assigned job was assigned again")
	}
	if s := e.agents.take(); len(s) != 1 || s[0].key != "start/j1" {
		t.Fatalf("second pass sent %v, want start/j1 again", s)
	}
}

// TestReconcileForgetsEndedJobs: once a job the scheduler told an agent
// about has ended, its start and cancel keys are forgotten on the node's
// session, once, so a long-lived session's record of what it sent stays
// as small as its live jobs.
func TestReconcileForgetsEndedJobs(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 2, true)
	e.submit("done", 1)
	e.submit("stop", 1)
	e.submit("live", 0)
	e.s.Reconcile()
	if s := e.agents.take(); len(s) != 3 {
		t.Fatalf("sent %v, want three starts", s)
	}
	e.must(&gantrypb.CancelJobCmd{JobId: "stop"})
	e.s.Reconcile()
	if f := e.agents.takeForgot(); len(f) != 0 {
		t.Fatalf("forgot %v while every job is live", f)
	}
	if s := e.agents.take(); !slices.ContainsFunc(s, func(m sent) bool { return m.key == "cancel/stop" }) {
		t.Fatalf("sent %v, want cancel/stop", s)
	}

	code := int32(0)
	e.must(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{
		{JobId: "done", Seq: 1, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: &code}}},
		{JobId: "stop", Seq: 1, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{Reason: "cancelled", Signal: "SIGTERM"}}},
	}})
	e.s.Reconcile()
	want := []string{"n1 cancel/done", "n1 cancel/stop", "n1 start/done", "n1 start/stop"}
	if f := e.agents.takeForgot(); !slices.Equal(f, want) {
		t.Fatalf("forgot %v, want %v", f, want)
	}
	e.s.Reconcile()
	if f := e.agents.takeForgot(); len(f) != 0 {
		t.Fatalf("forgot %v again", f)
	}
	if len(e.s.told) != 1 || !e.s.told["live"]["n1"] || len(e.s.told["live"]) != 1 {
		t.Fatalf("told = %v, want only the live job", e.s.told)
	}
}

func TestReconcileSkipsDisconnectedAndDownNodes(t *testing.T) {
	e := newEnv(t)
	e.node("gone", 4, false)
	e.node("down", 4, true)
	e.must(&gantrypb.NodeDownCmd{NodeId: "down", AtMs: 2})
	e.submit("j1", 1)
	e.s.Reconcile()
	if as := e.raft.assigns(); len(as) != 0 {
		t.Fatalf("assigned to an unreachable node: %v", as)
	}
	if s := e.agents.take(); len(s) != 0 {
		t.Fatalf("sent %v", s)
	}
	if j := e.job("j1"); j.State != gantrypb.JobState_JOB_STATE_QUEUED {
		t.Fatalf("job is %s, want queued", j.State)
	}
	// An assigned job whose agent is away gets no start either.
	e.must(&gantrypb.AssignJobCmd{JobId: "j1", NodeId: "gone", Gpus: []uint32{0}})
	e.s.Reconcile()
	if s := e.agents.take(); len(s) != 0 {
		t.Fatalf("sent to a disconnected node: %v", s)
	}
}

func TestReconcileRespectsCapacity(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 2, true)
	e.submit("first", 2)
	e.submit("second", 2)
	e.s.Reconcile()
	as := e.raft.assigns()
	if len(as) != 1 || as[0].JobId != "first" || !slices.Equal(as[0].Gpus, []uint32{0, 1}) {
		t.Fatalf("assigns = %v, want only the first job on gpus 0,1", as)
	}
	if e.job("second").State != gantrypb.JobState_JOB_STATE_QUEUED {
		t.Fatal("second job left the queue")
	}
	// Its GPUs stay taken while it is assigned or running.
	e.must(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{{JobId: "first", Seq: 1,
		Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{Pid: 1}}}}})
	e.s.Reconcile()
	if as := e.raft.assigns(); len(as) != 1 {
		t.Fatalf("second job placed on busy gpus: %v", as)
	}
	// Once the first ends, the second gets the GPUs.
	code := int32(0)
	e.must(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{{JobId: "first", Seq: 2,
		Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: &code}}}}})
	e.s.Reconcile()
	as = e.raft.assigns()
	if len(as) != 2 || as[1].JobId != "second" || !slices.Equal(as[1].Gpus, []uint32{0, 1}) {
		t.Fatalf("after the first ended: assigns = %v", as)
	}
}

func TestReconcileSameNodeInOnePass(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 4, true)
	for i := 0; i < 3; i++ {
		e.submit(fmt.Sprintf("j%d", i), 2)
	}
	e.s.Reconcile()
	as := e.raft.assigns()
	if len(as) != 2 {
		t.Fatalf("assigned %d jobs of 2 gpus on a 4-gpu node, want 2", len(as))
	}
	if slices.ContainsFunc(as[0].Gpus, func(g uint32) bool { return slices.Contains(as[1].Gpus, g) }) {
		t.Fatalf("two jobs share a gpu: %v and %v", as[0].Gpus, as[1].Gpus)
	}
}

func TestReconcileSendsCancel(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 1, true)
	e.submit("j1", 1)
	e.must(&gantrypb.AssignJobCmd{JobId: "j1", NodeId: "n1", Gpus: []uint32{0}})
	e.must(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{{JobId: "j1", Seq: 1,
		Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{Pid: 1}}}}})
	e.must(&gantrypb.CancelJobCmd{JobId: "j1"})
	e.s.Reconcile()
	s := e.agents.take()
	if len(s) != 1 || s[0].node != "n1" || s[0].key != "cancel/j1" || s[0].msg.GetCancel().GetJobId() != "j1" {
		t.Fatalf("sent = %v, want cancel/j1 to n1", s)
	}
	// A terminal job is left alone.
	code := int32(0)
	e.must(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{{JobId: "j1", Seq: 2,
		Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: &code, Signal: "SIGTERM"}}}}})
	e.s.Reconcile()
	if s := e.agents.take(); len(s) != 0 {
		t.Fatalf("sent to a finished job: %v", s)
	}
}

func TestReconcileSendErrorsDoNotStopThePass(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 2, true)
	e.submit("a", 1)
	e.submit("b", 1)
	e.agents.fail = fmt.Errorf("stream closed")
	e.s.Reconcile()
	if as := e.raft.assigns(); len(as) != 2 {
		t.Fatalf("a failing send stopped placement: %v", as)
	}
	if s := e.agents.take(); len(s) != 2 {
		t.Fatalf("sends attempted = %d, want 2", len(s))
	}
}

func TestRunActsOnlyAsLeader(t *testing.T) {
	e := newEnv(t)
	e.raft.leader.Store(false)
	e.s.Interval = 10 * time.Millisecond
	e.node("n1", 1, true)
	e.submit("j1", 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// Several ticks pass as a follower; nothing may happen.
	for i := 0; i < 5; i++ {
		e.s.Wake()
		// A follower doing nothing has no event to wait for: give the
		// loop a few ticks to (wrongly) act.
		time.Sleep(10 * time.Millisecond)
	}
	if as := e.raft.assigns(); len(as) != 0 {
		t.Fatalf("a follower assigned: %v", as)
	}
	e.raft.leader.Store(true)
	e.s.Wake()
	testutil.WaitFor(t, 5*time.Second, func() bool { return len(e.raft.assigns()) == 1 }, "the leader to assign the job")
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func TestWakeNeverBlocks(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 100; i++ {
		e.s.Wake() // nobody is running: must not block
	}
}

func TestReconcileMarksJobsLostAfterGrace(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 2, false)
	e.submit("run", 1)
	e.must(&gantrypb.AssignJobCmd{JobId: "run", NodeId: "n1", Gpus: []uint32{0}})
	e.must(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{{JobId: "run", Seq: 1,
		Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Values: map[string]float64{"loss": 0.3}}}}}})
	e.submit("asg", 1)
	e.must(&gantrypb.AssignJobCmd{JobId: "asg", NodeId: "n1", Gpus: []uint32{1}})
	down := time.UnixMilli(1_000_000)
	e.must(&gantrypb.NodeDownCmd{NodeId: "n1", AtMs: down.UnixMilli()})
	e.s.LostGrace = time.Minute

	e.s.now = func() time.Time { return down.Add(59 * time.Second) }
	e.s.Reconcile()
	for _, id := range []string{"run", "asg"} {
		if lifecycle.IsTerminal(e.job(id).State) {
			t.Fatalf("job %s ended inside the grace period", id)
		}
	}

	e.s.now = func() time.Time { return down.Add(time.Minute) }
	e.s.Reconcile()
	for _, id := range []string{"run", "asg"} {
		j := e.job(id)
		if j.State != gantrypb.JobState_JOB_STATE_LOST || j.Error == "" {
			t.Fatalf("job %s after the grace period: %s %q", id, j.State, j.Error)
		}
	}
	if got := e.job("run").FinalMetrics["loss"]; got != 0.3 {
		t.Fatalf("lost job's final loss = %v, want the last reported 0.3", got)
	}
	// A node that is back (connected) keeps its jobs however long it was down.
	e.node("n2", 1, true)
	e.submit("back", 1)
	e.must(&gantrypb.AssignJobCmd{JobId: "back", NodeId: "n2", Gpus: []uint32{0}})
	e.must(&gantrypb.NodeDownCmd{NodeId: "n2", AtMs: down.UnixMilli()})
	e.s.Reconcile()
	if e.job("back").State != gantrypb.JobState_JOB_STATE_ASSIGNED {
		t.Fatal("job on a connected node declared lost")
	}
}

func TestNodeCandidate(t *testing.T) {
	n := &gantrypb.Node{Id: "a", Gpus: gpus("A100", "A100", "A100"), Drained: true, DrainedGpus: []uint32{2},
		UnhealthyGpus: []*gantrypb.GPUHealth{{Index: 0, Reason: "XID 79"}}}
	c := NodeCandidate(n, used(1))
	if !c.Drained || !c.Unusable[0] || !c.Unusable[2] || c.Unusable[1] || !c.Used[1] {
		t.Errorf("candidate %+v", c)
	}
}

// TestReconcileRequeuedJobIsANewRun: a requeue policy's stop is sent
// under the attempt's run id with its reason; the next attempt is placed
// again and started under its own run id (a new SendOnce key, so an agent
// that ran the first attempt starts it), and the old run's keys are
// forgotten.
func TestReconcileRequeuedJobIsANewRun(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 1, true)
	e.must(&gantrypb.SubmitJobCmd{JobId: "j", Spec: &gantrypb.JobSpec{Run: "x", Resources: &gantrypb.Resources{Gpus: 1},
		Health: &gantrypb.HealthSpec{OnStall: lifecycle.PolicyRequeue}}, AtMs: 1})
	e.s.Reconcile()
	if s := e.agents.take(); len(s) != 1 || s[0].key != "start/j" {
		t.Fatalf("sent %v, want start/j", s)
	}
	e.must(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{
		{JobId: "j", Seq: 1, Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{Pid: 1}}},
		{JobId: "j", Seq: 2, Body: &gantrypb.Record_Condition{Condition: &gantrypb.HealthCondition{Kind: lifecycle.CondHung, Active: true, Evidence: "pegged"}}},
	}})
	e.s.Reconcile()
	s := e.agents.take()
	if len(s) != 1 || s[0].key != "cancel/j" || !strings.Contains(s[0].msg.GetCancel().GetReason(), "requeued: hung: pegged") {
		t.Fatalf("sent %v, want cancel/j saying it is requeued", s)
	}
	e.must(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{{JobId: "j", Seq: 3,
		Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{Reason: "cancelled", Signal: "SIGTERM"}}}}})
	e.s.Reconcile()
	s = e.agents.take()
	if len(s) != 1 || s[0].key != "start/j~1" || s[0].msg.GetStart().GetJobId() != "j~1" {
		t.Fatalf("sent %v, want start/j~1", s)
	}
	if j := e.job("j"); j.State != gantrypb.JobState_JOB_STATE_ASSIGNED || j.Attempt != 1 || j.Node != "n1" {
		t.Fatalf("job %v, want attempt 1 assigned to n1", j)
	}
	if f := e.agents.takeForgot(); !slices.Equal(f, []string{"n1 cancel/j", "n1 start/j"}) {
		t.Errorf("forgot %v, want the first run's keys", f)
	}
}
