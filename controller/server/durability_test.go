package server

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/internal/testutil"
)

func TestRestartAfterLogFailureWaitsForSpace(t *testing.T) {
	var failedErr atomic.Pointer[error]
	var full atomic.Bool
	var got atomic.Pointer[error]
	var checks atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		restartAfterLogFailure(ctx,
			func() error {
				checks.Add(1)
				if p := failedErr.Load(); p != nil {
					return *p
				}
				return nil
			},
			full.Load, time.Millisecond, func(err error) { got.Store(&err) })
	}()
	defer func() { cancel(); <-done }()

	// A healthy log: it never stops the controller.
	testutil.WaitFor(t, 5*time.Second, func() bool { return checks.Load() >= 5 }, "a few checks")
	if got.Load() != nil {
		t.Fatal("stopped with a healthy log")
	}
	// A failed log on a full disk: still waits.
	full.Store(true)
	e := errors.New("segment is sealed")
	failedErr.Store(&e)
	n := checks.Load()
	testutil.WaitFor(t, 5*time.Second, func() bool { return checks.Load() >= n+5 }, "checks while the disk is full")
	if got.Load() != nil {
		t.Fatal("stopped while the disk was still full (it would restart into the same failure)")
	}
	// Space is back: it stops, saying why.
	full.Store(false)
	testutil.WaitFor(t, 5*time.Second, func() bool { return got.Load() != nil }, "the controller to stop for a restart")
	if msg := (*got.Load()).Error(); !strings.Contains(msg, "segment is sealed") || !strings.Contains(msg, "restarted") {
		t.Fatalf("fatal error = %q", msg)
	}
}
