package stage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gantry-ml/gantry/bench/load"
	"github.com/gantry-ml/gantry/bench/mqttpeer"
	"github.com/gantry-ml/gantry/bench/report"
	"github.com/gantry-ml/gantry/bench/simagent"
	"github.com/gantry-ml/gantry/bench/stats"
	"github.com/gantry-ml/gantry/bench/testcluster"
	"github.com/gantry-ml/gantry/bench/watch"
	"github.com/gantry-ml/gantry/internal/ctxwait"
)

// dialConcurrency is how many watchers connect at once.
const dialConcurrency = 64

// fanout is the delivery delays at one watcher count.
type fanout struct {
	watchers int
	s        stats.Summary
	lost     int64
	dups     int64 // cumulative repeats seen by the watcher set
}

// Watchers is stage 4: memory per idle watcher at the largest count and
// fan-out delay (a point published by an agent → its frame at every
// watcher) at growing counts, beside Mosquitto over WebSockets with the
// same number of subscribers.
func Watchers(ctx context.Context, e *Env) error {
	const stage = "watchers"
	if _, err := e.refreshLeader(ctx, stage); err != nil {
		return err
	}
	counts := []int{1, e.n(1000, 100), e.n(10000, 1000)}
	pubs := e.n(20, 5)
	node := e.Leader

	fl, err := load.StartFleet(ctx, e.Cluster, e.RunDir, "fanout", 1, 1)
	if err != nil {
		return err
	}
	defer fl.Close()
	ag, job := fl.Agents[0], fl.Jobs[0][0]

	base, err := node.Scrape(ctx)
	if err != nil {
		return err
	}
	ws := watch.New(node.HTTP, job)
	defer ws.Close()
	var gantry []fanout
	var memRSS, memHeap, goroutines float64
	step := int64(0)
	for _, n := range counts {
		if err := ws.Add(ctx, n-ws.Len(), dialConcurrency); err != nil {
			return fmt.Errorf("stage: open %d watchers: %w", n, err)
		}
		if err := waitWatchers(ctx, node, n); err != nil {
			return err
		}
		if n == counts[len(counts)-1] {
			// Idle memory: let the connection burst settle first.
			if err := ctxwait.Sleep(ctx, 3*time.Second); err != nil {
				return err
			}
			m, err := node.Scrape(ctx)
			if err != nil {
				return err
			}
			memRSS = perWatcher(m, base, "process_resident_memory_bytes", n)
			memHeap = perWatcher(m, base, "go_memstats_heap_inuse_bytes", n)
			goroutines = perWatcher(m, base, "go_goroutines", n)
			e.Progress(stage, "%d idle watchers on %s: %.0f B RSS, %.0f B Go heap, %.1f goroutines per watcher",
				n, node.ID, memRSS, memHeap, goroutines)
			if e.Profile && node == e.Leader {
				if err := e.profile(ctx, "watchers-leader-heap", fmt.Sprintf("leader with %d idle watchers", n), 0, true); err != nil {
					e.Progress(stage, "heap profile failed: %v", err)
				}
			}
		}
		ws.Take()
		before := ws.Points()
		pubs := pubsAt(pubs, n, counts)
		for i := 0; i < pubs; i++ {
			step++
			if _, err := ag.Append(simagent.Point(job, step, simagent.Now())); err != nil {
				return err
			}
			want := before + int64(i+1)*int64(n)
			ws.WaitPoints(ctx, want, 10*time.Second)
			if err := ctxwait.Sleep(ctx, 20*time.Millisecond); err != nil {
				return err
			}
		}
		got := ws.Points() - before
		f := fanout{watchers: n, s: stats.Summarize(ws.Take()), lost: int64(pubs*n) - got, dups: ws.Duplicates()}
		gantry = append(gantry, f)
		if e.Profile && n == counts[len(counts)-1] && node == e.Leader {
			// Profiled apart from the measurement: more of the same
			// publications while the profile runs.
			prof := make(chan error, 1)
			const secs = 3
			go func() {
				prof <- e.profile(ctx, "watchers-leader-cpu", fmt.Sprintf("leader during fan-out to %d watchers", n), secs, false)
			}()
			for end := time.Now().Add(secs * time.Second); time.Now().Before(end); {
				step++
				if _, err := ag.Append(simagent.Point(job, step, simagent.Now())); err != nil {
					return err
				}
				if err := ctxwait.Sleep(ctx, 100*time.Millisecond); err != nil {
					return err
				}
			}
			if err := <-prof; err != nil {
				e.Progress(stage, "CPU profile failed: %v", err)
			}
			ws.Take()
		}
		e.Progress(stage, "gantry fan-out to %d watchers: p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d deliveries, %d missing)",
			n, stats.Ms(f.s.P50), stats.Ms(f.s.P99), stats.Ms(f.s.Max), f.s.N, f.lost)
	}
	ws.Close()
	if err := waitWatchers(ctx, node, 0); err != nil {
		return err
	}
	after, err := node.Scrape(ctx)
	if err != nil {
		return err
	}
	leftG := after["go_goroutines"] - base["go_goroutines"]
	e.Progress(stage, "all watchers closed: gantry_ws_watchers back to 0, goroutines %+.0f vs before", leftG)

	// The peer.
	mq, mqRSS, mqErr := e.mosquitto(ctx, counts, pubs)
	if mqErr != nil {
		e.Report.Fail("watchers/mosquitto", mqErr)
		e.Progress(stage, "mosquitto failed: %v", mqErr)
	}

	last := counts[len(counts)-1]
	memFig := report.Figure{Stage: stage, Name: fmt.Sprintf("memory per idle watcher at %d watchers (RSS delta / N)", last),
		Value: memRSS, Unit: "B", Goal: "≤ 16 KiB",
		Note: fmt.Sprintf("controller %s; %.1f goroutines per watcher; goroutines after all closed: %+.0f", node.ID, goroutines, leftG)}
	if mqErr == nil {
		memFig.Against, memFig.AgainstValue = "Mosquitto, per idle WebSocket subscriber (RSS delta / N)", mqRSS
	}
	e.Report.Add(memFig)
	e.Report.Add(report.Figure{Stage: stage, Name: fmt.Sprintf("Go heap in use per idle watcher at %d watchers", last),
		Value: memHeap, Unit: "B", Against: "goal", AgainstValue: 16 << 10, Goal: "≤ 16 KiB"})
	for i, g := range gantry {
		for _, q := range []struct {
			name string
			v    func(stats.Summary) time.Duration
		}{{"p50", func(s stats.Summary) time.Duration { return s.P50 }}, {"p99", func(s stats.Summary) time.Duration { return s.P99 }}} {
			f := report.Figure{Stage: stage, Name: fmt.Sprintf("fan-out to %d watchers (point appended by agent → frame at every watcher): %s", g.watchers, q.name),
				Value: stats.Ms(q.v(g.s)), Unit: "ms",
				Note: fmt.Sprintf("%d deliveries, %d missing, %d repeated; includes spool, QUIC, 3-node Raft commit", g.s.N, g.lost, g.dups)}
			if mqErr == nil && i < len(mq) {
				f.Against = fmt.Sprintf("Mosquitto, %d WebSocket subscribers, QoS 0 (publish → receive)", mq[i].watchers)
				f.AgainstValue = stats.Ms(q.v(mq[i].s))
			}
			if g.watchers == last && q.name == "p99" {
				f.Goal = "p99 ≤ 50 ms and faster than Mosquitto"
			}
			e.Report.Add(f)
		}
	}
	return nil
}

