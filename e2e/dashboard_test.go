package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/dashboard"
)

// chromiumPath is Debian's Chromium, which .ci/run installs.
const chromiumPath = "/usr/bin/chromium"

// dashTrainer writes one metric line and one log line every 50 ms, at
// least 60 of them (3 s), and goes on until the file named by $1 exists
// (the test has seen the page update live) or 400 lines (20 s). A fixed
// length would be either slow or, on a loaded machine, over before the
// page looked. $2, when given, offsets the loss, so two runs differ.
const dashTrainer = `#!/bin/sh
i=1
while [ $i -le 400 ]; do
  printf '{"step": %d, "loss": %d.25, "acc": %d, "total_steps": 400}\n' $i $((1000 + ${2:-0} - i)) $i >> "$GANTRY_METRICS_FILE"
  echo "step $i: training on, loss $((1000 + ${2:-0} - i))"
  if [ $i -ge 60 ] && [ -e "$1" ]; then exit 0; fi
  sleep 0.05
  i=$((i + 1))
done
`

// browser is a headless Chromium tab that records the page's uncaught
// exceptions and console errors, so that a broken script fails the test
// instead of merely leaving a blank page.
type browser struct {
	ctx       context.Context
	started   chan error
	startTook time.Duration
	mu        sync.Mutex
	errs      []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("the dashboard browser test needs Chromium at %s (apt-get install chromium; .ci/run installs it): %v", chromiumPath, err)
	}
	// The defaults already hold headless, no-first-run, disable-sync and
	// disable-background-networking.
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox, // CI runs as root, where the sandbox will not start
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	// Cleanups run last-registered first: Chromium exits before its
	// user-data-dir is removed.
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(cancelTab)
	b := &browser{ctx: ctx, started: make(chan error, 1)}
	// Chromium starts while the caller starts the controller; ready waits.
	// The first call lives as long as ctx, so it has no timeout.
	go func() {
		start := time.Now()
		err := chromedp.Do(ctx)
		b.startTook = time.Since(start)
		b.started <- err
	}()
	return b
}

// ready waits until the browser has started and then watches the page's
// console.
func (b *browser) ready(t *testing.T) {
	t.Helper()
	select {
	case err := <-b.started:
		if err != nil {
			t.Fatalf("starting %s: %v", chromiumPath, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not start within 30s", chromiumPath)
	}
	t.Logf("chromium started in %s", b.startTook.Round(time.Millisecond))
	messages := chromedp.Console(b.ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return // the tab is closing
			}
			// Network failures (a 401 the page handles) are browser-log
			// entries with a Source; only the page's own errors count.
			if m.IsException() || (m.Type == chromedp.ConsoleError && m.Source == "") {
				b.mu.Lock()
				b.errs = append(b.errs, m.String())
				b.mu.Unlock()
			}
		}
	}()
}

// do runs chromedp actions with a deadline.
func (b *browser) do(t *testing.T, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// evalJS evaluates a JavaScript expression in the page.
func evalJS[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS polls a JavaScript expression until it is truthy.
func (b *browser) waitJS(t *testing.T, timeout time.Duration, what, expr string) {
	t.Helper()
	waitFor(t, timeout, what, func() bool { return evalJS[bool](t, b, "!!("+expr+")") })
}

// chartPoints is the number of points a chart element says it draws, -1
// when the chart is not on the page.
func (b *browser) chartPoints(t *testing.T, key string) int {
	t.Helper()
	return evalJS[int](t, b, fmt.Sprintf(`(() => { const e = document.querySelector('.chart[data-key=%q]'); return e ? Number(e.dataset.points) : -1; })()`, key))
}

func (b *browser) text(t *testing.T, selector string) string {
	t.Helper()
	return evalJS[string](t, b, fmt.Sprintf(`(() => { const e = document.querySelector(%q); return e ? e.textContent : ''; })()`, selector))
}

// artifactDir is where the dashboard tests leave their screenshots:
// $GANTRY_E2E_ARTIFACTS when set (so CI can keep them), else a directory
// of the test's own.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("GANTRY_E2E_ARTIFACTS")
	if dir == "" {
		t.Log("screenshots go to a temporary directory, removed after the test; set GANTRY_E2E_ARTIFACTS=DIR to keep them")
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// screenshot saves the whole page as dir/name.png and logs the path.
func (b *browser) screenshot(t *testing.T, dir, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatalf("write screenshot: %v", err)
	}
	t.Logf("screenshot: %s", p)
}

// chartSeries is the number of runs a chart draws, read from uPlot's own
// legend (one row per series, the first being x), -1 with no chart.
func (b *browser) chartSeries(t *testing.T, key string) int {
	t.Helper()
	return evalJS[int](t, b, fmt.Sprintf(`(() => { const e = document.querySelector('.chart[data-key=%q] .uplot'); return e ? e.querySelectorAll('.u-legend tr.u-series').length - 1 : -1; })()`, key))
}

// emulateScheme makes the page see prefers-color-scheme: scheme.
func (b *browser) emulateScheme(t *testing.T, scheme string) {
	t.Helper()
	b.do(t, "emulate prefers-color-scheme: "+scheme, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
		})
		return err
	}))
}

