package fsm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/command"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/controller/view"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// recorder is an Observer that keeps every Changes and checks, at the
// moment it is called, that the batch is already committed (readable in a
// fresh read transaction).
type recorder struct {
	t     *testing.T
	st    *store.Store
	mu    sync.Mutex
	calls []*fsm.Changes
}

func (r *recorder) Applied(c *fsm.Changes) {
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	if c.Restored {
		return
	}
	err := r.st.View(func(tx *store.Tx) error {
		for id, j := range c.Jobs {
			stored, err := tx.Job(id)
			if err != nil {
				return fmt.Errorf("observer told of job %s before it was committed: %w", id, err)
			}
			if stored.State != j.State || stored.LastSeq != j.LastSeq {
				return fmt.Errorf("observer saw job %s as %s/%d, store has %s/%d", id, j.State, j.LastSeq, stored.State, stored.LastSeq)
			}
		}
		for id, pts := range c.Points {
			last := pts[len(pts)-1].Seq
			got, err := tx.Points(id, last-1, 1)
			if err != nil || len(got) != 1 {
				return fmt.Errorf("observer told of point %s/%d before it was committed", id, last)
			}
		}
		return nil
	})
	if err != nil {
		r.t.Error(err)
	}
}

func (r *recorder) take() []*fsm.Changes {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.calls
	r.calls = nil
	return out
}

type harness struct {
	t   *testing.T
	st  *store.Store
	f   *fsm.FSM
	obs *recorder
	idx uint64
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	obs := &recorder{t: t, st: st}
	return &harness{t: t, st: st, f: fsm.New(st, obs, logging.Discard()), obs: obs}
}

func (h *harness) logs(msgs ...proto.Message) []*raft.Log {
	h.t.Helper()
	out := make([]*raft.Log, len(msgs))
	for i, m := range msgs {
		b, err := command.Encode(m)
		if err != nil {
			h.t.Fatal(err)
		}
		h.idx++
		out[i] = &raft.Log{Index: h.idx, Term: 1, Type: raft.LogCommand, Data: b}
	}
	return out
}

// batch applies msgs as one batch of Raft entries.
func (h *harness) batch(msgs ...proto.Message) []any {
	h.t.Helper()
	return h.f.ApplyBatch(h.logs(msgs...))
}

func (h *harness) apply(m proto.Message) any {
	h.t.Helper()
	return h.batch(m)[0]
}

// mustOK applies m and fails on an error response.
func (h *harness) mustOK(m proto.Message) any {
	h.t.Helper()
	resp := h.apply(m)
	if err, ok := resp.(error); ok {
		h.t.Fatalf("apply %T: %v", m, err)
	}
	return resp
}

func (h *harness) job(id string) *gantrypb.Job {
	h.t.Helper()
	var j *gantrypb.Job
	if err := h.st.View(func(tx *store.Tx) (err error) { j, err = tx.Job(id); return err }); err != nil {
		h.t.Fatalf("read job %s: %v", id, err)
	}
	return j
}

func (h *harness) points(id string) []*gantrypb.MetricPoint {
	h.t.Helper()
	var pts []*gantrypb.MetricPoint
	if err := h.st.View(func(tx *store.Tx) (err error) { pts, err = tx.Points(id, 0, 0); return err }); err != nil {
		h.t.Fatal(err)
	}
	return pts
}

func (h *harness) highWater(stream string) uint64 {
	var hw uint64
	_ = h.st.View(func(tx *store.Tx) error { hw = tx.HighWater(stream); return nil })
	return hw
}

func (h *harness) events(id string) []*gantrypb.JobEvent {
	h.t.Helper()
	var evs []*gantrypb.JobEvent
	if err := h.st.View(func(tx *store.Tx) (err error) { evs, err = tx.Events(id, 0, 0); return err }); err != nil {
		h.t.Fatal(err)
	}
	return evs
}

func submit(id string) *gantrypb.SubmitJobCmd {
	return &gantrypb.SubmitJobCmd{JobId: id, AtMs: 1000, Spec: &gantrypb.JobSpec{Name: id, Run: "true", Resources: &gantrypb.Resources{Gpus: 1}}}
}

func assign(id, node string, gpus ...uint32) *gantrypb.AssignJobCmd {
	return &gantrypb.AssignJobCmd{JobId: id, NodeId: node, Gpus: gpus, AtMs: 2000}
}

func ingest(node string, recs ...*gantrypb.Record) *gantrypb.IngestCmd {
	return &gantrypb.IngestCmd{NodeId: node, Records: recs, AtMs: 5000}
}

func point(job string, seq uint64, vals map[string]float64) *gantrypb.Record {
	step := int64(seq)
	return &gantrypb.Record{JobId: job, Seq: seq, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Step: &step, Ts: float64(seq), Values: vals}}}
}

func points(job string, from, to uint64) []*gantrypb.Record {
	var out []*gantrypb.Record
	for s := from; s <= to; s++ {
		out = append(out, point(job, s, map[string]float64{"loss": 1 / float64(s), "acc": float64(s) / 100}))
	}
	return out
}

func started(job string, seq uint64) *gantrypb.Record {
	return &gantrypb.Record{JobId: job, Seq: seq, Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{Pid: 4242, Ts: 3}}}
}

func exitRec(job string, seq uint64, x *gantrypb.JobExit) *gantrypb.Record {
	return &gantrypb.Record{JobId: job, Seq: seq, Body: &gantrypb.Record_Exit{Exit: x}}
}

func code(c int32) *int32 { return &c }

