package feed_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"math"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/command"
	"github.com/gantry-ml/gantry/controller/feed"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/hub"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

type env struct {
	t         *testing.T
	hub       *hub.Hub
	fsm       *fsm.FSM
	feed      *feed.Feed
	logs      *testutil.SyncBuffer
	schedules atomic.Int64
	idx       uint64
}

func newEnv(t *testing.T) *env {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	e := &env{t: t, hub: hub.New(), logs: &testutil.SyncBuffer{}}
	log := slog.New(slog.NewTextHandler(e.logs, nil))
	f := feed.New(e.hub, log, func() { e.schedules.Add(1) })
	e.fsm = fsm.New(st, f, log)
	e.feed = f
	return e
}

func (e *env) apply(msgs ...proto.Message) {
	e.t.Helper()
	logs := make([]*raft.Log, len(msgs))
	for i, m := range msgs {
		b, err := command.Encode(m)
		if err != nil {
			e.t.Fatal(err)
		}
		e.idx++
		logs[i] = &raft.Log{Index: e.idx, Type: raft.LogCommand, Data: b}
	}
	for i, r := range e.fsm.ApplyBatch(logs) {
		if err, ok := r.(error); ok {
			e.t.Fatalf("apply %T: %v", msgs[i], err)
		}
	}
}

// frame is one hub message with its decoded body.
type frame struct {
	msg hub.Message
	f   apiv1.Frame
}

func (e *env) take(s *hub.Sub) []frame {
	e.t.Helper()
	var out []frame
	for {
		m, ok := s.Next()
		switch {
		case ok:
			var f apiv1.Frame
			dec := json.NewDecoder(bytes.NewReader(m.Data))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&f); err != nil {
				e.t.Fatalf("frame is not a valid apiv1.Frame: %v: %s", err, m.Data)
			}
			if f.Type != m.Kind {
				e.t.Fatalf("frame type %q but message kind %q", f.Type, m.Kind)
			}
			out = append(out, frame{m, f})
		default:
			return out
		}
	}
}

func types(fs []frame) string {
	var s []string
	for _, f := range fs {
		s = append(s, f.f.Type)
	}
	return strings.Join(s, ",")
}

func pointRec(job string, seq uint64, v float64) *gantrypb.Record {
	step := int64(seq)
	return &gantrypb.Record{JobId: job, Seq: seq, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Step: &step, Ts: 1, Values: map[string]float64{"loss": v}}}}
}

func (e *env) running(id string) {
	e.t.Helper()
	e.apply(&gantrypb.SubmitJobCmd{JobId: id, Spec: &gantrypb.JobSpec{Name: id, Run: "x"}, AtMs: 1})
	e.apply(&gantrypb.AssignJobCmd{JobId: id, NodeId: "n1", Gpus: []uint32{0}, AtMs: 2})
	e.apply(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{{JobId: id, Seq: 1,
		Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{Pid: 7, Ts: 3}}}}})
}

func TestFrameOrderMetricsStateFinal(t *testing.T) {
	e := newEnv(t)
	sub := e.hub.Subscribe(64, hub.JobTopic("j"))
	defer sub.Close()
	e.running("j")
	if got := types(e.take(sub)); got != "state,state,state" {
		t.Fatalf("frames while starting = %s, want a state frame per transition", got)
	}

	code := int32(0)
	e.apply(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{
		pointRec("j", 2, 0.5), pointRec("j", 3, 0.25),
		{JobId: "j", Seq: 4, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: &code, Ts: 9}}},
	}})
	fs := e.take(sub)
	if got := types(fs); got != "metrics,state,final" {
		t.Fatalf("frames = %s, want metrics,state,final", got)
	}
	m := fs[0]
	if m.msg.MaxSeq != 3 || len(m.f.Points) != 2 || m.f.Points[0].Seq != 2 || m.f.Points[1].Values["loss"] != 0.25 {
		t.Fatalf("metrics frame = %+v (max seq %d)", m.f, m.msg.MaxSeq)
	}
	st, fin := fs[1], fs[2]
	if st.f.Job == nil || st.f.Job.State != apiv1.StateSucceeded || st.msg.Terminal || st.msg.Node != "n1" {
		t.Fatalf("state frame = %+v / %+v", st.f.Job, st.msg)
	}
	if !fin.msg.Terminal || fin.f.Job == nil || fin.f.Job.FinalMetrics["loss"] != 0.25 || fin.f.Job.FinalMetrics["step"] != 3 {
		t.Fatalf("final frame = %+v terminal=%v", fin.f.Job, fin.msg.Terminal)
	}
}

