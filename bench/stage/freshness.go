package stage

import (
	"context"
	"fmt"
	"time"

	"github.com/gantry-ml/gantry/bench/load"
	"github.com/gantry-ml/gantry/bench/report"
	"github.com/gantry-ml/gantry/bench/stats"
	"github.com/gantry-ml/gantry/bench/watch"
	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/internal/ctxwait"
)

// freshInterval is the trainer's line interval in the freshness runs.
const freshInterval = 20 * time.Millisecond

// Freshness is stage 2: the delay from a metrics line appended to a job's
// metrics file (by a trainer run by a real gantry-agent) to its frame at a
// WebSocket watcher, at idle and under the ingest flood.
func Freshness(ctx context.Context, e *Env) error {
	const stage = "freshness"
	if _, err := e.refreshLeader(ctx, stage); err != nil {
		return err
	}
	if err := e.startAgent(ctx); err != nil {
		return err
	}
	dur := e.d(10*time.Second, 2*time.Second)
	e.Progress(stage, "real gantry-agent up; trainer writes a line every %s for %s, watcher on the leader", freshInterval, dur)
	idle, _, err := e.freshRun(ctx, "fresh-idle", dur, nil)
	if err != nil {
		return err
	}
	si := stats.Summarize(idle)
	e.Progress(stage, "idle: p50 %.1f ms, p99 %.1f ms, max %.1f ms over %d lines", stats.Ms(si.P50), stats.Ms(si.P99), stats.Ms(si.Max), si.N)

	var sl stats.Summary
	var loadRate float64
	var loadNote string
	var drainErr error
	if e.fleet != nil {
		var fc load.Counter
		stopFlood := e.startFlood(ctx, &fc)
		start := time.Now()
		stopped := false
		stop := func() error {
			if stopped {
				return nil
			}
			stopped = true
			loadRate = float64(fc.Points.Load()) / time.Since(start).Seconds()
			return stopFlood()
		}
		loaded, complete, err := func() ([]time.Duration, bool, error) {
			if err := ctxwait.Sleep(ctx, 2*time.Second); err != nil {
				return nil, false, err
			}
			if _, err := e.refreshLeader(ctx, stage); err != nil {
				return nil, false, err
			}
			return e.freshRun(ctx, "fresh-load", dur, stop)
		}()
		if serr := stop(); err == nil {
			err = serr
		}
		if err != nil {
			return err
		}
		// A backlog that does not drain is reported, after the figures:
		// the delays measured are still what watchers saw.
		drainErr = e.fleet.WaitDrained(ctx, 90*time.Second)
		sl = stats.Summarize(loaded)
		want := int(dur / freshInterval)
		loadNote = fmt.Sprintf("%d of ~%d lines seen; the flood (~%.0f points/s appended by the simulated agents) ran while the trainer wrote",
			sl.N, want, loadRate)
		if !complete {
			loadNote += "; the final frame did not arrive within 90 s of the flood's end"
		}
		e.Progress(stage, "under load (~%.0f points/s appended): p50 %.1f ms, p99 %.1f ms, max %.1f ms over %d lines",
			loadRate, stats.Ms(sl.P50), stats.Ms(sl.P99), stats.Ms(sl.Max), sl.N)
	}

	add := func(what string, s stats.Summary, goal float64, goalText, note string) {
		for _, q := range []struct {
			name string
			v    time.Duration
		}{{"p50", s.P50}, {"p99", s.P99}, {"max", s.Max}} {
			f := report.Figure{Stage: stage, Name: fmt.Sprintf("line appended → frame at watcher, %s: %s", what, q.name),
				Value: stats.Ms(q.v), Unit: "ms", Note: note}
			if q.name == "p99" {
				f.Against, f.AgainstValue, f.Goal = "goal", goal, goalText
			}
			e.Report.Add(f)
		}
	}
	add("idle", si, 50, "p99 ≤ 50 ms", fmt.Sprintf("%d lines at %s intervals, 21 metrics each", si.N, freshInterval))
	if sl.N > 0 {
		add("under ingest flood", sl, 250, "p99 ≤ 250 ms", loadNote)
	}
	if drainErr != nil {
		return fmt.Errorf("stage: the flood's backlog did not drain after the freshness run: %w", drainErr)
	}
	return nil
}

// freshRun runs one trainer writing for dur with a watcher on the leader
// and returns the per-line delays. stopLoad, when set, is called once the
// trainer has written its last line, so that the load covers the writing
// and the wait for the last frames runs without it. complete is false when
// the final frame never came (the delays seen so far are returned).
func (e *Env) freshRun(ctx context.Context, name string, dur time.Duration, stopLoad func() error) (samples []time.Duration, complete bool, err error) {
	submitted := time.Now()
	id, err := e.submitTrainer(ctx, name, "-interval", freshInterval.String(), "-duration", dur.String())
	if err != nil {
		return nil, false, err
	}
	ws := watch.New(e.Leader.HTTP, id)
	defer ws.Close()
	if err := ws.Add(ctx, 1, 1); err != nil {
		return nil, false, err
	}
	final := func() (bool, error) { return ws.Finals() > 0, nil }
	if stopLoad != nil {
		if err := waitFor(ctx, dur+30*time.Second, 10*time.Millisecond, "the trainer to finish writing", func() (bool, error) {
			j, err := e.Leader.API.Job(ctx, id)
			if err != nil {
				return false, nil
			}
			// Started reaches the API through the loaded pipeline too, so
			// a generous bound from submission backs it up.
			written := (j.StartedAt != nil && time.Since(*j.StartedAt) > dur) || time.Since(submitted) > dur+10*time.Second
			return written || apiv1.IsTerminal(j.State) || ws.Finals() > 0, nil
		}); err != nil {
			return nil, false, err
		}
		if err := stopLoad(); err != nil {
			return nil, false, err
		}
		if err := waitFor(ctx, 90*time.Second, 10*time.Millisecond, "the trainer's final frame", final); err != nil {
			if ctx.Err() != nil {
				return nil, false, err
			}
			if d := ws.Duplicates(); d > 0 {
				e.Progress("freshness", "%s: %d points arrived twice at the watcher", name, d)
			}
			return ws.Take(), false, nil
		}
	} else if err := waitFor(ctx, dur+30*time.Second, 10*time.Millisecond, "the trainer's final frame", final); err != nil {
		return nil, false, err
	}
	job, err := e.Leader.API.Job(ctx, id)
	if err != nil {
		return nil, false, fmt.Errorf("stage: job %s: %w", id, err)
	}
	if job.State != apiv1.StateSucceeded {
		return nil, false, fmt.Errorf("stage: trainer job %s ended %s: %s", id, job.State, job.Error)
	}
	if d := ws.Duplicates(); d > 0 {
		e.Report.Add(report.Figure{Stage: "freshness", Name: fmt.Sprintf("%s: points delivered twice to the watcher", name),
			Value: float64(d), Unit: "points", Against: "distinct points delivered", AgainstValue: float64(ws.Points()),
			Note: "the live stream promises each point once, in seq order; repeats were not timed"})
		e.Progress("freshness", "%s: %d points arrived twice at the watcher", name, d)
	}
	samples = ws.Take()
	if len(samples) == 0 {
		return nil, false, fmt.Errorf("stage: watcher of %s received no points", id)
	}
	return samples, true, nil
}
