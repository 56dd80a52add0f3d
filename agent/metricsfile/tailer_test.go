package metricsfile

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gantry-ml/gantry/agent/safefile"
)

// noPoll disables the fallback poll in a test: a Next that returns within
// the test's deadline was woken by fsnotify.
const noPoll = time.Hour

func newTailer(t *testing.T, path string, off int64) *Tailer {
	t.Helper()
	tl := NewTailer(path, off)
	t.Cleanup(func() {
		if err := tl.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tl
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

// next calls Next with a deadline and fails the test on error.
func next(t *testing.T, tl *Tailer) Batch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := tl.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return b
}

// nextAsync starts Next in a goroutine, so the test can write after the
// tailer is already blocked.
func nextAsync(tl *Tailer) <-chan batchOrErr {
	ch := make(chan batchOrErr, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		b, err := tl.Next(ctx)
		ch <- batchOrErr{b, err}
	}()
	return ch
}

type batchOrErr struct {
	b   Batch
	err error
}

// expectNothing checks that Next finds no complete line for a short while.
func expectNothing(t *testing.T, tl *Tailer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	b, err := tl.Next(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next = %+v, %v; want DeadlineExceeded", b, err)
	}
}

func steps(b Batch) []int64 {
	var out []int64
	for _, l := range b.Lines {
		if l.Step == nil {
			out = append(out, -1)
			continue
		}
		out = append(out, *l.Step)
	}
	return out
}

func stepLine(i int) string { return fmt.Sprintf(`{"step":%d,"loss":%d.5}`+"\n", i, i) }

func TestTailerPartialLineWaits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	first := stepLine(1)
	appendTo(t, path, first+`{"step":2,"lo`)
	tl := newTailer(t, path, 0)
	tl.src.Poll = noPoll

	b := next(t, tl)
	if got := steps(b); !slices.Equal(got, []int64{1}) {
		t.Fatalf("steps = %v, want [1]", got)
	}
	if b.Offset != int64(len(first)) || tl.Offset() != b.Offset {
		t.Fatalf("Offset = %d (Tailer %d), want %d: the partial line must not be consumed", b.Offset, tl.Offset(), len(first))
	}
	expectNothing(t, tl)

	appendTo(t, path, `ss":2}`) // still no newline
	expectNothing(t, tl)

	ch := nextAsync(tl)
	appendTo(t, path, "\n")
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := steps(r.b); !slices.Equal(got, []int64{2}) || r.b.Lines[0].Values()["loss"] != 2 {
		t.Fatalf("lines = %+v, want step 2 loss 2", r.b.Lines)
	}
	if fi, _ := os.Stat(path); r.b.Offset != fi.Size() {
		t.Fatalf("Offset = %d, want file size %d", r.b.Offset, fi.Size())
	}
}

func TestTailerSeesAppendQuickly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	appendTo(t, path, "")
	tl := newTailer(t, path, 0)
	tl.src.Poll = noPoll
	expectNothing(t, tl) // sets up the watch and blocks once

	ch := nextAsync(tl)
	time.Sleep(5 * time.Millisecond) // let Next block; the test passes either way
	start := time.Now()
	appendTo(t, path, stepLine(7))
	r := <-ch
	lat := time.Since(start)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := steps(r.b); !slices.Equal(got, []int64{7}) {
		t.Fatalf("steps = %v, want [7]", got)
	}
	// The poll is an hour: this is fsnotify's latency, typically well
	// under a millisecond. The bound is loose for loaded CI machines.
	if lat > time.Second {
		t.Fatalf("append seen after %v", lat)
	}
	t.Logf("append seen after %v", lat)
}

func TestTailerFileCreatedLater(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.jsonl")
	tl := newTailer(t, path, 0)
	tl.src.Poll = noPoll

	expectNothing(t, tl)
	ch := nextAsync(tl)
	appendTo(t, path, stepLine(1)+stepLine(2))
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	got := steps(r.b)
	if len(got) < 2 { // the create and the write may be seen apart
		got = append(got, steps(next(t, tl))...)
	}
	if !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("steps = %v, want [1 2]", got)
	}
}

