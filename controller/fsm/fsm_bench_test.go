package fsm_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/command"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// BenchmarkApplyIngest measures applying one Raft entry holding a batch of
// points (20 metrics each) for one job: decode, dedupe, one bbolt write
// transaction with its fsync, the job's record updated once.
func BenchmarkApplyIngest(b *testing.B) {
	for _, n := range []int{100} {
		b.Run(fmt.Sprintf("points=%d", n), func(b *testing.B) {
			st, err := store.Open(filepath.Join(b.TempDir(), "state.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			f := fsm.New(st, nil, logging.Discard())
			idx := uint64(0)
			entry := func(m proto.Message) []*raft.Log {
				data, err := command.Encode(m)
				if err != nil {
					b.Fatal(err)
				}
				idx++
				return []*raft.Log{{Index: idx, Term: 1, Type: raft.LogCommand, Data: data}}
			}
			if resp := f.ApplyBatch(entry(&gantrypb.SubmitJobCmd{JobId: "job-1", Spec: &gantrypb.JobSpec{Run: "true"}}))[0]; resp != "job-1" {
				b.Fatalf("submit: %v", resp)
			}
			// Records are taken only from the node the job is assigned to.
			if resp := f.ApplyBatch(entry(&gantrypb.AssignJobCmd{JobId: "job-1", NodeId: "node-1"}))[0]; resp != nil {
				b.Fatalf("assign: %v", resp)
			}
			vals := map[string]float64{}
			for k := 0; k < 20; k++ {
				vals[fmt.Sprintf("metric_%02d", k)] = float64(k) + 0.5
			}
			seq := uint64(0)
			next := func() []*raft.Log {
				cmd := &gantrypb.IngestCmd{NodeId: "node-1", AtMs: 1}
				for i := 0; i < n; i++ {
					seq++
					cmd.Records = append(cmd.Records, &gantrypb.Record{JobId: "job-1", Seq: seq,
						Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Step: proto.Int64(int64(seq)), Ts: 1718000000.5, Values: vals}}})
				}
				return entry(cmd)
			}
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				logs := next() // encoding is the leader's cost, not the apply's
				b.StartTimer()
				res, ok := f.ApplyBatch(logs)[0].(fsm.IngestResult)
				if !ok || res.Stored != n {
					b.Fatalf("apply: %+v", res)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "points/s")
		})
	}
}
