package health

import (
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// gpuState is a scripted reading of every GPU of a trace.
type gpuState struct {
	util, power, sm float64
	memMiB          uint64
}

var (
	busy   = gpuState{util: 97, power: 330, sm: 1410, memMiB: 30000}
	idleS  = gpuState{util: 0, power: 55, sm: 210, memMiB: 30000}
	pegged = gpuState{util: 100, power: 85, sm: 1410, memMiB: 30000}
)

// trace drives a Monitor with one reading per second per GPU and a metric
// line every stepEvery (0: none) while logging is true, and returns every
// verdict with the second it came at.
type trace struct {
	t0   time.Time
	m    *Monitor
	gpus []uint32
	step int64
	got  []Verdict
}

func newTrace(cfg Config, gpus ...uint32) *trace {
	t0 := time.Unix(1_700_000_000, 0)
	return &trace{t0: t0, m: New(cfg, gpus, t0, false), gpus: gpus}
}

// run advances from second from to second to (exclusive).
func (tr *trace) run(from, to int, g gpuState, stepEvery int) {
	for s := from; s < to; s++ {
		at := tr.t0.Add(time.Duration(s) * time.Second)
		smp := &gantrypb.GPUSample{}
		for _, i := range tr.gpus {
			smp.Gpus = append(smp.Gpus, &gantrypb.GPUStat{Index: i, UtilizationPct: g.util, PowerW: g.power,
				PowerLimitW: 400, SmClockMhz: uint32(g.sm), MemoryUsedBytes: g.memMiB << 20})
		}
		tr.m.Sample(smp, at)
		if stepEvery > 0 && s%stepEvery == 0 {
			tr.step++
			st := tr.step
			tr.m.Line(&st, at)
		}
		tr.got = append(tr.got, tr.m.Eval(at)...)
	}
}

func (tr *trace) first(kind string, active bool) (Verdict, bool) {
	for _, v := range tr.got {
		if v.Kind == kind && v.Active == active {
			return v, true
		}
	}
	return Verdict{}, false
}

func (tr *trace) sec(v Verdict) int { return int(v.At.Sub(tr.t0) / time.Second) }

func cfg(stall, idle time.Duration) Config {
	c := ConfigFrom(&gantrypb.HealthSpec{StallAfterMs: stall.Milliseconds(), IdleAfterMs: idle.Milliseconds(),
		StartupGraceMs: (20 * time.Second).Milliseconds()})
	return c
}

func TestStalledWithIdleGPUs(t *testing.T) {
	tr := newTrace(cfg(10*time.Second, time.Minute), 0, 1)
	tr.run(0, 30, busy, 1)
	tr.run(30, 60, idleS, 0) // the trainer stops logging and its GPUs go idle at 30
	v, ok := tr.first(lifecycle.CondStalled, true)
	if !ok {
		t.Fatalf("no stalled verdict: %+v", tr.got)
	}
	if v.Signal != "gpus_idle" || tr.sec(v) != 39 {
		t.Errorf("stalled at %ds by %q, want at 39s (last step at 29) by gpus_idle; %s", tr.sec(v), v.Signal, v.Evidence)
	}
	if _, ok := tr.first(lifecycle.CondHung, true); ok {
		t.Error("hung reported for idle GPUs")
	}
	tr.run(60, 62, busy, 1) // progress resumes
	if c, ok := tr.first(lifecycle.CondStalled, false); !ok || c.Signal != "progress" || tr.sec(c) != 60 {
		t.Errorf("stalled not cleared at 60s by progress: %+v", tr.got)
	}
}

func TestHungWhenPeggedAtLowPower(t *testing.T) {
	tr := newTrace(cfg(10*time.Second, time.Minute), 0, 1, 2, 3)
	tr.run(0, 30, busy, 1)
	tr.run(30, 60, pegged, 0)
	v, ok := tr.first(lifecycle.CondHung, true)
	if !ok {
		t.Fatalf("no hung verdict: %+v", tr.got)
	}
	if v.Signal != "gpus_pegged_low_power" || tr.sec(v) != 39 {
		t.Errorf("hung at %ds by %q, want 39s by gpus_pegged_low_power", tr.sec(v), v.Signal)
	}
	if _, ok := tr.first(lifecycle.CondStalled, true); ok {
		t.Error("stalled reported as well as hung")
	}
	if !strings.Contains(v.Evidence, "GPU 3 util 100-100%") {
		t.Errorf("evidence does not show the GPUs: %s", v.Evidence)
	}
}

func TestBusyGPUsWithoutStepsIsStalledNotHung(t *testing.T) {
	tr := newTrace(cfg(10*time.Second, time.Minute), 0)
	tr.run(0, 30, busy, 1)
	tr.run(30, 60, busy, 0) // full power: computing, just not logging
	v, ok := tr.first(lifecycle.CondStalled, true)
	if !ok || v.Signal != "no_step" {
		t.Fatalf("want stalled by no_step, got %+v", tr.got)
	}
}

func TestAdaptiveWindowAndFloor(t *testing.T) {
	c := cfg(0, time.Hour)
	c.StallFloor = 20 * time.Second
	tr := newTrace(c, 0)
	tr.run(0, 60, busy, 3) // a step every 3 s: window max(30 s, 20 s)
	tr.run(60, 200, busy, 0)
	v, ok := tr.first(lifecycle.CondStalled, true)
	if !ok {
		t.Fatal("never stalled")
	}
	if got := tr.sec(v); got != 57+30 {
		t.Errorf("stalled at %ds, want %ds (last step 57 + 10 x 3 s)", got, 57+30)
	}
	// A fast job is held to the floor.
	tr = newTrace(c, 0)
	tr.run(0, 30, busy, 1)
	tr.run(30, 100, busy, 0)
	if v, _ := tr.first(lifecycle.CondStalled, true); tr.sec(v) != 29+20 {
		t.Errorf("fast job stalled at %ds, want %d (floor)", tr.sec(v), 29+20)
	}
}

func TestStartupGrace(t *testing.T) {
	tr := newTrace(cfg(5*time.Second, time.Hour), 0)
	tr.run(0, 19, idleS, 0) // loading data: no step yet, within the 20 s grace
	if len(tr.got) != 0 {
		t.Fatalf("verdicts within the startup grace: %+v", tr.got)
	}
	tr.run(19, 25, idleS, 0)
	v, ok := tr.first(lifecycle.CondStalled, true)
	if !ok || tr.sec(v) != 20 || !strings.Contains(v.Evidence, "startup grace") {
		t.Errorf("want stalled at 20s under the startup grace, got %+v", tr.got)
	}
}

func TestLongEvalWithDeclaredStallAfter(t *testing.T) {
	// An eval of 45 s every 60 steps, declared with stall_after 60 s.
	tr := newTrace(cfg(60*time.Second, 2*time.Minute), 0)
	s := 0
	for round := 0; round < 4; round++ {
		tr.run(s, s+60, busy, 1)
		tr.run(s+60, s+105, gpuState{util: 60, power: 200, sm: 1300, memMiB: 30000}, 0)
		s += 105
	}
	if len(tr.got) != 0 {
		t.Errorf("verdicts during evals within stall_after: %+v", tr.got)
	}
}

func TestCheckpointWithBrieflyIdleGPUs(t *testing.T) {
	// Defaults (floor 5 min, idle 10 min); a 90 s checkpoint with idle GPUs
	// every 10 min.
	tr := newTrace(ConfigFrom(nil), 0, 1)
	s := 0
	for round := 0; round < 4; round++ {
		tr.run(s, s+600, busy, 2)
		tr.run(s+600, s+690, idleS, 0)
		s += 690
	}
	if len(tr.got) != 0 {
		t.Errorf("verdicts during checkpoints: %+v", tr.got)
	}
}

func TestIdleGPUsWhileLogging(t *testing.T) {
	tr := newTrace(cfg(0, 30*time.Second), 0, 1, 2)
	// GPU 2 is never used; 0 and 1 busy. Readings per GPU differ, so feed
	// them by hand.
	for s := 0; s < 60; s++ {
		at := tr.t0.Add(time.Duration(s) * time.Second)
		tr.m.Sample(&gantrypb.GPUSample{Gpus: []*gantrypb.GPUStat{
			{Index: 0, UtilizationPct: 90, PowerW: 300, PowerLimitW: 400, SmClockMhz: 1400},
			{Index: 1, UtilizationPct: 90, PowerW: 300, PowerLimitW: 400, SmClockMhz: 1400},
			{Index: 2, UtilizationPct: 0, PowerW: 60, PowerLimitW: 400, SmClockMhz: 210},
			{Index: 5, UtilizationPct: 0, PowerW: 60}, // not the job's
		}}, at)
		st := int64(s)
		tr.m.Line(&st, at)
		tr.got = append(tr.got, tr.m.Eval(at)...)
	}
	v, ok := tr.first(lifecycle.CondIdleGPUs, true)
	if !ok || tr.sec(v) != 30 || len(v.GPUs) != 1 || v.GPUs[0] != 2 {
		t.Fatalf("want idle_gpus [2] at 30s, got %+v", tr.got)
	}
	// Utilization alone is not enough: a GPU at 2% drawing 250 W is busy.
	tr = newTrace(cfg(0, 30*time.Second), 0)
	tr.run(0, 100, gpuState{util: 2, power: 250, sm: 1400}, 1)
	if len(tr.got) != 0 {
		t.Errorf("idle_gpus for a GPU at high power: %+v", tr.got)
	}
}

func TestResumedMonitorClearsWhatItCannotKnow(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	m := New(cfg(10*time.Second, time.Minute), []uint32{0}, t0, true)
	m.Sample(&gantrypb.GPUSample{Gpus: []*gantrypb.GPUStat{{Index: 0, UtilizationPct: 90, PowerW: 300}}}, t0)
	st := int64(7)
	m.Line(&st, t0)
	got := m.Eval(t0)
	kinds := map[string]bool{}
	for _, v := range got {
		if v.Active {
			t.Errorf("resumed monitor reported %s active", v.Kind)
		}
		kinds[v.Kind] = true
	}
	for _, k := range lifecycle.Conditions {
		if !kinds[k] {
			t.Errorf("resumed monitor did not clear %s: %+v", k, got)
		}
	}
	if again := m.Eval(t0.Add(time.Second)); len(again) != 0 {
		t.Errorf("cleared twice: %+v", again)
	}
}

func TestDisabled(t *testing.T) {
	c := cfg(time.Second, time.Second)
	c.Disabled = true
	tr := newTrace(c, 0)
	tr.run(0, 100, idleS, 0)
	if len(tr.got) != 0 {
		t.Errorf("disabled checks reported %+v", tr.got)
	}
}

func TestBounded(t *testing.T) {
	tr := newTrace(cfg(0, time.Hour), 0)
	tr.run(0, 5000, busy, 1)
	if tr.m.track[0].n != sampleRing || tr.m.nIntervals != intervalRing {
		t.Errorf("rings hold %d readings, %d intervals", tr.m.track[0].n, tr.m.nIntervals)
	}
	many := make([]uint32, 1000)
	if m := New(ConfigFrom(nil), many, time.Now(), false); len(m.gpus) != MaxGPUs {
		t.Errorf("watches %d GPUs", len(m.gpus))
	}
}

func TestHostDefaultsUnderTheSpec(t *testing.T) {
	d := Defaults{K: 20, StallFloor: time.Minute, StartupGrace: time.Hour, IdleAfter: 2 * time.Minute, IdleUtilPct: 10}
	c := ConfigWith(nil, d)
	if c.K != 20 || c.StallFloor != time.Minute || c.StartupGrace != time.Hour || c.IdleAfter != 2*time.Minute || c.IdleUtilPct != 10 {
		t.Errorf("host defaults not taken: %+v", c)
	}
	c = ConfigWith(&gantrypb.HealthSpec{StartupGraceMs: 1000, IdleAfterMs: 2000, IdleUtilPct: 3}, d)
	if c.StartupGrace != time.Second || c.IdleAfter != 2*time.Second || c.IdleUtilPct != 3 {
		t.Errorf("the spec does not win: %+v", c)
	}
	if c := ConfigWith(nil, Defaults{K: 0.5, IdleUtilPct: 500}); c.K != DefaultK || c.IdleUtilPct != DefaultIdleUtilPct {
		t.Errorf("nonsense host defaults taken: %+v", c)
	}
}

func TestStalledBecomesHung(t *testing.T) {
	tr := newTrace(cfg(10*time.Second, time.Minute), 0, 1)
	tr.run(0, 30, busy, 1)
	tr.run(30, 45, busy, 0)   // computing without logging: stalled at 39
	tr.run(45, 70, pegged, 0) // then stuck in a collective
	s, ok := tr.first(lifecycle.CondStalled, true)
	if !ok || tr.sec(s) != 39 || s.Signal != "no_step" {
		t.Fatalf("want stalled by no_step at 39s, got %+v", tr.got)
	}
	h, ok := tr.first(lifecycle.CondHung, true)
	// At 53 s the readings of the last 10 s (44..53) are 9 pegged in 10:
	// the 90% the signature asks.
	if !ok || tr.sec(h) != 53 {
		t.Fatalf("want hung once 90%% of the last 10 s of readings are pegged (53s), got %+v", tr.got)
	}
	n := 0
	for _, v := range tr.got {
		if v.Kind == lifecycle.CondHung {
			n++
		}
	}
	if n != 1 {
		t.Errorf("hung reported %d times", n)
	}
	tr.run(70, 72, busy, 1)
	if _, ok := tr.first(lifecycle.CondHung, false); !ok {
		t.Error("hung not cleared by progress")
	}
}

// TestResumedMonitorDoesNotFlapAnIdleGPU: after an agent restart, a GPU
// still idle is not cleared and set again: the monitor waits.
func TestResumedMonitorDoesNotFlapAnIdleGPU(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	m := New(cfg(0, 5*time.Second), []uint32{0}, t0, true)
	var got []Verdict
	for s := 0; s < 10; s++ {
		at := t0.Add(time.Duration(s) * time.Second)
		m.Sample(&gantrypb.GPUSample{Gpus: []*gantrypb.GPUStat{{Index: 0, UtilizationPct: 0, PowerW: 50}}}, at)
		st := int64(s)
		m.Line(&st, at)
		got = append(got, m.Eval(at)...)
	}
	for _, v := range got {
		if v.Kind == lifecycle.CondIdleGPUs && !v.Active {
			t.Errorf("an idle GPU's condition cleared after a restart: %+v", got)
		}
	}
	if len(got) == 0 || got[len(got)-1].Kind != lifecycle.CondIdleGPUs || !got[len(got)-1].Active {
		t.Errorf("want idle_gpus set (again: the controller dedupes it), got %+v", got)
	}
}
