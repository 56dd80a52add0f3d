package logtail

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gantry-ml/gantry/agent/safefile"
)

// noPoll disables the fallback poll: a Next that returns within the test's
// deadline was woken by fsnotify.
const noPoll = time.Hour

func newFollower(t *testing.T, path string, off int64, maxChunk int) *Follower {
	t.Helper()
	f := NewFollower(path, off, maxChunk)
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func next(t *testing.T, f *Follower) []Chunk {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	chunks, err := f.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return chunks
}

// nextAsync starts Next in a goroutine, so the test can write while the
// follower is blocked.
func nextAsync(t *testing.T, f *Follower) <-chan []Chunk {
	ch := make(chan []Chunk, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		chunks, err := f.Next(ctx)
		if err != nil {
			t.Errorf("Next: %v", err)
		}
		ch <- chunks
	}()
	return ch
}

// checkChunks verifies that chunks are contiguous from off, no larger than
// maxChunk, and returns their bytes.
func checkChunks(t *testing.T, chunks []Chunk, off int64, maxChunk int) string {
	t.Helper()
	var buf bytes.Buffer
	for i, c := range chunks {
		if c.Offset != off {
			t.Fatalf("chunk %d at offset %d, want %d", i, c.Offset, off)
		}
		if len(c.Data) == 0 || len(c.Data) > maxChunk {
			t.Fatalf("chunk %d has %d bytes, want 1..%d", i, len(c.Data), maxChunk)
		}
		if cap(c.Data) != len(c.Data) {
			t.Fatalf("chunk %d has spare capacity: an append would overwrite the next chunk", i)
		}
		off += int64(len(c.Data))
		buf.Write(c.Data)
	}
	return buf.String()
}

func TestFollowerChunks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "job.log")
	content := strings.Repeat("epoch 1 step 42 loss 0.123\n", 10) // 270 bytes
	appendTo(t, path, content)
	f := newFollower(t, path, 0, 64)
	if got := checkChunks(t, next(t, f), 0, 64); got != content {
		t.Fatalf("got %q, want %q", got, content)
	}
	if f.Offset() != int64(len(content)) {
		t.Fatalf("Offset = %d, want %d", f.Offset(), len(content))
	}

	f.src.Poll = noPoll
	ch := nextAsync(t, f)
	appendTo(t, path, "progress 50%\r")
	if got := checkChunks(t, <-ch, int64(len(content)), 64); got != "progress 50%\r" {
		t.Fatalf("got %q after append", got)
	}
}

func TestFollowerBoundsOneNext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "job.log")
	content := strings.Repeat("x", 3*maxBytesPerNext+5)
	appendTo(t, path, content)
	f := newFollower(t, path, 0, DefaultMaxChunk)
	var got strings.Builder
	for got.Len() < len(content) {
		chunks := next(t, f)
		s := checkChunks(t, chunks, int64(got.Len()), DefaultMaxChunk)
		if len(s) > maxBytesPerNext {
			t.Fatalf("one Next returned %d bytes, want at most %d", len(s), maxBytesPerNext)
		}
		got.WriteString(s)
	}
	if got.String() != content {
		t.Fatal("content differs")
	}
}

func TestFollowerFileCreatedLater(t *testing.T) {
	path := filepath.Join(t.TempDir(), "job.log")
	f := newFollower(t, path, 0, 0)
	f.src.Poll = noPoll
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := f.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next on a missing file = %v, want DeadlineExceeded", err)
	}
	ch := nextAsync(t, f)
	appendTo(t, path, "hello\n")
	got := checkChunks(t, <-ch, 0, DefaultMaxChunk)
	if got == "" { // the create and the write may be seen apart
		got = checkChunks(t, next(t, f), 0, DefaultMaxChunk)
	}
	if got != "hello\n" {
		t.Fatalf("got %q", got)
	}
}

func TestFollowerResume(t *testing.T) {
	path := filepath.Join(t.TempDir(), "job.log")
	appendTo(t, path, "0123456789")
	f := newFollower(t, path, 4, 3)
	if got := checkChunks(t, next(t, f), 4, 3); got != "456789" {
		t.Fatalf("got %q from offset 4, want %q", got, "456789")
	}
}

