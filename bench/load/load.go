// Package load drives a fleet of simulated agents against a controller
// cluster: a realistic load (one training job per agent logging ~20
// metrics at 10 steps/s, plus 8 GPUs sampled at 1 Hz) and a flood (many
// jobs per agent appending points as fast as the controller's acks allow).
package load

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/gantry-ml/gantry/bench/proc"
	"github.com/gantry-ml/gantry/bench/simagent"
	"github.com/gantry-ml/gantry/bench/testcluster"
	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Rates of the realistic load.
const (
	// StepsPerSecond is a training job's metrics rate.
	StepsPerSecond = 10
	// GPUsPerAgent is how many GPUs each simulated host has, sampled at 1 Hz.
	GPUsPerAgent = 8
)

// ErrNotConnected means a simulated agent never connected.
var ErrNotConnected = errors.New("load: agent did not connect")

// Fleet is a set of simulated agents, each with its jobs submitted,
// assigned and started.
type Fleet struct {
	Agents []*simagent.Agent
	// Jobs lists each agent's job ids, by agent index.
	Jobs [][]string
	// steps is the next step per job, so successive loads continue the
	// same series.
	steps map[string]*atomic.Int64
}

// StartFleet starts n agents named prefix-0…, each with its own
// certificate, and submits jobsPerAgent jobs pinned to each (no GPUs, so
// they are placed at once).
func StartFleet(ctx context.Context, c *testcluster.Cluster, dir, prefix string, n, jobsPerAgent int) (*Fleet, error) {
	f := &Fleet{Jobs: make([][]string, n), steps: map[string]*atomic.Int64{}}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		files, err := c.IssueAgent(id)
		if err != nil {
			f.Close()
			return nil, err
		}
		a, err := simagent.Start(simagent.Options{ID: id, Dir: dir, TLS: files, Addrs: c.QUICAddrs(), GPUs: GPUsPerAgent})
		if err != nil {
			f.Close()
			return nil, err
		}
		f.Agents = append(f.Agents, a)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range f.Agents {
		for !a.Connected() {
			if time.Now().After(deadline) {
				f.Close()
				return nil, fmt.Errorf("%w: %s", ErrNotConnected, a.ID)
			}
			select {
			case <-ctx.Done():
				f.Close()
				return nil, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	for i, a := range f.Agents {
		for j := 0; j < jobsPerAgent; j++ {
			id, err := c.Submit(ctx, apiv1.JobSpec{
				Name: fmt.Sprintf("bench-%s-%d", a.ID, j), Run: "true", Node: a.ID,
			})
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("load: %w", err)
			}
			f.Jobs[i] = append(f.Jobs[i], id)
			f.steps[id] = &atomic.Int64{}
		}
	}
	for i, a := range f.Agents {
		for _, id := range f.Jobs[i] {
			if err := a.WaitStarted(ctx, id, 30*time.Second); err != nil {
				f.Close()
				return nil, err
			}
		}
	}
	return f, nil
}

// Close stops every agent.
func (f *Fleet) Close() error {
	var errs []error
	for _, a := range f.Agents {
		errs = append(errs, a.Close())
	}
	return errors.Join(errs...)
}

// Pending is the number of records spooled but not yet acked, fleet-wide.
func (f *Fleet) Pending() uint64 {
	var n uint64
	for _, a := range f.Agents {
		n += a.Pending()
	}
	return n
}

// WaitDrained waits until every spooled record has been acked.
func (f *Fleet) WaitDrained(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, a := range f.Agents {
		if err := a.WaitPendingBelow(ctx, 1); err != nil {
			return fmt.Errorf("load: drain %s (%d pending): %w", a.ID, a.Pending(), err)
		}
	}
	return nil
}

// Finish appends an exit record for every job, so they end as a real run
// would (terminal, with final metrics).
func (f *Fleet) Finish(ctx context.Context) error {
	for i, a := range f.Agents {
		for _, id := range f.Jobs[i] {
			if _, err := a.Append(simagent.Exit(id, simagent.Now())); err != nil {
				return err
			}
		}
	}
	return f.WaitDrained(ctx, 30*time.Second)
}

// Counter counts what a load appended.
type Counter struct {
	Points atomic.Uint64
	GPU    atomic.Uint64
}

// Realistic runs the realistic load until ctx ends: each agent's first job
// logs a point every 1/StepsPerSecond and each agent samples its GPUs every
// second, each record appended on its own as a real agent would.
func (f *Fleet) Realistic(ctx context.Context, cnt *Counter) error {
	g, ctx := errgroup.WithContext(ctx)
	for i, a := range f.Agents {
		job := f.Jobs[i][0]
		step := f.steps[job]
		g.Go(func() error {
			t := time.NewTicker(time.Second / StepsPerSecond)
			defer t.Stop()
			n := 0
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
				}
				now := simagent.Now()
				recs := []*gantrypb.Record{simagent.Point(job, step.Add(1), now)}
				if n%StepsPerSecond == 0 {
					recs = append(recs, simagent.GPUSample(GPUsPerAgent, now))
					cnt.GPU.Add(1)
				}
				n++
				if _, err := a.Append(recs...); err != nil {
					return err
				}
				cnt.Points.Add(1)
			}
		})
	}
	return g.Wait()
}

