package cli

import (
	"bytes"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

func TestSparkline(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	tests := []struct {
		name   string
		values []float64
		width  int
		want   string
	}{
		{"no values", nil, 10, ""},
		{"no room", []float64{1, 2}, 0, ""},
		{"ramp spans every level", []float64{0, 1, 2, 3, 4, 5, 6, 7}, 8, "▁▂▃▄▅▆▇█"},
		{"descending", []float64{3, 2, 1}, 10, "█▅▁"},
		{"keeps the newest values", []float64{100, 0, 1, 2, 7, 8, 9}, 3, "▁▅█"},
		{"constant series sits mid height", []float64{0.5, 0.5, 0.5, 0.5}, 10, "▄▄▄▄"},
		{"one value", []float64{42}, 10, "▄"},
		{"negative values", []float64{-1, 0, 1}, 10, "▁▅█"},
		{"huge range", []float64{1e-9, 1e9}, 10, "▁█"},
		{"non-finite values are gaps outside the scale", []float64{1, nan, 3, inf, 2}, 10, "▁ █ ▅"},
		{"nothing finite", []float64{nan, inf}, 10, "  "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Sparkline(tt.values, tt.width); got != tt.want {
				t.Errorf("Sparkline(%v, %d) = %q, want %q", tt.values, tt.width, got, tt.want)
			}
		})
	}
}

// Whatever finite series it gets, a sparkline has one bar per value shown,
// its lowest value at ▁ and its highest at █.
func TestSparklineProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		n := 2 + r.IntN(60)
		width := 1 + r.IntN(50)
		vals := make([]float64, n)
		for j := range vals {
			vals[j] = (r.Float64() - 0.5) * math.Pow(10, float64(r.IntN(20)-10))
		}
		got := []rune(Sparkline(vals, width))
		if len(got) != min(n, width) {
			t.Fatalf("case %d: %d bars for %d values in width %d", i, len(got), n, width)
		}
		shown := vals[n-len(got):]
		lo, hi := 0, 0
		for j, v := range shown {
			if !strings.ContainsRune(string(sparkRunes), got[j]) {
				t.Fatalf("case %d: bar %q is not a sparkline rune", i, got[j])
			}
			if v < shown[lo] {
				lo = j
			}
			if v > shown[hi] {
				hi = j
			}
		}
		if shown[lo] != shown[hi] && (got[lo] != '▁' || got[hi] != '█') {
			t.Fatalf("case %d: min drawn %q, max drawn %q", i, got[lo], got[hi])
		}
	}
}

func TestPushHistoryKeepsTheNewest(t *testing.T) {
	var h []float64
	for i := range 3 * sparkPoints {
		h = pushHistory(h, float64(i))
	}
	if len(h) != sparkPoints || h[0] != float64(2*sparkPoints) || h[sparkPoints-1] != float64(3*sparkPoints-1) {
		t.Errorf("history = %v", h)
	}
}

// panelFixture is a job 65 s into its run with three metrics, one on a
// two-GPU node of which it holds GPU 0.
func panelFixture() *Progress {
	started := now.Add(-65 * time.Second)
	job := apiv1.Job{ID: "j-1", Name: "demo", State: apiv1.StateRunning, Node: "gpu-a", GPUs: []int{0}, StartedAt: &started}
	p := &Progress{}
	p.Apply(apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &job, Points: []apiv1.Point{pt(1, 0, "total_steps", 300.0)}})
	for i := range 50 {
		p.Apply(apiv1.Frame{Type: apiv1.FrameMetrics, Points: []apiv1.Point{
			pt(uint64(i+2), int64(3*i+3), "loss", 3-float64(i)/20, "lr", 0.0003, "tokens_per_s", float64(12000+i%7*100)),
		}})
	}
	p.Apply(apiv1.Frame{Type: apiv1.FrameGPU, GPU: &apiv1.GPUSample{Seq: 1, GPUs: []apiv1.GPUStat{
		{Index: 0, UtilizationPct: 40, MemoryUsedBytes: 30 << 30, MemoryTotalBytes: 80 << 30, TemperatureC: 60, PowerW: 250},
		{Index: 1, UtilizationPct: 5, MemoryUsedBytes: 1 << 30, MemoryTotalBytes: 80 << 30, TemperatureC: 35, PowerW: 60},
	}}})
	p.Apply(apiv1.Frame{Type: apiv1.FrameGPU, GPU: &apiv1.GPUSample{Seq: 2, GPUs: []apiv1.GPUStat{
		{Index: 0, UtilizationPct: 97.4, MemoryUsedBytes: 31 << 30, MemoryTotalBytes: 80 << 30, TemperatureC: 71, PowerW: 301},
		{Index: 1, UtilizationPct: 5, MemoryUsedBytes: 1 << 30, MemoryTotalBytes: 80 << 30, TemperatureC: 35, PowerW: 60},
	}}})
	return p
}