func TestTailerFileCreatedLaterByPoll(t *testing.T) {
	// The directory does not exist yet either: fsnotify cannot watch it, so
	// only the poll can find the file.
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "m.jsonl")
	tl := newTailer(t, path, 0)
	tl.src.Poll = 10 * time.Millisecond
	expectNothing(t, tl) // waiting, with no directory to watch

	ch := nextAsync(tl)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	appendTo(t, path, stepLine(1))
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := steps(r.b); !slices.Equal(got, []int64{1}) {
		t.Fatalf("steps = %v, want [1]", got)
	}
}

func TestTailerBadLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	lines := []string{
		stepLine(1),
		"\n",
		"   \t\r\n",
		"Epoch 1/10 loading...\n",
		`{"loss": NaN}` + "\n",
		`{"step": 2.5}` + "\n",
		`[1,2,3]` + "\n",
		stepLine(2),
		"\r\n",
	}
	appendTo(t, path, strings.Join(lines, ""))
	offsetOf := func(i int) int64 { return int64(len(strings.Join(lines[:i], ""))) }

	tl := newTailer(t, path, 0)
	b := next(t, tl)
	if got := steps(b); !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("steps = %v, want [1 2]", got)
	}
	want := []struct {
		line   int
		reason string
	}{
		{3, ErrNotJSON.Error()},
		{4, ErrNonFinite.Error()},
		{5, ErrBadStep.Error()},
		{6, ErrNotObject.Error()},
	}
	if len(b.Bad) != len(want) {
		t.Fatalf("bad = %+v, want %d entries (blank lines are not bad)", b.Bad, len(want))
	}
	for i, w := range want {
		if b.Bad[i].Offset != offsetOf(w.line) || !strings.Contains(b.Bad[i].Reason, w.reason) {
			t.Errorf("bad[%d] = %+v, want offset %d reason containing %q", i, b.Bad[i], offsetOf(w.line), w.reason)
		}
	}
	if b.Offset != offsetOf(len(lines)) {
		t.Fatalf("Offset = %d, want %d", b.Offset, offsetOf(len(lines)))
	}
}

func TestTailerTruncation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.jsonl")
	appendTo(t, path, stepLine(100)+stepLine(101)+stepLine(102))
	tl := newTailer(t, path, 0)
	if got := steps(next(t, tl)); len(got) != 3 {
		t.Fatalf("steps = %v, want 3", got)
	}

	// A trainer restarted with open(path, "w"): truncated in place.
	if err := os.WriteFile(path, []byte(stepLine(1)), 0o644); err != nil {
		t.Fatal(err)
	}
	b := next(t, tl)
	if !b.Truncated || !slices.Equal(steps(b), []int64{1}) || b.Offset != int64(len(stepLine(1))) {
		t.Fatalf("after truncation: %+v, want Truncated with step 1", b)
	}

	// Replaced by rename: a new inode at the path.
	tmp := filepath.Join(dir, "tmp")
	if err := os.WriteFile(tmp, []byte(stepLine(9)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	b = next(t, tl)
	if !b.Truncated || !slices.Equal(steps(b), []int64{9}) {
		t.Fatalf("after replacement: %+v, want Truncated with step 9", b)
	}
	appendTo(t, path, stepLine(10))
	if b := next(t, tl); b.Truncated || !slices.Equal(steps(b), []int64{10}) {
		t.Fatalf("after append to the new file: %+v, want step 10", b)
	}
}

func TestTailerTruncatedWhileLinePartial(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	appendTo(t, path, stepLine(1)+`{"step":2,"loss":`)
	tl := newTailer(t, path, 0)
	next(t, tl)
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	b := next(t, tl)
	if !b.Truncated || len(b.Lines) != 0 || b.Offset != 0 {
		t.Fatalf("got %+v, want a bare truncation at offset 0", b)
	}
	appendTo(t, path, stepLine(3))
	if got := steps(next(t, tl)); !slices.Equal(got, []int64{3}) {
		t.Fatalf("steps = %v, want [3] (the old partial line must be dropped)", got)
	}
}

func TestTailerStartBeyondEOF(t *testing.T) {
	// Resuming with an offset saved before the file was rewritten.
	path := filepath.Join(t.TempDir(), "m.jsonl")
	appendTo(t, path, stepLine(1))
	tl := newTailer(t, path, 1000)
	b := next(t, tl)
	if !b.Truncated || !slices.Equal(steps(b), []int64{1}) {
		t.Fatalf("got %+v, want Truncated and step 1", b)
	}
}

func TestTailerLongLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	tl := newTailer(t, path, 0)
	tl.src.Poll = 10 * time.Millisecond

	good := stepLine(1)
	appendTo(t, path, good)
	next(t, tl)

	// 3 MiB without a newline, written in pieces: the tailer must switch to
	// discarding instead of waiting with the whole line in memory.
	long := `{"x":"` + strings.Repeat("a", 3<<20)
	for i := 0; i < len(long); i += 1 << 20 {
		appendTo(t, path, long[i:min(i+1<<20, len(long))])
		expectNothing(t, tl)
	}
	if !tl.discarding || len(tl.partial) != 0 {
		t.Fatalf("discarding=%v partial=%d bytes, want discarding with nothing held", tl.discarding, len(tl.partial))
	}

	exact := paddedLine(MaxLineBytes) + "\n"
	over := paddedLine(MaxLineBytes+1) + "\n"
	appendTo(t, path, `"}`+"\n"+exact+over+stepLine(2))
	var b Batch
	for len(b.Lines) < 2 {
		nb := next(t, tl)
		b.Lines = append(b.Lines, nb.Lines...)
		b.Bad = append(b.Bad, nb.Bad...)
	}
	longStart := int64(len(good))
	overStart := longStart + int64(len(long)+3+len(exact))
	want := []BadLine{
		{Offset: longStart, Reason: "line longer than 1 MiB"},
		{Offset: overStart, Reason: "line longer than 1 MiB"},
	}
	if !slices.Equal(b.Bad, want) {
		t.Fatalf("bad = %+v, want %+v", b.Bad, want)
	}
	if b.Lines[0].Values()["v"] != 1 || !slices.Equal(steps(Batch{Lines: b.Lines[1:]}), []int64{2}) {
		t.Fatalf("lines = %d, want the exactly-1-MiB line then step 2", len(b.Lines))
	}
}

