package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/gantry-ml/gantry/controller/command"
)

// ErrLogCorrupt is returned by Open when this node's Raft log cannot be
// read back intact. The error text names the WAL directory, the segment
// file and the Raft index where it can, and says what to do.
var ErrLogCorrupt = errors.New("raft log is corrupt")

// LostTail describes committed entries this node's state had applied but
// its Raft log (and latest snapshot) no longer hold: a truncated or zeroed
// WAL tail. The zero value means nothing was lost.
type LostTail struct {
	// From and To are the first and last lost Raft index, inclusive.
	From, To uint64
}

// Count is the number of entries lost (0 when none).
func (l LostTail) Count() uint64 {
	if l.To < l.From || l.To == 0 {
		return 0
	}
	return l.To - l.From + 1
}

// LogCheck is what the start-up scan of the Raft log found.
type LogCheck struct {
	First, Last uint64 // the log's index range (0, 0 when empty)
	Entries     uint64 // entries read and verified
	Took        time.Duration
	// SnapshotIndex is the index of the latest snapshot (0 when none).
	SnapshotIndex uint64
	Lost          LostTail
}

// logReader is the part of raft-wal the scan needs; tests substitute it.
type logReader interface {
	FirstIndex() (uint64, error)
	LastIndex() (uint64, error)
	GetLog(index uint64, log *raft.Log) error
}

// whatToDo is the operator's way out of a damaged log on this node.
func whatToDo(dataDir string) string {
	raftDir := filepath.Join(dataDir, "raft")
	return fmt.Sprintf("stop this controller, move %s aside (e.g. mv %s %s.corrupt), and restart it so that it "+
		"re-joins and catches up from its peers; on a single-node cluster restore %s from a snapshot or backup instead",
		raftDir, raftDir, raftDir, raftDir)
}

// checkLog reads every entry of the log once, before Raft starts, so that
// damage is reported as a start-up error naming the place, instead of a
// panic (raft-wal's decoder, or raft's own panic when it cannot read an
// entry it must apply) that repeats at every restart. For LogCommand
// entries it also checks Gantry's checksum (command.Verify): a mismatch
// means this node's copy is damaged. It does not decode payloads: an
// intact entry that cannot be decoded is the FSM's to skip.
func checkLog(logs logReader, walDir, dataDir string) (res LogCheck, err error) {
	start := time.Now()
	var cur uint64
	defer func() {
		// raft-wal's decoder slices with unchecked varint lengths, so a
		// damaged frame can panic instead of returning an error.
		if r := recover(); r != nil {
			err = corruptAt(walDir, dataDir, cur, fmt.Errorf("raft-wal panicked reading it: %v", r))
		}
		res.Took = time.Since(start)
	}()
	if res.First, err = logs.FirstIndex(); err != nil {
		return res, corruptAt(walDir, dataDir, 0, fmt.Errorf("first index: %w", err))
	}
	if res.Last, err = logs.LastIndex(); err != nil {
		return res, corruptAt(walDir, dataDir, 0, fmt.Errorf("last index: %w", err))
	}
	if res.Last == 0 {
		return res, nil
	}
	var l raft.Log
	for cur = res.First; cur <= res.Last; cur++ {
		l = raft.Log{}
		if err := logs.GetLog(cur, &l); err != nil {
			return res, corruptAt(walDir, dataDir, cur, err)
		}
		if l.Index != cur {
			return res, corruptAt(walDir, dataDir, cur, fmt.Errorf("entry read back says index %d", l.Index))
		}
		if l.Type == raft.LogCommand {
			if err := command.Verify(l.Data); errors.Is(err, command.ErrCorrupt) {
				return res, corruptAt(walDir, dataDir, cur, err)
			}
		}
		res.Entries++
	}
	return res, nil
}

// corruptAt builds the start-up error for damage at index (0: not tied to
// one entry).
func corruptAt(walDir, dataDir string, index uint64, cause error) error {
	where := "in " + walDir
	if index > 0 {
		where = fmt.Sprintf("at index %d", index)
		if seg := segmentFor(walDir, index); seg != "" {
			where += " in segment file " + seg
			if off, ok := frameOffset(seg, index); ok {
				where += fmt.Sprintf(" (its frame starts at byte offset %d)", off)
			}
		} else {
			where += " in " + walDir
		}
	}
	return fmt.Errorf("%w %s: %v. To recover: %s", ErrLogCorrupt, where, cause, whatToDo(dataDir))
}

// openError turns a failure (or panic) of raft-wal's Open into the same
// kind of error: Open reads every segment header and recovers the tail
// segment frame by frame, so damage there shows up before any scan.
func openError(walDir, dataDir string, cause error) error {
	return fmt.Errorf("%w: cannot open the write-ahead log in %s: %v. To recover: %s",
		ErrLogCorrupt, walDir, cause, whatToDo(dataDir))
}