// running brings job id to running on node n1 with the started record as seq 1.
func (h *harness) running(id string) {
	h.t.Helper()
	h.mustOK(submit(id))
	h.mustOK(assign(id, "n1", 0))
	h.mustOK(ingest("n1", started(id, 1)))
	if s := h.job(id).State; s != gantrypb.JobState_JOB_STATE_RUNNING {
		h.t.Fatalf("job %s is %s after its started record, want running", id, s)
	}
}

func TestSubmit(t *testing.T) {
	h := newHarness(t)
	if got := h.apply(submit("j1")); got != "j1" {
		t.Fatalf("submit response = %v, want the job id", got)
	}
	j := h.job("j1")
	if j.State != gantrypb.JobState_JOB_STATE_QUEUED || j.CreatedAtMs != 1000 || j.Spec.GetName() != "j1" {
		t.Fatalf("submitted job = %v", j)
	}
	dup := submit("j1")
	dup.Spec.Name = "other"
	err, _ := h.apply(dup).(error)
	if !errors.Is(err, lifecycle.ErrJobExists) {
		t.Fatalf("duplicate submit response = %v, want ErrJobExists", err)
	}
	if h.job("j1").Spec.GetName() != "j1" {
		t.Fatal("duplicate submit overwrote the job")
	}
}

func TestAssign(t *testing.T) {
	h := newHarness(t)
	if err, _ := h.apply(assign("nope", "n1", 0)).(error); !errors.Is(err, lifecycle.ErrJobNotFound) {
		t.Fatalf("assign of unknown job = %v, want ErrJobNotFound", err)
	}
	h.mustOK(submit("j1"))
	h.mustOK(assign("j1", "n1", 2, 3))
	j := h.job("j1")
	if j.State != gantrypb.JobState_JOB_STATE_ASSIGNED || j.Node != "n1" || len(j.Gpus) != 2 || j.Gpus[1] != 3 || j.AssignedAtMs != 2000 {
		t.Fatalf("assigned job = %v", j)
	}
	if err, _ := h.apply(assign("j1", "n2", 0)).(error); !errors.Is(err, lifecycle.ErrNotQueued) {
		t.Fatalf("second assign = %v, want ErrNotQueued", err)
	}
	if h.job("j1").Node != "n1" {
		t.Fatal("refused assign changed the job")
	}
}

func TestCancel(t *testing.T) {
	h := newHarness(t)
	if err, _ := h.apply(&gantrypb.CancelJobCmd{JobId: "nope"}).(error); !errors.Is(err, lifecycle.ErrJobNotFound) {
		t.Fatalf("cancel of unknown job = %v", err)
	}

	h.mustOK(submit("queued"))
	h.obs.take()
	h.mustOK(&gantrypb.CancelJobCmd{JobId: "queued", AtMs: 7000})
	j := h.job("queued")
	if j.State != gantrypb.JobState_JOB_STATE_CANCELLED || j.FinishedAtMs != 7000 || j.Error == "" {
		t.Fatalf("cancelled queued job = %v", j)
	}
	// Terminal means final: the API shows {} rather than null, and the
	// FSM's own copy is a non-nil map.
	if v := view.Job(j); v.FinalMetrics == nil || len(v.FinalMetrics) != 0 {
		t.Fatalf("final_metrics of a job cancelled before it ran = %v, want {}", v.FinalMetrics)
	}
	calls := h.obs.take()
	if len(calls) != 1 || calls[0].Jobs["queued"].FinalMetrics == nil {
		t.Fatalf("observer's cancelled job has nil final metrics: %v", calls)
	}
	if err, _ := h.apply(&gantrypb.CancelJobCmd{JobId: "queued"}).(error); !errors.Is(err, lifecycle.ErrTerminal) ||
		!strings.HasSuffix(err.Error(), "job queued is cancelled") {
		t.Fatalf("cancel of a terminal job = %v, want ErrTerminal saying the state by its API name", err)
	}

	h.running("run")
	h.mustOK(&gantrypb.CancelJobCmd{JobId: "run"})
	j = h.job("run")
	if j.State != gantrypb.JobState_JOB_STATE_RUNNING || !j.CancelRequested {
		t.Fatalf("cancel of running job: state=%s cancel_requested=%v, want running/true", j.State, j.CancelRequested)
	}
}

func TestIngestIdempotent(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	cmd := ingest("n1", points("j", 2, 11)...)
	first := h.apply(cmd)
	if got, want := first, (fsm.IngestResult{Stored: 10}); got != want {
		t.Fatalf("first ingest = %v, want %v", got, want)
	}
	before := h.job("j")
	h.obs.take()

	// The same batch again (an agent replay after a lost ack), alone and
	// twice inside one Raft batch.
	second := h.apply(cmd)
	if got, want := second, (fsm.IngestResult{Duplicates: 10}); got != want {
		t.Fatalf("replayed ingest = %v, want %v", got, want)
	}
	rs := h.batch(cmd, cmd)
	for i, r := range rs {
		if r != (fsm.IngestResult{Duplicates: 10}) {
			t.Fatalf("replay %d in one batch = %v", i, r)
		}
	}
	for _, c := range h.obs.take() {
		if len(c.Points) != 0 {
			t.Fatalf("a replay published points: %v", c.Points)
		}
	}
	after := h.job("j")
	if after.Points != 10 || after.LastSeq != 11 || !proto.Equal(before, after) {
		t.Fatalf("replay changed the job: points=%d last_seq=%d", after.Points, after.LastSeq)
	}
	pts := h.points("j")
	if len(pts) != 10 {
		t.Fatalf("stored %d points, want 10", len(pts))
	}
	for i, p := range pts {
		if p.Seq != uint64(i+2) {
			t.Fatalf("point %d has seq %d, want %d", i, p.Seq, i+2)
		}
	}
	if hw := h.highWater(store.StreamKeyNodeJob("n1", "j")); hw != 11 {
		t.Fatalf("high-water = %d, want 11", hw)
	}
}

