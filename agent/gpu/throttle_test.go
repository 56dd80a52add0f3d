package gpu

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gantry-ml/gantry/agent/health"
	"github.com/gantry-ml/gantry/internal/clockevents"
	"github.com/gantry-ml/gantry/lifecycle"
)

// The clocks event reasons mask is sampled as NVML reports it; a GPU that
// does not report one reads 0 and is no sampling error.
func TestThrottleReasonsSampled(t *testing.T) {
	lib, err := newMockLib(2, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	mockDevice(t, lib, 0).GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
		return nvml.ClocksEventReasonGpuIdle | nvml.ClocksThrottleReasonHwThermalSlowdown, nvml.SUCCESS
	}
	mockDevice(t, lib, 1).GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	s, err := openMock(t, lib, time.Now).Sample()
	if err != nil {
		t.Fatalf("Sample: %v", err)
	}
	if got := s.Gpus[0].ThrottleReasons; got != 0x41 {
		t.Errorf("GPU 0 mask %#x", got)
	}
	if got := s.Gpus[1].ThrottleReasons; got != 0 {
		t.Errorf("GPU 1 mask %#x", got)
	}
}

// The test script sets a mock GPU's mask, as an end-to-end test does.
func TestScriptedThrottle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gpus.json")
	if err := os.WriteFile(path, []byte(`{"gpus": {"1": {"util": 97, "power_w": 395, "throttle": 68}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	old := activeScript
	activeScript = newScriptFile(path)
	t.Cleanup(func() { activeScript = old })
	src, err := NewMock(2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	s, err := src.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if s.Gpus[0].ThrottleReasons != 0 || s.Gpus[1].ThrottleReasons != 68 {
		t.Errorf("masks %#x %#x", s.Gpus[0].ThrottleReasons, s.Gpus[1].ThrottleReasons)
	}
	if got := clockevents.Costly(s.Gpus[1].ThrottleReasons); !slices.Equal(got, []string{"sw_power_cap", "hw_thermal_slowdown"}) {
		t.Errorf("costly %q", got)
	}
}

// From NVML to the job's events: mock GPUs whose masks change over a
// scripted clock, sampled by a Source, judged by a health Monitor. A
// thermal slowdown that lasts the window is told once and its end once;
// brief power capping and an idle GPU say nothing.
func TestThrottleThroughTheMonitor(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	now := t0
	clock := func() time.Time { return now }
	lib, err := newMockLib(3, clock)
	if err != nil {
		t.Fatal(err)
	}
	// GPU 0: hot from 10 s to 100 s. GPU 1: power capped for 20 s of
	// every 30. GPU 2: idle throughout.
	mockDevice(t, lib, 0).GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
		if s := now.Sub(t0); s >= 10*time.Second && s < 100*time.Second {
			return nvml.ClocksThrottleReasonHwThermalSlowdown, nvml.SUCCESS
		}
		return 0, nvml.SUCCESS
	}
	mockDevice(t, lib, 1).GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
		if now.Sub(t0)%(30*time.Second) < 20*time.Second {
			return nvml.ClocksEventReasonSwPowerCap, nvml.SUCCESS
		}
		return 0, nvml.SUCCESS
	}
	mockDevice(t, lib, 2).GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
		return nvml.ClocksEventReasonGpuIdle, nvml.SUCCESS
	}
	src := openMock(t, lib, clock)
	m := health.New(health.ConfigWith(nil, health.Defaults{ThrottleAfter: 30 * time.Second}), []uint32{0, 1, 2}, t0, false)
	var got []health.Event
	for now = t0; now.Before(t0.Add(5 * time.Minute)); now = now.Add(time.Second) {
		s, err := src.Sample()
		if err != nil {
			t.Fatal(err)
		}
		m.Sample(s, now)
		got = append(got, m.Events(now)...)
	}
	if len(got) != 2 {
		t.Fatalf("events %+v", got)
	}
	on, off := got[0], got[1]
	if on.Kind != lifecycle.EventGPUThrottled || on.GPU != 0 || !on.At.Equal(t0.Add(40*time.Second)) ||
		!strings.Contains(on.Message, "GPU 0 throttled for 30s by hw_thermal_slowdown") {
		t.Errorf("throttled %+v", on)
	}
	if off.Kind != lifecycle.EventGPUThrottledCleared || off.GPU != 0 || !off.At.Equal(t0.Add(100*time.Second)) || off.Count != 90 {
		t.Errorf("cleared %+v", off)
	}
}
