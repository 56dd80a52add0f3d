// Package trainer is the benchmark's stand-in for a training process, run
// by a real gantry-agent as a job (`gantry-bench trainer …`). It appends
// JSONL metrics lines to $GANTRY_METRICS_FILE, one write per line, each
// carrying the wall clock at the moment of writing twice: as "ts" (which
// the agent turns into the point's timestamp, so a watcher can measure
// freshness) and as the metric "t_wall" (which survives into the job's
// final metrics, so exit-to-final latency can be measured from the last
// line).
package trainer

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/gantry-ml/gantry/bench/proc"
)

// Sentinel errors.
var (
	// ErrNoFile means neither -file nor $GANTRY_METRICS_FILE was given.
	ErrNoFile = errors.New("trainer: no metrics file (set GANTRY_METRICS_FILE or -file)")
	// ErrOrphaned means the benchmark driver went away; the trainer stops
	// so that nothing outlives the run.
	ErrOrphaned = errors.New("trainer: benchmark driver is gone")
)

// WallKey is the metric holding the wall clock of the line, in unix
// seconds.
const WallKey = "t_wall"

// Config is what the trainer writes.
type Config struct {
	// Path is the metrics file.
	Path string
	// Interval separates lines.
	Interval time.Duration
	// Lines stops after this many lines (0: no limit).
	Lines int
	// Duration stops after this long (0: no limit).
	Duration time.Duration
	// Keys is the number of metrics per line besides WallKey.
	Keys int
	// WatchPID, when set, is the driver: the trainer exits once it is gone.
	WatchPID int
}

// Parse reads the trainer's flags.
func Parse(args []string) (Config, error) {
	fs := flag.NewFlagSet("trainer", flag.ContinueOnError)
	var c Config
	fs.StringVar(&c.Path, "file", os.Getenv("GANTRY_METRICS_FILE"), "metrics file to append to")
	fs.DurationVar(&c.Interval, "interval", 20*time.Millisecond, "time between lines")
	fs.IntVar(&c.Lines, "lines", 0, "stop after this many lines (0: no limit)")
	fs.DurationVar(&c.Duration, "duration", 0, "stop after this long (0: no limit)")
	fs.IntVar(&c.Keys, "keys", 20, "metrics per line")
	fs.IntVar(&c.WatchPID, "watch-pid", 0, "exit when this process is gone")
	if err := fs.Parse(args); err != nil {
		return c, fmt.Errorf("trainer: %w", err)
	}
	if c.Path == "" {
		return c, ErrNoFile
	}
	if c.Lines == 0 && c.Duration == 0 {
		// Never run unbounded: a trainer nobody stops must still end.
		c.Duration = 10 * time.Minute
	}
	return c, nil
}

// Run writes lines until Lines or Duration is reached and returns right
// after the last write, so the last line's clock is the process's exit
// time give or take a syscall.
func Run(c Config) error {
	f, err := os.OpenFile(c.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("trainer: %w", err)
	}
	defer f.Close()
	start := time.Now()
	buf := make([]byte, 0, 1024)
	next := start
	for step := 1; ; step++ {
		if c.WatchPID > 0 && step%50 == 1 && !proc.Alive(c.WatchPID) {
			return ErrOrphaned
		}
		last := (c.Lines > 0 && step >= c.Lines) ||
			(c.Duration > 0 && time.Since(start)+c.Interval > c.Duration)
		buf = Line(buf[:0], step, time.Now(), c.Keys)
		if _, err := f.Write(buf); err != nil {
			return fmt.Errorf("trainer: write: %w", err)
		}
		if last {
			return nil
		}
		next = next.Add(c.Interval)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
	}
}

// Line appends one metrics line (with its newline) for step written at now
// to buf.
func Line(buf []byte, step int, now time.Time, keys int) []byte {
	ts := strconv.FormatFloat(float64(now.UnixNano())/1e9, 'f', 6, 64)
	buf = append(buf, `{"step":`...)
	buf = strconv.AppendInt(buf, int64(step), 10)
	buf = append(buf, `,"ts":`...)
	buf = append(buf, ts...)
	buf = append(buf, `,"`+WallKey+`":`...)
	buf = append(buf, ts...)
	for k := 0; k < keys; k++ {
		buf = append(buf, `,"m`...)
		buf = strconv.AppendInt(buf, int64(k), 10)
		buf = append(buf, `":`...)
		buf = strconv.AppendFloat(buf, 1/float64(step+k), 'g', 8, 64)
	}
	return append(buf, "}\n"...)
}