func TestIngestSameBatchTwiceInOneRaftBatch(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	cmd := ingest("n1", points("j", 2, 6)...)
	rs := h.batch(cmd, cmd)
	if rs[0] != (fsm.IngestResult{Stored: 5}) || rs[1] != (fsm.IngestResult{Duplicates: 5}) {
		t.Fatalf("responses = %v", rs)
	}
	if j := h.job("j"); j.Points != 5 || len(h.points("j")) != 5 {
		t.Fatalf("points = %d (stored %d), want 5", j.Points, len(h.points("j")))
	}
}

func TestIngestPartialOverlap(t *testing.T) {
	h := newHarness(t)
	h.mustOK(submit("j"))
	h.mustOK(assign("j", "n1", 0))
	h.mustOK(ingest("n1", points("j", 1, 10)...))
	got := h.apply(ingest("n1", points("j", 5, 15)...))
	if got != (fsm.IngestResult{Stored: 5, Duplicates: 6}) {
		t.Fatalf("overlapping ingest = %v, want 5 stored, 6 duplicates", got)
	}
	j := h.job("j")
	pts := h.points("j")
	if j.Points != 15 || len(pts) != 15 || j.LastSeq != 15 {
		t.Fatalf("points=%d stored=%d last_seq=%d, want 15", j.Points, len(pts), j.LastSeq)
	}
	for i, p := range pts {
		if p.Seq != uint64(i+1) {
			t.Fatalf("stored seqs not 1..15: %d at %d", p.Seq, i)
		}
	}
	if hw := h.highWater(store.StreamKeyNodeJob("n1", "j")); hw != 15 {
		t.Fatalf("high-water = %d", hw)
	}
}

func TestIngestUnknownJobSkipped(t *testing.T) {
	h := newHarness(t)
	h.mustOK(submit("known"))
	h.mustOK(assign("known", "n1", 0))
	resp := h.apply(ingest("n1", append(points("ghost", 1, 3), points("known", 1, 2)...)...))
	res, ok := resp.(fsm.IngestResult)
	if !ok {
		t.Fatalf("ingest with an unknown job answered %v, want an IngestResult", resp)
	}
	if res.Stored != 2 {
		t.Fatalf("stored = %d, want 2 (only the known job's)", res.Stored)
	}
	if pts := h.points("ghost"); len(pts) != 0 {
		t.Fatalf("points stored for an unknown job: %v", pts)
	}
	if len(h.points("known")) != 2 {
		t.Fatal("the known job's points in the same batch were not stored")
	}
	if err := h.st.View(func(tx *store.Tx) error {
		_, err := tx.Job("ghost")
		return err
	}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a job was created for unknown records: %v", err)
	}
}

func TestExitMakesTerminalWithFinalMetrics(t *testing.T) {
	tests := []struct {
		name      string
		cancel    bool
		exit      *gantrypb.JobExit
		wantState gantrypb.JobState
		wantErr   string
	}{
		{"success", false, &gantrypb.JobExit{ExitCode: code(0), Ts: 9}, gantrypb.JobState_JOB_STATE_SUCCEEDED, ""},
		{"non-zero exit", false, &gantrypb.JobExit{ExitCode: code(3), Ts: 9}, gantrypb.JobState_JOB_STATE_FAILED, "exited with code 3"},
		{"signal", false, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9}, gantrypb.JobState_JOB_STATE_FAILED, "killed by SIGTERM"},
		{"agent error", false, &gantrypb.JobExit{Error: "exec: python: not found", Ts: 9}, gantrypb.JobState_JOB_STATE_FAILED, "exec: python: not found"},
		{"max duration", false, &gantrypb.JobExit{Signal: "SIGTERM", Reason: "max_duration", Ts: 9}, gantrypb.JobState_JOB_STATE_FAILED, "exceeded max_duration: killed by SIGTERM"},
		{"cancel requested", true, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9}, gantrypb.JobState_JOB_STATE_CANCELLED, "cancelled: killed by SIGTERM"},
		{"cancel reason", false, &gantrypb.JobExit{ExitCode: code(143), Reason: "cancelled", Ts: 9}, gantrypb.JobState_JOB_STATE_CANCELLED, "cancelled: exited with code 143"},
		{"cancel raced a clean exit", true, &gantrypb.JobExit{ExitCode: code(0), Ts: 9}, gantrypb.JobState_JOB_STATE_SUCCEEDED, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.running("j")
			if tt.cancel {
				h.mustOK(&gantrypb.CancelJobCmd{JobId: "j"})
			}
			h.obs.take()
			// The last points and the exit record in one entry, as the
			// agent sends them on exit (invariant I2).
			recs := points("j", 2, 5)
			recs = append(recs, point("j", 6, map[string]float64{"loss": 0.01}))
			recs = append(recs, exitRec("j", 7, tt.exit))
			h.mustOK(ingest("n1", recs...))

			j := h.job("j")
			if j.State != tt.wantState || j.Error != tt.wantErr {
				t.Fatalf("state=%s error=%q, want %s %q", j.State, j.Error, tt.wantState, tt.wantErr)
			}
			want := map[string]float64{"loss": 0.01, "acc": 0.05, "step": 6}
			if !maps.Equal(j.FinalMetrics, want) {
				t.Fatalf("final_metrics = %v, want %v", j.FinalMetrics, want)
			}
			if j.FinishedAtMs != 9000 || j.Points != 5 {
				t.Fatalf("finished_at=%d points=%d", j.FinishedAtMs, j.Points)
			}
			// The observer got the points and the terminal state together,
			// the state already holding the final metrics.
			calls := h.obs.take()
			if len(calls) != 1 {
				t.Fatalf("observer called %d times, want 1", len(calls))
			}
			c := calls[0]
			if len(c.Points["j"]) != 5 || !lifecycle.IsTerminal(c.Jobs["j"].State) || !maps.Equal(c.Jobs["j"].FinalMetrics, want) {
				t.Fatalf("observer changes: %d points, job %v", len(c.Points["j"]), c.Jobs["j"])
			}
		})
	}
}

