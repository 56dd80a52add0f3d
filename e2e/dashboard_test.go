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

	"github.com/chromedp/chromedp"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/dashboard"
)

// chromiumPath is Debian's Chromium, which .ci/run installs.
const chromiumPath = "/usr/bin/chromium"

// dashTrainer writes one metric line every 50 ms, at least 60 of them
// (3 s), and goes on until the file named by $1 exists (the test has seen
// the page update live) or 400 lines (20 s). A fixed length would be
// either slow or, on a loaded machine, over before the page looked.
const dashTrainer = `#!/bin/sh
i=1
while [ $i -le 400 ]; do
  printf '{"step": %d, "loss": %d.25, "acc": %d, "total_steps": 400}\n' $i $((1000 - i)) $i >> "$GANTRY_METRICS_FILE"
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
	d := startDev(t, "", 2)
	b.ready(t)
	ctx := context.Background()
	dir := t.TempDir()
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
		b.waitJS(t, 10*time.Second, "the GPU utilization chart", `Number(document.querySelector('.chart[data-key="gpu:utilization"]')?.dataset.points) > 0`)

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
		if testing.Verbose() {
			// A tall viewport gets the whole page, GPU panel included.
			b.do(t, "grow the viewport", chromedp.EmulateViewport(1280, 1500))
			png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
			if err != nil {
				t.Fatalf("screenshot: %v", err)
			}
			if err := os.WriteFile("/tmp/gantry-dashboard.png", png, 0o644); err != nil {
				t.Errorf("write screenshot: %v", err)
			}
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
	})

	t.Run("LongJobChartIsDownsampled", func(t *testing.T) { testLongJobDownsampled(t, b, d) })

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
func testLongJobDownsampled(t *testing.T, b *browser, d *devController) {
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
	bands := evalJS[int](t, b, `document.querySelectorAll('.chart[data-key="loss"] path.band').length`)
	asked := evalJS[[]string](t, b, `performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.includes('/metrics?'))`)
	t.Logf("loss chart: %d buckets, %d points drawn, y max %v; metrics requests %q", buckets, points, ymax, asked)
	// The dashboard asks for 1000 buckets; those before the snapshot's
	// newest points are drawn, then those points.
	if buckets > 1000 || points >= longJobLines/4 {
		t.Errorf("loss chart has %d buckets and %d points for a %d-point run; want at most 1000 buckets and far fewer points than the run", buckets, points, longJobLines)
	}
	if ymax < 5000 || bands != 1 {
		t.Errorf("loss chart's y max is %v with %d band paths; the spike of 5000 must stay visible as a bucket's max", ymax, bands)
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
	if testing.Verbose() {
		png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		if err := os.WriteFile("/tmp/gantry-dashboard-long.png", png, 0o644); err != nil {
			t.Errorf("write screenshot: %v", err)
		}
	}
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
