package health

import (
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// throttleTrace feeds a Monitor one sample per step (interval apart) whose
// GPUs report masks[gpu] and collects Events after each, keyed by the
// sample's offset from the start.
type throttleTrace struct {
	t0  time.Time
	m   *Monitor
	at  time.Duration
	got []Event
}

func newThrottleTrace(window time.Duration, gpus ...uint32) *throttleTrace {
	t0 := time.Unix(1_700_000_000, 0)
	return &throttleTrace{t0: t0, m: New(ConfigWith(nil, Defaults{ThrottleAfter: window}), gpus, t0, false)}
}

// run takes n samples interval apart, every GPU showing masks[gpu].
func (tr *throttleTrace) run(n int, interval time.Duration, masks map[uint32]uint64) {
	for range n {
		s := &gantrypb.GPUSample{}
		for g, mask := range masks {
			s.Gpus = append(s.Gpus, &gantrypb.GPUStat{Index: g, UtilizationPct: 97, PowerW: 398, PowerLimitW: 400,
				SmClockMhz: 1005, TemperatureC: 88, ThrottleReasons: mask})
		}
		at := tr.t0.Add(tr.at)
		tr.m.Sample(s, at)
		tr.got = append(tr.got, tr.m.Events(at)...)
		tr.at += interval
	}
}

func (tr *throttleTrace) kinds() []string {
	var out []string
	for _, e := range tr.got {
		out = append(out, string(e.Kind))
	}
	return out
}

const (
	hwThermal = 0x40
	swPowCap  = 0x4
	gpuIdle   = 0x1
	syncBoost = 0x10
)

func TestDefaultThrottleWindow(t *testing.T) {
	if c := ConfigFrom(nil); c.ThrottleAfter != DefaultThrottleAfter || DefaultThrottleAfter != time.Minute {
		t.Errorf("ThrottleAfter = %s, default %s", c.ThrottleAfter, DefaultThrottleAfter)
	}
	if c := ConfigWith(nil, Defaults{ThrottleAfter: 5 * time.Second}); c.ThrottleAfter != 5*time.Second {
		t.Errorf("host default not taken: %s", c.ThrottleAfter)
	}
}

// A sustained thermal slowdown is told once, when the window is reached,
// naming the GPU, the reasons and the time; its end is told once.
func TestThrottleEpisode(t *testing.T) {
	tr := newThrottleTrace(time.Minute, 0, 1)
	tr.run(10, time.Second, map[uint32]uint64{0: 0, 1: 0})
	tr.run(60, time.Second, map[uint32]uint64{0: hwThermal | gpuIdle, 1: 0})
	if len(tr.got) != 0 {
		t.Fatalf("events before the window ran out: %+v", tr.got)
	}
	tr.run(1, time.Second, map[uint32]uint64{0: hwThermal | swPowCap, 1: 0})
	if len(tr.got) != 1 {
		t.Fatalf("events at the window: %+v", tr.got)
	}
	e := tr.got[0]
	if e.Kind != lifecycle.EventGPUThrottled || e.GPU != 0 || e.Count != 60 ||
		!strings.Contains(e.Message, "GPU 0 throttled for 1m0s by sw_power_cap, hw_thermal_slowdown") ||
		!strings.Contains(e.Message, "SM 1005 MHz, 88 °C, 398 W of 400 W") {
		t.Errorf("event = %+v", e)
	}
	tr.run(119, time.Second, map[uint32]uint64{0: hwThermal, 1: 0})
	if len(tr.got) != 1 {
		t.Fatalf("told again in the same episode: %+v", tr.got)
	}
	tr.run(5, time.Second, map[uint32]uint64{0: gpuIdle, 1: 0})
	if k := tr.kinds(); len(k) != 2 || k[1] != string(lifecycle.EventGPUThrottledCleared) {
		t.Fatalf("events = %q", k)
	}
	if e := tr.got[1]; e.GPU != 0 || e.Count != 180 || !strings.Contains(e.Message, "GPU 0 is no longer throttled, after 3m0s (sw_power_cap, hw_thermal_slowdown)") {
		t.Errorf("cleared = %+v", e)
	}
	// A second episode is a new one: told again.
	tr.run(61, time.Second, map[uint32]uint64{0: 0, 1: swPowCap})
	if k := tr.kinds(); len(k) != 3 || k[2] != string(lifecycle.EventGPUThrottled) || tr.got[2].GPU != 1 {
		t.Fatalf("events = %+v", tr.got)
	}
}

// False positives: throttling shorter than the window, broken by a sample
// without a costing reason, or of benign reasons only says nothing.
func TestThrottleNoFalsePositives(t *testing.T) {
	tr := newThrottleTrace(time.Minute, 0)
	for range 10 {
		tr.run(50, time.Second, map[uint32]uint64{0: hwThermal})
		tr.run(1, time.Second, map[uint32]uint64{0: 0})
	}
	tr.run(600, time.Second, map[uint32]uint64{0: gpuIdle})
	tr.run(600, time.Second, map[uint32]uint64{0: gpuIdle | syncBoost | 0x2 | 0x100 | 0x200 | 0x400})
	// Unknown bits are named where the mask is shown, but never taken for
	// throttling: only a reason known to slow the GPU is.
	tr.run(600, time.Second, map[uint32]uint64{0: 0x8000})
	if len(tr.got) != 0 {
		t.Fatalf("events = %+v", tr.got)
	}
	// A GPU the job was not given is not its business.
	tr.run(120, time.Second, map[uint32]uint64{0: 0, 3: hwThermal})
	if len(tr.got) != 0 {
		t.Fatalf("events for another job's GPU = %+v", tr.got)
	}
}

// Samples far apart are not consecutive: two throttled samples with a
// silence longer than the window between them are not a sustained run.
func TestThrottleGapRestartsTheRun(t *testing.T) {
	tr := newThrottleTrace(time.Minute, 0)
	tr.run(2, 90*time.Second, map[uint32]uint64{0: hwThermal})
	if len(tr.got) != 0 {
		t.Fatalf("events = %+v", tr.got)
	}
	tr.run(61, time.Second, map[uint32]uint64{0: hwThermal})
	if k := tr.kinds(); len(k) != 1 || k[0] != string(lifecycle.EventGPUThrottled) {
		t.Fatalf("events = %q", k)
	}
}

// With the checks disabled nothing is told.
func TestThrottleDisabled(t *testing.T) {
	tr := newThrottleTrace(time.Minute, 0)
	tr.m.cfg.Disabled = true
	tr.run(200, time.Second, map[uint32]uint64{0: hwThermal})
	if len(tr.got) != 0 {
		t.Fatalf("events = %+v", tr.got)
	}
}
