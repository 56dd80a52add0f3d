package fsm_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func condRec(job string, seq uint64, kind string, active bool, gpus ...uint32) *gantrypb.Record {
	return &gantrypb.Record{JobId: job, Seq: seq, Body: &gantrypb.Record_Condition{Condition: &gantrypb.HealthCondition{
		Ts: 100, Kind: kind, Active: active, Evidence: "seen: " + kind, Signal: "gpus_idle", Gpus: gpus}}}
}

func kinds(j *gantrypb.Job) string {
	var ks []string
	for _, c := range j.Conditions {
		ks = append(ks, c.Kind)
	}
	return strings.Join(ks, ",")
}

func eventKinds(evs []*gantrypb.JobEvent) string {
	var ks []string
	for _, e := range evs {
		ks = append(ks, e.Kind)
	}
	return strings.Join(ks, ",")
}

func TestConditionSetClearedAndDeduplicated(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	h.mustOK(ingest("n1", condRec("j", 2, lifecycle.CondStalled, true, 0)))
	j := h.job("j")
	if kinds(j) != "stalled" || j.Conditions[0].SinceMs != 100_000 || j.Conditions[0].Evidence != "seen: stalled" {
		t.Fatalf("conditions = %v", j.Conditions)
	}
	// Said again (a restarted agent): no change, no event.
	h.mustOK(ingest("n1", condRec("j", 3, lifecycle.CondStalled, true, 0), condRec("j", 4, lifecycle.CondIdleGPUs, false)))
	// hung replaces stalled; idle_gpus sits beside it.
	h.mustOK(ingest("n1", condRec("j", 5, lifecycle.CondHung, true), condRec("j", 6, lifecycle.CondIdleGPUs, true, 0)))
	if got := kinds(h.job("j")); got != "hung,idle_gpus" {
		t.Fatalf("conditions %q, want hung,idle_gpus", got)
	}
	h.mustOK(ingest("n1", condRec("j", 7, lifecycle.CondHung, false)))
	if got := kinds(h.job("j")); got != "idle_gpus" {
		t.Fatalf("conditions %q after clearing hung", got)
	}
	if got := eventKinds(h.events("j")); got != "stalled,hung,idle_gpus,hung_cleared" {
		t.Errorf("events %q", got)
	}
	if j := h.job("j"); j.CancelRequested {
		t.Error("notify policy cancelled the job")
	}
	// The end of the job ends its conditions.
	h.mustOK(ingest("n1", exitRec("j", 8, &gantrypb.JobExit{ExitCode: code(0), Ts: 9})))
	if j := h.job("j"); len(j.Conditions) != 0 {
		t.Errorf("terminal job keeps conditions %v", j.Conditions)
	}
	// And a condition after the end changes nothing.
	h.mustOK(ingest("n1", condRec("j", 9, lifecycle.CondStalled, true)))
	if j := h.job("j"); len(j.Conditions) != 0 {
		t.Errorf("terminal job took a condition: %v", j.Conditions)
	}
}

func TestConditionPolicyCancel(t *testing.T) {
	h := newHarness(t)
	sub := submit("j")
	sub.Spec.Health = &gantrypb.HealthSpec{OnStall: lifecycle.PolicyCancel}
	h.mustOK(sub)
	h.mustOK(assign("j", "n1", 0))
	h.mustOK(ingest("n1", started("j", 1), condRec("j", 2, lifecycle.CondIdleGPUs, true, 0)))
	if h.job("j").CancelRequested {
		t.Fatal("on_idle defaults to notify, but idle_gpus cancelled the job")
	}
	h.mustOK(ingest("n1", point("j", 3, map[string]float64{"loss": 0.5}), condRec("j", 4, lifecycle.CondHung, true, 0)))
	j := h.job("j")
	if !j.CancelRequested {
		t.Fatal("on_stall cancel did not request a cancel for hung")
	}
	evs := h.events("j")
	if last := evs[len(evs)-1]; !strings.Contains(last.Message, "policy cancel") {
		t.Errorf("event does not say the policy cancels: %q", last.Message)
	}
	// The normal cancel path: the agent stops it, the exit keeps the final
	// metrics (I2) and the job ends cancelled.
	h.mustOK(ingest("n1", exitRec("j", 5, &gantrypb.JobExit{Signal: "SIGTERM", Ts: 9})))
	j = h.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_CANCELLED || j.FinalMetrics["loss"] != 0.5 {
		t.Errorf("state %s final %v, want cancelled with loss 0.5", j.State, j.FinalMetrics)
	}
}