// Flood appends points to every job of every agent, batch points per
// spool append, as fast as acks allow: a writer waits while its agent has
// maxPending or more unacked records. It runs until ctx ends.
func (f *Fleet) Flood(ctx context.Context, batch int, maxPending uint64, cnt *Counter) error {
	g, ctx := errgroup.WithContext(ctx)
	for i, a := range f.Agents {
		var mu sync.Mutex // one writer per agent appends at a time, like one tailer per file
		for _, job := range f.Jobs[i] {
			step := f.steps[job]
			g.Go(func() error {
				recs := make([]*gantrypb.Record, batch)
				for {
					if err := a.WaitPendingBelow(ctx, maxPending); err != nil {
						return nil // ctx ended
					}
					now := simagent.Now()
					for k := range recs {
						recs[k] = simagent.Point(job, step.Add(1), now)
					}
					mu.Lock()
					_, err := a.Append(recs...)
					mu.Unlock()
					if err != nil {
						return err
					}
					cnt.Points.Add(uint64(batch))
					if ctx.Err() != nil {
						return nil
					}
				}
			})
		}
	}
	return g.Wait()
}

// Sample is the cluster at one instant.
type Sample struct {
	At time.Time
	// Stored is the point count each node has applied, by node index.
	Stored []uint64
	// LeaderIndex is the leader's last Raft index.
	LeaderIndex uint64
	// Term is the Raft term as the leader node sees it; it grows by one
	// with every election.
	Term uint64
	// LeaderCPU is the leader process's CPU time so far.
	LeaderCPU time.Duration
	// NodeCPU is every controller's CPU time so far, by node index.
	NodeCPU []time.Duration
	// DriverCPU is this process's CPU time so far (the simulated agents).
	DriverCPU time.Duration
}

// Take samples every node's stored points, the leader's last Raft index and
// its CPU time.
func Take(ctx context.Context, c *testcluster.Cluster, leader *testcluster.Node) (Sample, error) {
	s := Sample{At: time.Now(), Stored: make([]uint64, len(c.Nodes)), NodeCPU: make([]time.Duration, len(c.Nodes))}
	var err error
	if s.LeaderCPU, err = leader.CPU(); err != nil {
		return s, err
	}
	for i, n := range c.Nodes {
		if s.NodeCPU[i], err = n.CPU(); err != nil {
			return s, err
		}
	}
	if s.DriverCPU, err = proc.CPU(os.Getpid()); err != nil {
		return s, err
	}
	st, err := leader.Status(ctx)
	if err != nil {
		return s, fmt.Errorf("load: leader status: %w", err)
	}
	s.LeaderIndex = st.LastIndex
	s.Term = st.Term
	for i, n := range c.Nodes {
		if s.Stored[i], err = n.StoredPoints(ctx); err != nil {
			return s, err
		}
	}
	return s, nil
}

// Window is what happened between two samples.
type Window struct {
	Seconds float64
	// MinRate is the slowest node's stored points per second: the rate at
	// which points are stored on all nodes.
	MinRate float64
	// LeaderPoints is how many points the leader stored.
	LeaderPoints uint64
	// Entries is how many Raft entries the leader appended.
	Entries uint64
	// LeaderCPU is the leader's CPU time over the window.
	LeaderCPU time.Duration
	// NodeCPU is each controller's CPU time over the window.
	NodeCPU []time.Duration
	// DriverCPU is the driver's (simulated agents') CPU time.
	DriverCPU time.Duration
	// Elections is how many Raft terms began during the window (a leader
	// that loses its lease steps down, and the agents reconnect).
	Elections uint64
}

// Between computes the window from a to b, leaderIdx being the leader's
// node index.
func Between(a, b Sample, leaderIdx int) Window {
	w := Window{Seconds: b.At.Sub(a.At).Seconds(), LeaderCPU: b.LeaderCPU - a.LeaderCPU, DriverCPU: b.DriverCPU - a.DriverCPU}
	for i := range a.NodeCPU {
		w.NodeCPU = append(w.NodeCPU, b.NodeCPU[i]-a.NodeCPU[i])
	}
	for i := range a.Stored {
		r := float64(b.Stored[i]-a.Stored[i]) / w.Seconds
		if i == 0 || r < w.MinRate {
			w.MinRate = r
		}
	}
	w.LeaderPoints = b.Stored[leaderIdx] - a.Stored[leaderIdx]
	w.Entries = b.LeaderIndex - a.LeaderIndex
	w.Elections = b.Term - a.Term
	return w
}

// PointsPerEntry is the mean number of points per Raft entry.
func (w Window) PointsPerEntry() float64 {
	if w.Entries == 0 {
		return 0
	}
	return float64(w.LeaderPoints) / float64(w.Entries)
}

// CPUPerMillion is the leader's CPU seconds per million points stored.
func (w Window) CPUPerMillion() float64 {
	if w.LeaderPoints == 0 {
		return 0
	}
	return w.LeaderCPU.Seconds() / float64(w.LeaderPoints) * 1e6
}

// CPUNote describes where the window's CPU time went, for a figure's note.
func (w Window) CPUNote() string {
	var nodes []string
	for i, d := range w.NodeCPU {
		nodes = append(nodes, fmt.Sprintf("c%d %.1f", i, d.Seconds()))
	}
	note := fmt.Sprintf("CPU-s in the %.1f s window: controllers %s, driver (simulated agents) %.1f",
		w.Seconds, strings.Join(nodes, ", "), w.DriverCPU.Seconds())
	if w.Elections > 0 {
		note += fmt.Sprintf("; %d Raft elections during the window (leader lost its lease under load)", w.Elections)
	}
	return note
}
