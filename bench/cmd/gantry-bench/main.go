// Command gantry-bench is `make bench`: Gantry measured on real processes
// against its raw limits (bbolt, hashicorp/raft) and real peers (etcd,
// Mosquitto), written to bench/results.md and bench/results.json.
//
//	gantry-bench [-bin DIR] [-out DIR] [-stages a,b] [-keep] [-profile=false]
//
// BENCH_SCALE multiplies sizes and durations (bigger machines); BENCH_QUICK=1
// is a smoke run of about a minute. `gantry-bench trainer …` is the
// training process the benchmark's jobs run (see bench/trainer).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"

	"github.com/gantry-ml/gantry/bench/driver"
	"github.com/gantry-ml/gantry/bench/trainer"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "trainer" {
		cfg, err := trainer.Parse(os.Args[2:])
		if err == nil {
			err = trainer.Run(cfg)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gantry-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("gantry-bench", flag.ExitOnError)
	bin := fs.String("bin", "bin", "directory with gantry-controller and gantry-agent (make build)")
	out := fs.String("out", "bench", "directory for results.md, results.json and profiles/")
	stages := fs.String("stages", "", "comma-separated stages to run (default all: watchers,ingest,freshness,final,storage,devmode,gobench)")
	keep := fs.Bool("keep", false, "keep the run's temporary directory (logs, data)")
	profile := fs.Bool("profile", true, "profile the leader (CPU during the ingest flood and fan-out, heap with idle watchers)")
	cpuProfile := fs.String("cpuprofile", "", "write the driver's own CPU profile to this file")
	_ = fs.Parse(os.Args[1:])
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}

	scale := 1.0
	if s := os.Getenv("BENCH_SCALE"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v <= 0 {
			return fmt.Errorf("BENCH_SCALE=%q: want a positive number", s)
		}
		scale = v
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	repo, err := os.Getwd()
	if err != nil {
		return err
	}
	binDir, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	outDir, err := filepath.Abs(*out)
	if err != nil {
		return err
	}
	var names []string
	if *stages != "" {
		names = strings.Split(*stages, ",")
	}

	// The first Ctrl-C cancels the run, which then cleans up; a second
	// one kills the driver (its children die with it: Pdeathsig).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	defer stop()

	err = driver.Run(ctx, driver.Config{BinDir: binDir, OutDir: outDir, RepoDir: repo, Self: self, Stages: names,
		Scale: scale, Quick: os.Getenv("BENCH_QUICK") == "1", Profile: *profile, Keep: *keep, Out: os.Stdout})
	if errors.Is(err, driver.ErrFailed) && ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", err)
	}
	return err
}