func TestTailerDrain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	tl := newTailer(t, path, 0)

	if b, err := tl.Drain(); err != nil || !b.empty() {
		t.Fatalf("Drain before the file exists = %+v, %v; want empty", b, err)
	}

	content := stepLine(1) + stepLine(2) + `{"step":3,"loss":0.125}`
	appendTo(t, path, content)
	if got := steps(next(t, tl)); !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("Next steps = %v, want [1 2]", got)
	}

	start := time.Now()
	b, err := tl.Drain()
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > time.Second {
		t.Fatalf("Drain took %v; it must not wait", time.Since(start))
	}
	if got := steps(b); !slices.Equal(got, []int64{3}) || b.Lines[0].Values()["loss"] != 0.125 {
		t.Fatalf("Drain = %+v, want the unterminated step 3", b)
	}
	if b.Offset != int64(len(content)) {
		t.Fatalf("Offset = %d, want %d", b.Offset, len(content))
	}
	if b, err := tl.Drain(); err != nil || !b.empty() {
		t.Fatalf("second Drain = %+v, %v; want empty", b, err)
	}
}

func TestTailerDrainUnterminatedLongLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	appendTo(t, path, stepLine(1)+strings.Repeat("x", MaxLineBytes+10))
	tl := newTailer(t, path, 0)
	b, err := tl.Drain()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(steps(b), []int64{1}) || len(b.Bad) != 1 || b.Bad[0].Reason != ErrTooLong.Error() {
		t.Fatalf("Drain = %d lines, bad %+v; want step 1 and one too-long line", len(b.Lines), b.Bad)
	}
}

func TestTailerBatchCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	var sb strings.Builder
	for i := range maxBatchLines + 10 {
		sb.WriteString(stepLine(i))
	}
	appendTo(t, path, sb.String())
	tl := newTailer(t, path, 0)
	if n := len(next(t, tl).Lines); n != maxBatchLines {
		t.Fatalf("first batch = %d lines, want %d", n, maxBatchLines)
	}
	b := next(t, tl)
	if len(b.Lines) != 10 || *b.Lines[0].Step != maxBatchLines {
		t.Fatalf("second batch = %d lines starting at %v, want 10 from %d", len(b.Lines), fmtStep(b.Lines[0].Step), maxBatchLines)
	}
}

