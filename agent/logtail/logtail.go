// Package logtail follows a job's log file (the training process's combined
// stdout and stderr) as byte chunks, and reads its tail for the exit record.
//
// Logs have no record structure the agent may rely on (progress bars rewrite
// lines with \r, tracebacks arrive half-written), so the follower ships bytes
// as they appear, each chunk tagged with its file offset: the offset is what
// lets the controller serve "logs from offset N" and drop a chunk it already
// has after an agent restart.
package logtail

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/gantry-ml/gantry/agent/filewatch"
	"github.com/gantry-ml/gantry/agent/follow"
	"github.com/gantry-ml/gantry/agent/safefile"
)

const (
	// DefaultMaxChunk is used when NewFollower is given a non-positive
	// maxChunk.
	DefaultMaxChunk = 64 << 10
	// maxBytesPerNext bounds one Next, so that a backlog is streamed
	// rather than read into memory at once.
	maxBytesPerNext = 1 << 20
)

var (
	// ErrBadOffset: a Follower was asked to start at a negative offset.
	ErrBadOffset = errors.New("negative start offset")
	// ErrClosed: the Follower was used after Close.
	ErrClosed = errors.New("log follower closed")
)

// Chunk is a run of log bytes.
type Chunk struct {
	// Offset is the file offset of Data[0].
	Offset int64
	// Data is owned by the receiver.
	Data []byte
	// Truncated marks the first chunk after the file shrank below the
	// read position or was replaced: reading restarted at offset 0.
	Truncated bool
}

// Follower follows a log file. It is not safe for concurrent use: cancel
// Next's context, then call Drain or Close.
type Follower struct {
	src      follow.File
	maxChunk int

	offset int64 // next byte to read
	// truncated is set from a restart until the next chunk carries it.
	truncated bool
}

// NewFollower returns a Follower for path from startOffset, in chunks of at
// most maxChunk bytes (DefaultMaxChunk if maxChunk <= 0). Nothing is opened
// until the first Next or Drain, and the file need not exist yet.
func NewFollower(path string, startOffset int64, maxChunk int) *Follower {
	if maxChunk <= 0 {
		maxChunk = DefaultMaxChunk
	}
	return &Follower{
		src:      follow.New(path, "log file", ErrClosed),
		maxChunk: maxChunk,
		offset:   startOffset,
	}
}

// RequireOwner makes the Follower refuse a file that does not belong to
// uid (the job's user). Call it before the first Next.
func (f *Follower) RequireOwner(uid int) { f.src.Owner = uid }

// Poll is Next without the wait: the bytes available now, up to about
// 1 MiB, possibly none. It is for reading what is left after the process
// has exited, in bounded steps.
func (f *Follower) Poll() ([]Chunk, error) {
	if err := f.src.Ready(); err != nil {
		return nil, err
	}
	chunks, err := f.read(maxBytesPerNext)
	if err != nil && len(chunks) > 0 {
		f.src.Hold(err)
		return chunks, nil
	}
	return chunks, err
}

// Next blocks until new bytes exist and returns them (up to about 1 MiB per
// call) in chunks of at most maxChunk bytes. It returns ctx.Err() once ctx is
// done, without consuming anything.
func (f *Follower) Next(ctx context.Context) ([]Chunk, error) {
	if err := f.src.Ready(); err != nil {
		return nil, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		chunks, err := f.read(maxBytesPerNext)
		if err != nil {
			if len(chunks) == 0 {
				return nil, err
			}
			f.src.Hold(err)
			return chunks, nil
		}
		if len(chunks) > 0 {
			return chunks, nil
		}
		if err := f.src.Wait(ctx); err != nil {
			return nil, err
		}
	}
}

// Drain returns everything left to EOF without waiting for more. It is meant
// for after the process has exited. On error the chunks read before it are
// returned with it. A file that never appeared yields no chunks.
func (f *Follower) Drain() ([]Chunk, error) {
	if err := f.src.Ready(); err != nil {
		return nil, err
	}
	return f.read(0)
}

// Offset returns the offset of the next byte to be read: the resume point.
func (f *Follower) Offset() int64 {
	return f.offset
}

// Size is the log file's size now (follow.File.Size).
func (f *Follower) Size() (int64, error) { return f.src.Size() }

