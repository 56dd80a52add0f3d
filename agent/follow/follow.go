// Package follow is what the agent's two file tailers (agent/logtail for the
// log, agent/metricsfile for the metrics) share in following a file the
// job writes: opening it through safefile once it appears, waiting for it
// to grow, noticing that it shrank or was replaced, holding back a read
// error until what was read before it is delivered, and closing.
//
// How the bytes are cut (chunks, lines) stays with each tailer; File only
// owns the file and its watcher.
package follow

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/gantry-ml/gantry/agent/filewatch"
	"github.com/gantry-ml/gantry/agent/safefile"
)

// File is a file followed by path. It is not safe for concurrent use.
type File struct {
	// Path is the file followed.
	Path string
	// Name names the file in errors ("log file", "metrics file").
	Name string
	// Owner is the uid the file must belong to, or safefile.AnyOwner.
	Owner int
	// Poll is the watcher's poll interval.
	Poll time.Duration
	// F is the open file; nil until it exists, and again after a
	// replacement until Open.
	F *os.File

	closedErr error // returned by Ready after Close
	watch     *filewatch.Watcher
	held      error // a read error held back until what came before it is delivered
	closed    bool
}

// New returns a File for path that nothing has opened yet. closedErr is
// what Ready returns after Close (each tailer has its own).
func New(path, name string, closedErr error) File {
	return File{Path: path, Name: name, Owner: safefile.AnyOwner, Poll: filewatch.DefaultPollInterval, closedErr: closedErr}
}

// Ready is called first by every read: it returns the closed error after
// Close, or the read error held back by Hold (once), or nil.
func (f *File) Ready() error {
	if f.closed {
		return f.closedErr
	}
	err := f.held
	f.held = nil
	return err
}

// Hold keeps err for the next Ready, so that what was read before it is
// delivered first.
func (f *File) Hold(err error) { f.held = err }

// Open opens the file into F and reports whether it exists yet. The job
// writes the file and owns its directory, so it is opened through safefile:
// a FIFO, a device or a link out of the job directory is refused (an error
// wrapping safefile.ErrUnsafe) and never read.
func (f *File) Open() (bool, error) {
	file, err := safefile.Open(f.Path, f.Owner)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open %s: %w", f.Name, err)
	}
	f.F = file
	return true, nil
}

// Wait blocks until the file may have changed or ctx is done. The first
// call only sets up the watcher and returns at once: bytes written before
// the watch existed raised no event, so the caller looks once more before
// sleeping.
func (f *File) Wait(ctx context.Context) error {
	if f.watch == nil {
		w, err := filewatch.New(f.Path, f.Poll)
		if err != nil {
			return fmt.Errorf("watch %s: %w", f.Name, err)
		}
		f.watch = w
		return nil
	}
	if err := f.watch.Wait(ctx); err != nil {
		return fmt.Errorf("wait for %s: %w", f.Name, err)
	}
	return nil
}

// Check reports how the open file changed relative to pos, the position
// read up to (filewatch.Check). A replaced file is closed and F set to nil,
// so that the next read opens the new one at the path; a shrunk one is left
// for the caller to rewind.
func (f *File) Check(pos int64) (filewatch.Change, error) {
	change, err := filewatch.Check(f.F, f.Path, pos)
	if err != nil {
		return change, err
	}
	if change == filewatch.Replaced {
		old := f.F
		f.F = nil
		if err := old.Close(); err != nil {
			return change, fmt.Errorf("close replaced %s: %w", f.Name, err)
		}
	}
	return change, nil
}

// Size is the open file's size now (0 before it exists): the drain after
// a job's exit reads what the file held at the exit without a time limit,
// and times only what is written after it.
func (f *File) Size() (int64, error) {
	if f.F == nil {
		return 0, nil
	}
	fi, err := f.F.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", f.Name, err)
	}
	return fi.Size(), nil
}

// Close releases the file and the watcher. Later Ready calls return the
// closed error; a second Close does nothing.
func (f *File) Close() error {
	if f.closed {
		return nil
	}
	f.closed = true
	var errs []error
	if f.watch != nil {
		errs = append(errs, f.watch.Close())
	}
	if f.F != nil {
		if err := f.F.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", f.Name, err))
		}
	}
	return errors.Join(errs...)
}
