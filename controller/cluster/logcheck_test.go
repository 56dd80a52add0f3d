package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/gantry-ml/gantry/controller/command"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func TestLostTail(t *testing.T) {
	tests := []struct {
		prev, last, snap uint64
		want             LostTail
	}{
		{0, 0, 0, LostTail{}},             // first start
		{900, 900, 0, LostTail{}},         // nothing lost
		{900, 1000, 0, LostTail{}},        // log ahead of state (not yet applied)
		{900, 812, 0, LostTail{813, 900}}, // zeroed tail
		{900, 812, 850, LostTail{851, 900}},
		{900, 812, 950, LostTail{}}, // the snapshot covers it
		{900, 0, 0, LostTail{1, 900}},
	}
	for _, tt := range tests {
		got := lostTail(tt.prev, tt.last, tt.snap)
		if got != tt.want {
			t.Errorf("lostTail(prev %d, last %d, snap %d) = %+v, want %+v", tt.prev, tt.last, tt.snap, got, tt.want)
		}
	}
	if n := (LostTail{813, 900}).Count(); n != 88 {
		t.Errorf("Count = %d, want 88", n)
	}
	if n := (LostTail{}).Count(); n != 0 {
		t.Errorf("Count of nothing = %d", n)
	}
}

func TestSegmentFor(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{
		"00000000000000000001-0000000000000000.wal",
		"00000000000000004097-0000000000000001.wal",
		"00000000000000009000-0000000000000002.wal",
		"wal-meta.db", "junk.wal",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for idx, want := range map[uint64]string{
		1: "00000000000000000001-0000000000000000.wal", 4096: "00000000000000000001-0000000000000000.wal",
		4097: "00000000000000004097-0000000000000001.wal", 99999: "00000000000000009000-0000000000000002.wal",
	} {
		if got := segmentFor(dir, idx); got != filepath.Join(dir, want) {
			t.Errorf("segmentFor(%d) = %q, want %s", idx, got, want)
		}
	}
	if got := segmentFor(dir, 0); got != "" {
		t.Errorf("segmentFor(0) = %q, want none", got)
	}
}

// panicky is a log whose reads panic, as raft-wal's decoder does on some
// damaged frames.
type panicky struct{}

func (panicky) FirstIndex() (uint64, error)        { return 1, nil }
func (panicky) LastIndex() (uint64, error)         { return 3, nil }
func (panicky) GetLog(i uint64, _ *raft.Log) error { panic("slice bounds out of range [-11:]") }

func TestCheckLogRecoversPanic(t *testing.T) {
	_, err := checkLog(panicky{}, "/d/raft/wal", "/d")
	if !errors.Is(err, ErrLogCorrupt) || !strings.Contains(err.Error(), "index 1") || !strings.Contains(err.Error(), "slice bounds") {
		t.Fatalf("err = %v, want ErrLogCorrupt at index 1 with the panic", err)
	}
}

// writeLog fills a raft-wal directory with n ingest entries of about
// size bytes each, the way the leader writes them (batches of 256).
func writeLog(tb testing.TB, dir string, n, size int) {
	tb.Helper()
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(dir, wal.WithMetaStore(meta))
	if err != nil {
		tb.Fatal(err)
	}
	defer meta.Close()
	defer w.Close()
	data, err := command.Encode(&gantrypb.IngestCmd{NodeId: "gpu-host-1", Records: []*gantrypb.Record{
		{JobId: "job", Seq: 1, Body: &gantrypb.Record_Log{Log: &gantrypb.LogChunk{Data: make([]byte, size)}}},
	}})
	if err != nil {
		tb.Fatal(err)
	}
	batch := make([]*raft.Log, 0, 256)
	for i := 1; i <= n; i++ {
		batch = append(batch, &raft.Log{Index: uint64(i), Term: 1, Type: raft.LogCommand, Data: data})
		if len(batch) == cap(batch) || i == n {
			if err := w.StoreLogs(batch); err != nil {
				tb.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}

// BenchmarkCheckLog100k measures the start-up scan over a 100,000-entry
// log (the scan runs at every start, so it must stay cheap).
func BenchmarkCheckLog100k(b *testing.B) {
	for _, size := range []int{200, 4096} {
		b.Run(fmt.Sprintf("entry=%dB", size), func(b *testing.B) {
			dir := b.TempDir()
			writeLog(b, dir, 100_000, size)
			meta := &metadb.BoltMetaDB{}
			w, err := wal.Open(dir, wal.WithMetaStore(meta))
			if err != nil {
				b.Fatal(err)
			}
			defer meta.Close()
			defer w.Close()
			b.ResetTimer()
			for range b.N {
				res, err := checkLog(w, dir, filepath.Dir(dir))
				if err != nil || res.Entries != 100_000 {
					b.Fatalf("checkLog = %+v, %v", res, err)
				}
			}
		})
	}
}