func TestExitFinalMetricsOverrideLatest(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	h.mustOK(ingest("n1", point("j", 2, map[string]float64{"loss": 0.5}),
		exitRec("j", 3, &gantrypb.JobExit{ExitCode: code(0), FinalMetrics: map[string]float64{"loss": 0.4, "eval": 0.9}})))
	want := map[string]float64{"loss": 0.4, "eval": 0.9, "step": 2}
	if got := h.job("j").FinalMetrics; !maps.Equal(got, want) {
		t.Fatalf("final_metrics = %v, want %v", got, want)
	}
}

func TestLateExit(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	h.mustOK(ingest("n1", point("j", 2, map[string]float64{"loss": 0.5})))
	h.mustOK(&gantrypb.EndJobCmd{JobId: "j", State: gantrypb.JobState_JOB_STATE_LOST, Error: "gone", AtMs: 8000})
	before := h.job("j")
	if before.State != gantrypb.JobState_JOB_STATE_LOST || before.FinalMetrics["loss"] != 0.5 {
		t.Fatalf("EndJob: %v", before)
	}
	if err, _ := h.apply(&gantrypb.EndJobCmd{JobId: "j", State: gantrypb.JobState_JOB_STATE_FAILED}).(error); !errors.Is(err, lifecycle.ErrTerminal) {
		t.Fatalf("EndJob of a terminal job = %v, want ErrTerminal", err)
	}

	h.mustOK(ingest("n1", exitRec("j", 3, &gantrypb.JobExit{ExitCode: code(0), FinalMetrics: map[string]float64{"loss": 0.1}})))
	after := h.job("j")
	if after.State != gantrypb.JobState_JOB_STATE_LOST || after.Error != "gone" || !maps.Equal(after.FinalMetrics, before.FinalMetrics) || after.ExitCode != nil {
		t.Fatalf("late exit rewrote a terminal job: %v", after)
	}
	evs := h.events("j")
	if len(evs) != 1 || evs[0].Kind != "late_exit" || evs[0].Seq != 3 || !strings.Contains(evs[0].Message, "exited with code 0") {
		t.Fatalf("events = %v, want one late_exit", evs)
	}
	if after.Events != before.Events+1 {
		t.Fatalf("event count %d → %d", before.Events, after.Events)
	}
}

func TestBadMetricLinesCounted(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	ev := func(seq uint64, kind lifecycle.EventKind, n uint64) *gantrypb.Record {
		return &gantrypb.Record{JobId: "j", Seq: seq, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{Kind: string(kind), Count: n, Message: "m"}}}
	}
	h.mustOK(ingest("n1", ev(2, lifecycle.EventBadMetricLines, 3), ev(3, lifecycle.EventReadError, 100)))
	h.mustOK(ingest("n1", ev(4, lifecycle.EventBadMetricLines, 4)))
	j := h.job("j")
	if j.BadLines != 7 || j.Events != 3 {
		t.Fatalf("bad_lines=%d events=%d, want 7 and 3", j.BadLines, j.Events)
	}
	evs := h.events("j")
	if len(evs) != 3 || evs[0].Seq != 2 || evs[2].Seq != 4 {
		t.Fatalf("stored events = %v", evs)
	}
}

func TestLogsAndStarted(t *testing.T) {
	h := newHarness(t)
	h.mustOK(submit("j"))
	h.mustOK(assign("j", "n1", 0))
	logRec := func(seq, off uint64, s string) *gantrypb.Record {
		return &gantrypb.Record{JobId: "j", Seq: seq, Body: &gantrypb.Record_Log{Log: &gantrypb.LogChunk{Offset: off, Data: []byte(s)}}}
	}
	h.mustOK(ingest("n1", started("j", 1), logRec(2, 0, "hello "), logRec(3, 6, "world")))
	j := h.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_RUNNING || j.Pid != 4242 || j.StartedAtMs != 3000 || j.LogBytes != 11 {
		t.Fatalf("job = %v", j)
	}
	var data []byte
	_ = h.st.View(func(tx *store.Tx) error { data, _ = tx.Logs("j", 0, 100); return nil })
	if string(data) != "hello world" {
		t.Fatalf("logs = %q", data)
	}
}

