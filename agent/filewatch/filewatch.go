// Package filewatch tells a file follower when the file it follows may have
// changed, so that it can block instead of spinning at EOF.
//
// It combines two sources because neither is enough alone: fsnotify on the
// file's directory gives millisecond latency (and sees the file being created,
// which a watch on the file itself cannot), but inotify misses changes made on
// another host over NFS and on some overlayfs setups, and its queue can
// overflow. A fallback poll bounds the delay in those cases.
//
// A wake-up only means "look again": callers always re-read the file and must
// treat a wake-up with nothing new as normal.
package filewatch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultPollInterval is the fallback poll used by the agent's followers. It
// only matters when fsnotify misses an event, so it trades a quarter second of
// worst-case latency for near-zero idle cost.
const DefaultPollInterval = 250 * time.Millisecond

var (
	// ErrClosed is returned by Wait once the Watcher is closed.
	ErrClosed = errors.New("filewatch: watcher closed")
	// ErrBadPoll is returned by New for a non-positive poll interval, which
	// would turn the fallback poll into a busy loop.
	ErrBadPoll = errors.New("filewatch: poll interval must be positive")
)

// newFSWatcher is a variable so that tests can simulate a host where inotify
// is unavailable (instance limit reached) and check the poll-only path.
var newFSWatcher = fsnotify.NewWatcher

// Watcher wakes waiters when the file at one path may have changed. Its
// methods are safe for concurrent use.
type Watcher struct {
	dir  string
	base string
	poll time.Duration

	// wake holds at most one pending notification. An event that arrives
	// between the caller's read at EOF and its call to Wait stays here, so
	// no change is lost between the two.
	wake      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup

	mu       sync.Mutex
	fsw      *fsnotify.Watcher // nil when fsnotify could not be set up
	watching bool              // fsw has the directory
	err      error             // why notifications are unavailable; nil while watching
}

// New starts watching path, which need not exist yet (nor its directory: the
// directory watch is retried on every poll until it succeeds). If fsnotify
// cannot be used at all the Watcher still works by polling alone, and Err says
// why.
func New(path string, poll time.Duration) (*Watcher, error) {
	if poll <= 0 {
		return nil, fmt.Errorf("%w: %v", ErrBadPoll, poll)
	}
	clean := filepath.Clean(path)
	w := &Watcher{
		dir:  filepath.Dir(clean),
		base: filepath.Base(clean),
		poll: poll,
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	fsw, err := newFSWatcher()
	if err != nil {
		// Degrade rather than fail: a follower that polls is slower, one
		// that does not run loses the job's metrics.
		w.err = fmt.Errorf("fsnotify unavailable, polling every %v: %w", poll, err)
		return w, nil
	}
	w.fsw = fsw
	w.wg.Add(1)
	go w.loop()
	w.tryAdd()
	return w, nil
}

// Wait blocks until the file may have changed: an fsnotify event for it, or
// the poll interval elapsing. It returns nil then, ctx.Err() when ctx is done
// first, and ErrClosed after Close.
func (w *Watcher) Wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-w.done:
		return ErrClosed
	default:
	}
	w.tryAdd()
	timer := time.NewTimer(w.poll)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-w.done:
		return ErrClosed
	case <-w.wake:
		return nil
	case <-timer.C:
		return nil
	}
}

// Err reports why change notification is unavailable and the Watcher is
// relying on its poll alone (fsnotify could not be started, or the directory
// cannot be watched yet); nil while fsnotify is watching.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close stops the Watcher and wakes any Wait with ErrClosed. It is safe to
// call more than once.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() {
		close(w.done)
		w.mu.Lock()
		fsw := w.fsw
		w.mu.Unlock()
		if fsw != nil {
			if err := fsw.Close(); err != nil {
				w.closeErr = fmt.Errorf("close fsnotify watcher: %w", err)
			}
		}
		w.wg.Wait()
	})
	return w.closeErr
}

// tryAdd (re)adds the directory watch when it is missing: the directory may
// not exist yet, or may have been removed and recreated.
func (w *Watcher) tryAdd() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fsw == nil || w.watching {
		return
	}
	select {
	case <-w.done:
		return
	default:
	}
	if err := w.fsw.Add(w.dir); err != nil {
		w.err = fmt.Errorf("watch %s, polling every %v: %w", w.dir, w.poll, err)
		return
	}
	w.watching = true
	w.err = nil
}

func (w *Watcher) loop() {
	defer w.wg.Done()
	for {
		select {
		case <-w.done:
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			if ev.Name == w.dir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				// The kernel dropped the watch with the directory;
				// the next Wait re-adds it once it exists again.
				w.mu.Lock()
				w.watching = false
				w.err = fmt.Errorf("watched directory %s went away", w.dir)
				w.mu.Unlock()
			}
			if filepath.Base(ev.Name) == w.base {
				w.signal()
			}
		case _, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			// The only errors fsnotify reports here mean events were
			// dropped (queue overflow). Waking the waiter is the
			// recovery: it re-reads the file and finds whatever the lost
			// events were about.
			w.signal()
		}
	}
}

func (w *Watcher) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Change says how the file at a path relates to an open handle on it.
type Change int

const (
	// Unchanged: the path still names the open file and it is not shorter
	// than the read position.
	Unchanged Change = iota
	// Shrunk: the open file is shorter than the read position (truncated in
	// place, e.g. reopened with O_TRUNC or copytruncate rotation).
	Shrunk
	// Replaced: the path now names a different file (renamed away and
	// recreated); the follower should reopen the path.
	Replaced
)

// String returns the name of the change, for logs.
func (c Change) String() string {
	switch c {
	case Unchanged:
		return "unchanged"
	case Shrunk:
		return "shrunk"
	case Replaced:
		return "replaced"
	default:
		return fmt.Sprintf("Change(%d)", int(c))
	}
}

// Check compares the open file f, read up to pos, with what path names now.
// Followers call it at EOF, when no new data is the moment a truncation or
// replacement shows. A path that no longer exists is not a change: the
// follower keeps its handle until a new file appears.
func Check(f *os.File, path string, pos int64) (Change, error) {
	cur, err := f.Stat()
	if err != nil {
		return Unchanged, fmt.Errorf("stat open file %s: %w", path, err)
	}
	now, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return Unchanged, fmt.Errorf("stat %s: %w", path, err)
	case !os.SameFile(cur, now):
		return Replaced, nil
	}
	if cur.Size() < pos {
		return Shrunk, nil
	}
	return Unchanged, nil
}