func (b *browser) checkNoErrors(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.errs {
		t.Errorf("page error: %s", e)
	}
}

// TestDashboard drives the web dashboard in headless Chromium against a
// dev controller: a job's page shows its charts growing while it runs and
// its final metrics once it ends, and the jobs and nodes pages list it.
// One browser serves every subtest, since starting one costs seconds.
func TestDashboard(t *testing.T) {
	b := newBrowser(t)
	// The mock GPUs follow their simulated load until NodesPage writes
	// this script (a missing file scripts nothing).
	gpus := filepath.Join(t.TempDir(), "gpus.json")
	t.Setenv("GANTRY_TEST_GPU_SCRIPT", gpus)
	d := startDev(t, "", 2)
	b.ready(t)
	ctx := context.Background()
	dir := t.TempDir()
	shots := artifactDir(t)
	script, stop := filepath.Join(dir, "trainer.sh"), filepath.Join(dir, "stop")
	if err := os.WriteFile(script, []byte(dashTrainer), 0o755); err != nil {
		t.Fatal(err)
	}
	id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "dash-e2e", Run: script + " " + stop, Resources: apiv1.Resources{GPUs: 1}})
	if err != nil {
		t.Fatal(err)
	}

	var job apiv1.Job // as it ended
	t.Run("JobPageIsLive", func(t *testing.T) {
		b.do(t, "open the job page", chromedp.Navigate(d.addr+"/jobs/"+id), chromedp.WaitVisible(chromedp.CSS(`#job-state`)))
		b.waitJS(t, 10*time.Second, "the loss chart to show points", `Number(document.querySelector('.chart[data-key="loss"]')?.dataset.points) > 0`)
		first := b.chartPoints(t, "loss")
		if st := b.text(t, "#job-state"); st != apiv1.StateRunning {
			t.Fatalf("job page shows state %q with %d points drawn; want running (the trainer waits for the test)", st, first)
		}
		var second int
		waitFor(t, 5*time.Second, "the loss chart to grow", func() bool {
			second = b.chartPoints(t, "loss")
			return second > first
		})
		if evalJS[bool](t, b, `!document.querySelector('#final-panel').hidden`) {
			t.Fatalf("chart grew %d → %d only with the final panel shown: not live", first, second)
		}
		t.Logf("loss chart grew live: %d → %d points", first, second)
		if n := b.chartSeries(t, "loss"); n != 1 {
			t.Errorf("the loss chart's uPlot has %d series, want the one run", n)
		}
		b.waitJS(t, 10*time.Second, "the GPU utilization chart", `Number(document.querySelector('.chart[data-key="gpu:utilization"]')?.dataset.points) > 0`)

		// The log view follows the job: its byte count grows while the
		// trainer prints, before the job ends.
		b.waitJS(t, 10*time.Second, "the log view to show output", `Number(document.querySelector('#log-view')?.dataset.bytes) > 0`)
		logBytes := evalJS[int](t, b, `Number(document.querySelector('#log-view').dataset.bytes)`)
		var grown int
		waitFor(t, 5*time.Second, "the log view to grow", func() bool {
			grown = evalJS[int](t, b, `Number(document.querySelector('#log-view').dataset.bytes)`)
			return grown > logBytes
		})
		if st := b.text(t, "#job-state"); st != apiv1.StateRunning {
			t.Fatalf("the log view grew %d → %d bytes with the job %s; want it running (the trainer waits for the test)", logBytes, grown, st)
		}
		if txt := b.text(t, "#log-view"); !strings.Contains(txt, "step 1: training on") {
			t.Errorf("log view starts %.80q, want the trainer's first line", txt)
		}
		t.Logf("log view grew live: %d → %d bytes", logBytes, grown)
		b.screenshot(t, shots, "job-running")

		if err := os.WriteFile(stop, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		job = waitTerminal(t, d.api, id, 30*time.Second)
		step := job.FinalMetrics["step"]
		if job.State != apiv1.StateSucceeded || step < 60 || job.FinalMetrics["loss"] != 1000-step+0.25 || job.Points != uint64(step) {
			t.Fatalf("job ended %s with %d points and final metrics %v; want succeeded, one point per step, at step 60 or more", job.State, job.Points, job.FinalMetrics)
		}
		b.waitJS(t, 10*time.Second, "the final panel", fmt.Sprintf(`(() => { const p = document.querySelector('#final-panel'); return p && !p.hidden && p.dataset.step === "%d"; })()`, int(step)))
		if st := b.text(t, "#job-state"); st != apiv1.StateSucceeded {
			t.Errorf("job page shows state %q after the end, want succeeded", st)
		}
		wantLoss := fmt.Sprintf("%d.25", 1000-int(step))
		if row := b.text(t, `#final-metrics tr[data-key="loss"]`); !strings.Contains(row, wantLoss) {
			t.Errorf("final loss row = %q, want the last line's %s", row, wantLoss)
		}
		b.waitJS(t, 2*time.Second, "the loss chart to draw every point", fmt.Sprintf(`Number(document.querySelector('.chart[data-key="loss"]')?.dataset.points) === %d`, job.Points))
		// The log view stops once the API says the log is complete, with
		// every line, the last included.
		b.waitJS(t, 10*time.Second, "the whole log", fmt.Sprintf(`Number(document.querySelector('#log-view')?.dataset.bytes) === %d`, job.LogBytes))
		if txt := b.text(t, "#log-view"); !strings.Contains(txt, fmt.Sprintf("step %d: training on", int(step))) {
			t.Errorf("the ended job's log view does not end with step %d: …%q", int(step), txt[max(0, len(txt)-80):])
		}
	})

	t.Run("EndedJobPageFromSnapshot", func(t *testing.T) {
		// Snapshot and final frames arrive at once for a finished job.
		if !apiv1.IsTerminal(job.State) {
			t.Skip("the job did not end (see JobPageIsLive)")
		}
		b.do(t, "reopen the job page", chromedp.Navigate(d.addr+"/jobs/"+id))
		b.waitJS(t, 10*time.Second, "the final panel", fmt.Sprintf(`(() => { const p = document.querySelector('#final-panel'); return p && !p.hidden && p.dataset.step === "%d"; })()`, int(job.FinalMetrics["step"])))
		b.waitJS(t, 5*time.Second, "the charts from the snapshot", fmt.Sprintf(`Number(document.querySelector('.chart[data-key="acc"]')?.dataset.points) === %d`, job.Points))
		if n := b.chartPoints(t, "total_steps"); n != -1 {
			t.Errorf("total_steps has a chart (%d points); it should only drive the progress bar", n)
		}
		// The GPU charts stay after the end: an ended job's page gets no
		// live samples, so these come from the node's stored samples in the
		// job's started_at..finished_at window.
		b.waitJS(t, 10*time.Second, "the GPU charts of the ended job", `!document.querySelector('#gpu-panel').hidden && Number(document.querySelector('.chart[data-key="gpu:utilization"]')?.dataset.points) > 0`)
		if n := b.chartSeries(t, "gpu:utilization"); n != len(job.GPUs) {
			t.Errorf("the ended job's GPU chart has %d series, want one per GPU of the job (%v)", n, job.GPUs)
		}
		lo, hi := evalJS[float64](t, b, `Number(document.querySelector('.chart[data-key="gpu:utilization"]').dataset.xfirst)`), evalJS[float64](t, b, `Number(document.querySelector('.chart[data-key="gpu:utilization"]').dataset.xlast)`)
		if start, end := float64(job.StartedAt.Unix()), float64(job.FinishedAt.Unix()); lo < start-2 || hi > end+2 {
			t.Errorf("GPU samples span %.0f..%.0f, outside the job's window %.0f..%.0f", lo, hi, start, end)
		}
		b.do(t, "grow the viewport", chromedp.EmulateViewport(1280, 2000))
		b.screenshot(t, shots, "job-ended")
		b.do(t, "restore the viewport", chromedp.EmulateViewport(1280, 900))
	})

	t.Run("ZoomIsShared", func(t *testing.T) {
		// Dragging across one chart zooms every metric chart of the page
		// to the same x range; a double-click shows all again.
		b.waitJS(t, 5*time.Second, "the loss chart", `document.querySelector('.chart[data-key="loss"] .u-over')`)
		// Mouse events land at viewport coordinates: bring the chart in.
		evalJS[bool](t, b, `(document.querySelector('.chart[data-key="loss"]').scrollIntoView({ block: 'center' }), true)`)
		full := evalJS[[]float64](t, b, `(() => { const d = document.querySelector('.chart[data-key="loss"]').dataset; return [Number(d.xmin), Number(d.xmax)]; })()`)
		box := evalJS[[]float64](t, b, `(() => { const r = document.querySelector('.chart[data-key="loss"] .u-over').getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()`)
		y := box[1] + box[3]/2
		b.do(t, "drag across the loss chart", chromedp.DragAndDropXY(box[0]+box[2]*0.25, y, box[0]+box[2]*0.6, y))
		b.waitJS(t, 5*time.Second, "the charts to zoom", `document.querySelector('.chart[data-key="acc"]')?.dataset.zoomed === '1'`)
		zoomed := evalJS[[]float64](t, b, `['loss', 'acc'].flatMap((k) => { const d = document.querySelector('.chart[data-key="' + k + '"]').dataset; return [Number(d.xmin), Number(d.xmax)]; })`)
		if zoomed[0] != zoomed[2] || zoomed[1] != zoomed[3] || zoomed[0] <= full[0] || zoomed[1] >= full[1] {
			t.Errorf("after a drag on loss, loss shows %v and acc %v of the full %v; want the same narrower range", zoomed[:2], zoomed[2:], full)
		}
		b.do(t, "double-click the loss chart", chromedp.MouseClickXY(box[0]+box[2]/2, y, chromedp.ClickCount(2)))
		b.waitJS(t, 5*time.Second, "the zoom to reset", `document.querySelector('.chart[data-key="acc"]')?.dataset.zoomed === '0'`)
	})

	t.Run("ChartControls", func(t *testing.T) {
		if !apiv1.IsTerminal(job.State) {
			t.Skip("the job did not end (see JobPageIsLive)")
		}
		// The settings are kept in localStorage: later subtests get the defaults.
		defer evalJS[bool](t, b, `(localStorage.removeItem('gantry.charts'), true)`)
		// A fresh page: the pointer left over the chart by ZoomIsShared
		// would make the legend show the value under it.
		b.do(t, "reopen the job page", chromedp.Navigate(d.addr+"/jobs/"+id))
		legendLoss := `document.querySelector('.chart[data-key="loss"] .u-legend tr.u-series:nth-child(2) td.u-value')?.textContent`
		last := 1000 - job.FinalMetrics["step"] + 0.25
		b.waitJS(t, 5*time.Second, "the legend's latest loss", fmt.Sprintf(`%s === %q`, legendLoss, fmt.Sprint(last)))
		// Smoothing: the EMA of a falling loss lags above its last value.
		evalJS[bool](t, b, `(() => { const s = document.querySelector('#smoothing'); s.value = '0.9'; s.dispatchEvent(new Event('input')); return true; })()`)
		b.waitJS(t, 5*time.Second, "the smoothed loss", fmt.Sprintf(`document.querySelector('.chart[data-key="loss"]').dataset.smoothing === '0.9' && Number(%s) > %v`, legendLoss, last))
		smoothed := evalJS[string](t, b, legendLoss)
		// Log scale and x by wall time rebuild the charts with those axes.
		evalJS[bool](t, b, `(() => { const c = document.querySelector('#log-scale'); c.click(); return true; })()`)
		b.waitJS(t, 5*time.Second, "the log scale", `document.querySelector('.chart[data-key="loss"]').dataset.scale === 'log'`)
		evalJS[bool](t, b, `(() => { const s = document.querySelector('#x-axis'); s.value = 'wall'; s.dispatchEvent(new Event('change')); return true; })()`)
		start, end := float64(job.StartedAt.Unix()), float64(job.FinishedAt.Unix())
		b.waitJS(t, 5*time.Second, "x by wall time", fmt.Sprintf(`(() => { const d = document.querySelector('.chart[data-key="loss"]').dataset; return Number(d.xfirst) >= %v && Number(d.xlast) <= %v; })()`, start-1, end+1))
		t.Logf("smoothing 0.9 shows loss %s for a last value of %v; log scale and wall time applied", smoothed, last)
	})

	t.Run("LogReadsBackByOffset", func(t *testing.T) {
		// About 400 KiB of output: the page opens on the last 256 KiB and
		// reads the rest by offset when asked.
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "dash-log", Run: `seq 1 8000 | sed 's/$/: the quick brown fox jumps over the lazy dog/'`})
		if err != nil {
			t.Fatal(err)
		}
		j := waitTerminal(t, d.api, id, 30*time.Second)
		const tail = 256 << 10
		if j.State != apiv1.StateSucceeded || j.LogBytes <= tail {
			t.Fatalf("log job ended %s with %d log bytes; want succeeded with over %d", j.State, j.LogBytes, tail)
		}
		b.do(t, "open the log job's page", chromedp.Navigate(d.addr+"/jobs/"+id))
		b.waitJS(t, 10*time.Second, "the log's tail", fmt.Sprintf(`(() => { const d = document.querySelector('#log-view')?.dataset; return d && Number(d.bytes) === %d && Number(d.start) === %d; })()`, tail, j.LogBytes-tail))
		if txt := b.text(t, "#log-view"); strings.HasPrefix(txt, "1: the quick") || !strings.HasSuffix(txt, "8000: the quick brown fox jumps over the lazy dog\n") {
			t.Errorf("the log view shows %.40q … %q; want the tail only, to the last line", txt, txt[max(0, len(txt)-60):])
		}
		b.do(t, "load earlier", chromedp.Click(chromedp.CSS(`#log-earlier`)))
		b.waitJS(t, 10*time.Second, "the whole log", fmt.Sprintf(`(() => { const d = document.querySelector('#log-view').dataset; return Number(d.start) === 0 && Number(d.bytes) === %d; })()`, j.LogBytes))
		if txt := b.text(t, "#log-view"); !strings.HasPrefix(txt, "1: the quick brown fox") || len(txt) != int(j.LogBytes) {
			t.Errorf("after loading earlier the view holds %d bytes starting %.40q; want all %d from line 1", len(txt), txt, j.LogBytes)
		}
		if !evalJS[bool](t, b, `document.querySelector('#log-earlier').hidden`) {
			t.Error("Load earlier is still offered at offset 0")
		}
	})

	t.Run("CSPViolationsFailTests", func(t *testing.T) {
		// The tests' net for CSP mistakes: a blocked inline style must
		// reach the console errors that checkNoErrors reports.
		b.mu.Lock()
		before := len(b.errs)
		b.mu.Unlock()
		evalJS[bool](t, b, `(() => { const d = document.createElement('div'); d.setAttribute('style', 'color: red'); document.body.appendChild(d); return true; })()`)
		waitFor(t, 5*time.Second, "the violation in the console", func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			for _, e := range b.errs[before:] {
				if strings.Contains(e, "Content-Security-Policy blocked") {
					b.errs = b.errs[:before] // expected: not a page error
					return true
				}
			}
			return false
		})
	})

	t.Run("DarkMode", func(t *testing.T) {
		b.do(t, "open the first job's page", chromedp.Navigate(d.addr+"/jobs/"+id))
		b.waitJS(t, 10*time.Second, "its charts", `document.querySelector('.chart[data-key="loss"] .uplot') && document.querySelector('.chart[data-key="gpu:utilization"] .uplot')`)
		if bg := evalJS[string](t, b, `getComputedStyle(document.body).backgroundColor`); bg != "rgb(245, 246, 248)" {
			t.Errorf("the page's background is %s before dark mode, want the light one", bg)
		}
		b.emulateScheme(t, "dark")
		defer b.emulateScheme(t, "light")
		b.waitJS(t, 5*time.Second, "the dark page", `getComputedStyle(document.body).backgroundColor === 'rgb(15, 20, 25)'`)
		// The canvas charts are redrawn with the dark colours.
		b.waitJS(t, 5*time.Second, "the charts in dark colours", `[...document.querySelectorAll('.chart[data-key]')].every((c) => c.dataset.theme === 'dark')`)
		if bg := evalJS[string](t, b, `getComputedStyle(document.querySelector('.chart')).backgroundColor`); bg != "rgb(23, 28, 36)" {
			t.Errorf("a chart's background is %s in dark mode, want the dark panel colour", bg)
		}
		b.do(t, "grow the viewport", chromedp.EmulateViewport(1280, 2000))
		b.screenshot(t, shots, "job-ended-dark")
		b.do(t, "restore the viewport", chromedp.EmulateViewport(1280, 900))
	})

	t.Run("CompareRuns", func(t *testing.T) {
		if !apiv1.IsTerminal(job.State) {
			t.Skip("the first job did not end (see JobPageIsLive)")
		}
		// A second run with a higher loss, stopped after its first 60 lines.
		stop2 := filepath.Join(dir, "stop2")
		if err := os.WriteFile(stop2, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		id2, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "dash-e2e-2", Run: script + " " + stop2 + " 500", Resources: apiv1.Resources{GPUs: 1}})
		if err != nil {
			t.Fatal(err)
		}
		job2 := waitTerminal(t, d.api, id2, 30*time.Second)
		b.do(t, "open the jobs list", chromedp.Navigate(d.addr+"/"))
		for _, j := range []string{id, id2} {
			sel := fmt.Sprintf(`input[data-pick=%q]`, j)
			b.do(t, "tick "+j, chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.Click(chromedp.CSS(sel)))
		}
		b.do(t, "compare", chromedp.Click(chromedp.CSS(`#compare`)))
		b.waitJS(t, 10*time.Second, "the loss chart with both runs", fmt.Sprintf(`Number(document.querySelector('.chart[data-key="loss"]')?.dataset.points) === %d`, job.Points+job2.Points))
		for _, k := range []string{"loss", "acc"} {
			if n := b.chartSeries(t, k); n != 2 {
				t.Errorf("the %s chart's uPlot has %d series, want one per run", k, n)
			}
		}
		// One colour per run, the same in the run list and every legend.
		colours := evalJS[[]string](t, b, `[...document.querySelectorAll('.chart[data-key="loss"] .u-legend tr.u-series .u-marker')].slice(1).map((m) => getComputedStyle(m).borderColor)`)
		if len(colours) != 2 || colours[0] == colours[1] {
			t.Errorf("legend colours %q, want two different ones", colours)
		}
		names := evalJS[string](t, b, `[...document.querySelectorAll('.chart[data-key="loss"] .u-legend tr.u-series .u-label')].map((l) => l.textContent).join(',')`)
		if !strings.Contains(names, "dash-e2e,") || !strings.Contains(names, "dash-e2e-2") {
			t.Errorf("legend names %q, want both runs by name", names)
		}
		if n := evalJS[int](t, b, `document.querySelectorAll('#compare-runs .run').length`); n != 2 {
			t.Errorf("%d runs listed on the compare page, want 2", n)
		}
		b.screenshot(t, shots, "compare")
	})

	t.Run("JobsList", func(t *testing.T) {
		b.do(t, "open the jobs list", chromedp.Navigate(d.addr+"/"))
		row := fmt.Sprintf(`tr[data-job-id=%q]`, id)
		b.waitJS(t, 10*time.Second, "the job in the list", fmt.Sprintf(`document.querySelector(%q)`, row))
		if st := b.text(t, row+" .state"); st != apiv1.StateSucceeded {
			t.Errorf("jobs list shows state %q, want succeeded", st)
		}
		// Its link opens the job page inside the app.
		b.do(t, "follow the job link", chromedp.Click(chromedp.CSS(row+" a")), chromedp.WaitVisible(chromedp.CSS(`#final-panel`)))
	})

	t.Run("CancelButton", func(t *testing.T) {
		// The API refuses writes without a JSON Content-Type (CSRF
		// guard): the page's own cancel must still get through.
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "dash-cancel", Run: "sleep 300"})
		if err != nil {
			t.Fatal(err)
		}
		b.do(t, "open the job page", chromedp.Navigate(d.addr+"/jobs/"+id), chromedp.WaitVisible(chromedp.CSS(`button.danger`)))
		evalJS[bool](t, b, `(window.confirm = () => true, true)`)
		b.do(t, "click cancel", chromedp.Click(chromedp.CSS(`button.danger`)))
		if j := waitTerminal(t, d.api, id, 30*time.Second); j.State != apiv1.StateCancelled {
			t.Fatalf("job ended %s after the cancel button, want cancelled", j.State)
		}
	})

	t.Run("QueuedJobShowsItsReason", func(t *testing.T) {
		// A job holding both GPUs makes the next one wait; the list and the
		// job page say what it waits for.
		holder, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "dash-holder", Run: "sleep 300", Resources: apiv1.Resources{GPUs: 2}})
		if err != nil {
			t.Fatal(err)
		}
		waiter, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "dash-waiter", Run: "true", Resources: apiv1.Resources{GPUs: 1}})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			for _, id := range []string{waiter, holder} {
				if err := d.api.Cancel(ctx, id); err != nil && !strings.Contains(err.Error(), "409") {
					t.Errorf("cancel %s: %v", id, err)
				}
			}
		}()
		const want = "waiting for 1 free GPU; most free now: 0 on local"
		b.do(t, "open the jobs list", chromedp.Navigate(d.addr+"/"))
		row := fmt.Sprintf(`tr[data-job-id=%q] .reason`, waiter)
		b.waitJS(t, 10*time.Second, "the waiting job's reason in the list", fmt.Sprintf(`document.querySelector(%q)?.textContent === %q`, row, want))
		if n := evalJS[int](t, b, `document.querySelectorAll('#jobs .reason').length`); n != 1 {
			t.Errorf("%d reasons in the list, want only the queued job's", n)
		}
		b.screenshot(t, shots, "jobs-list")
		b.do(t, "open the waiting job's page", chromedp.Navigate(d.addr+"/jobs/"+waiter), chromedp.WaitVisible(chromedp.CSS(`#job-state`)))
		b.waitJS(t, 10*time.Second, "the reason on the job page", fmt.Sprintf(`document.querySelector('#job-reason')?.textContent === %q`, want))
		// The waiter runs once the holder is cancelled; its page drops the reason.
		if err := d.api.Cancel(ctx, holder); err != nil {
			t.Fatal(err)
		}
		b.waitJS(t, 30*time.Second, "the waiter to end on its page", `document.querySelector('#job-state')?.textContent === 'succeeded'`)
		if evalJS[bool](t, b, `!!document.querySelector('#job-reason')`) {
			t.Error("the job page still shows a reason after the job ran")
		}
	})

	t.Run("NodesPage", func(t *testing.T) {
		b.do(t, "open the nodes page", chromedp.Navigate(d.addr+"/nodes"))
		b.waitJS(t, 10*time.Second, "the local node with 2 GPUs", `document.querySelectorAll('section[data-node-id="local"] tr[data-gpu]').length === 2`)
		// A GPU held down by heat shows a throttled badge naming the
		// reason; the other, only idle, none.
		gpuScriptRaw(t, gpus, `{"gpus": {"1": {"util": 97, "power_w": 300, "sm_mhz": 1005, "mem_used_mib": 1000, "throttle": 65}}}`)
		defer func() {
			if err := os.Remove(gpus); err != nil {
				t.Error(err)
			}
		}()
		b.waitJS(t, 15*time.Second, "GPU 1's throttled badge",
			`document.querySelector('section[data-node-id="local"] tr[data-gpu="1"] [data-throttled]')?.dataset.throttled === 'hw_thermal_slowdown'`)
		if evalJS[bool](t, b, `!!document.querySelector('section[data-node-id="local"] tr[data-gpu="0"] [data-throttled]')`) {
			t.Error("GPU 0 shows a throttled badge; it is not throttled")
		}
		if txt := b.text(t, `section[data-node-id="local"] tr[data-gpu="1"] [data-throttled]`); txt != "throttled: hw_thermal_slowdown" {
			t.Errorf("badge text %q", txt)
		}
	})

	t.Run("GPUZoomSurvivesLiveSamples", func(t *testing.T) {
		// A GPU chart gets a sample a second; a zoom must not be undone
		// by the next one.
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "dash-gpu-zoom", Run: "sleep 300", Resources: apiv1.Resources{GPUs: 1}})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := d.api.Cancel(ctx, id); err != nil {
				t.Errorf("cancel %s: %v", id, err)
			}
		}()
		const chart = `document.querySelector('.chart[data-key="gpu:utilization"]')`
		b.do(t, "open the job page", chromedp.Navigate(d.addr+"/jobs/"+id))
		b.waitJS(t, 15*time.Second, "three GPU samples", chart+`?.querySelector('.u-over') && Number(`+chart+`.dataset.points) >= 3`)
		evalJS[bool](t, b, `(`+chart+`.scrollIntoView({ block: 'center' }), true)`)
		box := evalJS[[]float64](t, b, `(() => { const r = `+chart+`.querySelector('.u-over').getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()`)
		y := box[1] + box[3]/2
		b.do(t, "drag across the GPU chart", chromedp.DragAndDropXY(box[0]+box[2]*0.5, y, box[0]+box[2]*0.9, y))
		b.waitJS(t, 5*time.Second, "the GPU chart to zoom", chart+`.dataset.zoomed === '1'`)
		zoomed := evalJS[[]float64](t, b, `[Number(`+chart+`.dataset.xmin), Number(`+chart+`.dataset.xmax)]`)
		n := b.chartPoints(t, "gpu:utilization")
		b.waitJS(t, 10*time.Second, "two more GPU samples", fmt.Sprintf(`Number(%s.dataset.points) >= %d`, chart, n+2))
		after := evalJS[[]float64](t, b, `[Number(`+chart+`.dataset.xmin), Number(`+chart+`.dataset.xmax)]`)
		if z := evalJS[string](t, b, chart+`.dataset.zoomed`); z != "1" || after[0] != zoomed[0] || after[1] != zoomed[1] {
			t.Errorf("after new samples the GPU chart shows %v (zoomed %s), want the zoom %v kept", after, z, zoomed)
		}
	})

	t.Run("LongJobChartIsDownsampled", func(t *testing.T) { testLongJobDownsampled(t, b, d, shots) })

	t.Run("AsksForToken", func(t *testing.T) { testAsksForToken(t, b) })

	b.checkNoErrors(t)
}

