package stage

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"time"

	"github.com/gantry-ml/gantry/agent/link"
	"github.com/gantry-ml/gantry/bench/etcdpeer"
	"github.com/gantry-ml/gantry/bench/load"
	"github.com/gantry-ml/gantry/bench/proc"
	"github.com/gantry-ml/gantry/bench/rawlimit"
	"github.com/gantry-ml/gantry/bench/report"
	"github.com/gantry-ml/gantry/internal/ctxwait"
)

// floodBatch is how many points a flooding job appends to its spool at a
// time (one spool transaction, one fsync, like a tailer that found that
// many lines at once); the link regroups them into batches of up to
// MaxBatchRecords.
const floodBatch = 1000

// floodMaxPending caps each simulated agent's unacked records at two full
// batches: enough to keep a batch in flight while the next fills, and a
// backlog small enough to drain in seconds when the flood stops.
const floodMaxPending = uint64(2 * link.MaxBatchRecords)

// startFlood runs the fleet's flood in the background; the returned stop
// ends it and returns its error.
func (e *Env) startFlood(ctx context.Context, cnt *load.Counter) (stop func() error) {
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.fleet.Flood(fctx, floodBatch, floodMaxPending, cnt) }()
	return func() error {
		cancel()
		return <-done
	}
}

// Ingest is stage 1: sustained ingest into the 3-node cluster from
// simulated agents, first at a realistic rate, then as fast as acks allow,
// beside bbolt's and Raft's raw rates and a 3-node etcd at equal batching.
func Ingest(ctx context.Context, e *Env) error {
	const stage = "ingest"
	if _, err := e.refreshLeader(ctx, stage); err != nil {
		return err
	}
	agents, jobs := e.n(8, 2), e.n(4, 2)
	fleet, err := load.StartFleet(ctx, e.Cluster, e.RunDir, "sim", agents, jobs)
	if err != nil {
		return err
	}
	e.fleet = fleet
	e.Progress(stage, "%d simulated agents (agent/link over QUIC+mTLS, agent/spool) connected, %d jobs started", agents, agents*jobs)

	// Realistic: one training job per agent at 10 steps/s, 8 GPUs at 1 Hz.
	realDur := e.d(10*time.Second, 2*time.Second)
	var rc load.Counter
	rctx, rstop := context.WithCancel(ctx)
	rdone := make(chan error, 1)
	go func() { rdone <- fleet.Realistic(rctx, &rc) }()
	w, err := e.window(ctx, time.Second, realDur)
	rstop()
	if rerr := <-rdone; err == nil {
		err = rerr
	}
	if err != nil {
		return err
	}
	offered := float64(agents * load.StepsPerSecond)
	e.Progress(stage, "realistic: %.0f points/s stored on all nodes (offered %.0f), %.2f points/entry, leader %.1f CPU-s per million points",
		w.MinRate, offered, w.PointsPerEntry(), w.CPUPerMillion())
	e.Report.Add(report.Figure{Stage: stage, Name: fmt.Sprintf("realistic load (%d agents × 1 job × 10 steps/s × 20 keys, 8 GPUs at 1 Hz): points/s stored on all 3 nodes", agents),
		Value: w.MinRate, Unit: "points/s", Against: "offered rate", AgainstValue: offered,
		Note: w.CPUNote()})
	e.Report.Add(report.Figure{Stage: stage, Name: "realistic load: points per Raft entry", Value: w.PointsPerEntry(), Unit: "points",
		Against: "link.MaxBatchRecords (most a batch can hold)", AgainstValue: link.MaxBatchRecords,
		Note: "records trickle in one at a time, so batches stay small"})
	e.Report.Add(report.Figure{Stage: stage, Name: "realistic load: leader CPU per million points", Value: w.CPUPerMillion(), Unit: "CPU-s",
		Note: fmt.Sprintf("leader used %.2f CPU-s in %.1f s; at this rate fixed costs (heartbeats, polling) dominate", w.LeaderCPU.Seconds(), w.Seconds)})
	if err := fleet.WaitDrained(ctx, 30*time.Second); err != nil {
		return err
	}

	// Flood: every job appends as fast as acks allow.
	warm, dur := e.d(5*time.Second, time.Second), e.d(20*time.Second, 3*time.Second)
	var fc load.Counter
	stopFlood := e.startFlood(ctx, &fc)
	var prof chan error
	if e.Profile {
		prof = make(chan error, 1)
		go func() {
			if err := ctxwait.Sleep(ctx, warm); err != nil {
				prof <- err
				return
			}
			prof <- e.profile(ctx, "ingest-leader-cpu", "leader during the ingest flood", min(10, int(dur.Seconds())), false)
		}()
	}
	wf, err := e.window(ctx, warm, dur)
	if ferr := stopFlood(); err == nil {
		err = ferr
	}
	if err != nil {
		return err
	}
	if prof != nil {
		if err := <-prof; err != nil {
			e.Progress(stage, "profile failed: %v", err)
		}
	}
	if err := fleet.WaitDrained(ctx, 90*time.Second); err != nil {
		// The rates are measured; a backlog that will not drain is worth
		// knowing but does not void them.
		e.Report.Fail("ingest/drain", err)
		e.Progress(stage, "flood backlog did not drain: %v", err)
	}
	moved, err := e.refreshLeader(ctx, stage)
	if err != nil {
		return err
	}
	e.pointsPerEntry = wf.PointsPerEntry()
	e.Progress(stage, "flood: %.0f points/s stored on all 3 nodes, %.0f points/entry, leader %.2f CPU-s per million points, %d elections",
		wf.MinRate, wf.PointsPerEntry(), wf.CPUPerMillion(), wf.Elections)

	// Raw limits and the peer, with the batching Gantry reached.
	batch := int(math.Round(max(1, min(float64(link.MaxBatchRecords), wf.PointsPerEntry()))))
	rawDur := e.d(5*time.Second, time.Second)
	bolt, err := rawlimit.Bolt(ctx, e.RunDir, batch, agents*jobs, rawDur)
	if err != nil {
		return err
	}
	e.Progress(stage, "raw bbolt: %.0f points/s (one Update per %d points, %d KiB per batch)", bolt.PointsPerSecond(), batch, bolt.PayloadBytes>>10)
	inflight := min(agents*link.MaxInflight, 64)
	rf, err := rawlimit.Raft(ctx, e.RunDir, batch, inflight, rawDur)
	if err != nil {
		return err
	}
	e.Progress(stage, "raw raft+raft-wal: %.0f points/s (%.0f entries/s of %d KiB, %d in flight)",
		rf.PointsPerSecond(), float64(rf.Batches)/rf.Elapsed.Seconds(), rf.PayloadBytes>>10, inflight)
	etcdRes, etcdCPU, etcdErr := e.etcd(ctx, batch, agents*jobs, agents*2, dur)
	if etcdErr != nil {
		e.Report.Fail("ingest/etcd", etcdErr)
		e.Progress(stage, "etcd failed: %v", etcdErr)
	} else {
		e.Progress(stage, "etcd 3 nodes: %.0f points/s (one put of %d points = one Raft entry, %d clients)",
			etcdRes.PointsPerSecond(), batch, agents*2)
	}

	name := fmt.Sprintf("flood (%d agents × %d jobs, as fast as acks allow): points/s stored on all 3 nodes", agents, jobs)
	note := fmt.Sprintf("%.1f s window after %.0f s warm-up; %s", wf.Seconds, warm.Seconds(), wf.CPUNote())
	if e.Profile {
		note += "; leader was being CPU-profiled for part of it"
	}
	if moved {
		note += fmt.Sprintf("; leadership ended on %s, so the leader CPU figures mix leaders", e.Leader.ID)
	}
	e.Report.Add(report.Figure{Stage: stage, Name: name, Value: wf.MinRate, Unit: "points/s",
		Against:      fmt.Sprintf("raw bbolt, one Update per %d points, same disk and key layout (1 node)", batch),
		AgainstValue: bolt.PointsPerSecond(), Goal: "≥ 1,000,000 points/s", Note: note})
	e.Report.Add(report.Figure{Stage: stage, Name: name, Value: wf.MinRate, Unit: "points/s",
		Against:      fmt.Sprintf("raw hashicorp/raft + raft-wal, no-op FSM, %d KiB entries, in-memory transport (1 node)", rf.PayloadBytes>>10),
		AgainstValue: rf.PointsPerSecond()})
	if etcdErr == nil {
		e.Report.Add(report.Figure{Stage: stage, Name: name, Value: wf.MinRate, Unit: "points/s",
			Against:      fmt.Sprintf("etcd 3.4, 3 nodes, same %d points per Raft entry (JSON gateway put)", batch),
			AgainstValue: etcdRes.PointsPerSecond(), Goal: "≥ 10× etcd"})
	}
	e.Report.Add(report.Figure{Stage: stage, Name: "flood: points per Raft entry (records per ingest batch)", Value: wf.PointsPerEntry(), Unit: "points",
		Against: "link.MaxBatchRecords (most a batch can hold)", AgainstValue: link.MaxBatchRecords})
	cpuFig := report.Figure{Stage: stage, Name: "flood: leader CPU per million points", Value: wf.CPUPerMillion(), Unit: "CPU-s",
		Note: fmt.Sprintf("leader used %.1f CPU-s in %.1f s", wf.LeaderCPU.Seconds(), wf.Seconds)}
	if etcdErr == nil && etcdRes.Points > 0 {
		cpuFig.Against = "etcd leader CPU per million points, same batching"
		cpuFig.AgainstValue = etcdCPU.Seconds() / float64(etcdRes.Points) * 1e6
	}
	e.Report.Add(cpuFig)
	return nil
}

