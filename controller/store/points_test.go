package store

import (
	"errors"
	"math"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// chunkBounds returns the first and last seq of each of the job's chunks.
func chunkBounds(t *testing.T, s *Store, job string) [][2]uint64 {
	t.Helper()
	var out [][2]uint64
	view(t, s, func(tx *Tx) error {
		return tx.PointChunks(job, 0, 0, func(pc PointChunk) error {
			out = append(out, [2]uint64{pc.FirstSeq(), pc.LastSeq()})
			return nil
		})
	})
	return out
}

// TestPagingAtChunkBoundaries reads pages that start and end on every
// side of every chunk boundary: each point once, in order.
func TestPagingAtChunkBoundaries(t *testing.T) {
	s := openTest(t)
	putPoints(t, s, "j", 3000)
	bounds := chunkBounds(t, s, "j")
	if len(bounds) < 3 {
		t.Fatalf("3000 points made %d chunks; the test needs boundaries", len(bounds))
	}
	for i, b := range bounds {
		if i > 0 && b[0] != bounds[i-1][1]+1 {
			t.Fatalf("chunks %v and %v are not consecutive", bounds[i-1], b)
		}
		for _, after := range []uint64{b[0] - 1, b[0], b[1] - 1, b[1], b[1] + 1} {
			for _, limit := range []int{1, 2, int(b[1] - b[0] + 1), 5000} {
				view(t, s, func(tx *Tx) error {
					pts, err := tx.Points("j", after, limit)
					if err != nil {
						return err
					}
					want := span(after+1, min(after+uint64(limit), 3000))
					if got := seqsOf(pts); !equalU64(got, want) {
						t.Errorf("Points(after=%d, limit=%d) = %v.., want %v..", after, limit, head(got), head(want))
					}
					return nil
				})
			}
		}
	}
}

// TestPointsVisibleInTheirTransaction: a read inside the write transaction
// that put points sees them (the open chunk is flushed first).
func TestPointsVisibleInTheirTransaction(t *testing.T) {
	s := openTest(t)
	update(t, s, func(tx *Tx) error {
		for seq := uint64(1); seq <= 5; seq++ {
			if err := tx.PutPoint("j", &gantrypb.MetricPoint{Seq: seq, Values: map[string]float64{"a": 1}}); err != nil {
				return err
			}
		}
		pts, err := tx.Points("j", 0, 0)
		if err != nil {
			return err
		}
		if !equalU64(seqsOf(pts), span(1, 5)) {
			t.Errorf("inside the transaction: %v", seqsOf(pts))
		}
		return tx.PutPoint("j", &gantrypb.MetricPoint{Seq: 6, Values: map[string]float64{"b": 2}})
	})
	view(t, s, func(tx *Tx) error {
		pts, err := tx.Points("j", 0, 0)
		if err != nil {
			return err
		}
		if !equalU64(seqsOf(pts), span(1, 6)) || pts[5].Values["b"] != 2 || len(pts[5].Values) != 1 {
			t.Errorf("after commit: %v", pts)
		}
		return nil
	})
}

func TestStalePointRefused(t *testing.T) {
	s := openTest(t)
	putPoints(t, s, "j", 10)
	err := s.Update(func(tx *Tx) error {
		return tx.PutPoint("j", &gantrypb.MetricPoint{Seq: 10, Values: map[string]float64{"v": 1}})
	})
	if !errors.Is(err, ErrStalePoint) {
		t.Fatalf("a point at the last seq: err = %v, want ErrStalePoint", err)
	}
}

// TestPointsExact: every value, step (or its absence), timestamp and key
// set comes back bit for bit, across chunks and transactions.
func TestPointsExact(t *testing.T) {
	s := openTest(t)
	var want []*gantrypb.MetricPoint
	for seq := uint64(1); seq <= 2500; seq++ {
		p := &gantrypb.MetricPoint{Seq: seq, Ts: 1.7e9 + float64(seq)*0.05, Values: map[string]float64{
			"loss": math.Exp(-float64(seq) / 500), "lr": 3e-4}}
		if seq%3 != 0 {
			st := int64(seq) - 1000
			p.Step = &st
		}
		if seq%10 == 0 {
			p.Values["eval/loss"] = math.Copysign(0, -1) // negative zero: its sign must survive
			p.Values["ü"] = math.MaxFloat64
		}
		want = append(want, p)
	}
	for i := 0; i < len(want); i += 333 {
		update(t, s, func(tx *Tx) error {
			for _, p := range want[i:min(i+333, len(want))] {
				if err := tx.PutPoint("j", proto.Clone(p).(*gantrypb.MetricPoint)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	view(t, s, func(tx *Tx) error {
		got, err := tx.Points("j", 0, 0)
		if err != nil {
			return err
		}
		if len(got) != len(want) {
			t.Fatalf("%d points, want %d", len(got), len(want))
		}
		for i := range want {
			if !proto.Equal(got[i], want[i]) || math.Signbit(got[i].Values["eval/loss"]) != math.Signbit(want[i].Values["eval/loss"]) {
				t.Fatalf("point %d:\n got %v\nwant %v", i, got[i], want[i])
			}
		}
		return nil
	})
}

// TestMigrateSchema1 opens a database written in schema 1 (one value per
// point): its points move into chunks, exactly, in several transactions,
// and the old bucket is gone.
func TestMigrateSchema1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	var want []*gantrypb.MetricPoint
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		if err := meta.Put(keySchema, u64(1)); err != nil {
			return err
		}
		old, _ := tx.CreateBucket(bucketPointsV1)
		for _, job := range []string{"a", "b"} {
			jb, _ := old.CreateBucket([]byte(job))
			for seq := uint64(1); seq <= 2300; seq += 1 + seq%2 { // gaps, as events leave
				st := int64(seq)
				p := &gantrypb.MetricPoint{Seq: seq, Step: &st, Ts: float64(seq), Values: map[string]float64{"x": float64(seq) / 7, job: 1}}
				v, _ := proto.Marshal(p)
				if err := jb.Put(u64(seq), v); err != nil {
					return err
				}
				if job == "b" {
					want = append(want, p)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = openDBUnguarded(path)
	if err != nil {
		t.Fatal(err)
	}
	// openDB migrated with the production batch size; migrate again with
	// a tiny one on a copy to cover the restart path: nothing is doubled.
	if err := migratePoints(db, 7); err != nil {
		t.Fatal(err)
	}
	s := &Store{db: db, path: path}
	t.Cleanup(func() { s.Close() })
	view(t, s, func(tx *Tx) error {
		if tx.tx.Bucket(bucketPointsV1) != nil {
			t.Error("the schema 1 points bucket is still there")
		}
		got, err := tx.Points("b", 0, 0)
		if err != nil {
			return err
		}
		if len(got) != len(want) {
			t.Fatalf("%d points migrated, want %d", len(got), len(want))
		}
		for i := range want {
			if !proto.Equal(got[i], want[i]) {
				t.Fatalf("point %d: got %v, want %v", i, got[i], want[i])
			}
		}
		return nil
	})
}

// TestMigrationInSmallTransactions checks the batch path: a migration cut
// into transactions of a few points gives the same chunks as one pass.
func TestMigrationInSmallTransactions(t *testing.T) {
	build := func(batch int) [][2]uint64 {
		path := filepath.Join(t.TempDir(), "v1.db")
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range topBuckets {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			old, _ := tx.CreateBucket(bucketPointsV1)
			jb, _ := old.CreateBucket([]byte("j"))
			for seq := uint64(1); seq <= 3000; seq++ {
				v, _ := proto.Marshal(&gantrypb.MetricPoint{Seq: seq, Values: map[string]float64{"x": float64(seq * seq)}})
				if err := jb.Put(u64(seq), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := migratePoints(db, batch); err != nil {
			t.Fatal(err)
		}
		s := &Store{db: db, path: path}
		defer s.Close()
		if got := len(func() []*gantrypb.MetricPoint {
			var pts []*gantrypb.MetricPoint
			view(t, s, func(tx *Tx) (err error) { pts, err = tx.Points("j", 0, 0); return err })
			return pts
		}()); got != 3000 {
			t.Fatalf("batch %d: %d points after migration", batch, got)
		}
		return chunkBounds(t, s, "j")
	}
	one, small := build(1_000_000), build(13)
	if len(one) != len(small) {
		t.Fatalf("chunks %v vs %v", one, small)
	}
	for i := range one {
		if one[i] != small[i] {
			t.Fatalf("chunks %v vs %v", one, small)
		}
	}
}
