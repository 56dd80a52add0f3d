package trainer

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/agent/metricsfile"
)

func TestLineIsAValidMetricsLine(t *testing.T) {
	now := time.Unix(1700000000, 250000000)
	b := Line(nil, 7, now, 20)
	if b[len(b)-1] != '\n' {
		t.Fatal("no newline")
	}
	l, err := metricsfile.ParseLine(b[:len(b)-1])
	if err != nil {
		t.Fatal(err)
	}
	if l.Step == nil || *l.Step != 7 || l.TS != 1700000000.25 {
		t.Fatalf("step %v ts %v", l.Step, l.TS)
	}
	if vals := l.Values(); len(vals) != 21 || vals[WallKey] != l.TS {
		t.Fatalf("values %v", vals)
	}
}

func TestRunWritesLinesThenStops(t *testing.T) {
	// A slow machine writes fewer lines in a duration, never more.
	tests := []struct {
		name     string
		cfg      Config
		min, max int
	}{
		{"lines", Config{Interval: time.Millisecond, Lines: 5, Keys: 3}, 5, 5},
		{"duration", Config{Interval: 10 * time.Millisecond, Duration: 55 * time.Millisecond, Keys: 1}, 2, 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Path = filepath.Join(t.TempDir(), "m.jsonl")
			if err := Run(tc.cfg); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(tc.cfg.Path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			n := 0
			for sc := bufio.NewScanner(f); sc.Scan(); n++ {
				if _, err := metricsfile.ParseLine(sc.Bytes()); err != nil {
					t.Fatalf("line %d: %v", n+1, err)
				}
			}
			if n < tc.min || n > tc.max {
				t.Fatalf("wrote %d lines, want %d..%d", n, tc.min, tc.max)
			}
		})
	}
}

func TestParse(t *testing.T) {
	t.Setenv("GANTRY_METRICS_FILE", "")
	if _, err := Parse(nil); !errors.Is(err, ErrNoFile) {
		t.Fatalf("Parse without a file: %v", err)
	}
	t.Setenv("GANTRY_METRICS_FILE", "/tmp/x")
	c, err := Parse([]string{"-lines", "3"})
	if err != nil || c.Lines != 3 || c.Path != "/tmp/x" {
		t.Fatalf("Parse = %+v, %v", c, err)
	}
	if c, _ := Parse(nil); c.Duration == 0 {
		t.Fatal("an unbounded trainer was allowed")
	}
}

func TestOrphanedTrainerStops(t *testing.T) {
	// A pid that cannot exist (above pid_max's hard cap).
	err := Run(Config{Path: filepath.Join(t.TempDir(), "m"), Interval: time.Millisecond, Lines: 1000, WatchPID: 1 << 30})
	if !errors.Is(err, ErrOrphaned) {
		t.Fatalf("Run with a gone driver: %v", err)
	}
}