func TestFollowerTruncation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "job.log")
	appendTo(t, path, "old old old\n")
	f := newFollower(t, path, 0, 0)
	next(t, f)

	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if chunks, err := f.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next on an emptied file = %+v, %v; want to wait", chunks, err)
	}
	appendTo(t, path, "new\n")
	chunks := next(t, f)
	if len(chunks) != 1 || chunks[0].Offset != 0 || !chunks[0].Truncated || string(chunks[0].Data) != "new\n" {
		t.Fatalf("after truncation: %+v, want one Truncated chunk at 0", chunks)
	}
	appendTo(t, path, "more\n")
	if chunks := next(t, f); chunks[0].Truncated || chunks[0].Offset != 4 {
		t.Fatalf("later chunk %+v, want offset 4 and not Truncated", chunks[0])
	}

	tmp := filepath.Join(dir, "tmp")
	if err := os.WriteFile(tmp, []byte("replaced, and longer than before\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	chunks = next(t, f)
	if chunks[0].Offset != 0 || !chunks[0].Truncated || string(chunks[0].Data) != "replaced, and longer than before\n" {
		t.Fatalf("after replacement: %+v", chunks)
	}
}

func TestFollowerDrain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "job.log")
	f := newFollower(t, path, 0, 4096)
	if chunks, err := f.Drain(); err != nil || len(chunks) != 0 {
		t.Fatalf("Drain of a missing file = %+v, %v; want nothing", chunks, err)
	}
	content := strings.Repeat("abc", maxBytesPerNext) // more than one Next's worth
	appendTo(t, path, content)
	start := time.Now()
	chunks, err := f.Drain()
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("Drain took %v; it must not wait", time.Since(start))
	}
	if got := checkChunks(t, chunks, 0, 4096); got != content {
		t.Fatalf("Drain returned %d bytes, want all %d", len(got), len(content))
	}
	if chunks, err := f.Drain(); err != nil || len(chunks) != 0 {
		t.Fatalf("second Drain = %d chunks, %v; want nothing", len(chunks), err)
	}
}

func TestFollowerContextAndClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "job.log")
	appendTo(t, path, "x")
	f := NewFollower(path, 0, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next(cancelled) = %v, want Canceled", err)
	}
	if f.Offset() != 0 {
		t.Fatal("a cancelled Next consumed data")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Next(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close = %v, want ErrClosed", err)
	}
	if _, err := f.Drain(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Drain after Close = %v, want ErrClosed", err)
	}
}

func TestFollowerErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := newFollower(t, filepath.Join(dir, "x"), -1, 0).Drain(); !errors.Is(err, ErrBadOffset) {
		t.Fatalf("Drain with offset -1 = %v, want ErrBadOffset", err)
	}
	// A directory at the path: the read error must reach the caller, not
	// be taken for "no data yet".
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	f := newFollower(t, sub, 0, 0)
	if _, err := f.Next(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next on a directory = %v, want the read error", err)
	}
}

func TestTail(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	lines := "first line\nsecond line\nthird\n"
	tests := []struct {
		name    string
		content string
		n       int
		want    string
	}{
		{"whole file", lines, 1000, lines},
		{"exact size", lines, len(lines), lines},
		{"cut mid-line skips to the next line", lines, 15, "third\n"},
		{"window starts at a line boundary", lines, len("second line\nthird\n"), "second line\nthird\n"},
		{"no newline in the window", "aaaaaaaaaaaaaaaaaaaa", 5, "aaaaa"},
		{"only newline is the last byte", "xxxxxxxxxxxx\n", 5, "xxxx\n"},
		{"no trailing newline", "a\nbb\ncc", 4, "cc"},
		{"empty file", "", 10, ""},
		{"zero n", lines, 0, ""},
		{"negative n", lines, -1, ""},
		{"invalid UTF-8 replaced", "ok\n\xff\xfe bad\n", 100, "ok\n\uFFFD bad\n"},
		{"cut mid-rune", "ααααα", 3, "\uFFFDα"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := write(strings.Repeat("f", i+1), tt.content)
			got, err := Tail(p, tt.n)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("Tail(%d) = %q, want %q", tt.n, got, tt.want)
			}
		})
	}

	if _, err := Tail(filepath.Join(dir, "missing"), 10); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Tail of a missing file = %v, want ErrNotExist", err)
	}
}

// TestFollowerRefusesUnsafeFiles: a FIFO, /dev/zero and a link out of the
// directory are refused at once by Next, Poll and Tail.
func TestFollowerRefusesUnsafeFiles(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("root:secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, mk := range map[string]func(string) error{
		"fifo":    func(p string) error { return unix.Mkfifo(p, 0o600) },
		"zero":    func(p string) error { return os.Symlink("/dev/zero", p) },
		"outside": func(p string) error { return os.Symlink(secret, p) },
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "output.log")
			if err := mk(path); err != nil {
				t.Fatal(err)
			}
			f := NewFollower(path, 0, 0)
			defer f.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if chunks, err := f.Next(ctx); !errors.Is(err, safefile.ErrUnsafe) || len(chunks) != 0 {
				t.Fatalf("Next = %d chunks, %v; want safefile.ErrUnsafe", len(chunks), err)
			}
			if chunks, err := f.Poll(); !errors.Is(err, safefile.ErrUnsafe) || len(chunks) != 0 {
				t.Fatalf("Poll = %d chunks, %v; want safefile.ErrUnsafe", len(chunks), err)
			}
			if tail, err := Tail(path, 100); !errors.Is(err, safefile.ErrUnsafe) || tail != "" {
				t.Fatalf("Tail = %q, %v; want safefile.ErrUnsafe", tail, err)
			}
		})
	}
}
