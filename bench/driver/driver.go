// Package driver runs a benchmark: it makes the run's directories, raises
// the open-file limit, starts the cluster, runs the chosen stages in order,
// writes results.md and results.json, and — whatever happens, including
// Ctrl-C — stops every process it started and removes its temporary data.
package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/bench/proc"
	"github.com/gantry-ml/gantry/bench/report"
	"github.com/gantry-ml/gantry/bench/stage"
)

// Sentinel errors.
var (
	// ErrUnknownStage names a stage that does not exist.
	ErrUnknownStage = errors.New("driver: unknown stage")
	// ErrFailed means at least one stage did not finish.
	ErrFailed = errors.New("driver: some stages failed")
	// ErrMissingBinary means `make build` has not been run.
	ErrMissingBinary = errors.New("driver: binary missing (run make build)")
)

// Stage is one named step of the run.
type Stage struct {
	Name string
	Run  func(context.Context, *stage.Env) error
}

// Stages lists every stage in run order. Watchers go first so that the
// controller's memory is measured before the ingest flood has grown its
// heap; the report orders nothing by it.
var Stages = []Stage{
	{"watchers", stage.Watchers},
	{"ingest", stage.Ingest},
	{"freshness", stage.Freshness},
	{"final", stage.FinalMetrics},
	{"storage", stage.Storage},
	{"devmode", stage.DevMode},
	{"gobench", stage.GoBench},
}

// Config configures a run.
type Config struct {
	// BinDir holds gantry-controller and gantry-agent.
	BinDir string
	// OutDir receives results.md, results.json and profiles/.
	OutDir string
	// RepoDir is the module root.
	RepoDir string
	// Self is this binary (the trainer).
	Self string
	// Stages names the stages to run (nil: all).
	Stages []string
	Scale  float64
	Quick  bool
	// Profile takes a CPU profile of the leader during the ingest flood.
	Profile bool
	// Keep leaves the run's temporary directory (logs, data) in place.
	Keep bool
	Out  io.Writer
}

// Run runs the benchmark. It returns ErrFailed (after writing the report)
// when a stage failed.
func Run(ctx context.Context, cfg Config) (err error) {
	stages, err := pick(cfg.Stages)
	if err != nil {
		return err
	}
	for _, b := range []string{"gantry-controller", "gantry-agent"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return fmt.Errorf("%w: %s", ErrMissingBinary, filepath.Join(cfg.BinDir, b))
		}
	}
	nofile, err := proc.RaiseNoFile(1 << 20)
	if err != nil {
		return err
	}
	runDir, err := os.MkdirTemp("", "gantry-bench-")
	if err != nil {
		return fmt.Errorf("driver: %w", err)
	}
	logDir := filepath.Join(runDir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return fmt.Errorf("driver: %w", err)
	}
	group := proc.NewGroup(logDir)
	rep := report.New(environment(cfg, nofile))
	env := &stage.Env{BinDir: cfg.BinDir, Self: cfg.Self, RepoDir: cfg.RepoDir, OutDir: cfg.OutDir, RunDir: runDir,
		Group: group, Report: rep, Scale: cfg.Scale, Quick: cfg.Quick, Profile: cfg.Profile, Out: cfg.Out}
	failed := false
	defer func() {
		cerr := env.Close()
		group.Stop(10 * time.Second)
		switch {
		case cfg.Keep:
			fmt.Fprintf(cfg.Out, "run directory kept (logs, data): %s\n", runDir)
		case failed:
			// Keep the logs to read why; the data (etcd's can be
			// gigabytes) goes.
			if rerr := removeAllBut(runDir, "logs"); rerr != nil {
				cerr = errors.Join(cerr, rerr)
			}
			fmt.Fprintf(cfg.Out, "logs kept: %s\n", logDir)
		default:
			if rerr := os.RemoveAll(runDir); rerr != nil {
				cerr = errors.Join(cerr, fmt.Errorf("driver: remove %s: %w", runDir, rerr))
			}
		}
		if cerr != nil {
			fmt.Fprintf(cfg.Out, "cleanup: %v\n", cerr)
		}
	}()

	env.Progress("setup", "run directory %s, RLIMIT_NOFILE %d, scale %g, quick %v", runDir, nofile, cfg.Scale, cfg.Quick)
	if err := env.Setup(ctx); err != nil {
		failed = true
		rep.Fail("setup", err)
	} else {
		for _, s := range stages {
			if ctx.Err() != nil {
				rep.Fail(s.Name, fmt.Errorf("not run: %w", ctx.Err()))
				failed = true
				continue
			}
			start := time.Now()
			env.Progress(s.Name, "starting")
			if err := s.Run(ctx, env); err != nil {
				failed = true
				rep.Fail(s.Name, err)
				env.Progress(s.Name, "FAILED after %s: %v", time.Since(start).Round(time.Second), firstLine(err))
				continue
			}
			env.Progress(s.Name, "done in %s", time.Since(start).Round(time.Second))
		}
	}
	rep.Env["load average at end"] = loadavg()
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return fmt.Errorf("driver: %w", err)
	}
	if err := rep.WriteFiles(cfg.OutDir); err != nil {
		return err
	}
	env.Progress("report", "wrote %s and %s", filepath.Join(cfg.OutDir, "results.md"), filepath.Join(cfg.OutDir, "results.json"))
	if err := rep.Markdown(cfg.Out); err != nil {
		return fmt.Errorf("driver: %w", err)
	}
	if failed {
		return ErrFailed
	}
	return nil
}

// removeAllBut removes every entry of dir except keep.
func removeAllBut(dir, keep string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("driver: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if e.Name() == keep {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("driver: %w", err))
		}
	}
	return errors.Join(errs...)
}

// pick resolves stage names.
func pick(names []string) ([]Stage, error) {
	if len(names) == 0 {
		return Stages, nil
	}
	var out []Stage
	for _, n := range names {
		found := false
		for _, s := range Stages {
			if s.Name == n {
				out = append(out, s)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("%w: %q", ErrUnknownStage, n)
		}
	}
	return out, nil
}

// environment describes the machine and the run for the report's header.
func environment(cfg Config, nofile uint64) map[string]string {
	env := map[string]string{
		"cpus":                  strconv.Itoa(runtime.NumCPU()),
		"go":                    runtime.Version(),
		"kernel":                readTrim("/proc/sys/kernel/osrelease"),
		"load average at start": loadavg(),
		"scale":                 strconv.FormatFloat(cfg.Scale, 'g', -1, 64),
		"quick":                 strconv.FormatBool(cfg.Quick),
		"RLIMIT_NOFILE":         strconv.FormatUint(nofile, 10),
	}
	if out, err := exec.Command("etcd", "--version").Output(); err == nil {
		env["etcd"] = strings.TrimPrefix(firstLine(errors.New(string(out))), "etcd Version: ")
	}
	if p, err := exec.LookPath("mosquitto"); err == nil {
		// mosquitto -h prints its version on the first line and exits 3.
		out, _ := exec.Command(p, "-h").CombinedOutput()
		env["mosquitto"] = firstLine(errors.New(string(out)))
	}
	return env
}

func loadavg() string {
	f := strings.Fields(readTrim("/proc/loadavg"))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ") + " (other processes on the machine share its CPUs)"
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
