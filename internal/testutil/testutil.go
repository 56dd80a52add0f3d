// Package testutil holds helpers shared by Gantry's tests: polling with a
// deadline instead of sleeping, so tests are as fast as the code allows and
// fail with a reason when it never gets there.
package testutil

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// PollInterval is how often WaitFor re-checks its condition.
const PollInterval = 5 * time.Millisecond

// WaitFor polls cond until it returns true, failing the test with msg when
// timeout passes first.
func WaitFor(tb testing.TB, timeout time.Duration, cond func() bool, msg string) {
	tb.Helper()
	if !Eventually(timeout, cond) {
		tb.Fatalf("timed out after %s waiting for %s", timeout, msg)
	}
}

// Eventually polls cond until it returns true or timeout passes, and
// reports which happened. Use it where a test needs its own failure text.
func Eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(PollInterval)
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent writes and reads: a log
// sink that a test reads while the code under test writes to it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