// segmentFor returns the path of the raft-wal segment file that holds
// index, or "" if it cannot tell. raft-wal names segments
// "BASEINDEX-ID.wal" (base index as 20 decimal digits, ID as 16 hex
// digits), and a segment holds the entries from its base index up to the
// next segment's, so the holder is the one with the largest base index not
// above index (the highest ID wins if a truncation left two).
func segmentFor(walDir string, index uint64) string {
	ents, err := os.ReadDir(walDir)
	if err != nil {
		return ""
	}
	type seg struct {
		base, id uint64
		name     string
	}
	var segs []seg
	for _, e := range ents {
		name := e.Name()
		stem, ok := strings.CutSuffix(name, ".wal")
		if !ok {
			continue
		}
		b, i, ok := strings.Cut(stem, "-")
		if !ok {
			continue
		}
		base, err1 := strconv.ParseUint(b, 10, 64)
		id, err2 := strconv.ParseUint(i, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		segs = append(segs, seg{base, id, name})
	}
	sort.Slice(segs, func(a, b int) bool {
		if segs[a].base != segs[b].base {
			return segs[a].base < segs[b].base
		}
		return segs[a].id < segs[b].id
	})
	best := ""
	for _, s := range segs {
		if s.base <= index {
			best = s.name
		}
	}
	if best == "" {
		return ""
	}
	return filepath.Join(walDir, best)
}

// frameOffset finds the byte offset of index's frame in a raft-wal segment
// file by walking its frames, for the start-up error only (best effort: ok
// is false when a damaged frame header stops the walk first). The format,
// raft-wal v0.4's segment/format.go: a 32-byte file header (base index at
// bytes 8..16, little-endian), then frames of an 8-byte header (type byte,
// 3 reserved bytes, uint32 little-endian length, or CRC for commit frames)
// and a payload padded to a multiple of 8 bytes.
func frameOffset(segPath string, index uint64) (int64, bool) {
	const (
		fileHeaderLen  = 32
		frameHeaderLen = 8
		frameEntry     = 1
		frameIndex     = 2
		frameCommit    = 3
	)
	b, err := os.ReadFile(segPath)
	if err != nil || len(b) < fileHeaderLen {
		return 0, false
	}
	cur := binary.LittleEndian.Uint64(b[8:16])
	for off := fileHeaderLen; off+frameHeaderLen <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[off+4 : off+8]))
		switch b[off] {
		case frameEntry:
			if cur == index {
				return int64(off), true
			}
			cur++
		case frameIndex:
		case frameCommit:
			n = 0 // the length field holds a CRC
		default:
			return 0, false
		}
		off += frameHeaderLen + (n+7)&^7
	}
	return 0, false
}

// lostTail compares what the log and latest snapshot hold with the applied
// index this node's state database had reached before the restart. Raft
// rebuilds the state from the snapshot and the log at every start, so
// entries beyond both are gone from this node: a follower gets them back
// from the leader, but a single node (or a quorum that lost the same tail)
// comes back with committed state rolled back.
func lostTail(prevApplied, logLast, snapIndex uint64) LostTail {
	have := max(logLast, snapIndex)
	if prevApplied <= have {
		return LostTail{}
	}
	return LostTail{From: have + 1, To: prevApplied}
}

// latestSnapshotIndex is the index of the newest snapshot raft will
// restore (0 when there is none).
func latestSnapshotIndex(snaps raft.SnapshotStore) (uint64, error) {
	metas, err := snaps.List()
	if err != nil {
		return 0, err
	}
	var idx uint64
	for _, m := range metas {
		idx = max(idx, m.Index)
	}
	return idx, nil
}

// openWAL opens raft-wal, turning its errors and panics into ErrLogCorrupt
// errors that say what to do. The caller closes meta on error.
func openWAL(walDir, dataDir string, hcl hclog.Logger, meta *metadb.BoltMetaDB) (w *wal.WAL, err error) {
	defer func() {
		if r := recover(); r != nil {
			w, err = nil, openError(walDir, dataDir, fmt.Errorf("raft-wal panicked: %v", r))
		}
	}()
	w, err = wal.Open(walDir, wal.WithLogger(hcl.Named("wal")), wal.WithMetaStore(meta))
	if err != nil {
		return nil, openError(walDir, dataDir, err)
	}
	return w, nil
}

// verifyLog runs the start-up scan and the lost-tail check, and logs what
// they found.
func verifyLog(cfg Config, logs logReader, snaps raft.SnapshotStore, walDir string) (LogCheck, error) {
	check, err := checkLog(logs, walDir, cfg.DataDir)
	if err != nil {
		return check, err
	}
	check.SnapshotIndex, err = latestSnapshotIndex(snaps)
	if err != nil {
		return check, fmt.Errorf("list snapshots in %s: %w", filepath.Join(cfg.DataDir, "raft"), err)
	}
	check.Lost = lostTail(cfg.PrevApplied, check.Last, check.SnapshotIndex)
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	log.Info("raft log verified", "dir", walDir, "first", check.First, "last", check.Last,
		"entries", check.Entries, "snapshot_index", check.SnapshotIndex, "took", check.Took.Round(time.Millisecond))
	if n := check.Lost.Count(); n > 0 {
		log.Warn(fmt.Sprintf("raft log ends at %d (latest snapshot %d) but state.db had applied %d: "+
			"entries %d..%d were lost from this node's log (a truncated or zeroed WAL tail in %s); "+
			"in a cluster this node catches up from the leader, on a single node those committed changes are gone",
			check.Last, check.SnapshotIndex, cfg.PrevApplied, check.Lost.From, check.Lost.To, walDir),
			"lost_from", check.Lost.From, "lost_to", check.Lost.To, "lost_entries", n)
	}
	return check, nil
}

// LogCheck reports what the start-up scan of the Raft log found, including
// any lost tail (exported as gantry_raft_log_lost_entries).
func (n *Node) LogCheck() LogCheck { return n.check }
