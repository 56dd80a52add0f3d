// Package stage holds the benchmark's stages. Each stage measures one part
// of Gantry on real processes and records its figures, every one beside a
// raw limit or a peer, into the run's report. The stages share an Env: the
// controller cluster, the process group that owns every child process, the
// run's directories and its size knobs.
package stage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/gantry-ml/gantry/bench/load"
	"github.com/gantry-ml/gantry/bench/proc"
	"github.com/gantry-ml/gantry/bench/report"
	"github.com/gantry-ml/gantry/bench/testcluster"
	"github.com/gantry-ml/gantry/internal/ctxwait"
)

// ErrTimeout means a stage waited too long for something it needs.
var ErrTimeout = errors.New("stage: timed out")

// Env is what the stages share.
type Env struct {
	// BinDir holds gantry-controller and gantry-agent.
	BinDir string
	// Self is the gantry-bench binary, run by the real agent as the
	// trainer.
	Self string
	// RepoDir is the module root, where `go test -bench` runs.
	RepoDir string
	// OutDir receives results and profiles (bench/).
	OutDir string
	// RunDir holds data directories, logs and spools; removed at the end.
	RunDir string
	Group  *proc.Group
	Report *report.Report
	// Scale multiplies sizes and durations (BENCH_SCALE).
	Scale float64
	// Quick picks the smoke-run sizes (BENCH_QUICK=1).
	Quick bool
	// Profile takes CPU profiles of the controller during the heaviest
	// phases.
	Profile bool
	// Out receives one progress line per step.
	Out io.Writer

	Cluster   *testcluster.Cluster
	Leader    *testcluster.Node
	leaderIdx int
	start     time.Time

	fleet          *load.Fleet
	pointsPerEntry float64
	agent          *proc.Process
}

// Progress prints one line, prefixed with the time since the run began.
func (e *Env) Progress(stage, format string, args ...any) {
	if e.start.IsZero() {
		e.start = time.Now()
	}
	fmt.Fprintf(e.Out, "[%5.0fs] %-9s %s\n", time.Since(e.start).Seconds(), stage, fmt.Sprintf(format, args...))
}

// n picks a size: full or quick, times Scale, at least 1.
func (e *Env) n(full, quick int) int {
	v := full
	if e.Quick {
		v = quick
	}
	return max(1, int(math.Round(float64(v)*e.scale())))
}

// d picks a duration: full or quick, times Scale.
func (e *Env) d(full, quick time.Duration) time.Duration {
	v := full
	if e.Quick {
		v = quick
	}
	return time.Duration(float64(v) * e.scale())
}

func (e *Env) scale() float64 {
	if e.Scale <= 0 {
		return 1
	}
	return e.Scale
}

// Setup starts the 3-node controller cluster.
func (e *Env) Setup(ctx context.Context) error {
	e.Progress("setup", "starting 3 gantry-controller processes on loopback")
	c, err := testcluster.Start(ctx, testcluster.Options{BinDir: e.BinDir, Dir: e.RunDir, Nodes: 3, Group: e.Group, Pprof: e.Profile})
	if err != nil {
		return err
	}
	e.Cluster = c
	e.Leader, err = c.Leader(ctx, 30*time.Second)
	if err != nil {
		return err
	}
	for i, n := range c.Nodes {
		if n == e.Leader {
			e.leaderIdx = i
		}
	}
	e.Progress("setup", "cluster up: leader %s (http %s), followers elected through serf -bootstrap-expect 3", e.Leader.ID, e.Leader.HTTP)
	return nil
}

// Close stops what the stages left running in-process (simulated agents).
func (e *Env) Close() error {
	if e.fleet != nil {
		return e.fleet.Close()
	}
	return nil
}

// refreshLeader finds the current leader. On an overloaded machine a
// leader can miss heartbeats and lose its term; the stages then follow the
// new one, and report that it happened.
func (e *Env) refreshLeader(ctx context.Context, stage string) (moved bool, err error) {
	if err := e.Cluster.Alive(); err != nil {
		return false, err
	}
	l, err := e.Cluster.Leader(ctx, 60*time.Second)
	if err != nil {
		return false, err
	}
	if l == e.Leader {
		return false, nil
	}
	e.Progress(stage, "leadership moved from %s to %s", e.Leader.ID, l.ID)
	e.Leader = l
	for i, n := range e.Cluster.Nodes {
		if n == l {
			e.leaderIdx = i
		}
	}
	return true, nil
}

// waitFor polls cond every interval until it holds, ctx ends or timeout
// passes.
func waitFor(ctx context.Context, timeout, interval time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %s waiting for %s", ErrTimeout, timeout, what)
		}
		if err := ctxwait.Sleep(ctx, interval); err != nil {
			return err
		}
	}
}