// window samples the cluster after warm, waits dur and samples again.
func (e *Env) window(ctx context.Context, warm, dur time.Duration) (load.Window, error) {
	if err := ctxwait.Sleep(ctx, warm); err != nil {
		return load.Window{}, err
	}
	s0, err := load.Take(ctx, e.Cluster, e.Leader)
	if err != nil {
		return load.Window{}, err
	}
	if err := ctxwait.Sleep(ctx, dur); err != nil {
		return load.Window{}, err
	}
	s1, err := load.Take(ctx, e.Cluster, e.Leader)
	if err != nil {
		return load.Window{}, err
	}
	return load.Between(s0, s1, e.leaderIdx), nil
}

// etcd runs the peer: 3 members, the same batching, for dur; it returns
// the result and the etcd leader's CPU time over the load.
func (e *Env) etcd(ctx context.Context, batch, jobs, clients int, dur time.Duration) (etcdpeer.Result, time.Duration, error) {
	dir := filepath.Join(e.RunDir, "etcd")
	c, err := etcdpeer.Start(ctx, e.Group, dir, 3)
	if err != nil {
		return etcdpeer.Result{}, 0, err
	}
	defer func() {
		for _, m := range c.Members {
			m.Proc.Stop(10 * time.Second)
		}
	}()
	leader, err := c.Leader(ctx)
	if err != nil {
		return etcdpeer.Result{}, 0, err
	}
	cpu0, err := proc.CPU(leader.Proc.PID())
	if err != nil {
		return etcdpeer.Result{}, 0, err
	}
	res, err := c.Load(ctx, batch, jobs, clients, dur)
	if err != nil {
		return res, 0, err
	}
	cpu1, err := proc.CPU(leader.Proc.PID())
	if err != nil {
		return res, 0, err
	}
	return res, cpu1 - cpu0, nil
}