func TestGPUSamplesOnNodeStream(t *testing.T) {
	h := newHarness(t)
	gpu := func(seq uint64) *gantrypb.Record {
		return &gantrypb.Record{Seq: seq, Body: &gantrypb.Record_Gpu{Gpu: &gantrypb.GPUSample{Ts: float64(seq), Gpus: []*gantrypb.GPUStat{{Index: 0, UtilizationPct: float64(seq)}}}}}
	}
	if r := h.apply(ingest("n1", gpu(1), gpu(2))); r != (fsm.IngestResult{Stored: 2}) {
		t.Fatalf("ingest = %v", r)
	}
	if r := h.apply(ingest("n1", gpu(2), gpu(3))); r != (fsm.IngestResult{Stored: 1, Duplicates: 1}) {
		t.Fatalf("overlapping gpu ingest = %v", r)
	}
	// Another node's stream is separate: its seq 1 is new.
	if r := h.apply(ingest("n2", gpu(1))); r != (fsm.IngestResult{Stored: 1}) {
		t.Fatalf("other node = %v", r)
	}
	var samples []*gantrypb.GPUSample
	_ = h.st.View(func(tx *store.Tx) (err error) { samples, err = tx.GPUSamples("n1", 10); return err })
	if len(samples) != 3 || samples[0].Seq != 1 || samples[2].Seq != 3 || samples[2].Gpus[0].UtilizationPct != 3 {
		t.Fatalf("n1 samples = %v", samples)
	}
	if hw := h.highWater(store.StreamKeyNode("n1")); hw != 3 {
		t.Fatalf("node high-water = %d", hw)
	}
	calls := h.obs.take()
	if len(calls) == 0 || len(calls[0].GPU["n1"]) != 2 {
		t.Fatalf("observer GPU changes = %v", calls)
	}
}

func TestNodeUpMarksMissingJobsLost(t *testing.T) {
	h := newHarness(t)
	h.mustOK(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n1", Gpus: []*gantrypb.GPUInfo{{Index: 0}}}, AtMs: 100})
	h.running("gone")
	h.mustOK(ingest("n1", point("gone", 2, map[string]float64{"loss": 0.25})))
	h.running("alive")
	// A running job on another node is not n1's business.
	h.mustOK(submit("elsewhere"))
	h.mustOK(assign("elsewhere", "n2", 0))
	h.mustOK(ingest("n2", started("elsewhere", 1)))

	h.mustOK(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n1", Hostname: "h1"}, ActiveJobs: []string{"alive"}, AtMs: 900})
	g := h.job("gone")
	if g.State != gantrypb.JobState_JOB_STATE_LOST || g.FinishedAtMs != 900 || !strings.Contains(g.Error, "n1") {
		t.Fatalf("missing job: state=%s finished=%d error=%q", g.State, g.FinishedAtMs, g.Error)
	}
	if want := map[string]float64{"loss": 0.25, "step": 2}; !maps.Equal(g.FinalMetrics, want) {
		t.Fatalf("lost job's final_metrics = %v, want %v", g.FinalMetrics, want)
	}
	if s := h.job("alive").State; s != gantrypb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("reported job became %s", s)
	}
	if s := h.job("elsewhere").State; s != gantrypb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("other node's job became %s", s)
	}
	var n *gantrypb.Node
	_ = h.st.View(func(tx *store.Tx) (err error) { n, err = tx.Node("n1"); return err })
	if n.State != gantrypb.NodeState_NODE_STATE_UP || n.RegisteredAtMs != 100 || n.LastSeenMs != 900 || n.Hostname != "h1" {
		t.Fatalf("node after re-registration = %v", n)
	}
}

func TestNodeDown(t *testing.T) {
	h := newHarness(t)
	h.mustOK(&gantrypb.NodeDownCmd{NodeId: "never-seen"}) // no error
	h.mustOK(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n1"}, AtMs: 1})
	h.mustOK(&gantrypb.NodeDownCmd{NodeId: "n1", AtMs: 2})
	var n *gantrypb.Node
	_ = h.st.View(func(tx *store.Tx) (err error) { n, err = tx.Node("n1"); return err })
	if n.State != gantrypb.NodeState_NODE_STATE_DOWN || n.LastSeenMs != 2 {
		t.Fatalf("node = %v", n)
	}
}

func TestObserverOrder(t *testing.T) {
	h := newHarness(t)
	h.running("a")
	h.obs.take()
	h.batch(submit("b"), ingest("n1", points("a", 2, 4)...), &gantrypb.CancelJobCmd{JobId: "b"})
	calls := h.obs.take()
	if len(calls) != 1 {
		t.Fatalf("one batch gave %d observer calls, want 1", len(calls))
	}
	c := calls[0]
	if strings.Join(c.JobOrder, ",") != "b,a" {
		t.Fatalf("JobOrder = %v, want [b a] (first touch order)", c.JobOrder)
	}
	if c.Jobs["b"].State != gantrypb.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("b's state after the batch = %s", c.Jobs["b"].State)
	}
	pts := c.Points["a"]
	if len(pts) != 3 || pts[0].Seq != 2 || pts[2].Seq != 4 {
		t.Fatalf("points of a = %v", pts)
	}
	// The job state published with the points already reflects them.
	if c.Jobs["a"].LastSeq != 4 || c.Jobs["a"].Points != 3 {
		t.Fatalf("job a in changes: last_seq=%d points=%d", c.Jobs["a"].LastSeq, c.Jobs["a"].Points)
	}
	if h.f.AppliedIndex() != h.idx {
		t.Fatalf("AppliedIndex = %d, want %d", h.f.AppliedIndex(), h.idx)
	}
}

func TestNonCommandEntriesAdvanceIndex(t *testing.T) {
	h := newHarness(t)
	h.idx = 41
	resp := h.f.ApplyBatch([]*raft.Log{{Index: 42, Type: raft.LogConfiguration}, {Index: 43, Type: raft.LogNoop}})
	if resp[0] != nil || resp[1] != nil {
		t.Fatalf("responses = %v", resp)
	}
	if h.f.AppliedIndex() != 43 {
		t.Fatalf("AppliedIndex = %d, want 43", h.f.AppliedIndex())
	}
	if calls := h.obs.take(); len(calls) != 0 {
		t.Fatalf("observer called for a batch that changed nothing: %v", calls)
	}
}