func TestConditionRecordsScreened(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	bad := condRec("j", 2, "on_fire", true)
	big := condRec("j", 3, lifecycle.CondIdleGPUs, true, 64)
	res := h.apply(ingest("n1", bad, big))
	if r, ok := res.(fsm.IngestResult); !ok || r.Rejected != 2 {
		t.Errorf("result %#v, want 2 rejected", res)
	}
	if j := h.job("j"); len(j.Conditions) != 0 {
		t.Errorf("hostile condition records applied: %v", j.Conditions)
	}
}

func (h *harness) alerts() []*gantrypb.Alert {
	h.t.Helper()
	var out []*gantrypb.Alert
	if err := h.st.View(func(tx *store.Tx) (err error) { out, err = tx.Alerts(0, 0); return err }); err != nil {
		h.t.Fatal(err)
	}
	return out
}

func alertKinds(as []*gantrypb.Alert) string {
	var ks []string
	for _, a := range as {
		ks = append(ks, fmt.Sprintf("%d:%s", a.Id, a.Kind))
	}
	return strings.Join(ks, ",")
}

// TestAlertOutbox: each condition change, job end and node loss appends
// one alert, in apply order with dense ids; a repeat appends nothing; the
// delivered cursor only moves forward and deletes what it passes.
func TestAlertOutbox(t *testing.T) {
	h := newHarness(t)
	h.mustOK(&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n1", Hostname: "h1"}, AtMs: 1})
	h.running("j")
	h.mustOK(ingest("n1", condRec("j", 2, lifecycle.CondStalled, true, 0), condRec("j", 3, lifecycle.CondStalled, true, 0)))
	h.mustOK(ingest("n1", condRec("j", 4, lifecycle.CondStalled, false)))
	h.mustOK(ingest("n1", exitRec("j", 5, &gantrypb.JobExit{ExitCode: code(1), Ts: 9})))
	h.mustOK(&gantrypb.NodeDownCmd{NodeId: "n1", AtMs: 10})
	h.mustOK(&gantrypb.NodeDownCmd{NodeId: "n1", AtMs: 11}) // down already: no second alert
	as := h.alerts()
	if got := alertKinds(as); got != "1:stalled,2:stalled_cleared,3:job_failed,4:node_lost" {
		t.Fatalf("outbox %s", got)
	}
	if !strings.Contains(as[0].Text, "job j on n1 is stalled: seen: stalled") || as[2].JobId != "j" || as[3].Node != "n1" {
		t.Errorf("alerts %v", as)
	}
	h.mustOK(&gantrypb.AlertsDeliveredCmd{UpTo: 2})
	h.mustOK(&gantrypb.AlertsDeliveredCmd{UpTo: 1}) // never back
	if got := alertKinds(h.alerts()); got != "3:job_failed,4:node_lost" {
		t.Fatalf("after delivered 2: %s", got)
	}
	h.mustOK(&gantrypb.AlertsDeliveredCmd{UpTo: 99}) // never past the last
	h.running("k")
	if got := alertKinds(h.alerts()); got != "" {
		t.Fatalf("after delivered all: %s", got)
	}
	h.mustOK(ingest("n1", exitRec("k", 2, &gantrypb.JobExit{ExitCode: code(0), Ts: 9})))
	if got := alertKinds(h.alerts()); got != "5:job_succeeded" {
		t.Fatalf("ids go on after the cursor: %s", got)
	}
}

func TestAlertOutboxBounded(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	seq := uint64(2)
	for i := 0; i < store.MaxAlerts/2+10; i++ {
		h.mustOK(ingest("n1", condRec("j", seq, lifecycle.CondIdleGPUs, true, 0), condRec("j", seq+1, lifecycle.CondIdleGPUs, false)))
		seq += 2
	}
	as := h.alerts()
	if len(as) != store.MaxAlerts || as[0].Id != uint64(store.MaxAlerts/2+10)*2-store.MaxAlerts+1 {
		t.Errorf("outbox holds %d alerts from %d, want the newest %d", len(as), as[0].Id, store.MaxAlerts)
	}
}

func gpuSample(seq uint64, faults map[uint32]string) *gantrypb.Record {
	s := &gantrypb.GPUSample{Ts: 5}
	for i := uint32(0); i < 4; i++ {
		s.Gpus = append(s.Gpus, &gantrypb.GPUStat{Index: i, Fault: faults[i]})
	}
	return &gantrypb.Record{Seq: seq, Body: &gantrypb.Record_Gpu{Gpu: s}}
}

func (h *harness) node(id string) *gantrypb.Node {
	h.t.Helper()
	var n *gantrypb.Node
	if err := h.st.View(func(tx *store.Tx) (err error) { n, err = tx.Node(id); return err }); err != nil {
		h.t.Fatal(err)
	}
	return n
}

// TestGPUFaultsAndDrain: a sample reporting a failing GPU marks it
// unhealthy on the node once, with one alert; a GPU the node does not
// offer is not marked; the marks and drains survive the agent's
// reconnect; undraining the GPU clears its mark.
func TestGPUFaultsAndDrain(t *testing.T) {
	h := newHarness(t)
	up := &gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n1", Gpus: []*gantrypb.GPUInfo{{Index: 0}, {Index: 1}, {Index: 2}}}, AtMs: 1}
	h.mustOK(up)
	h.mustOK(ingest("n1", gpuSample(1, map[uint32]string{1: "XID 79 (GPU has fallen off the bus)", 3: "XID 79"})))
	h.mustOK(ingest("n1", gpuSample(2, map[uint32]string{1: "XID 79 (GPU has fallen off the bus)"})))
	n := h.node("n1")
	if len(n.UnhealthyGpus) != 1 || n.UnhealthyGpus[0].Index != 1 || n.UnhealthyGpus[0].Reason != "XID 79 (GPU has fallen off the bus)" {
		t.Fatalf("unhealthy %v", n.UnhealthyGpus)
	}
	if got := alertKinds(h.alerts()); got != "1:gpu_unhealthy" {
		t.Errorf("alerts %s", got)
	}
	h.mustOK(&gantrypb.DrainCmd{NodeId: "n1", Gpus: []uint32{2, 2}})
	h.mustOK(&gantrypb.DrainCmd{NodeId: "n1"})
	h.mustOK(up) // the agent reconnects
	n = h.node("n1")
	if !n.Drained || len(n.DrainedGpus) != 1 || n.DrainedGpus[0] != 2 || len(n.UnhealthyGpus) != 1 {
		t.Fatalf("after reconnect: drained %v gpus %v unhealthy %v", n.Drained, n.DrainedGpus, n.UnhealthyGpus)
	}
	h.mustOK(&gantrypb.DrainCmd{NodeId: "n1", Undrain: true})
	h.mustOK(&gantrypb.DrainCmd{NodeId: "n1", Gpus: []uint32{1, 2}, Undrain: true})
	n = h.node("n1")
	if n.Drained || len(n.DrainedGpus) != 0 || len(n.UnhealthyGpus) != 0 {
		t.Errorf("after undrain: drained %v gpus %v unhealthy %v", n.Drained, n.DrainedGpus, n.UnhealthyGpus)
	}
	if err, ok := h.apply(&gantrypb.DrainCmd{NodeId: "nope"}).(error); !ok || !errors.Is(err, lifecycle.ErrNodeNotFound) {
		t.Errorf("drain of an unknown node: %v", err)
	}
}