// A throttled GPU's row ends with the reasons; the sparkline gives way.
func TestPanelGPUThrottled(t *testing.T) {
	g := apiv1.GPUStat{Index: 0, UtilizationPct: 97.4, MemoryUsedBytes: 31 << 30, MemoryTotalBytes: 80 << 30,
		TemperatureC: 88, PowerW: 301, ThrottledBy: []string{"hw_thermal_slowdown"}}
	want := "  gpu0    97%   31.0/80.0 GiB   88°C   301 W  ▁█  throttled:hw_thermal_slowdown"
	if got := gpuRow(g, []float64{40, 97.4}, 100); got != want {
		t.Errorf("row =\n%q\nwant\n%q", got, want)
	}
	want = "  gpu0    97%   31.0/80.0 GiB   88°C   301 W  throttled:hw_thermal_slowdown"
	if got := gpuRow(g, []float64{40, 97.4}, 60); got != want {
		t.Errorf("narrow row =\n%q\nwant\n%q", got, want)
	}
	g.ThrottledBy = nil
	if got := gpuRow(g, nil, 60); strings.Contains(got, "throttled") {
		t.Errorf("unthrottled row %q", got)
	}
}

func TestPanel(t *testing.T) {
	tests := []struct {
		name          string
		width, height int
		want          []string
	}{
		{
			name: "wide terminal", width: 80, height: 24,
			want: []string{
				"job j-1  demo  running on gpu-a (GPUs 0)  elapsed 1m5s",
				"step 150/300 [####################--------------------]  50%",
				"  loss          0.55        ███▇▇▇▇▇▇▆▆▆▆▆▅▅▅▅▅▅▄▄▄▄▄▄▃▃▃▃▃▂▂▂▂▂▂▁▁▁",
				"  lr            0.0003      ▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄",
				"  tokens_per_s  12000       ▅▆▇█▁▂▃▅▆▇█▁▂▃▅▆▇█▁▂▃▅▆▇█▁▂▃▅▆▇█▁▂▃▅▆▇█▁",
				"  gpu0    97%   31.0/80.0 GiB   71°C   301 W  ▁█",
			},
		},
		{
			name: "narrow terminal: shorter sparklines and bar, lines cut", width: 40, height: 24,
			want: []string{
				"job j-1  demo  running on gpu-a (GPUs …",
				"step 150/300 [##########---------]  50%",
				"  loss          0.55        █▇▇▆▅▄▄▃▂▂▁",
				"  lr            0.0003      ▄▄▄▄▄▄▄▄▄▄▄",
				"  tokens_per_s  12000       ▆▇█▁▂▃▅▆▇█▁",
				"  gpu0    97%   31.0/80.0 GiB   71°C  …",
			},
		},
		{
			name: "too narrow for sparklines", width: 30, height: 24,
			want: []string{
				"job j-1  demo  running on gp…",
				"step 150/300 50%",
				"  loss          0.55",
				"  lr            0.0003",
				"  tokens_per_s  12000",
				"  gpu0    97%   31.0/80.0 Gi…",
			},
		},
		{
			name: "short terminal: metrics give way to GPUs", width: 80, height: 6,
			want: []string{
				"job j-1  demo  running on gpu-a (GPUs 0)  elapsed 1m5s",
				"step 150/300 [####################--------------------]  50%",
				"  loss  0.55        ███▇▇▇▇▇▇▆▆▆▆▆▅▅▅▅▅▅▄▄▄▄▄▄▃▃▃▃▃▂▂▂▂▂▂▁▁▁",
				"  … 2 more metrics",
				"  gpu0    97%   31.0/80.0 GiB   71°C   301 W  ▁█",
			},
		},
		{
			name: "tiny terminal", width: 80, height: 3,
			want: []string{
				"job j-1  demo  running on gpu-a (GPUs 0)  elapsed 1m5s",
				"step 150/300 [####################--------------------]  50%",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Panel(panelFixture(), tt.width, tt.height, now)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("Panel(%d×%d) =\n%s\nwant\n%s", tt.width, tt.height, strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if len(got) > tt.height-1 {
				t.Errorf("%d lines in a %d-line terminal: it would scroll", len(got), tt.height)
			}
			for _, l := range got {
				if n := len([]rune(l)); n >= tt.width {
					t.Errorf("line of %d runes in %d columns would wrap: %q", n, tt.width, l)
				}
			}
		})
	}
}

func TestPanelBeforeAndAfter(t *testing.T) {
	created := now.Add(-3 * time.Second)
	started := now.Add(-2 * time.Minute)
	finishedAt := now.Add(-time.Minute)
	tests := []struct {
		name string
		p    Progress
		want []string
	}{
		{
			name: "nothing yet",
			want: []string{"job ?  connecting", "step -"},
		},
		{
			name: "queued",
			p:    Progress{Job: apiv1.Job{ID: "j-2", State: apiv1.StateQueued, CreatedAt: &created}},
			want: []string{"job j-2  queued  waiting 3s", "step -"},
		},
		{
			name: "ended: elapsed stops at the finish",
			p: Progress{Job: apiv1.Job{ID: "j-3", State: apiv1.StateSucceeded, Node: "n", StartedAt: &started, FinishedAt: &finishedAt},
				Step: ptr(int64(7))},
			want: []string{"job j-3  succeeded on n  elapsed 1m0s", "step 7"},
		},
		{
			name: "cancel requested",
			p:    Progress{Job: apiv1.Job{ID: "j-4", State: apiv1.StateRunning, CancelRequested: true}},
			want: []string{"job j-4  running, cancel requested", "step -"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Panel(&tt.p, 0, 0, now)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("Panel =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

// The final metrics fill the values but not the sparklines: they repeat
// the last point, which is already drawn.
func TestFinalFrameDoesNotExtendHistory(t *testing.T) {
	p := panelFixture()
	before := len(p.hist["loss"])
	done := p.Job
	done.State = apiv1.StateSucceeded
	done.FinalMetrics = map[string]float64{"loss": 0.5, "step": 151}
	p.Apply(apiv1.Frame{Type: apiv1.FrameFinal, Job: &done})
	if len(p.hist["loss"]) != before || p.Values["loss"] != 0.5 || *p.Step != 151 {
		t.Errorf("after final: %d history values (was %d), loss %v, step %d", len(p.hist["loss"]), before, p.Values["loss"], *p.Step)
	}
	// A snapshot repeating the last GPU sample adds nothing either.
	gpuBefore := len(p.gpuHist[0])
	p.Apply(apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &done, GPU: p.GPU})
	if len(p.gpuHist[0]) != gpuBefore {
		t.Errorf("a repeated GPU sample grew the history from %d to %d", gpuBefore, len(p.gpuHist[0]))
	}
}

func TestLiveViewTTYPanel(t *testing.T) {
	var b bytes.Buffer
	clk := &fakeClock{t: now}
	v := newLiveView(Env{Stdout: &b, TTY: true, Now: clk.now, Width: func() int { return 40 }, Height: func() int { return 24 }})
	running := apiv1.Job{ID: "j-1", State: apiv1.StateRunning}
	v.frame(apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &running, Points: []apiv1.Point{pt(1, 0, "total_steps", 10.0)}})
	clk.t = clk.t.Add(time.Second)
	v.frame(apiv1.Frame{Type: apiv1.FrameMetrics, Points: []apiv1.Point{pt(2, 5, "loss", 1.0)}})
	clk.t = clk.t.Add(time.Millisecond)
	// Too soon after the last draw, for the frame and for the ticker.
	v.frame(apiv1.Frame{Type: apiv1.FrameMetrics, Points: []apiv1.Point{pt(3, 6, "loss", 0.5)}})
	v.tick()
	if strings.Contains(b.String(), "step 6/10") {
		t.Fatalf("redrawn within %s of the last draw:\n%q", ttyRedrawEvery, b.String())
	}
	clk.t = clk.t.Add(ttyRedrawEvery)
	v.tick() // draws what the rate limit held back
	v.tick() // nothing new
	done := running
	done.State = apiv1.StateSucceeded
	v.frame(apiv1.Frame{Type: apiv1.FrameFinal, Job: &done})
	v.finish()

	const el, ed = "\033[K\n", "\033[J"
	want := "job j-1 running\n" +
		"\rjob j-1  running" + el +
		"\rstep 0/10 [----------------------]   0%" + el + ed +
		"\033[2A" +
		"\rjob j-1  running" + el +
		"\rstep 5/10 [###########-----------]  50%" + el +
		"\r  loss  1           ▄" + el + ed +
		"\033[3A" +
		"\rjob j-1  running" + el +
		"\rstep 6/10 [#############---------]  60%" + el +
		"\r  loss  0.5         █▁" + el + ed +
		"\033[3A" +
		"\rjob j-1  succeeded" + el +
		"\rstep 6/10 [#############---------]  60%" + el +
		"\r  loss  0.5         █▁" + el + ed
	if got := b.String(); got != want {
		t.Errorf("output =\n%q\nwant\n%q", got, want)
	}
}

// A state change mid-run prints its line where the panel was, and the
// panel comes back below it.
func TestLiveViewTTYStateLineAbovePanel(t *testing.T) {
	var b bytes.Buffer
	clk := &fakeClock{t: now}
	v := newLiveView(Env{Stdout: &b, TTY: true, Now: clk.now, Width: func() int { return 40 }, Height: func() int { return 24 }})
	v.frame(apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &apiv1.Job{ID: "j-1", State: apiv1.StateQueued}})
	clk.t = clk.t.Add(time.Second)
	v.frame(apiv1.Frame{Type: apiv1.FrameState, Job: &apiv1.Job{ID: "j-1", State: apiv1.StateRunning, Node: "n"}})
	v.breakLine() // a message from outside the view erases the panel
	v.leave()
	want := "job j-1 queued\n" +
		"\rjob j-1  queued\033[K\n\rstep -\033[K\n\033[J" +
		"\033[2A\r\033[J" + "job j-1 running on n\n" +
		"\rjob j-1  running on n\033[K\n\rstep -\033[K\n\033[J" +
		"\033[2A\r\033[J"
	if got := b.String(); got != want {
		t.Errorf("output =\n%q\nwant\n%q", got, want)
	}
}

// A quiet running job's panel is redrawn once a second, for its clock.
func TestLiveViewTickRefreshesClock(t *testing.T) {
	var b bytes.Buffer
	clk := &fakeClock{t: now}
	started := now
	v := newLiveView(Env{Stdout: &b, TTY: true, Now: clk.now, Width: func() int { return 60 }})
	v.frame(apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &apiv1.Job{ID: "j-1", State: apiv1.StateRunning, StartedAt: &started}})
	clk.t = clk.t.Add(ttyClockEvery / 2)
	v.tick()
	if strings.Contains(b.String(), "\033[2A") {
		t.Fatalf("redrawn with nothing new before a second passed: %q", b.String())
	}
	clk.t = clk.t.Add(ttyClockEvery / 2)
	v.tick()
	if !strings.HasSuffix(b.String(), "\033[2A\rjob j-1  running  elapsed 1s\033[K\n\rstep -\033[K\n\033[J") {
		t.Errorf("no clock redraw after a second: %q", b.String())
	}
}

func TestLiveViewTickPlainIsSilent(t *testing.T) {
	var b bytes.Buffer
	clk := &fakeClock{t: now}
	v := newLiveView(Env{Stdout: &b, Now: clk.now})
	v.frame(apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &apiv1.Job{ID: "j-1", State: apiv1.StateRunning}})
	out := b.String()
	clk.t = clk.t.Add(time.Minute)
	v.tick()
	if b.String() != out {
		t.Errorf("tick wrote to a non-terminal: %q", strings.TrimPrefix(b.String(), out))
	}
	if stop := v.startTicker(); stop != nil {
		stop() // no goroutine to wait for
	}
}

// `gantry watch` on a terminal draws the panel and still ends with the
// verdict and the final metrics table.
func TestWatchOnTerminal(t *testing.T) {
	fc := newFakeController(t)
	fc.live = play(liveFrames, finished(apiv1.StateSucceeded, ptr(0)))
	var out, errOut bytes.Buffer
	code := Main(t.Context(), []string{"--addr", fc.srv.URL, "watch", "j-1"}, Env{
		Stdout: &out, Stderr: &errOut, TTY: true,
		Width: func() int { return 100 }, Height: func() int { return 30 },
		Now: func() time.Time { return now },
	})
	if code != 0 {
		t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	s := out.String()
	for _, w := range []string{
		"job j-1 running on gpu-a (GPUs 0)\n",
		"\rjob j-1  demo  succeeded on gpu-a (GPUs 0)\033[K\n",
		"\r  loss       0.0625      █▁",
		"\r  gpu0    97%   30.0/80.0 GiB",
		"job j-1 succeeded (exit code 0)\nMETRIC     VALUE\nstep       300\n",
	} {
		if !strings.Contains(s, w) {
			t.Errorf("stdout lacks %q:\n%q", w, s)
		}
	}
	if !strings.HasSuffix(s, "lr         1e-05\n") {
		t.Errorf("stdout does not end with the final metrics table:\n%q", s)
	}
}