// testAsksForToken serves the dashboard next to a fake API that wants a
// bearer token: the page must ask for it, keep it and send it.
func testAsksForToken(t *testing.T, b *browser) {
	const token = "s3cret-token"
	var mu sync.Mutex
	var sawHeader bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(apiv1.Error{Error: "missing or wrong bearer token"})
			return
		}
		mu.Lock()
		sawHeader = true
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(apiv1.JobList{Jobs: []apiv1.Job{{ID: "job-with-token", State: apiv1.StateRunning}}})
	})
	mux.Handle("/", dashboard.Handler())
	srv := httptest.NewServer(mux)
	defer srv.Close()

	b.do(t, "open the dashboard", chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(chromedp.CSS(`#token-input`)))
	b.do(t, "enter the token",
		chromedp.SendKeys(chromedp.CSS(`#token-input`), token),
		chromedp.Click(chromedp.CSS(`#token-form button[type=submit]`)))
	b.waitJS(t, 10*time.Second, "the jobs list with the token", `document.querySelector('tr[data-job-id="job-with-token"]')`)
	mu.Lock()
	ok := sawHeader
	mu.Unlock()
	if !ok {
		t.Error("the API never saw the Authorization header")
	}
	if stored := evalJS[string](t, b, `localStorage.getItem('gantry.token') || ''`); stored != token {
		t.Errorf("localStorage holds %q, want the token", stored)
	}
}

