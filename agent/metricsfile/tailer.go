package metricsfile

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/gantry-ml/gantry/agent/filewatch"
	"github.com/gantry-ml/gantry/agent/follow"
)

const (
	// maxBatchLines caps one Next so that a large backlog (an agent
	// restart, a trainer dumping history) is streamed in pieces instead of
	// being parsed into memory at once. A batch is one spool transaction,
	// and the spool has one writer at a time: small ones let the next line
	// of every other job in between (8 jobs dumping 4,096-line batches held
	// a ninth job's lines for most of a second; at 256, a few ms).
	maxBatchLines = 256
	// readBufferSize is the bufio buffer. Lines longer than this are
	// assembled in Tailer.partial.
	readBufferSize = 64 << 10
	// maxReadBytes bounds the bytes one Next or Poll reads, even in the
	// middle of a line: a huge file with no newline (a sparse file, a
	// binary dump) is skipped in steps, not in one call that cannot be
	// interrupted.
	maxReadBytes = 16 << 20
)

// BadLine is a line that was skipped.
type BadLine struct {
	// Offset is the byte offset where the line starts.
	Offset int64
	// Reason says why it was skipped, for the job event.
	Reason string
}

// Batch is what one Next or Drain read.
type Batch struct {
	// Lines are the good lines, in file order.
	Lines []Line
	// Bad are the skipped lines, in file order.
	Bad []BadLine
	// Truncated reports that the file shrank below the read position, or
	// was replaced by a new file, before Lines were read: reading restarted
	// at offset 0 and Lines come from the new content.
	Truncated bool
	// Offset is the file offset after this batch: the start of the first
	// line not yet returned. A Tailer started there after a restart neither
	// loses nor repeats a line.
	Offset int64
}

func (b *Batch) empty() bool {
	return len(b.Lines) == 0 && len(b.Bad) == 0 && !b.Truncated
}

func (b *Batch) count() int {
	return len(b.Lines) + len(b.Bad)
}

// Tailer follows a metrics file line by line. It is not safe for concurrent
// use: cancel Next's context, then call Drain or Close.
type Tailer struct {
	src follow.File
	r   *bufio.Reader
	// offset is the start of the first unconsumed line: the resume point.
	offset int64
	// readPos is how far into the file r has handed bytes to us: offset
	// plus the bytes of a partial line held in partial (or being discarded).
	readPos int64
	// partial holds the start of a line whose newline has not been read.
	// It is not consumed: Offset stays at its start.
	partial []byte
	// discarding is set while skipping the rest of an over-long line.
	discarding bool
}

// NewTailer returns a Tailer for path, starting at startOffset (0, or a Batch
// Offset saved before a restart). Nothing is opened until the first Next or
// Drain, and the file need not exist yet.
func NewTailer(path string, startOffset int64) *Tailer {
	return &Tailer{
		src:     follow.New(path, "metrics file", ErrClosed),
		offset:  startOffset,
		readPos: startOffset,
	}
}

// RequireOwner makes the Tailer refuse a file that does not belong to uid
// (the job's user): a hard link to someone else's file is not the job's
// metrics. Call it before the first Next.
func (t *Tailer) RequireOwner(uid int) { t.src.Owner = uid }

// Poll is Next without the wait: it returns what is available now, up to
// maxBatchLines lines, possibly nothing. It is for reading what is left after the
// training process has exited, in bounded steps.
func (t *Tailer) Poll() (Batch, error) {
	if err := t.src.Ready(); err != nil {
		return Batch{Offset: t.offset}, err
	}
	b, err := t.read(false, maxBatchLines)
	if err != nil && !b.empty() {
		t.src.Hold(err)
		return b, nil
	}
	return b, err
}

// ReadPos is how far into the file the Tailer has read, including a
// partial line not yet returned.
func (t *Tailer) ReadPos() int64 { return t.readPos }

// Next blocks until at least one complete line (good or bad) or a truncation
// is available, and returns everything available, up to 4096 lines. It
// returns ctx.Err() once ctx is done, without consuming anything. The file may
// not exist yet: Next waits for it to appear.
func (t *Tailer) Next(ctx context.Context) (Batch, error) {
	if err := t.src.Ready(); err != nil {
		return Batch{Offset: t.offset}, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return Batch{Offset: t.offset}, err
		}
		before := t.readPos
		b, err := t.read(false, maxBatchLines)
		if err != nil {
			if b.empty() {
				return b, err
			}
			// Deliver what was read; the error comes with the next call.
			t.src.Hold(err)
			return b, nil
		}
		if !b.empty() {
			return b, nil
		}
		if t.readPos != before {
			continue // stopped by maxReadBytes inside a line: more is there
		}
		if err := t.src.Wait(ctx); err != nil {
			return Batch{Offset: t.offset}, err
		}
	}
}

// Drain reads everything left to EOF, including a final line with no
// trailing newline, without waiting for more. It is meant for after the
// training process has exited, and returns every remaining line at once. On
// error the Batch still holds the lines read before it. A file that never
// appeared yields an empty Batch.
func (t *Tailer) Drain() (Batch, error) {
	if err := t.src.Ready(); err != nil {
		return Batch{Offset: t.offset}, err
	}
	return t.read(true, 0)
}

