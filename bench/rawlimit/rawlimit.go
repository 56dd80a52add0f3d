// Package rawlimit measures the raw limits under Gantry's ingest path on
// the same machine and disk: how fast bbolt alone stores batches of points
// (one Update per batch, the controller store's key layout), and how fast
// hashicorp/raft with raft-wal alone commits entries of the same size
// (single node, in-memory transport, a no-op FSM). Gantry cannot beat
// either; the ratio to them says how much its own work costs.
package rawlimit

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/bench/simagent"
	"github.com/gantry-ml/gantry/controller/command"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// ErrNoLeader means the single-node Raft never elected itself.
var ErrNoLeader = errors.New("rawlimit: raft did not become leader")

// bucketPoints is the controller store's top-level bucket of points.
var bucketPoints = []byte("points")

// Result is a raw rate.
type Result struct {
	Points  uint64
	Batches uint64
	Elapsed time.Duration
	// PayloadBytes is the size of one batch as written.
	PayloadBytes int
}

// PointsPerSecond is the measured rate.
func (r Result) PointsPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Points) / r.Elapsed.Seconds()
}

// points returns batch encoded points of a job, as the store holds them.
func points(job string, first int64, batch int) [][]byte {
	out := make([][]byte, batch)
	for i := range out {
		p := simagent.Point(job, first+int64(i), simagent.Now()).GetPoint()
		p.Seq = uint64(first) + uint64(i)
		b, err := proto.Marshal(p)
		if err != nil {
			panic(err) // a fixed, finite message always marshals
		}
		out[i] = b
	}
	return out
}

// Bolt writes batches of batch points round-robin over jobs into a fresh
// bbolt file in dir for d: one db.Update per batch, each point under
// points/<job>/<big-endian seq>, as the controller's store lays them out.
func Bolt(ctx context.Context, dir string, batch, jobs int, d time.Duration) (Result, error) {
	path := filepath.Join(dir, "raw-bbolt.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		return Result{}, fmt.Errorf("rawlimit: open bbolt: %w", err)
	}
	defer os.Remove(path)
	defer db.Close()
	return writeBolt(ctx, db, batch, jobs, d)
}

// writeBolt is Bolt's loop over an open database.
func writeBolt(ctx context.Context, db *bolt.DB, batch, jobs int, d time.Duration) (Result, error) {
	vals := points("template", 1, batch)
	seqs := make([]uint64, jobs)
	names := make([][]byte, jobs)
	for j := range names {
		names[j] = []byte(fmt.Sprintf("job-%04d", j))
	}
	var res Result
	res.PayloadBytes = sizeOf(vals)
	start := time.Now()
	for i := 0; time.Since(start) < d && ctx.Err() == nil; i++ {
		j := i % jobs
		err := db.Update(func(tx *bolt.Tx) error {
			top, err := tx.CreateBucketIfNotExists(bucketPoints)
			if err != nil {
				return err
			}
			b, err := top.CreateBucketIfNotExists(names[j])
			if err != nil {
				return err
			}
			b.FillPercent = 1.0 // appends in key order, as the store's sequential keys are
			for _, v := range vals {
				seqs[j]++
				var k [8]byte
				binary.BigEndian.PutUint64(k[:], seqs[j])
				if err := b.Put(k[:], v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("rawlimit: bbolt update: %w", err)
		}
		res.Batches++
		res.Points += uint64(batch)
	}
	res.Elapsed = time.Since(start)
	return res, ctx.Err()
}

func sizeOf(vals [][]byte) int {
	n := 0
	for _, v := range vals {
		n += len(v)
	}
	return n
}

// nopFSM applies nothing: it isolates Raft and its log.
type nopFSM struct{ applied atomic.Uint64 }

func (f *nopFSM) Apply(l *raft.Log) any { f.applied.Store(l.Index); return nil }
func (f *nopFSM) ApplyBatch(logs []*raft.Log) []any {
	f.applied.Store(logs[len(logs)-1].Index)
	return make([]any, len(logs))
}
func (f *nopFSM) Snapshot() (raft.FSMSnapshot, error) { return nopSnap{}, nil }
func (f *nopFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type nopSnap struct{}

func (nopSnap) Persist(s raft.SnapshotSink) error { return s.Close() }
func (nopSnap) Release()                          {}

// Raft commits Ingest entries of batch points each (encoded exactly as the
// controller encodes them) through a single-node hashicorp/raft on raft-wal
// in dir, with inflight applies outstanding at once, for d. The Raft
// settings are the controller's (batched apply channel, 256 entries per
// append).
func Raft(ctx context.Context, dir string, batch, inflight int, d time.Duration) (Result, error) {
	walDir := filepath.Join(dir, "raw-raft", "wal")
	if err := os.MkdirAll(walDir, 0o750); err != nil {
		return Result{}, fmt.Errorf("rawlimit: %w", err)
	}
	defer os.RemoveAll(filepath.Join(dir, "raw-raft"))
	logger := hclog.NewNullLogger()
	store, err := wal.Open(walDir, wal.WithLogger(logger))
	if err != nil {
		return Result{}, fmt.Errorf("rawlimit: open raft-wal: %w", err)
	}
	defer store.Close()
	addr, trans := raft.NewInmemTransport("")
	defer trans.Close()
	conf := raft.DefaultConfig()
	conf.LocalID = "raw"
	conf.Logger = logger
	conf.BatchApplyCh = true
	conf.MaxAppendEntries = 256
	conf.HeartbeatTimeout = 500 * time.Millisecond
	conf.ElectionTimeout = 500 * time.Millisecond
	conf.LeaderLeaseTimeout = 250 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	snaps := raft.NewDiscardSnapshotStore()
	err = raft.BootstrapCluster(conf, store, store, snaps, trans,
		raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: conf.LocalID, Address: addr}}})
	if err != nil {
		return Result{}, fmt.Errorf("rawlimit: bootstrap raft: %w", err)
	}
	r, err := raft.NewRaft(conf, &nopFSM{}, store, store, snaps, trans)
	if err != nil {
		return Result{}, fmt.Errorf("rawlimit: start raft: %w", err)
	}
	defer r.Shutdown()
	deadline := time.Now().Add(10 * time.Second)
	for r.State() != raft.Leader {
		if time.Now().After(deadline) {
			return Result{}, ErrNoLeader
		}
		time.Sleep(10 * time.Millisecond)
	}

	cmd := &gantrypb.IngestCmd{NodeId: "raw", AtMs: time.Now().UnixMilli()}
	for i := 0; i < batch; i++ {
		rec := simagent.Point("job-0000", int64(i+1), simagent.Now())
		rec.Seq = uint64(i + 1)
		cmd.Records = append(cmd.Records, rec)
	}
	payload, err := command.Encode(cmd)
	if err != nil {
		return Result{}, fmt.Errorf("rawlimit: %w", err)
	}

	var (
		res      = Result{PayloadBytes: len(payload)}
		entries  atomic.Uint64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	start := time.Now()
	stopAt := start.Add(d)
	for w := 0; w < inflight; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stopAt) && ctx.Err() == nil {
				if err := r.Apply(payload, 10*time.Second).Error(); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				entries.Add(1)
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Batches = entries.Load()
	res.Points = res.Batches * uint64(batch)
	if firstErr != nil {
		return res, fmt.Errorf("rawlimit: raft apply: %w", firstErr)
	}
	return res, ctx.Err()
}