// longTrainer writes longJobLines lines at once, loss 1 everywhere but one
// spike of 5000 at step 12345, then a line every 50 ms until the file
// named by $1 exists (the test has seen the page grow live) or 400 more.
const longTrainer = `#!/bin/sh
i=1
while [ $i -le 20000 ]; do
  l=1
  if [ $i -eq 12345 ]; then l=5000; fi
  printf '{"step": %d, "loss": %d}\n' $i $l
  i=$((i + 1))
done >> "$GANTRY_METRICS_FILE"
while [ $i -le 20400 ] && [ ! -e "$1" ]; do
  printf '{"step": %d, "loss": 2}\n' $i >> "$GANTRY_METRICS_FILE"
  sleep 0.05
  i=$((i + 1))
done
`

const longJobLines = 20000

// testLongJobDownsampled: a long run's chart is built from the controller's
// downsampled buckets (GET /metrics?max_points=N), not from every point,
// the one-point spike survives, and live points keep being appended.
func testLongJobDownsampled(t *testing.T, b *browser, d *devController, shots string) {
	ctx := context.Background()
	dir := t.TempDir()
	script, stop := filepath.Join(dir, "long.sh"), filepath.Join(dir, "stop")
	if err := os.WriteFile(script, []byte(longTrainer), 0o755); err != nil {
		t.Fatal(err)
	}
	id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "dash-long", Run: script + " " + stop})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the long job's first 20,000 points", func() bool {
		j, err := d.api.Job(ctx, id)
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		if apiv1.IsTerminal(j.State) {
			t.Fatalf("long job ended %s with %d points before the test looked", j.State, j.Points)
		}
		return j.Points >= longJobLines
	})
	b.do(t, "open the long job's page", chromedp.Navigate(d.addr+"/jobs/"+id))
	b.waitJS(t, 15*time.Second, "the loss chart drawn from buckets", `Number(document.querySelector('.chart[data-key="loss"]')?.dataset.buckets) > 0`)
	buckets := evalJS[int](t, b, `Number(document.querySelector('.chart[data-key="loss"]').dataset.buckets)`)
	points := b.chartPoints(t, "loss")
	ymax := evalJS[float64](t, b, `Number(document.querySelector('.chart[data-key="loss"]').dataset.ymax)`)
	bands := evalJS[int](t, b, `Number(document.querySelector('.chart[data-key="loss"]').dataset.bands)`)
	asked := evalJS[[]string](t, b, `performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.includes('/metrics?'))`)
	t.Logf("loss chart: %d buckets, %d points drawn, y max %v; metrics requests %q", buckets, points, ymax, asked)
	// The dashboard asks for 1000 buckets; those before the snapshot's
	// newest points are drawn, then those points.
	if buckets > 1000 || points >= longJobLines/4 {
		t.Errorf("loss chart has %d buckets and %d points for a %d-point run; want at most 1000 buckets and far fewer points than the run", buckets, points, longJobLines)
	}
	if ymax < 5000 || bands != 1 {
		t.Errorf("loss chart's y max is %v with %d banded runs; the spike of 5000 must stay visible as a bucket's max", ymax, bands)
	}
	sawDownsampled := false
	for _, u := range asked {
		sawDownsampled = sawDownsampled || strings.Contains(u, "max_points=")
	}
	if !sawDownsampled {
		t.Errorf("the page never asked for max_points: %q", asked)
	}
	// Raw pages may fill in only the points after the last whole bucket.
	raw := evalJS[int](t, b, `performance.getEntriesByType('resource').map((e) => new URL(e.name)).filter((u) => u.pathname.endsWith('/metrics')).reduce((n, u) => n + Number(u.searchParams.get('limit') || 0), 0)`)
	if raw >= longJobLines/4 {
		t.Errorf("the page asked for %d raw points of a %d-point run", raw, longJobLines)
	}

	// Live points go on after the history.
	var grown int
	waitFor(t, 10*time.Second, "the long job's chart to grow live", func() bool {
		grown = b.chartPoints(t, "loss")
		return grown > points
	})
	if n := evalJS[int](t, b, `Number(document.querySelector('.chart[data-key="loss"]').dataset.buckets)`); n != buckets {
		t.Errorf("buckets %d → %d while live points arrived; want the history kept", buckets, n)
	}
	if st := b.text(t, "#job-state"); st != apiv1.StateRunning {
		t.Errorf("long job page shows %q while its chart grew; want running", st)
	}
	b.screenshot(t, shots, "long-job")
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if j := waitTerminal(t, d.api, id, 30*time.Second); j.State != apiv1.StateSucceeded || j.Points < longJobLines {
		t.Fatalf("long job ended %s with %d points, want succeeded with %d or more", j.State, j.Points, longJobLines)
	}
	b.waitJS(t, 10*time.Second, "the long job's final panel", `!document.querySelector('#final-panel').hidden`)
	if n := evalJS[int](t, b, `Number(document.querySelector('.chart[data-key="loss"]').dataset.buckets)`); n != buckets {
		t.Errorf("buckets %d → %d after the end; want the history kept", buckets, n)
	}
}
