package downsample_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/downsample"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// BenchmarkDownsampleRun reads a job of DOWNSAMPLE_POINTS points (default
// 200,000; the data-plane target is 10,000,000) with 20 metrics each, the
// way GET ?max_points=2000&keys=k00 does. Values move like a training
// run's (a decaying loss with noise, a schedule, counters), so chunks
// compress as they would in use. It reports the store's bytes per point.
func BenchmarkDownsampleRun(b *testing.B) {
	n := uint64(200_000)
	if s := os.Getenv("DOWNSAMPLE_POINTS"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		n = v
	}
	st, err := store.Open(filepath.Join(b.TempDir(), "state.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	for first := uint64(1); first <= n; first += 50_000 {
		if err := st.Update(func(tx *store.Tx) error {
			for seq := first; seq < first+50_000 && seq <= n; seq++ {
				if err := tx.PutPoint("j", TrainingPoint(seq)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	var stored int64
	if err := st.View(func(tx *store.Tx) (err error) { stored, err = tx.PointBytes("j"); return err }); err != nil {
		b.Fatal(err)
	}
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	for b.Loop() {
		s, err := downsample.Read(context.Background(), st, "j", n, 2000, []string{"k00"})
		if err != nil {
			b.Fatal(err)
		}
		if s.Points() != n || len(s.Result()["k00"]) != 2000 {
			b.Fatalf("read %d points into %d buckets, want %d into 2000", s.Points(), len(s.Result()["k00"]), n)
		}
	}
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "points/s")
	// CPU time says what the read costs when the machine is shared;
	// wall time (ns/op) includes waiting for a CPU.
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
	b.ReportMetric(float64(stored)/float64(n), "stored-B/point")
}

// TrainingPoint is point seq of a synthetic run with 20 metrics: a loss
// decaying with noise, a learning-rate schedule, accuracy, gradient norm,
// throughput and counters, the mix a training script logs.
func TrainingPoint(seq uint64) *gantrypb.MetricPoint {
	x := float64(seq)
	noise := func(k int) float64 { return math.Sin(x*0.7+float64(k)*1.3) * math.Cos(x*0.11*float64(k+1)) }
	vals := make(map[string]float64, 20)
	for k := range 20 {
		var v float64
		switch k % 5 {
		case 0:
			v = 2.5*math.Exp(-x/50_000) + 0.05*noise(k) // losses
		case 1:
			v = 3e-4 * math.Min(1, x/2000) // a warm-up then constant schedule
		case 2:
			v = float64(int(x / 10)) // counters: epoch, tokens/1e6
		case 3:
			v = 1 - math.Exp(-x/30_000) + 0.01*noise(k) // accuracies
		case 4:
			v = math.Round((1200+80*noise(k))*10) / 10 // throughput, one decimal
		}
		vals[fmt.Sprintf("k%02d", k)] = v
	}
	step := int64(seq)
	return &gantrypb.MetricPoint{Seq: seq, Step: &step, Ts: 1.7e9 + x*0.1, Values: vals}
}