func TestNoStateFrameForPointsOnly(t *testing.T) {
	e := newEnv(t)
	sub := e.hub.Subscribe(64, hub.JobTopic("j"))
	defer sub.Close()
	e.running("j")
	e.take(sub)
	before := e.schedules.Load()

	e.apply(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{pointRec("j", 2, 1)}})
	e.apply(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{pointRec("j", 3, 1), pointRec("j", 4, 1)}})
	if got := types(e.take(sub)); got != "metrics,metrics" {
		t.Fatalf("frames for point-only batches = %s, want metrics,metrics", got)
	}
	if e.schedules.Load() != before {
		t.Fatal("point-only batches woke the scheduler")
	}

	// A cancel request is a state change even though the state stays running.
	e.apply(&gantrypb.CancelJobCmd{JobId: "j"})
	fs := e.take(sub)
	if types(fs) != "state" || !fs[0].f.Job.CancelRequested {
		t.Fatalf("frames after cancel request = %s", types(fs))
	}
	if e.schedules.Load() == before {
		t.Fatal("cancel request did not wake the scheduler")
	}
}

func TestEventAndGPUFrames(t *testing.T) {
	e := newEnv(t)
	job := e.hub.Subscribe(64, hub.JobTopic("j"))
	node := e.hub.Subscribe(64, hub.NodeTopic("n1"))
	defer job.Close()
	defer node.Close()
	e.running("j")
	e.take(job)
	e.apply(&gantrypb.IngestCmd{NodeId: "n1", Records: []*gantrypb.Record{
		{JobId: "j", Seq: 2, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{Kind: "bad_metric_lines", Count: 2, Message: "m"}}},
		{Seq: 1, Body: &gantrypb.Record_Gpu{Gpu: &gantrypb.GPUSample{Ts: 5, Gpus: []*gantrypb.GPUStat{{Index: 0, UtilizationPct: 80}}}}},
	}})
	fs := e.take(job)
	if types(fs) != "event" || fs[0].f.Event.Kind != "bad_metric_lines" || fs[0].f.Event.Count != 2 {
		t.Fatalf("job frames = %s %+v", types(fs), fs)
	}
	gs := e.take(node)
	if types(gs) != "gpu" || gs[0].f.GPU.Seq != 1 || gs[0].f.GPU.GPUs[0].UtilizationPct != 80 {
		t.Fatalf("node frames = %s %+v", types(gs), gs)
	}
}

func TestNothingEncodedWithoutSubscribers(t *testing.T) {
	e := newEnv(t)
	e.running("j")
	// NaN cannot be JSON-encoded: if the feed encoded frames nobody
	// subscribed to, it would log an encode error here. The FSM refuses
	// non-finite values, so the changes are handed to the feed directly.
	unencodable := func(seq uint64, v float64) *fsm.Changes {
		p := pointRec("j", seq, v).GetPoint()
		p.Seq = seq
		return &fsm.Changes{JobOrder: []string{"j"}, Points: map[string][]*gantrypb.MetricPoint{"j": {p}}}
	}
	e.feed.Applied(unencodable(2, math.NaN()))
	if strings.Contains(e.logs.String(), "encode frame") {
		t.Fatalf("frame encoded with no subscriber:\n%s", e.logs)
	}
	if e.hub.Subscribers() != 0 {
		t.Fatal("feed subscribed to the hub")
	}

	// With a subscriber the same batch is encoded (and the failure logged,
	// not panicked): proof the check above is meaningful.
	sub := e.hub.Subscribe(8, hub.JobTopic("j"))
	defer sub.Close()
	e.feed.Applied(unencodable(3, math.Inf(1)))
	if !strings.Contains(e.logs.String(), "encode frame") {
		t.Fatal("an unencodable frame was not logged")
	}
	if fs := e.take(sub); len(fs) != 0 {
		t.Fatalf("unencodable frame published: %s", types(fs))
	}
}

func TestScheduleWakeups(t *testing.T) {
	e := newEnv(t)
	e.apply(&gantrypb.SubmitJobCmd{JobId: "j", Spec: &gantrypb.JobSpec{Run: "x"}})
	if e.schedules.Load() != 1 {
		t.Fatalf("submit woke the scheduler %d times, want 1", e.schedules.Load())
	}
	e.apply(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n1"}})
	if e.schedules.Load() != 2 {
		t.Fatal("node change did not wake the scheduler")
	}
	f := feed.New(e.hub, slog.New(slog.DiscardHandler), func() { e.schedules.Add(1) })
	f.Applied(&fsm.Changes{Restored: true})
	if e.schedules.Load() != 3 {
		t.Fatal("restore did not wake the scheduler")
	}
	// A nil onSchedule is allowed.
	feed.New(e.hub, slog.New(slog.DiscardHandler), nil).Applied(&fsm.Changes{Restored: true})
}
