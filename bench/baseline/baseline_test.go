package baseline

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/bench/simagent"
	"github.com/gantry-ml/gantry/controller/apiv1"
)

// benchLine has the shape of agent/metricsfile's BenchmarkParseLine line:
// a step, a ts, ~20 metrics and two string fields.
const benchLine = `{"step": 123456, "ts": 1718000000.123456, "loss": 2.345678, "eval_loss": 2.456789, ` +
	`"lr": 0.00029999, "grad_norm": 1.2345, "tokens_per_s": 183456.7, "samples_per_s": 89.25, ` +
	`"train/acc": 0.61234, "val/acc": 0.59876, "ppl": 10.4393, "epoch": 3, "mfu": 0.4123, ` +
	`"gpu_mem_gb": 71.25, "loss_scale": 65536, "weight_decay": 0.1, "dropout": 0.0, ` +
	`"phase": "train", "run": "llama-7b-sweep-12", "aux_loss": 0.0123}`

// BenchmarkJSONUnmarshalLine is the floor under metricsfile.ParseLine:
// encoding/json decoding the same line into a map, nothing checked.
func BenchmarkJSONUnmarshalLine(b *testing.B) {
	line := []byte(benchLine)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJSONMarshalPoints is the floor under the feed's metrics frame:
// encoding/json encoding the same points, without the frame around them.
func BenchmarkJSONMarshalPoints(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("points=%d", n), func(b *testing.B) {
			pts := make([]apiv1.Point, n)
			for i := range pts {
				p := simagent.Point("job", int64(i+1), 1718000000.5).GetPoint()
				pts[i] = apiv1.Point{Seq: uint64(i + 1), Step: p.Step, TS: p.Ts, Values: p.Values}
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := json.Marshal(pts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func openBolt(b *testing.B) *bolt.DB {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "raw.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := db.Close(); err != nil {
			b.Error(err)
		}
	})
	return db
}

func key(v uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, v)
	return k
}

// BenchmarkBoltAppendDelete is the floor under spool.BenchmarkAppendAck:
// 100 small records put in one bbolt Update and deleted in another.
func BenchmarkBoltAppendDelete(b *testing.B) {
	db := openBolt(b)
	const batch = 100
	val, err := proto.Marshal(simagent.Point("bench", 1, 1).GetPoint())
	if err != nil {
		b.Fatal(err)
	}
	next := uint64(0)
	b.ReportAllocs()
	for b.Loop() {
		first := next + 1
		err := db.Update(func(tx *bolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("records"))
			if err != nil {
				return err
			}
			for i := 0; i < batch; i++ {
				next++
				if err := bk.Put(key(next), val); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			bk := tx.Bucket([]byte("records"))
			for i := first; i <= next; i++ {
				if err := bk.Delete(key(i)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkBoltPutPoints is the floor under the FSM's apply of an ingest
// batch: the same points put under points/<job>/<seq> in one Update.
func BenchmarkBoltPutPoints(b *testing.B) {
	for _, n := range []int{100} {
		b.Run(fmt.Sprintf("points=%d", n), func(b *testing.B) {
			db := openBolt(b)
			vals := make([][]byte, n)
			for i := range vals {
				v, err := proto.Marshal(simagent.Point("job", int64(i+1), 1718000000.5).GetPoint())
				if err != nil {
					b.Fatal(err)
				}
				vals[i] = v
			}
			seq := uint64(0)
			b.ReportAllocs()
			for b.Loop() {
				err := db.Update(func(tx *bolt.Tx) error {
					top, err := tx.CreateBucketIfNotExists([]byte("points"))
					if err != nil {
						return err
					}
					bk, err := top.CreateBucketIfNotExists([]byte("job"))
					if err != nil {
						return err
					}
					for _, v := range vals {
						seq++
						if err := bk.Put(key(seq), v); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "points/s")
		})
	}
}