// Offset returns the resume point: the start of the first line not yet
// returned.
func (t *Tailer) Offset() int64 {
	return t.offset
}

// Size is the metrics file's size now (follow.File.Size).
func (t *Tailer) Size() (int64, error) { return t.src.Size() }

// Close releases the file and the watcher. Later calls return ErrClosed.
func (t *Tailer) Close() error { return t.src.Close() }

// read consumes complete lines up to limit (0: no limit). With final, the
// partial line at EOF is taken as complete.
func (t *Tailer) read(final bool, limit int) (Batch, error) {
	b, err := t.fill(final, limit)
	b.Offset = t.offset
	return b, err
}

func (t *Tailer) fill(final bool, limit int) (Batch, error) {
	var b Batch
	from := t.readPos
	for limit <= 0 || b.count() < limit {
		if limit > 0 && t.readPos-from >= maxReadBytes {
			return b, nil
		}
		if t.src.F == nil {
			ok, err := t.open()
			if err != nil || !ok {
				return b, err
			}
		}
		chunk, err := t.r.ReadSlice('\n')
		t.readPos += int64(len(chunk))
		switch {
		case err == nil:
			t.endLine(&b, chunk[:len(chunk)-1])
		case errors.Is(err, bufio.ErrBufferFull):
			t.appendPartial(chunk)
		case errors.Is(err, io.EOF):
			t.appendPartial(chunk)
			// Look for a truncation only while this batch holds no lines,
			// so that one batch never mixes old and new content.
			if b.count() == 0 && !b.Truncated {
				restarted, err := t.checkFile()
				if err != nil {
					return b, err
				}
				if restarted {
					b.Truncated = true
					continue
				}
			}
			if final && (len(t.partial) > 0 || t.discarding) {
				t.endLine(&b, nil)
			}
			return b, nil
		default:
			return b, fmt.Errorf("read %s at offset %d: %w", t.src.Path, t.readPos, err)
		}
	}
	return b, nil
}

// open opens the file at the resume point; false when it does not exist yet.
// The job writes the file and owns its directory, so it is opened through
// safefile (follow.File.Open): a FIFO, a device or a link out of the job
// directory is refused (an error wrapping safefile.ErrUnsafe) and never read.
func (t *Tailer) open() (bool, error) {
	if t.offset < 0 {
		return false, fmt.Errorf("%w: %d", ErrBadOffset, t.offset)
	}
	ok, err := t.src.Open()
	if err != nil || !ok {
		return ok, err
	}
	f := t.src.F
	if _, err := f.Seek(t.offset, io.SeekStart); err != nil {
		t.src.F = nil
		return false, errors.Join(fmt.Errorf("seek %s to %d: %w", t.src.Path, t.offset, err), f.Close())
	}
	if t.r == nil {
		t.r = bufio.NewReaderSize(f, readBufferSize)
	} else {
		t.r.Reset(f)
	}
	t.readPos = t.offset
	return true, nil
}

// checkFile restarts from offset 0 when the file shrank below what we read
// or was replaced, and reports whether it did.
func (t *Tailer) checkFile() (bool, error) {
	change, err := t.src.Check(t.readPos)
	if err != nil {
		return false, err
	}
	switch change {
	case filewatch.Shrunk:
		if _, err := t.src.F.Seek(0, io.SeekStart); err != nil {
			return false, fmt.Errorf("seek %s to 0 after truncation: %w", t.src.Path, err)
		}
		t.r.Reset(t.src.F)
	case filewatch.Replaced:
		// t.src.F is nil now: fill reopens the path.
	default:
		return false, nil
	}
	t.offset, t.readPos = 0, 0
	t.partial = t.partial[:0]
	t.discarding = false
	return true, nil
}

// appendPartial keeps the start of an unfinished line, or switches to
// discarding once it can no longer fit in MaxLineBytes.
func (t *Tailer) appendPartial(p []byte) {
	if t.discarding || len(p) == 0 {
		return
	}
	if len(t.partial)+len(p) > MaxLineBytes {
		t.discarding = true
		t.partial = nil // drop up to 1 MiB now rather than at the newline
		return
	}
	t.partial = append(t.partial, p...)
}

// endLine finishes the line made of partial plus tail (tail without its
// newline) and consumes it.
func (t *Tailer) endLine(b *Batch, tail []byte) {
	start := t.offset
	t.offset = t.readPos
	if t.discarding {
		t.discarding = false
		b.Bad = append(b.Bad, BadLine{Offset: start, Reason: ErrTooLong.Error()})
		return
	}
	line := tail
	if len(t.partial) > 0 {
		t.partial = append(t.partial, tail...)
		line = t.partial
	}
	defer t.resetPartial()
	if isJSONSpace(line) {
		return
	}
	l, err := ParseLine(line)
	if err != nil {
		b.Bad = append(b.Bad, BadLine{Offset: start, Reason: err.Error()})
		return
	}
	b.Lines = append(b.Lines, l)
}

// resetPartial empties partial, letting go of a buffer grown by a long line
// so that one 1 MiB line does not pin 1 MiB for the rest of the run.
func (t *Tailer) resetPartial() {
	if cap(t.partial) > 2*readBufferSize {
		t.partial = nil
		return
	}
	t.partial = t.partial[:0]
}