// TestTailerResume writes lines in random pieces and restarts the tailer
// from its Offset at random points, as an agent restart would: every step
// must come out exactly once, in order.
func TestTailerResume(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 500
	var all strings.Builder
	for i := range n {
		all.WriteString(stepLine(i))
	}
	data := all.String()

	var got []int64
	var off int64
	tl := NewTailer(path, 0)
	for pos := 0; pos < len(data); {
		end := min(pos+1+rng.IntN(120), len(data))
		appendTo(t, path, data[pos:end])
		pos = end

		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		b, err := tl.Next(ctx)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
		if len(b.Bad) > 0 || b.Truncated {
			t.Fatalf("at %d: bad %+v truncated %v", pos, b.Bad, b.Truncated)
		}
		got = append(got, steps(b)...)
		if tl.Offset() < off {
			t.Fatalf("Offset went back from %d to %d", off, tl.Offset())
		}
		off = tl.Offset()

		if rng.IntN(4) == 0 { // restart
			if err := tl.Close(); err != nil {
				t.Fatal(err)
			}
			tl = NewTailer(path, off)
		}
	}
	b, err := tl.Drain()
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, steps(b)...)
	if err := tl.Close(); err != nil {
		t.Fatal(err)
	}

	if len(got) != n {
		t.Fatalf("got %d steps, want %d", len(got), n)
	}
	for i, s := range got {
		if s != int64(i) {
			t.Fatalf("step[%d] = %d: lost or doubled", i, s)
		}
	}
}

func TestTailerNextContextAndClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	appendTo(t, path, stepLine(1))
	tl := NewTailer(path, 0)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tl.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next(cancelled) = %v, want Canceled", err)
	}
	if tl.Offset() != 0 {
		t.Fatalf("a cancelled Next consumed data: Offset = %d", tl.Offset())
	}
	next(t, tl)

	ctx, cancel = context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := tl.Next(ctx)
		done <- err
	}()
	time.Sleep(10 * time.Millisecond) // let it block; the test passes either way
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("blocked Next after cancel = %v, want Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancel did not unblock Next")
	}

	if err := tl.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tl.Next(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close = %v, want ErrClosed", err)
	}
	if _, err := tl.Drain(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Drain after Close = %v, want ErrClosed", err)
	}
}

func TestTailerBadOffset(t *testing.T) {
	tl := newTailer(t, filepath.Join(t.TempDir(), "m.jsonl"), -1)
	if _, err := tl.Drain(); !errors.Is(err, ErrBadOffset) {
		t.Fatalf("Drain = %v, want ErrBadOffset", err)
	}
}

func TestTailerOpenError(t *testing.T) {
	// A directory at the path: open succeeds, read fails. The error must
	// reach the caller, not be taken for "no data yet".
	path := filepath.Join(t.TempDir(), "m.jsonl")
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	tl := newTailer(t, path, 0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := tl.Next(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next on a directory = %v, want the read error", err)
	}
}

// TestTailerRefusesUnsafeFiles: a FIFO, a symlink to /dev/zero and a
// symlink out of the directory are refused at once, never read and never
// waited on.
func TestTailerRefusesUnsafeFiles(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte(`{"step":1,"leaked":1}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, mk := range map[string]func(string) error{
		"fifo":    func(p string) error { return unix.Mkfifo(p, 0o600) },
		"zero":    func(p string) error { return os.Symlink("/dev/zero", p) },
		"outside": func(p string) error { return os.Symlink(secret, p) },
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "metrics.jsonl")
			if err := mk(path); err != nil {
				t.Fatal(err)
			}
			tl := NewTailer(path, 0)
			defer tl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			b, err := tl.Next(ctx)
			if !errors.Is(err, safefile.ErrUnsafe) || len(b.Lines) != 0 {
				t.Fatalf("Next = %+v, %v; want safefile.ErrUnsafe", b, err)
			}
			if b, err := tl.Poll(); !errors.Is(err, safefile.ErrUnsafe) || len(b.Lines) != 0 {
				t.Fatalf("Poll = %+v, %v; want safefile.ErrUnsafe", b, err)
			}
		})
	}
}
