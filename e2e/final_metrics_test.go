package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// trainerScript writes N-1 metric lines, then a last line carrying a key
// no other line has, immediately before exiting, with or without its
// trailing newline, and exits with the given code.
const trainerScript = `#!/bin/sh
n=$1; newline=$2; code=$3
i=1
while [ $i -lt $n ]; do
  printf '{"step": %d, "loss": %d.5, "acc": %d}\n' $i $((1000 - i)) $i >> "$GANTRY_METRICS_FILE"
  i=$((i + 1))
done
ts=$(date +%s.%N)
if [ "$newline" = 1 ]; then
  printf '{"step": %d, "loss": 0.125, "last_only": 7, "ts": %s}\n' $n $ts >> "$GANTRY_METRICS_FILE"
else
  printf '{"step": %d, "loss": 0.125, "last_only": 7, "ts": %s}' $n $ts >> "$GANTRY_METRICS_FILE"
fi
exit $code
`

type finalCase struct {
	lines   int
	newline bool
	code    int
}

type finalResult struct {
	c         finalCase
	id        string
	first     apiv1.Job // the first response that showed a terminal state
	seenAt    time.Time
	lastWrite time.Time
}

// TestFinalMetricsOnFirstTerminalRead is the regression test for the old
// platform's empty final metrics (invariant I2): for 50 jobs whose trainer
// writes its last line right before exiting, the first GET that shows a
// terminal state already holds final_metrics with that last line, and
// every line written is stored exactly once.
func TestFinalMetricsOnFirstTerminalRead(t *testing.T) {
	d := startDev(t, "", 2)
	script := filepath.Join(t.TempDir(), "trainer.sh")
	if err := os.WriteFile(script, []byte(trainerScript), 0o755); err != nil {
		t.Fatal(err)
	}

	const jobs = 50
	cases := make([]finalCase, jobs)
	for i := range cases {
		cases[i] = finalCase{lines: 20 + i%7*10, newline: i%3 != 0, code: []int{0, 0, 0, 3, 1}[i%5]}
	}

	results := make([]finalResult, jobs)
	work := make(chan int)
	var wg sync.WaitGroup
	errs := make(chan error, jobs)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				r, err := runAndPollFirstTerminal(d, script, cases[i])
				if err != nil {
					errs <- fmt.Errorf("job %d (%+v): %w", i, cases[i], err)
					continue
				}
				results[i] = r
			}
		}()
	}
	for i := 0; i < jobs; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	var latencies, exitToReport []time.Duration
	for _, r := range results {
		j, c := r.first, r.c
		wantState := apiv1.StateSucceeded
		if c.code != 0 {
			wantState = apiv1.StateFailed
		}
		if j.State != wantState {
			t.Errorf("%s %+v: state %s, want %s (error %q)", r.id, c, j.State, wantState, j.Error)
		}
		if j.ExitCode == nil || *j.ExitCode != c.code {
			t.Errorf("%s %+v: exit_code %v, want %d", r.id, c, j.ExitCode, c.code)
		}
		want := map[string]float64{"step": float64(c.lines), "loss": 0.125, "last_only": 7, "acc": float64(c.lines - 1)}
		for k, v := range want {
			if got, ok := j.FinalMetrics[k]; !ok || got != v {
				t.Errorf("%s %+v: first terminal read has final_metrics[%q] = %v (present %v), want %v; final_metrics=%v",
					r.id, c, k, got, ok, v, j.FinalMetrics)
			}
		}
		points := allPoints(t, d.api, r.id)
		if len(points) != c.lines {
			t.Errorf("%s %+v: %d points stored, want %d (one per line written)", r.id, c, len(points), c.lines)
		}
		seen := map[int64]bool{}
		for _, p := range points {
			if p.Step == nil || seen[*p.Step] {
				t.Errorf("%s: point seq %d has a missing or repeated step", r.id, p.Seq)
				continue
			}
			seen[*p.Step] = true
		}
		latencies = append(latencies, r.seenAt.Sub(r.lastWrite))
		if j.FinishedAt != nil {
			exitToReport = append(exitToReport, j.FinishedAt.Sub(r.lastWrite))
		}
	}
	t.Logf("last line written (just before exit) -> first terminal read on the API, %d jobs: %s", len(latencies), percentiles(latencies))
	t.Logf("  of which last line -> agent's exit record (exit seen, files drained): %s", percentiles(exitToReport))
}

// runAndPollFirstTerminal submits one job and polls GET /v1/jobs/{id}
// every 2 ms, returning the first response with a terminal state.
func runAndPollFirstTerminal(d *devController, script string, c finalCase) (finalResult, error) {
	ctx := context.Background()
	nl := 0
	if c.newline {
		nl = 1
	}
	id, err := d.api.Submit(ctx, apiv1.JobSpec{
		Name: fmt.Sprintf("final-%d-%d-%d", c.lines, nl, c.code),
		Run:  fmt.Sprintf("%s %d %d %d", script, c.lines, nl, c.code),
	})
	if err != nil {
		return finalResult{}, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		j, err := d.api.Job(ctx, id)
		if err != nil {
			return finalResult{}, err
		}
		if apiv1.IsTerminal(j.State) {
			seen := time.Now()
			ts := j.FinalMetrics["ts"] // never a metric: must not appear
			if ts != 0 {
				return finalResult{}, fmt.Errorf("ts leaked into final_metrics: %v", j.FinalMetrics)
			}
			last, err := lastLineTime(d, id)
			if err != nil {
				return finalResult{}, err
			}
			return finalResult{c: c, id: id, first: j, seenAt: seen, lastWrite: last}, nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return finalResult{}, fmt.Errorf("job %s not terminal after 60s", id)
}

// lastLineTime is the ts the trainer wrote on its last line, just before
// it exited.
func lastLineTime(d *devController, id string) (time.Time, error) {
	page, err := d.api.Metrics(context.Background(), id, 0, 10000)
	if err != nil {
		return time.Time{}, err
	}
	if len(page.Points) == 0 {
		return time.Time{}, fmt.Errorf("no points stored")
	}
	ts := page.Points[len(page.Points)-1].TS
	return time.Unix(0, int64(ts*1e9)), nil
}

func percentiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	sort.Slice(ds, func(a, b int) bool { return ds[a] < ds[b] })
	return fmt.Sprintf("p50 %v, p99 %v, max %v", ds[len(ds)/2].Round(100*time.Microsecond),
		ds[len(ds)*99/100].Round(100*time.Microsecond), ds[len(ds)-1].Round(100*time.Microsecond))
}
