package proc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name string
		line string
		want time.Duration
		err  error
	}{
		{"plain", "1234 (gantry-controller) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 0 0",
			3 * time.Second, nil},
		{"name with spaces and parens", "77 (a b) (c)) R 1 77 77 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 0 0",
			100 * time.Millisecond, nil},
		{"no paren", "1234 gantry S 1", 0, ErrBadStat},
		{"short", "1 (x) S 1 2 3", 0, ErrBadStat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tc.line))
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("parseStatCPU = %v, %v; want %v, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestOwnCPUAndRSS(t *testing.T) {
	if _, err := CPU(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	rss, err := RSS(os.Getpid())
	if err != nil || rss == 0 {
		t.Fatalf("RSS = %d, %v", rss, err)
	}
}

func TestGroupStopEndsChildren(t *testing.T) {
	g := NewGroup(t.TempDir())
	p, err := g.Start("sleeper", "/bin/sh", "-c", "sleep 30 & sleep 30")
	if err != nil {
		t.Fatal(err)
	}
	if !p.Alive() {
		t.Fatal("child not running")
	}
	g.Stop(2 * time.Second)
	if p.Alive() {
		t.Fatal("child still running after Stop")
	}
	if _, err := g.Start("late", "/bin/true"); !errors.Is(err, ErrStopped) {
		t.Fatalf("Start after Stop: %v, want ErrStopped", err)
	}
	if _, err := os.Stat(filepath.Join(g.logDir, "sleeper.log")); err != nil {
		t.Fatal(err)
	}
}

// TestStopKillsWhatIgnoresSIGTERM: every process that outlives the grace
// period is killed, not only the first one (a controller whose shutdown
// hangs must not hang the benchmark).
func TestStopKillsWhatIgnoresSIGTERM(t *testing.T) {
	g := NewGroup(t.TempDir())
	var ps []*Process
	for i := 0; i < 3; i++ {
		p, err := g.Start(fmt.Sprintf("stubborn-%d", i), "/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.05; done")
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	time.Sleep(100 * time.Millisecond) // let the shells install their traps
	done := make(chan struct{})
	go func() {
		g.Stop(200 * time.Millisecond)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop hung on processes that ignore SIGTERM")
	}
	for _, p := range ps {
		if p.Alive() {
			t.Fatalf("%s still running after Stop", p.Name)
		}
	}
}
