package feed_test

import (
	"fmt"
	"log/slog"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/feed"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/hub"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// benchKeys are the ~20 metrics of a realistic training line.
var benchKeys = []string{
	"loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "train/acc", "val/acc", "ppl",
	"epoch", "mfu", "gpu_mem_gb", "loss_scale", "weight_decay", "aux_loss", "train/loss_ema",
	"throughput/tflops", "data_time_ms", "step_time_ms", "clip_frac", "z_loss",
}

// BenchmarkMetricsFrame measures the feed's hot path for one applied
// batch of points with a watcher subscribed: view conversion, the frame's
// JSON encoding (once, shared by every watcher) and the publish.
func BenchmarkMetricsFrame(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("points=%d", n), func(b *testing.B) {
			const job = "job-1"
			h := hub.New()
			sub := h.Subscribe(0, hub.JobTopic(job))
			defer sub.Close()
			f := feed.New(h, slog.New(slog.DiscardHandler), nil)
			pts := make([]*gantrypb.MetricPoint, n)
			for i := range pts {
				vals := make(map[string]float64, len(benchKeys))
				for k, key := range benchKeys {
					vals[key] = 1/float64(i+1) + float64(k)
				}
				pts[i] = &gantrypb.MetricPoint{Seq: uint64(i + 1), Step: proto.Int64(int64(i + 1)), Ts: 1718000000.5, Values: vals}
			}
			c := &fsm.Changes{
				JobOrder: []string{job},
				Jobs:     map[string]*gantrypb.Job{},
				Points:   map[string][]*gantrypb.MetricPoint{job: pts},
			}
			b.ReportAllocs()
			for b.Loop() {
				f.Applied(c)
				if m, ok := sub.Next(); !ok || len(m.Data) == 0 {
					b.Fatal("empty frame")
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "points/s")
		})
	}
}
