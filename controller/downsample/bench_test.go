package downsample_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/gantry-ml/gantry/controller/downsample"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// BenchmarkDownsampleRun reads a 200,000-point job (20 metrics a point)
// the way GET ?max_points=2000&keys=k00 does: pages of 5,000 points, each
// in its own short read transaction, folded into buckets.
func BenchmarkDownsampleRun(b *testing.B) {
	const n, page = 200_000, 5000
	st, err := store.Open(filepath.Join(b.TempDir(), "state.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	vals := map[string]float64{}
	for k := range 20 {
		vals[fmt.Sprintf("k%02d", k)] = float64(k)
	}
	for first := uint64(1); first <= n; first += 10_000 {
		if err := st.Update(func(tx *store.Tx) error {
			for seq := first; seq < first+10_000; seq++ {
				step := int64(seq)
				if err := tx.PutPoint("j", &gantrypb.MetricPoint{Seq: seq, Step: &step, Ts: float64(seq), Values: vals}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		s := downsample.New(n, 2000, []string{"k00"})
		for after := uint64(0); after < n; {
			var pts []*gantrypb.MetricPoint
			if err := st.View(func(tx *store.Tx) (err error) { pts, err = tx.Points("j", after, page); return err }); err != nil {
				b.Fatal(err)
			}
			for _, p := range pts {
				s.Add(p)
			}
			after = pts[len(pts)-1].Seq
		}
		if s.Points() != n {
			b.Fatalf("read %d points, want %d", s.Points(), n)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "points/s")
}
