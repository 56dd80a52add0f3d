package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
)

// logStore is what Raft needs from a store: Gantry uses one store as both
// the log and the stable store, so both are measured that way.
type logStore interface {
	raft.LogStore
	raft.StableStore
	io.Closer
}

// storeKind names a store and opens a fresh one in an empty directory.
type storeKind struct {
	name string
	open func(dir string) (logStore, error)
}

// stores lists the candidates, each with its defaults as Gantry would open
// it (cluster.go opens raft-wal with no options).
var stores = []storeKind{
	{"raft-wal", func(dir string) (logStore, error) {
		// raft-wal needs its directory to exist before Open.
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("raft-wal dir: %w", err)
		}
		w, err := wal.Open(dir, wal.WithLogger(hclog.NewNullLogger()))
		if err != nil {
			return nil, fmt.Errorf("open raft-wal: %w", err)
		}
		return w, nil
	}},
	{"raft-boltdb", func(dir string) (logStore, error) {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("raft-boltdb dir: %w", err)
		}
		b, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
		if err != nil {
			return nil, fmt.Errorf("open raft-boltdb: %w", err)
		}
		return b, nil
	}},
}

// warmupCalls are made before timing starts: the first append creates
// files and, for raft-wal, re-bases the first segment, which is not steady
// state.
const warmupCalls = 3

// maxBytesPerCase bounds the disk space one case may fill on a fast disk.
const maxBytesPerCase = 1 << 30

// sample is one round of one case.
type sample struct {
	lat     []time.Duration // one per call
	entries int
	elapsed time.Duration
}

// benchStoreLogs appends batches of batch entries of size bytes to a fresh
// store for d and reports per-call latency.
func benchStoreLogs(ctx context.Context, root string, st storeKind, batch, size int, d time.Duration) (sample, error) {
	var res sample
	dir, err := os.MkdirTemp(root, st.name+"-*")
	if err != nil {
		return res, fmt.Errorf("case dir: %w", err)
	}
	defer os.RemoveAll(dir)
	s, err := st.open(dir)
	if err != nil {
		return res, err
	}
	defer s.Close()

	payload := randomPayload(size)
	next := uint64(1)
	call := func() (time.Duration, error) {
		// Fresh structs per call, as Raft hands the store new ones; the
		// payload is shared because both stores copy it while encoding.
		logs := make([]*raft.Log, batch)
		for i := range logs {
			logs[i] = &raft.Log{Index: next, Term: 1, Type: raft.LogCommand, Data: payload, AppendedAt: time.Now()}
			next++
		}
		start := time.Now()
		if err := s.StoreLogs(logs); err != nil {
			return 0, fmt.Errorf("StoreLogs at index %d: %w", logs[0].Index, err)
		}
		return time.Since(start), nil
	}

	for range warmupCalls {
		if _, err := call(); err != nil {
			return res, err
		}
	}
	var lat []time.Duration
	start := time.Now()
	for time.Since(start) < d && (len(lat)+1)*batch*size <= maxBytesPerCase && ctx.Err() == nil {
		l, err := call()
		if err != nil {
			return res, err
		}
		lat = append(lat, l)
	}
	res = sample{lat: lat, entries: len(lat) * batch, elapsed: time.Since(start)}
	if err := s.Close(); err != nil {
		return res, fmt.Errorf("close %s: %w", st.name, err)
	}
	return res, nil
}

// fill sets the throughput and latency fields of r from its rounds.
func fill(r *Result, rounds []sample) {
	var (
		lat     []time.Duration
		elapsed time.Duration
	)
	for _, s := range rounds {
		lat = append(lat, s.lat...)
		r.Entries += s.entries
		elapsed += s.elapsed
		r.RoundEntriesPerSec = append(r.RoundEntriesPerSec, perSec(s.entries, s.elapsed))
	}
	r.Calls = len(lat)
	r.Seconds = elapsed.Seconds()
	r.EntriesPerSec = perSec(r.Entries, elapsed)
	r.MiBPerSec = r.EntriesPerSec * float64(r.EntryBytes) / (1 << 20)
	slices.Sort(lat)
	r.P50Micros = micros(percentile(lat, 0.50))
	r.P99Micros = micros(percentile(lat, 0.99))
}

// percentile returns the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(len(sorted))*p)) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func perSec(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// randomPayload is incompressible so that no layer can shortcut it.
func randomPayload(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error
	return b
}
