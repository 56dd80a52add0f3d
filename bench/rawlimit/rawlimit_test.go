package rawlimit

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestBoltStoresEveryPoint(t *testing.T) {
	dir := t.TempDir()
	res, err := Bolt(context.Background(), dir, 50, 3, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if res.Batches == 0 || res.Points != res.Batches*50 || res.PointsPerSecond() <= 0 || res.PayloadBytes == 0 {
		t.Fatalf("result %+v", res)
	}
}

func TestBoltLayout(t *testing.T) {
	// The layout is what makes the comparison fair: points/<job>/<seq>,
	// dense big-endian seqs per job, round-robin over jobs.
	db, err := bolt.Open(filepath.Join(t.TempDir(), "x.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	res, err := writeBolt(context.Background(), db, 10, 2, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPoints).ForEachBucket(func(job []byte) error {
			want := uint64(1)
			return tx.Bucket(bucketPoints).Bucket(job).ForEach(func(k, v []byte) error {
				if got := binary.BigEndian.Uint64(k); got != want || len(v) == 0 {
					t.Errorf("%s: key %d, want %d", job, got, want)
				}
				want++
				total++
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if uint64(total) != res.Points {
		t.Fatalf("stored %d points, result says %d", total, res.Points)
	}
}

func TestRaftCommits(t *testing.T) {
	res, err := Raft(context.Background(), t.TempDir(), 20, 4, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if res.Batches == 0 || res.Points != res.Batches*20 || res.PayloadBytes < 20*100 {
		t.Fatalf("result %+v", res)
	}
}
