package stage

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/bench/report"
	"github.com/gantry-ml/gantry/bench/simagent"
	"github.com/gantry-ml/gantry/bench/stats"
	"github.com/gantry-ml/gantry/controller/downsample"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// storagePerTxn is how many points one store transaction takes while the
// stage fills a job, about what a flood's batch of Raft entries holds.
const storagePerTxn = 20_000

// Storage measures the point store on its own, in this process: how many
// bytes a point of 20 metrics takes, against the layout of one bbolt
// value per point that Gantry used before chunks, and how long a chart's
// downsampled read of a very long job takes (GET ?max_points=2000&keys=k,
// downsample.Read), in wall and CPU time.
func Storage(ctx context.Context, e *Env) error {
	const stage = "storage"
	dir := filepath.Join(e.RunDir, "storage")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	point := func(seq uint64) *gantrypb.MetricPoint {
		p := simagent.Point("j", int64(seq), 1.7e9+float64(seq)*0.1).GetPoint()
		p.Seq = seq
		return p
	}

	// Bytes per point: the same points both ways.
	sample := uint64(e.n(200_000, 50_000))
	oldBytes, err := perPointV1(filepath.Join(dir, "v1.db"), sample, point)
	if err != nil {
		return err
	}
	st, err := store.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		return err
	}
	defer st.Close()

	n := uint64(e.n(10_000_000, 1_000_000))
	e.Progress(stage, "writing a job of %d points of %d metrics into a store", n, len(simagent.MetricKeys))
	begin := time.Now()
	for first := uint64(1); first <= n; first += storagePerTxn {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := st.Update(func(tx *store.Tx) error {
			for seq := first; seq < first+storagePerTxn && seq <= n; seq++ {
				if err := tx.PutPoint("j", point(seq)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return fmt.Errorf("stage: fill store: %w", err)
		}
	}
	fill := time.Since(begin)
	var stored int64
	if err := st.View(func(tx *store.Tx) (err error) { stored, err = tx.PointBytes("j"); return err }); err != nil {
		return err
	}
	newBytes := float64(stored) / float64(n)
	e.Progress(stage, "filled in %s; %.1f B a point in chunks, %.1f B in the old layout", fill.Round(time.Millisecond), newBytes, oldBytes)
	e.Report.Add(report.Figure{Stage: stage, Name: "bytes on disk per point of 20 metrics (chunk values)", Value: newBytes, Unit: "B",
		Against: "one bbolt value per point (schema 1), same points, bbolt leaf bytes in use", AgainstValue: oldBytes, Goal: "≤ 0.5× schema 1",
		Note: fmt.Sprintf("%d points in chunks; schema 1 measured on %d of the same points", n, sample)})

	// The downsampled read, a few times.
	reads := e.n(5, 3)
	var wall, cpu []time.Duration
	for range reads {
		c0 := cpuTime()
		t0 := time.Now()
		s, err := downsample.Read(ctx, st, "j", n, 2000, []string{"loss"})
		if err != nil {
			return err
		}
		wall = append(wall, time.Since(t0))
		cpu = append(cpu, cpuTime()-c0)
		if got := len(s.Result()["loss"]); s.Points() != n || got != 2000 {
			return fmt.Errorf("stage: downsampled read folded %d points into %d buckets, want %d into 2000", s.Points(), got, n)
		}
	}
	w, c := stats.Summarize(wall), stats.Summarize(cpu)
	e.Progress(stage, "downsampled read of %d points: p50 %.0f ms wall, %.0f ms CPU", n, stats.Ms(w.P50), stats.Ms(c.P50))
	note := fmt.Sprintf("%d reads; keys=loss, 2000 buckets; chunks folded from their headers, the ones across a bucket edge decoded", reads)
	e.Report.Add(report.Figure{Stage: stage, Name: fmt.Sprintf("downsampled read of a %d-point job, max_points=2000: wall p50", n), Value: stats.Ms(w.P50), Unit: "ms",
		Against: "goal", AgainstValue: 200, Goal: "≤ 200 ms for 10M points", Note: note})
	e.Report.Add(report.Figure{Stage: stage, Name: fmt.Sprintf("downsampled read of a %d-point job, max_points=2000: CPU p50", n), Value: stats.Ms(c.P50), Unit: "ms",
		Note: "CPU time of this process during the read: what it costs when the machine is shared"})
	e.Report.Add(report.Figure{Stage: stage, Name: "store write, points of 20 metrics in transactions of 20,000", Value: float64(n) / fill.Seconds(), Unit: "points/s",
		Note: "chunk encoding and bbolt, no Raft; in this process"})
	return nil
}

// perPointV1 writes n points the way schema 1 stored them (a bbolt value
// per point: the protobuf message under its big-endian seq) and returns
// the leaf bytes in use per point.
func perPointV1(path string, n uint64, point func(uint64) *gantrypb.MetricPoint) (float64, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	for first := uint64(1); first <= n; first += storagePerTxn {
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("points"))
			if err != nil {
				return err
			}
			jb, err := b.CreateBucketIfNotExists([]byte("j"))
			if err != nil {
				return err
			}
			for seq := first; seq < first+storagePerTxn && seq <= n; seq++ {
				v, err := proto.Marshal(point(seq))
				if err != nil {
					return err
				}
				k := binary.BigEndian.AppendUint64(nil, seq)
				if err := jb.Put(k, v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("stage: schema 1 layout: %w", err)
		}
	}
	var inUse int
	err = db.View(func(tx *bolt.Tx) error {
		inUse = tx.Bucket([]byte("points")).Bucket([]byte("j")).Stats().LeafInuse
		return nil
	})
	return float64(inUse) / float64(n), err
}

// cpuTime is this process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