// An entry that does not decode is skipped, on every voter alike: the rest
// of its batch is applied, the index moves on, and nothing panics.
func TestUndecodableEntrySkipped(t *testing.T) {
	// An intact (checksummed) entry whose payload is not protobuf.
	garbage := []byte{byte(command.Ingest) | 0x80, 0x0a, 0x7f}
	garbage = binary.BigEndian.AppendUint32(garbage, crc32.Checksum(garbage, crc32.MakeTable(crc32.Castagnoli)))
	for _, data := range [][]byte{{0x7f, 1, 2}, {}, {byte(command.Ingest), 0x0a, 0x7f}, garbage} {
		t.Run(fmt.Sprintf("%x", data), func(t *testing.T) {
			h := newHarness(t)
			logs := h.logs(submit("before"))
			h.idx++
			logs = append(logs, &raft.Log{Index: h.idx, Type: raft.LogCommand, Data: data})
			logs = append(logs, h.logs(submit("after"))...)
			rs := h.f.ApplyBatch(logs)
			if err, _ := rs[1].(error); !errors.Is(err, fsm.ErrSkipped) {
				t.Fatalf("response to the bad entry = %v, want ErrSkipped", rs[1])
			}
			h.job("before")
			h.job("after")
			if h.f.Skipped() != 1 || h.f.AppliedIndex() != h.idx {
				t.Fatalf("skipped=%d applied=%d, want 1 and %d", h.f.Skipped(), h.f.AppliedIndex(), h.idx)
			}
			if h.st.OpenReadTxns() != 0 {
				t.Fatal("a read txn was left open")
			}
		})
	}
}

// An entry whose checksum does not match is damaged in this node's log
// only: the other voters apply the intact copy, so this node must stop
// (and say what to do), not skip it and diverge.
func TestDamagedEntryStopsTheNode(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	fatal := make(chan error, 1)
	f := fsm.NewWithOptions(st, nil, logging.Discard(), fsm.Options{OnFatal: func(err error) { fatal <- err }})
	h := &harness{t: t, st: st, f: f}
	logs := h.logs(submit("a"), submit("b"))
	logs[1].Data[len(logs[1].Data)/2] ^= 0x10
	rs := f.ApplyBatch(logs)
	if err, _ := rs[0].(error); !errors.Is(err, fsm.ErrStopped) {
		t.Fatalf("response = %v, want ErrStopped (nothing of the batch applied)", rs[0])
	}
	select {
	case err := <-fatal:
		if !errors.Is(err, command.ErrCorrupt) || !strings.Contains(err.Error(), "entry 2") || !strings.Contains(err.Error(), "catches up") {
			t.Fatalf("fatal error = %v, want ErrCorrupt naming entry 2 and what to do", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnFatal was not called")
	}
	if f.Skipped() != 0 || f.AppliedIndex() != 0 {
		t.Fatalf("skipped=%d applied=%d after a damaged entry, want 0 and 0", f.Skipped(), f.AppliedIndex())
	}
}

// Commands that decode but could not be stored (ids bbolt refuses as keys,
// missing parts that a handler would dereference) are skipped, not applied
// and not panicked on. Before the admission checks, a 40,000-byte job id
// in one record crash-looped every voter with "key too large".
func TestUnstorableCommandsSkipped(t *testing.T) {
	huge := strings.Repeat("x", 40000)
	for name, m := range map[string]proto.Message{
		"submit huge id":           submit(huge),
		"assign huge node":         assign("j", huge),
		"node up no node":          &gantrypb.NodeUpCmd{},
		"node up huge id":          &gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: huge}},
		"node down huge id":        &gantrypb.NodeDownCmd{NodeId: huge},
		"cancel empty id":          &gantrypb.CancelJobCmd{},
		"ingest huge node":         ingest(huge, points("j", 1, 1)...),
		"queue timeout huge id":    &gantrypb.QueueTimeoutCmd{JobId: huge, AtMs: 1},
		"queue timeout huge error": &gantrypb.QueueTimeoutCmd{JobId: "j", Error: huge, AtMs: 1},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			rs := h.batch(m, submit("after"))
			if err, _ := rs[0].(error); !errors.Is(err, fsm.ErrSkipped) {
				t.Fatalf("response = %v, want ErrSkipped", rs[0])
			}
			if h.job("after").State != gantrypb.JobState_JOB_STATE_QUEUED {
				t.Fatal("the good entry after the bad one was not applied")
			}
			if h.f.Skipped() != 1 {
				t.Fatalf("skipped = %d, want 1", h.f.Skipped())
			}
		})
	}
}

// Records that break a limit are dropped one by one; the good records of
// the same batch are stored.
func TestIngestRejectsOversizeRecords(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	huge := strings.Repeat("k", limits.MaxMetricKeyBytes+1)
	many := map[string]float64{}
	for i := range limits.MaxKeysPerPoint + 1 {
		many[fmt.Sprintf("m%d", i)] = 1
	}
	recs := []*gantrypb.Record{
		point("j", 2, map[string]float64{"loss": 1}),
		{JobId: strings.Repeat("j", 40000), Seq: 3, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{}}},
		point("j", 3, map[string]float64{huge: 1}),
		point("j", 4, many),
		{JobId: "j", Seq: 5, Body: &gantrypb.Record_Log{Log: &gantrypb.LogChunk{Data: make([]byte, limits.MaxLogChunkBytes+1)}}},
		{JobId: "j", Seq: 6},
		point("j", 7, map[string]float64{"loss": 0.5}),
	}
	res, ok := h.apply(ingest("n1", recs...)).(fsm.IngestResult)
	if !ok || res.Stored != 2 || res.Rejected != 5 {
		t.Fatalf("ingest = %+v, want 2 stored and 5 rejected", res)
	}
	if got := h.job("j").LatestMetrics["loss"]; got != 0.5 {
		t.Fatalf("latest loss = %v, want 0.5", got)
	}
	if h.f.RejectedRecords() != 5 {
		t.Fatalf("RejectedRecords = %d", h.f.RejectedRecords())
	}
}

