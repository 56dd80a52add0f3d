package fsm_test

import (
	"fmt"
	"math"
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
// points (20 metrics each, in the flat form agents send, values moving
// like a training run's) for one job: decode, dedupe, one bbolt write
// transaction, the job's record updated once.
func BenchmarkApplyIngest(b *testing.B) {
	for _, n := range []int{1, 100} {
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
			var keys []string
			keyIdx := make([]uint32, 20)
			for k := range 20 {
				keys = append(keys, fmt.Sprintf("metric_%02d", k))
				keyIdx[k] = uint32(k)
			}
			seq := uint64(0)
			next := func() []*raft.Log {
				cmd := &gantrypb.IngestCmd{NodeId: "node-1", AtMs: 1, Keys: keys}
				for i := 0; i < n; i++ {
					seq++
					vals := make([]float64, 20)
					for k := range vals {
						vals[k] = math.Sin(float64(seq)*0.37+float64(k)) * float64(k+1)
					}
					cmd.Records = append(cmd.Records, &gantrypb.Record{JobId: "job-1", Seq: seq,
						Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Step: proto.Int64(int64(seq)), Ts: 1718000000.5 + float64(seq)/10,
							KeyIdx: keyIdx, Vals: vals}}})
				}
				return entry(cmd)
			}
			b.ReportAllocs()
			// Entries are encoded ahead, 500 at a time, outside the timer:
			// encoding is the leader's cost, not the apply's, and stopping
			// the timer for every entry would cost more than the apply.
			var ahead [][]*raft.Log
			for b.Loop() {
				if len(ahead) == 0 {
					b.StopTimer()
					for range 500 {
						ahead = append(ahead, next())
					}
					b.StartTimer()
				}
				logs := ahead[0]
				ahead = ahead[1:]
				res, ok := f.ApplyBatch(logs)[0].(fsm.IngestResult)
				if !ok || res.Stored != n {
					b.Fatalf("apply: %+v", res)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "points/s")
		})
	}
}
