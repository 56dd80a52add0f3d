package testutil

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestEventually(t *testing.T) {
	var n atomic.Int32
	if !Eventually(time.Second, func() bool { return n.Add(1) >= 3 }) {
		t.Fatal("Eventually gave up on a condition that becomes true")
	}
	if got := n.Load(); got != 3 {
		t.Fatalf("condition evaluated %d times, want 3", got)
	}
	start := time.Now()
	if Eventually(20*time.Millisecond, func() bool { return false }) {
		t.Fatal("Eventually reported success for a condition that is never true")
	}
	if time.Since(start) < 20*time.Millisecond {
		t.Fatal("Eventually gave up before its timeout")
	}
}