// One agent cannot write into a job assigned to another node: not points,
// not an exit with a seq far ahead, and its records do not move the real
// node's high-water mark (which is per node and job).
func TestIngestRefusesAnotherNodesJob(t *testing.T) {
	h := newHarness(t)
	h.running("j") // on n1
	h.mustOK(ingest("n1", point("j", 2, map[string]float64{"loss": 1})))
	forged := []*gantrypb.Record{
		point("j", 3, map[string]float64{"loss": 666}),
		exitRec("j", 1000, &gantrypb.JobExit{ExitCode: code(0), FinalMetrics: map[string]float64{"loss": 666}}),
	}
	res := h.apply(ingest("n2", forged...)).(fsm.IngestResult)
	if res.Stored != 0 || res.Rejected != 2 {
		t.Fatalf("forged ingest = %+v, want all rejected", res)
	}
	j := h.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_RUNNING || j.LatestMetrics["loss"] != 1 {
		t.Fatalf("forgery changed the job: %s loss=%v", j.State, j.LatestMetrics["loss"])
	}
	// The real node's next records are stored, and it can still finish.
	h.mustOK(ingest("n1", point("j", 3, map[string]float64{"loss": 0.25}),
		exitRec("j", 4, &gantrypb.JobExit{ExitCode: code(0)})))
	j = h.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_SUCCEEDED || j.FinalMetrics["loss"] != 0.25 {
		t.Fatalf("real exit: %s final=%v", j.State, j.FinalMetrics)
	}
	if hw := h.highWater(store.StreamKeyNodeJob("n2", "j")); hw != 0 {
		t.Fatalf("the forging node got a high-water mark %d", hw)
	}
}

