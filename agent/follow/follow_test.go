package follow

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/agent/filewatch"
)

var errClosed = errors.New("test follower closed")

func TestReadyHoldClose(t *testing.T) {
	f := New(filepath.Join(t.TempDir(), "f"), "test file", errClosed)
	if err := f.Ready(); err != nil {
		t.Fatalf("fresh Ready = %v", err)
	}
	boom := errors.New("boom")
	f.Hold(boom)
	if err := f.Ready(); err != boom {
		t.Fatalf("Ready after Hold = %v, want the held error", err)
	}
	if err := f.Ready(); err != nil {
		t.Fatalf("held error returned twice: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if err := f.Ready(); err != errClosed {
		t.Fatalf("Ready after Close = %v, want the closed error", err)
	}
}

func TestOpenWaitCheck(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	f := New(path, "test file", errClosed)
	f.Poll = 10 * time.Millisecond
	t.Cleanup(func() { _ = f.Close() })

	if ok, err := f.Open(); ok || err != nil || f.F != nil {
		t.Fatalf("Open of a missing file = %v, %v", ok, err)
	}
	// The first Wait sets up the watcher and returns at once.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Wait(ctx); err != nil {
		t.Fatalf("Wait for the file to appear: %v", err)
	}
	if ok, err := f.Open(); !ok || err != nil || f.F == nil {
		t.Fatalf("Open = %v, %v", ok, err)
	}
	if c, err := f.Check(5); c != filewatch.Unchanged || err != nil {
		t.Fatalf("Check = %v, %v", c, err)
	}
	if c, err := f.Check(6); c != filewatch.Shrunk || err != nil || f.F == nil {
		t.Fatalf("Check past the end = %v, %v (file kept: %v)", c, err, f.F != nil)
	}
	if err := os.Rename(path, path+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := f.Check(0); c != filewatch.Replaced || err != nil || f.F != nil {
		t.Fatalf("Check after a replacement = %v, %v (file closed: %v)", c, err, f.F == nil)
	}

	// A directory is not a file the job may hand us.
	g := New(dir, "test file", errClosed)
	if ok, err := g.Open(); ok || err == nil {
		t.Fatalf("Open of a directory = %v, %v", ok, err)
	}
}

func TestSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	f := New(path, "metrics file", errors.New("closed"))
	defer f.Close()
	if n, err := f.Size(); n != 0 || err != nil {
		t.Fatalf("before the file exists: %d, %v", n, err)
	}
	if err := os.WriteFile(path, []byte("12345"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := f.Open(); !ok || err != nil {
		t.Fatalf("open: %v %v", ok, err)
	}
	if n, err := f.Size(); n != 5 || err != nil {
		t.Fatalf("size = %d, %v; want 5", n, err)
	}
}
