package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
)

// ErrDiskFull is returned by Apply and ApplyAsync on the leader while the
// data directory's free space is below the configured minimum. Callers
// check it with errors.Is; the wrapped message says how much is free.
var ErrDiskFull = errors.New("controller data directory is out of disk space")

// DefaultMinFreeDisk is the free space below which the guard refuses
// writes when DiskConfig.MinFree is 0. raft-wal preallocates each new
// segment at its full 64 MiB, and a failed preallocation leaves the log
// sealed and unwritable until a restart, so the guard must trip while one
// more segment (plus raft-wal's meta database and some slack) still fits.
const DefaultMinFreeDisk = 128 << 20

// DiskConfig configures the free-space guard on the data directory.
type DiskConfig struct {
	// MinFree is the free space, in bytes, below which writes are
	// refused; 0 means DefaultMinFreeDisk, negative turns the guard off.
	MinFree int64
	// Interval is how often free space is measured; default 1 s.
	Interval time.Duration

	// statfs replaces the real measurement in this package's tests.
	statfs func(dir string) (uint64, error)
}

// DiskGuard watches the free space of the data directory. Why it exists:
// when raft-wal hits ENOSPC the leader's StoreLogs fails, raft fails the
// batch and steps down, and raft-wal is left unwritable until the process
// restarts, even after space is freed: a failed write leaves the batch in
// the tail segment's in-memory index ("non-monotonic append" afterwards),
// and a failed preallocation of the next segment leaves the tail sealed
// (ErrSealed afterwards). Refusing writes, and handing leadership to a
// peer, before the disk is actually full keeps the log writable.
type DiskGuard struct {
	dir      string
	need     uint64
	interval time.Duration
	log      *slog.Logger
	onFull   func(first bool)
	statfs   func(dir string) (uint64, error)

	free atomic.Uint64
	full atomic.Bool

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// startDiskGuard measures dir once and, unless the guard is off, keeps
// measuring it every interval. onFull runs on the guard's goroutine at
// each measurement that finds the disk short, first telling whether it is
// the first of this episode (the node uses it to hand leadership away,
// and retries until that works or space is back).
func startDiskGuard(dir string, cfg DiskConfig, log *slog.Logger, onFull func(first bool)) *DiskGuard {
	statfs := statfsFree
	if cfg.statfs != nil {
		statfs = cfg.statfs
	}
	return newDiskGuard(dir, cfg, log, onFull, statfs)
}

func newDiskGuard(dir string, cfg DiskConfig, log *slog.Logger, onFull func(first bool), statfs func(string) (uint64, error)) *DiskGuard {
	if log == nil {
		log = slog.Default()
	}
	g := &DiskGuard{dir: dir, log: log, onFull: onFull, statfs: statfs,
		stop: make(chan struct{}), done: make(chan struct{}), interval: cfg.Interval}
	if cfg.MinFree < 0 {
		close(g.done)
		return g
	}
	g.need = uint64(cfg.MinFree)
	if g.need == 0 {
		g.need = DefaultMinFreeDisk
	}
	if g.interval <= 0 {
		g.interval = time.Second
	}
	g.measure()
	go g.run()
	return g
}

// statfsFree is the space an unprivileged writer can still use on dir's
// file system (root may have a little more: the reserved blocks).
func statfsFree(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

func (g *DiskGuard) run() {
	defer close(g.done)
	t := time.NewTicker(g.interval)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
			g.measure()
		}
	}
}

// measure updates the state and logs transitions.
func (g *DiskGuard) measure() {
	free, err := g.statfs(g.dir)
	if err != nil {
		// Keep the last verdict: a failing statfs says nothing about space.
		g.log.Warn("cannot measure free disk space", "dir", g.dir, "err", err)
		return
	}
	g.free.Store(free)
	short := free < g.need
	was := g.full.Swap(short)
	switch {
	case short && !was:
		g.log.Error("controller data directory is out of disk space: refusing writes and handing Raft leadership to a peer until space is freed",
			"dir", g.dir, "free_bytes", free, "min_free_bytes", g.need)
	case !short && was:
		g.log.Info("disk space is back: accepting writes again", "dir", g.dir, "free_bytes", free, "min_free_bytes", g.need)
	}
	if short && g.onFull != nil {
		g.onFull(!was)
	}
}