// A job stops growing its metric set at MaxKeysPerJob: new keys are
// dropped in sorted order (the same on every voter), once reported.
func TestIngestCapsKeysPerJob(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	seq := uint64(2)
	for len(h.job("j").LatestMetrics) < limits.MaxKeysPerJob {
		vals := map[string]float64{}
		for i := range limits.MaxKeysPerPoint {
			vals[fmt.Sprintf("s%d-k%03d", seq, i)] = float64(i)
		}
		h.mustOK(ingest("n1", point("j", seq, vals)))
		seq++
	}
	j := h.job("j")
	if n := len(j.LatestMetrics); n != limits.MaxKeysPerJob {
		t.Fatalf("latest metrics has %d keys, want %d", n, limits.MaxKeysPerJob)
	}
	if j.DroppedMetricKeys == 0 {
		t.Fatal("no dropped keys counted")
	}
	// Known keys still update; the exit's new keys are dropped too.
	h.mustOK(ingest("n1", point("j", seq, map[string]float64{"s2-k000": 42, "brand-new": 1}),
		exitRec("j", seq+1, &gantrypb.JobExit{ExitCode: code(0), FinalMetrics: map[string]float64{"also-new": 2}})))
	j = h.job("j")
	if j.FinalMetrics["s2-k000"] != 42 || len(j.FinalMetrics) != limits.MaxKeysPerJob {
		t.Fatalf("final metrics: %d keys, s2-k000=%v", len(j.FinalMetrics), j.FinalMetrics["s2-k000"])
	}
	var dropEvents int
	for _, e := range h.events("j") {
		if e.Kind == string(lifecycle.EventMetricKeysDropped) {
			dropEvents++
		}
	}
	if dropEvents != 1 {
		t.Fatalf("%d metric_keys_dropped events, want 1", dropEvents)
	}
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

func TestSnapshotRestore(t *testing.T) {
	h := newHarness(t)
	h.mustOK(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n1"}, AtMs: 1})
	h.running("a")
	h.mustOK(ingest("n1", points("a", 2, 20)...))
	h.mustOK(submit("b"))
	h.running("c")
	h.mustOK(ingest("n1", append(points("c", 2, 3), exitRec("c", 4, &gantrypb.JobExit{ExitCode: code(0)}))...))
	snapIndex := h.f.AppliedIndex()

	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Raft persists on its own goroutine while applies go on. (An apply
	// that must grow bbolt's mmap waits until Release: the pinned read
	// txn holds the mmap lock, so persisting on this goroutine first and
	// applying after would deadlock.)
	sink := &memSink{}
	persisted := make(chan error, 1)
	go func() {
		defer snap.Release()
		persisted <- snap.Persist(sink)
	}()
	// Applied after the snapshot was taken: not in it.
	h.mustOK(submit("after-snapshot"))
	if err := <-persisted; err != nil {
		t.Fatal(err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
	testutil.WaitFor(t, 5*time.Second, func() bool { return h.st.OpenReadTxns() == 0 }, "the released snapshot's read txn to close")

	h2 := newHarness(t)
	h2.mustOK(submit("stale")) // replaced by the restore
	h2.obs.take()
	if err := h2.f.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if h2.f.AppliedIndex() != snapIndex {
		t.Fatalf("restored AppliedIndex = %d, want %d", h2.f.AppliedIndex(), snapIndex)
	}
	calls := h2.obs.take()
	if len(calls) != 1 || !calls[0].Restored {
		t.Fatalf("observer after restore = %v, want one Restored change", calls)
	}

	jobs := func(st *store.Store) map[string]*gantrypb.Job {
		out := map[string]*gantrypb.Job{}
		_ = st.View(func(tx *store.Tx) error {
			return tx.Jobs(func(j *gantrypb.Job) bool { out[j.Id] = j; return true })
		})
		return out
	}
	want, got := jobs(h.st), jobs(h2.st)
	delete(want, "after-snapshot")
	if len(got) != len(want) {
		t.Fatalf("restored jobs %v, want %v", keys(got), keys(want))
	}
	for id, j := range want {
		if !proto.Equal(j, got[id]) {
			t.Fatalf("job %s differs after restore:\n got %v\nwant %v", id, got[id], j)
		}
	}
	for _, id := range []string{"a", "c"} {
		p1, p2 := h.points(id), h2.points(id)
		if len(p1) != len(p2) {
			t.Fatalf("job %s: %d points restored, want %d", id, len(p2), len(p1))
		}
		for i := range p1 {
			if !proto.Equal(p1[i], p2[i]) {
				t.Fatalf("job %s point %d differs", id, i)
			}
		}
	}
	// Dedupe state came along: a replay after restore is still a replay.
	h2.idx = snapIndex
	if r := h2.apply(ingest("n1", points("a", 15, 21)...)); r != (fsm.IngestResult{Stored: 1, Duplicates: 6}) {
		t.Fatalf("ingest after restore = %v", r)
	}
}

func keys(m map[string]*gantrypb.Job) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Apply is the single-entry form of ApplyBatch.
func TestApplySingle(t *testing.T) {
	h := newHarness(t)
	l := h.logs(submit("x"))[0]
	if got := h.f.Apply(l); got != "x" {
		t.Fatalf("Apply = %v", got)
	}
	if h.f.AppliedIndex() != l.Index {
		t.Fatal("Apply did not record the index")
	}
}

// A store that fails for good (here: closed under the FSM) stops the FSM
// with OnFatal instead of a panic, and every later batch is refused
// without touching the store.
func TestStoreFailureStopsCleanly(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	fatal := make(chan error, 1)
	f := fsm.NewWithOptions(st, nil, logging.Discard(), fsm.Options{OnFatal: func(err error) { fatal <- err }})
	h := &harness{t: t, st: st, f: f}
	h.mustOK(submit("a"))
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	rs := h.batch(submit("b"))
	if err, _ := rs[0].(error); !errors.Is(err, fsm.ErrStopped) {
		t.Fatalf("response = %v, want ErrStopped", rs[0])
	}
	select {
	case err := <-fatal:
		if !strings.Contains(err.Error(), "state store write failed") {
			t.Fatalf("fatal error = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnFatal was not called")
	}
	if f.Err() == nil {
		t.Fatal("Err() is nil after a fatal store failure")
	}
	if err, _ := h.batch(submit("c"))[0].(error); !errors.Is(err, fsm.ErrStopped) {
		t.Fatalf("batch after the failure = %v, want ErrStopped", err)
	}
}

// A full disk makes the apply wait, not fail: once space is freed the
// same batch is applied whole, so nothing committed is lost.
func TestDiskFullWaitsAndResumes(t *testing.T) {
	dir := testutil.Tmpfs(t, "4m")
	st, err := store.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	f := fsm.NewWithOptions(st, nil, logging.Discard(), fsm.Options{RetryEvery: 20 * time.Millisecond})
	t.Cleanup(f.Close)
	h := &harness{t: t, st: st, f: f}
	h.running("j")
	filler := testutil.FillDisk(t, dir)

	recs := points("j", 2, 3001)
	done := make(chan []any, 1)
	logs := h.logs(ingest("n1", recs...))
	go func() { done <- f.ApplyBatch(logs) }()
	testutil.WaitFor(t, 10*time.Second, f.WaitingForDisk, "the FSM to wait for disk space")
	select {
	case rs := <-done:
		t.Fatalf("apply returned on a full disk: %v", rs)
	default:
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	var rs []any
	select {
	case rs = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("apply did not resume after space was freed")
	}
	if res, _ := rs[0].(fsm.IngestResult); res.Stored != len(recs) {
		t.Fatalf("response after resuming = %v, want %d stored", rs[0], len(recs))
	}
	if n := len(h.points("j")); n != len(recs) {
		t.Fatalf("%d points stored, want %d", n, len(recs))
	}
	if f.WaitingForDisk() {
		t.Fatal("still waiting for disk after resuming")
	}
}

// A started or exit record that breaks a limit is repaired, never refused:
// refusing the exit once left the job running forever on the controller
// while its agent had forgotten it. A ts past year 9999 (which no JSON
// time can show, and which converts differently on different CPUs)
// becomes the leader's time.
func TestExitAndStartedRepairedNotRefused(t *testing.T) {
	h := newHarness(t)
	h.mustOK(submit("j"))
	h.mustOK(assign("j", "n1", 0))
	h.mustOK(ingest("n1",
		&gantrypb.Record{JobId: "j", Seq: 1, Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{Pid: 7, Ts: 1e15}}},
		point("j", 2, map[string]float64{"loss": 0.5}),
		exitRec("j", 3, &gantrypb.JobExit{ExitCode: code(0), Ts: 1e300, FinalMetrics: map[string]float64{"": 1, "tab\tkey": 2}})))
	j := h.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_SUCCEEDED || j.FinalMetrics["loss"] != 0.5 || len(j.FinalMetrics) != 2 {
		t.Fatalf("job %s final=%v, want succeeded with loss and step", j.State, j.FinalMetrics)
	}
	if j.StartedAtMs != 5000 || j.FinishedAtMs != 5000 {
		t.Fatalf("started %d finished %d, want the entry's time (5000)", j.StartedAtMs, j.FinishedAtMs)
	}
}
