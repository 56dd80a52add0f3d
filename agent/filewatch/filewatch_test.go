package filewatch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
)

// never is a poll interval no test outlives: a Wait that returns under it was
// woken by fsnotify, not by the poll.
const never = time.Hour

func newWatcher(t *testing.T, path string, poll time.Duration) *Watcher {
	t.Helper()
	w, err := New(path, poll)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return w
}

// waitWithin calls Wait and fails the test unless it returns nil within d.
func waitWithin(t *testing.T, w *Watcher, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := w.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v (want a wake-up within %v)", err, d)
	}
}

// drainWakeups empties a notification left over from setting the test up.
func drainWakeups(w *Watcher) {
	select {
	case <-w.wake:
	default:
	}
}

func appendFile(t *testing.T, path, s string) {
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

func TestNewRejectsBadPoll(t *testing.T) {
	for _, poll := range []time.Duration{0, -time.Second} {
		if _, err := New(filepath.Join(t.TempDir(), "f"), poll); !errors.Is(err, ErrBadPoll) {
			t.Errorf("New(poll=%v) = %v, want ErrBadPoll", poll, err)
		}
	}
}

func TestWakesOnFileEvents(t *testing.T) {
	tests := []struct {
		name  string
		setup bool // the file exists before the watcher starts
		do    func(t *testing.T, dir, path string)
	}{
		{"create", false, func(t *testing.T, _, path string) { appendFile(t, path, "") }},
		{"write", true, func(t *testing.T, _, path string) { appendFile(t, path, "x\n") }},
		{"truncate", true, func(t *testing.T, _, path string) {
			if err := os.Truncate(path, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"replace", true, func(t *testing.T, dir, path string) {
			tmp := filepath.Join(dir, "tmp")
			if err := os.WriteFile(tmp, []byte("y\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "metrics.jsonl")
			if tt.setup {
				appendFile(t, path, "old\n")
			}
			// A fresh watcher per case: events from the setup cannot
			// be mistaken for the one under test.
			w := newWatcher(t, path, never)
			if err := w.Err(); err != nil {
				t.Fatalf("Err = %v, want fsnotify active", err)
			}
			tt.do(t, dir, path)
			start := time.Now()
			waitWithin(t, w, 5*time.Second)
			t.Logf("woke after %v", time.Since(start))
		})
	}
}

func TestIgnoresOtherFiles(t *testing.T) {
	dir := t.TempDir()
	w := newWatcher(t, filepath.Join(dir, "metrics.jsonl"), never)
	appendFile(t, filepath.Join(dir, "stdout.log"), "noise\n")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := w.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait after a write to another file = %v, want DeadlineExceeded", err)
	}
}

func TestEventBeforeWaitIsKept(t *testing.T) {
	// The follower reads to EOF, then calls Wait; a write in between must
	// not be lost until the next poll.
	path := filepath.Join(t.TempDir(), "f")
	w := newWatcher(t, path, never)
	appendFile(t, path, "x")
	deadline := time.Now().Add(5 * time.Second)
	for len(w.wake) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no event recorded for a write with no waiter")
		}
		time.Sleep(time.Millisecond)
	}
	waitWithin(t, w, 10*time.Millisecond)
}

func TestPollsWhenDirectoryIsMissing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	path := filepath.Join(dir, "f")
	w := newWatcher(t, path, 20*time.Millisecond)
	if w.Err() == nil {
		t.Fatal("Err = nil, want the failed directory watch reported")
	}
	waitWithin(t, w, 5*time.Second) // the poll keeps waking the caller

	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	waitWithin(t, w, 5*time.Second) // re-adds the watch
	if err := w.Err(); err != nil {
		t.Fatalf("Err after the directory appeared = %v, want nil", err)
	}

	// Now fsnotify, not the poll, must carry the wake-up.
	w.poll = never
	drainWakeups(w)
	appendFile(t, path, "x")
	waitWithin(t, w, 5*time.Second)
}

func TestPollOnlyWithoutFsnotify(t *testing.T) {
	orig := newFSWatcher
	newFSWatcher = func() (*fsnotify.Watcher, error) { return nil, errors.New("too many open files") }
	t.Cleanup(func() { newFSWatcher = orig })

	w := newWatcher(t, filepath.Join(t.TempDir(), "f"), 10*time.Millisecond)
	if w.Err() == nil {
		t.Fatal("Err = nil, want the fsnotify failure reported")
	}
	start := time.Now()
	for range 3 {
		waitWithin(t, w, 5*time.Second)
	}
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Fatalf("3 poll-only waits took %v, want at least 3 poll intervals", el)
	}
}

func TestWaitContextAndClose(t *testing.T) {
	w, err := New(filepath.Join(t.TempDir(), "f"), never)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait(cancelled) = %v, want Canceled", err)
	}

	done := make(chan error, 1)
	go func() { done <- w.Wait(context.Background()) }()
	time.Sleep(10 * time.Millisecond) // let it block; correctness does not depend on it
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("blocked Wait after Close = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a blocked Wait")
	}
	if err := w.Wait(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait after Close = %v, want ErrClosed", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	appendFile(t, path, "0123456789")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	check := func(pos int64, want Change) {
		t.Helper()
		got, err := Check(f, path, pos)
		if err != nil || got != want {
			t.Fatalf("Check(pos=%d) = %v, %v; want %v", pos, got, err, want)
		}
	}
	check(10, Unchanged)
	check(11, Shrunk)
	if err := os.Truncate(path, 4); err != nil {
		t.Fatal(err)
	}
	check(4, Unchanged)
	check(10, Shrunk)

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	check(4, Unchanged) // gone: keep reading the old handle

	appendFile(t, path, "new")
	check(0, Replaced)
}
