package stage

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/gantry-ml/gantry/bench/report"
	"github.com/gantry-ml/gantry/bench/stats"
	"github.com/gantry-ml/gantry/bench/trainer"
	"github.com/gantry-ml/gantry/controller/apiv1"
)

// finalLines is how many lines each short job writes before it exits.
const finalLines = 5

// FinalMetrics is stage 3: from a trainer's exit (its last line carries the
// wall clock, and the trainer exits right after writing it) to the job
// being terminal with that line in its final metrics on the API, polled
// every millisecond, over many short jobs.
func FinalMetrics(ctx context.Context, e *Env) error {
	const stage = "final"
	if _, err := e.refreshLeader(ctx, stage); err != nil {
		return err
	}
	if err := e.startAgent(ctx); err != nil {
		return err
	}
	runs := e.n(100, 10)
	e.Progress(stage, "%d short jobs, one at a time; polling GET /v1/jobs/{id} on the leader every 1 ms", runs)
	var lat []time.Duration
	missing := 0
	for i := 0; i < runs; i++ {
		d, ok, err := e.finalRun(ctx, fmt.Sprintf("final-%03d", i))
		if err != nil {
			return err
		}
		if !ok {
			missing++
			continue
		}
		lat = append(lat, d)
		if (i+1)%25 == 0 {
			e.Progress(stage, "%d/%d jobs", i+1, runs)
		}
	}
	s := stats.Summarize(lat)
	e.Progress(stage, "exit → terminal with final metrics: p50 %.1f ms, p99 %.1f ms, max %.1f ms; %d of %d jobs lacked their last line",
		stats.Ms(s.P50), stats.Ms(s.P99), stats.Ms(s.Max), missing, runs)
	note := fmt.Sprintf("%d jobs of %d lines each; %d ended without their last line in final_metrics (invariant I2)", runs, finalLines, missing)
	e.Report.Add(report.Figure{Stage: stage, Name: "process exit → terminal with final metrics on the API: p50", Value: stats.Ms(s.P50), Unit: "ms", Note: note})
	e.Report.Add(report.Figure{Stage: stage, Name: "process exit → terminal with final metrics on the API: p99", Value: stats.Ms(s.P99), Unit: "ms",
		Against: "goal", AgainstValue: 100, Goal: "p99 ≤ 100 ms"})
	e.Report.Add(report.Figure{Stage: stage, Name: "process exit → terminal with final metrics on the API: max", Value: stats.Ms(s.Max), Unit: "ms",
		Against: "the old platform's sync period (once a minute)", AgainstValue: 60000})
	if missing > 0 {
		return fmt.Errorf("stage: %d of %d jobs became terminal without their last line (invariant I2)", missing, runs)
	}
	return nil
}

// finalRun runs one short job and returns the delay from its last line to
// the terminal state being visible, and whether the final metrics held
// that last line.
func (e *Env) finalRun(ctx context.Context, name string) (time.Duration, bool, error) {
	id, err := e.submitTrainer(ctx, name, "-lines", fmt.Sprint(finalLines), "-interval", "2ms", "-keys", "20")
	if err != nil {
		return 0, false, err
	}
	var job apiv1.Job
	var seen time.Time
	err = waitFor(ctx, 60*time.Second, time.Millisecond, "job "+id+" to end", func() (bool, error) {
		j, err := e.Leader.API.Job(ctx, id)
		seen = time.Now()
		if err != nil {
			return false, nil // not replicated yet, or a transient error: poll again
		}
		job = j
		return apiv1.IsTerminal(j.State), nil
	})
	if err != nil {
		return 0, false, err
	}
	if job.State != apiv1.StateSucceeded {
		return 0, false, fmt.Errorf("stage: job %s ended %s: %s", id, job.State, job.Error)
	}
	wall, ok := job.FinalMetrics[trainer.WallKey]
	if !ok || job.FinalMetrics["step"] != finalLines {
		return 0, false, nil
	}
	sec, frac := math.Modf(wall)
	last := time.Unix(int64(sec), int64(frac*1e9))
	return seen.Sub(last), true, nil
}