// pubsAt is how many publications to time at n watchers: half as many at
// the largest count, where each one is already counts[last] samples and
// waiting for all of them dominates the stage's run time.
func pubsAt(pubs, n int, counts []int) int {
	if n == counts[len(counts)-1] {
		return max(1, pubs/2)
	}
	return pubs
}

// perWatcher is (m[name] - base[name]) / n.
func perWatcher(m, base map[string]float64, name string, n int) float64 {
	return (m[name] - base[name]) / float64(n)
}

// waitWatchers waits until the node's gantry_ws_watchers gauge is n.
func waitWatchers(ctx context.Context, node *testcluster.Node, n int) error {
	return waitFor(ctx, 60*time.Second, 50*time.Millisecond, fmt.Sprintf("gantry_ws_watchers = %d", n), func() (bool, error) {
		m, err := node.Scrape(ctx)
		if err != nil {
			return false, nil
		}
		v, err := testcluster.Metric(m, "gantry_ws_watchers")
		if err != nil {
			return false, err
		}
		return int(v) == n, nil
	})
}

// mosquitto measures the peer at the same counts: fan-out per count and
// RSS per idle subscriber at the largest.
func (e *Env) mosquitto(ctx context.Context, counts []int, pubs int) ([]fanout, float64, error) {
	const stage = "watchers"
	b, err := mqttpeer.Start(ctx, e.Group, e.RunDir)
	if err != nil {
		return nil, 0, err
	}
	defer b.Proc.Stop(5 * time.Second)
	base, err := b.RSS()
	if err != nil {
		return nil, 0, err
	}
	const topic = "gantry-bench/fanout"
	subs := b.NewSubscribers(topic)
	defer subs.Close()
	pub, err := b.NewPublisher(topic)
	if err != nil {
		return nil, 0, err
	}
	defer pub.Close()
	var out []fanout
	var perSub float64
	for _, n := range counts {
		if err := subs.Add(ctx, n-subs.Len(), dialConcurrency); err != nil {
			return out, 0, fmt.Errorf("stage: %d mosquitto subscribers: %w", n, err)
		}
		if n == counts[len(counts)-1] {
			if err := ctxwait.Sleep(ctx, 3*time.Second); err != nil {
				return out, 0, err
			}
			rss, err := b.RSS()
			if err != nil {
				return out, 0, err
			}
			perSub = (float64(rss) - float64(base)) / float64(n)
			e.Progress(stage, "%d idle mosquitto subscribers: %.0f B RSS per subscriber", n, perSub)
		}
		subs.Take()
		before := subs.Received()
		pubs := pubsAt(pubs, n, counts)
		for i := 0; i < pubs; i++ {
			if err := pub.Publish(); err != nil {
				return out, 0, err
			}
			want := before + int64(i+1)*int64(n)
			deadline := time.Now().Add(10 * time.Second)
			for subs.Received() < want && time.Now().Before(deadline) {
				if err := ctxwait.Sleep(ctx, 5*time.Millisecond); err != nil {
					return out, 0, err
				}
			}
			if err := ctxwait.Sleep(ctx, 20*time.Millisecond); err != nil {
				return out, 0, err
			}
		}
		got := subs.Received() - before
		f := fanout{watchers: n, s: stats.Summarize(subs.Take()), lost: int64(pubs*n) - got}
		out = append(out, f)
		e.Progress(stage, "mosquitto fan-out to %d subscribers: p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d deliveries, %d missing)",
			n, stats.Ms(f.s.P50), stats.Ms(f.s.P99), stats.Ms(f.s.Max), f.s.N, f.lost)
	}
	if len(out) == 0 {
		return nil, 0, errors.New("stage: no mosquitto measurement")
	}
	return out, perSub, nil
}
