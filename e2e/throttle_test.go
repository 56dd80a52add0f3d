package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// TestGPUThrottled scripts the dev agent's mock GPU through NVML clocks
// event reasons and follows them end to end: decoded in the API's GPU
// samples and on the node, and, for a job on the GPU, a gpu_throttled
// event once the throttling has lasted the agent's window and a
// gpu_throttled_cleared when it ends. Throttling shorter than the window,
// and gpu_idle held for longer, fire nothing.
func TestGPUThrottled(t *testing.T) {
	const window = 5 * time.Second
	script := filepath.Join(t.TempDir(), "gpus.json")
	t.Setenv("GANTRY_TEST_GPU_SCRIPT", script)
	d := startDevArgs(t, "", 1, "-job-user", "root", "-health-throttle-after", window.String())
	ctx := context.Background()
	id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "hot", Run: "sleep 600", Resources: apiv1.Resources{GPUs: 1},
		KillGrace: apiv1.Duration(2 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.api.Cancel(context.Background(), id) })
	job := waitState(t, d.api, id, apiv1.StateRunning, 60*time.Second)

	// newest is the node's latest GPU sample.
	newest := func() apiv1.GPUSample {
		samples, err := d.api.GPUs(ctx, job.Node)
		if err != nil || len(samples) == 0 {
			return apiv1.GPUSample{}
		}
		n := samples[0]
		for _, s := range samples {
			if s.Seq > n.Seq {
				n = s
			}
		}
		return n
	}
	// mask scripts GPU 0 busy with the given reasons and waits until the
	// node's newest sample shows them; it returns that sample.
	mask := func(m uint64) apiv1.GPUSample {
		t.Helper()
		gpuScriptRaw(t, script, fmt.Sprintf(`{"gpus": {"0": {"util": 97, "power_w": 390, "sm_mhz": 1005, "mem_used_mib": 30000, "throttle": %d}}}`, m))
		var s apiv1.GPUSample
		waitFor(t, 20*time.Second, fmt.Sprintf("a sample with mask %#x", m), func() bool {
			s = newest()
			return len(s.GPUs) == 1 && s.GPUs[0].ThrottleReasons == m
		})
		return s
	}
	// samplesPast waits until n more samples than seq are stored: the
	// agent's monitor runs on samples, so this is time passing for it.
	samplesPast := func(seq uint64, n int) {
		t.Helper()
		waitFor(t, time.Duration(n)*time.Second+20*time.Second, fmt.Sprintf("%d more samples", n), func() bool {
			return newest().Seq >= seq+uint64(n)
		})
	}
	throttleEvents := func() (on, off []apiv1.Event) {
		evs, err := d.api.Events(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			switch e.Kind {
			case "gpu_throttled":
				on = append(on, e)
			case "gpu_throttled_cleared":
				off = append(off, e)
			}
		}
		return on, off
	}

	// Brief throttling, well under the window: decoded, but no event.
	s := mask(0x40)
	g := s.GPUs[0]
	if !slices.Equal(g.ThrottleReasonNames, []string{"hw_thermal_slowdown"}) || !slices.Equal(g.ThrottledBy, []string{"hw_thermal_slowdown"}) {
		t.Errorf("hot GPU in the sample: %+v", g)
	}
	waitFor(t, 10*time.Second, "the node's GPU 0 throttled", func() bool {
		nodes, err := d.api.Nodes(ctx)
		return err == nil && len(nodes) == 1 && len(nodes[0].GPUs) == 1 && slices.Equal(nodes[0].GPUs[0].ThrottledBy, []string{"hw_thermal_slowdown"})
	})
	// gpu_idle only, for twice the window: named, never throttling.
	s = mask(0x1)
	if g := s.GPUs[0]; !slices.Equal(g.ThrottleReasonNames, []string{"gpu_idle"}) || len(g.ThrottledBy) != 0 {
		t.Errorf("idle GPU in the sample: %+v", g)
	}
	samplesPast(s.Seq, 2*int(window/time.Second))
	if on, off := throttleEvents(); len(on)+len(off) != 0 {
		t.Fatalf("false positive: %+v %+v", on, off)
	}

	// Sustained: told once the window has passed, once.
	hot := time.Now()
	mask(0x40 | 0x4)
	var on []apiv1.Event
	waitFor(t, window+20*time.Second, "gpu_throttled", func() bool { on, _ = throttleEvents(); return len(on) > 0 })
	t.Logf("gpu_throttled %s after the script turned the GPU hot (window %s)", time.Since(hot).Round(10*time.Millisecond), window)
	if m := on[0].Message; !strings.Contains(m, "GPU 0 throttled for") || !strings.Contains(m, "sw_power_cap, hw_thermal_slowdown") {
		t.Errorf("gpu_throttled message %q", m)
	}
	s = newest()
	samplesPast(s.Seq, int(window/time.Second)+1)
	mask(0)
	var off []apiv1.Event
	waitFor(t, 20*time.Second, "gpu_throttled_cleared", func() bool { on, off = throttleEvents(); return len(off) > 0 })
	if len(on) != 1 || len(off) != 1 || !strings.Contains(off[0].Message, "GPU 0 is no longer throttled") {
		t.Errorf("events: %+v then %+v; want one of each", on, off)
	}
	if err := os.Remove(script); err != nil {
		t.Error(err)
	}
}