// Close releases the file and the watcher. Later calls return ErrClosed.
func (f *Follower) Close() error { return f.src.Close() }

// read returns the bytes available now, up to limit (0: no limit).
func (f *Follower) read(limit int) ([]Chunk, error) {
	var chunks []Chunk
	total := 0
	checked := false
	for limit <= 0 || total < limit {
		if f.src.F == nil {
			ok, err := f.open()
			if err != nil || !ok {
				return chunks, err
			}
		}
		fi, err := f.src.F.Stat()
		if err != nil {
			return chunks, fmt.Errorf("stat log file: %w", err)
		}
		avail := fi.Size() - f.offset
		if avail <= 0 {
			// Nothing new: the moment a truncation or replacement
			// shows. Checked once per call, and only before any chunk,
			// so that offsets within one result never go back.
			if len(chunks) > 0 || checked {
				return chunks, nil
			}
			checked = true
			restarted, err := f.checkFile()
			if err != nil || !restarted {
				return chunks, err
			}
			continue
		}
		// One read for everything available (within limit), sized to
		// what is there: a 10-byte write costs 10 bytes, a backlog one
		// syscall rather than one per chunk.
		want := avail
		if limit > 0 {
			want = min(want, int64(limit-total))
		}
		buf := make([]byte, want)
		n, err := f.src.F.ReadAt(buf, f.offset)
		for i := 0; i < n; i += f.maxChunk {
			j := min(i+f.maxChunk, n)
			// The full slice expression caps each chunk so that an
			// append by the receiver cannot write into the next one.
			chunks = append(chunks, Chunk{Offset: f.offset, Data: buf[i:j:j], Truncated: f.truncated})
			f.truncated = false
			f.offset += int64(j - i)
		}
		total += n
		switch {
		case err != nil && !errors.Is(err, io.EOF):
			return chunks, fmt.Errorf("read %s at offset %d: %w", f.src.Path, f.offset, err)
		case n == 0:
			// Shrunk between Stat and ReadAt; the next call sees it.
			return chunks, nil
		}
	}
	return chunks, nil
}

// open opens the file (through safefile: the job owns its directory and
// could replace its log with a FIFO or a link to a file outside it); false
// when it does not exist yet.
func (f *Follower) open() (bool, error) {
	if f.offset < 0 {
		return false, fmt.Errorf("%w: %d", ErrBadOffset, f.offset)
	}
	return f.src.Open()
}

// checkFile restarts at offset 0 when the file shrank or was replaced (then
// read reopens the path).
func (f *Follower) checkFile() (bool, error) {
	change, err := f.src.Check(f.offset)
	if err != nil || change == filewatch.Unchanged {
		return false, err
	}
	f.offset = 0
	f.truncated = true
	return true, nil
}

// Tail returns the last n bytes of the file at path, for the exit record.
// When the window cuts a line, it starts after the first newline in it, so
// the tail does not open mid-line; a window with no such newline is returned
// whole. Invalid UTF-8 is replaced with U+FFFD: the tail travels in a
// protobuf string field, which refuses to marshal anything else.
func Tail(path string, n int) (tail string, err error) {
	return TailOwned(path, n, safefile.AnyOwner)
}

// TailOwned is Tail of a file that must belong to uid owner (the job's
// user), or safefile.AnyOwner.
func TailOwned(path string, n, owner int) (tail string, err error) {
	if n <= 0 {
		return "", nil
	}
	file, err := safefile.Open(path, owner)
	if err != nil {
		return "", fmt.Errorf("log tail: %w", err)
	}
	defer func() {
		if cerr := file.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("log tail: close: %w", cerr))
		}
	}()
	fi, err := file.Stat()
	if err != nil {
		return "", fmt.Errorf("log tail: stat: %w", err)
	}
	size := fi.Size()
	start := max(size-int64(n), 0)
	// Read one byte before the window, so that a window that starts
	// right after a newline is known to start at a line boundary.
	from := max(start-1, 0)
	buf := make([]byte, size-from)
	m, err := file.ReadAt(buf, from)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("log tail: read %s: %w", path, err)
	}
	buf = buf[:m]
	if from < start {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 && i+1 < len(buf) {
			buf = buf[i+1:]
		} else {
			buf = buf[min(1, len(buf)):]
		}
	}
	return strings.ToValidUTF8(string(buf), "\uFFFD"), nil
}
