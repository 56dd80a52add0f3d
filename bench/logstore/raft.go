package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// applyTimeout matches cluster.Config's default ApplyTimeout.
const applyTimeout = 10 * time.Second

// leaderTimeout bounds the wait for the single node to elect itself.
const leaderTimeout = 10 * time.Second

// countingFSM does nothing but count, so that the store and Raft's own
// pipeline are all that is measured.
type countingFSM struct{ applied atomic.Uint64 }

func (f *countingFSM) Apply(*raft.Log) any { f.applied.Add(1); return nil }

func (f *countingFSM) Snapshot() (raft.FSMSnapshot, error) { return emptySnapshot{}, nil }

func (f *countingFSM) Restore(rc io.ReadCloser) error { return rc.Close() }

type emptySnapshot struct{}

func (emptySnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }

func (emptySnapshot) Release() {}

// benchRaftApply runs a single-node Raft with st as log and stable store and
// appliers goroutines calling Apply back to back for d.
func benchRaftApply(ctx context.Context, root string, st storeKind, appliers, size int, d time.Duration) (sample, error) {
	var res sample
	dir, err := os.MkdirTemp(root, "raft-"+st.name+"-*")
	if err != nil {
		return res, fmt.Errorf("case dir: %w", err)
	}
	defer os.RemoveAll(dir)

	r, closeAll, err := startRaft(dir, st)
	if err != nil {
		return res, err
	}
	defer closeAll()

	payload := randomPayload(size)
	lats := make([][]time.Duration, appliers)
	errs := make([]error, appliers)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for i := range appliers {
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t := time.Now()
				if err := r.Apply(payload, applyTimeout).Error(); err != nil {
					errs[i] = fmt.Errorf("apply: %w", err)
					return
				}
				lats[i] = append(lats[i], time.Since(t))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for i := range appliers {
		if errs[i] != nil {
			return res, errs[i]
		}
		all = append(all, lats[i]...)
	}
	if err := closeAll(); err != nil {
		return res, err
	}
	return sample{lat: all, entries: len(all), elapsed: elapsed}, nil
}

// startRaft bootstraps a one-voter cluster in dir, configured as
// controller/cluster configures it except for the transport, and waits
// until it leads with its bootstrap entries applied. The returned close
// function is idempotent, so callers may defer it and also check it.
func startRaft(dir string, st storeKind) (*raft.Raft, func() error, error) {
	store, err := st.open(filepath.Join(dir, "log"))
	if err != nil {
		return nil, nil, err
	}
	logger := hclog.NewNullLogger()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, logger)
	if err != nil {
		store.Close()
		return nil, nil, fmt.Errorf("snapshot store: %w", err)
	}
	addr, trans := raft.NewInmemTransport("")

	rc := raft.DefaultConfig()
	rc.LocalID = "bench"
	rc.Logger = logger
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	// cluster.go's Fast timings: only the election gets quicker; a single
	// node commits as soon as its own log write returns.
	rc.HeartbeatTimeout = 50 * time.Millisecond
	rc.ElectionTimeout = 50 * time.Millisecond
	rc.LeaderLeaseTimeout = 50 * time.Millisecond
	rc.CommitTimeout = 5 * time.Millisecond

	conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: rc.LocalID, Address: addr}}}
	if err := raft.BootstrapCluster(rc, store, store, snaps, trans, conf); err != nil {
		store.Close()
		return nil, nil, fmt.Errorf("bootstrap: %w", err)
	}
	r, err := raft.NewRaft(rc, &countingFSM{}, store, store, snaps, trans)
	if err != nil {
		store.Close()
		return nil, nil, fmt.Errorf("start raft: %w", err)
	}
	var (
		once     sync.Once
		closeErr error
	)
	closeAll := func() error {
		once.Do(func() {
			if err := r.Shutdown().Error(); err != nil {
				closeErr = fmt.Errorf("raft shutdown: %w", err)
			}
			if err := trans.Close(); err != nil && closeErr == nil {
				closeErr = fmt.Errorf("transport close: %w", err)
			}
			if err := store.Close(); err != nil && closeErr == nil {
				closeErr = fmt.Errorf("close %s: %w", st.name, err)
			}
		})
		return closeErr
	}
	if err := waitLeader(r, leaderTimeout); err != nil {
		closeAll()
		return nil, nil, err
	}
	if err := r.Barrier(applyTimeout).Error(); err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("barrier: %w", err)
	}
	return r, closeAll, nil
}

// waitLeader polls until r leads or timeout passes.
func waitLeader(r *raft.Raft, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for r.State() != raft.Leader {
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v (state %v)", errNoLeader, timeout, r.State())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}