// Err returns nil while there is enough space, else an error wrapping
// ErrDiskFull that says how much is free and how much is needed. Safe on a
// nil guard.
func (g *DiskGuard) Err() error {
	if g == nil || !g.full.Load() {
		return nil
	}
	return fmt.Errorf("%w: %s has %s free, needs %s: writes refused until space is freed",
		ErrDiskFull, g.dir, bytesIEC(g.free.Load()), bytesIEC(g.need))
}

// Full reports whether writes are refused for lack of space now.
func (g *DiskGuard) Full() bool { return g != nil && g.full.Load() }

// Free is the free space last measured, in bytes (0 with the guard off).
func (g *DiskGuard) Free() uint64 {
	if g == nil {
		return 0
	}
	return g.free.Load()
}

// Stop ends the guard's goroutine and waits for it. Safe to call twice.
func (g *DiskGuard) Stop() {
	if g == nil {
		return
	}
	g.once.Do(func() { close(g.stop) })
	<-g.done
}

func bytesIEC(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// DiskFree reports the data directory's free space as last measured and
// whether writes are refused for lack of it (gantry_data_dir_free_bytes,
// gantry_disk_full).
func (n *Node) DiskFree() (free uint64, full bool) { return n.disk.Free(), n.disk.Full() }

// stepDownForDisk hands leadership to a peer while this node's disk is
// short, so that a healthy node leads and writes go on. On a single-node
// cluster there is nobody to hand it to; the node stays leader and
// refuses writes with ErrDiskFull.
func (n *Node) stepDownForDisk(first bool) {
	if n.raft.State() != raft.Leader {
		return
	}
	if err := n.raft.LeadershipTransfer().Error(); err != nil {
		// Retried every interval; say it once per episode, not every second.
		if first {
			n.logger().Warn("out of disk space but cannot hand Raft leadership to a peer; refusing writes meanwhile", "err", err)
		}
		return
	}
	n.logger().Warn("out of disk space: handed Raft leadership to a peer")
}

func (n *Node) logger() *slog.Logger {
	if n.cfg.Log == nil {
		return slog.Default()
	}
	return n.cfg.Log
}

// writeWatch is the raft-wal log as raft sees it, noting the first failed
// append. raft-wal does not recover from one in-process (see DiskGuard):
// raft keeps retrying and failing ("segment is sealed") even after space
// is freed, and only reopening the log, i.e. restarting the controller,
// clears it (nothing committed is lost: the failed batch was never
// acknowledged). LogWriteFailed tells the server so.
type writeWatch struct {
	*wal.WAL
	dir    string
	log    *slog.Logger
	failed atomic.Pointer[error]
}

// StoreLog implements raft.LogStore through StoreLogs.
func (w *writeWatch) StoreLog(l *raft.Log) error { return w.StoreLogs([]*raft.Log{l}) }

// StoreLogs implements raft.LogStore.
func (w *writeWatch) StoreLogs(logs []*raft.Log) error {
	err := w.WAL.StoreLogs(logs)
	if err != nil && w.failed.CompareAndSwap(nil, &err) {
		log := w.log
		if log == nil {
			log = slog.Default()
		}
		log.Error("cannot append to the raft log: this controller cannot write its log again until it is restarted "+
			"(free disk space first if it is full); committed entries are safe",
			"dir", w.dir, "err", err)
	}
	return err
}

// LogWriteFailed returns the first error appending to this node's Raft
// log, or nil. Once it is non-nil the node cannot take part in writes
// until the process restarts (exported as gantry_raft_log_write_failed).
func (n *Node) LogWriteFailed() error {
	if n.writes == nil {
		return nil
	}
	if p := n.writes.failed.Load(); p != nil {
		return *p
	}
	return nil
}
