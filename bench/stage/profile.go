package stage

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/gantry-ml/gantry/bench/report"
)

// profile takes a CPU profile of the leader for seconds (or, with heap
// set, a heap profile now), saves it under OutDir/profiles and records the
// top of `go tool pprof -top` (flat and cumulative) in the report.
func (e *Env) profile(ctx context.Context, name, title string, seconds int, heap bool) error {
	dir := filepath.Join(e.OutDir, "profiles")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("stage: profile: %w", err)
	}
	path := filepath.Join(dir, name+".pprof")
	var extra []string
	if heap {
		if err := e.Leader.HeapProfile(ctx, path); err != nil {
			return err
		}
		extra = []string{"-sample_index=inuse_space"}
		title += " (heap in use)"
	} else {
		if err := e.Leader.Profile(ctx, max(1, seconds), path); err != nil {
			return err
		}
		title = fmt.Sprintf("%s (CPU, %d s)", title, seconds)
	}
	bin := filepath.Join(e.BinDir, "gantry-controller")
	flat, err := pprofTop(ctx, bin, path, false, 20, extra...)
	if err != nil {
		return err
	}
	cum, err := pprofTop(ctx, bin, path, true, 20, extra...)
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(e.RepoDir, path)
	if err != nil {
		rel = path
	}
	e.Report.AddProfile(report.Profile{Title: title, Path: rel,
		Top: "by flat:\n" + flat + "\n\nby cumulative:\n" + cum})
	return nil
}

// pprofTop runs `go tool pprof -top` and keeps the table, without the
// header lines about the file.
func pprofTop(ctx context.Context, bin, path string, cum bool, n int, extra ...string) (string, error) {
	args := append([]string{"tool", "pprof", "-top", fmt.Sprintf("-nodecount=%d", n)}, extra...)
	if cum {
		args = append(args, "-cum")
	}
	args = append(args, bin, path)
	out, err := exec.CommandContext(ctx, goBinary(), args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("stage: go tool pprof: %w: %s", err, out)
	}
	return trimPprof(string(out)), nil
}

// trimPprof drops pprof's preamble (File, Type, Time, Duration lines) but
// keeps the "Showing nodes" summary and the table.
func trimPprof(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		switch {
		case strings.HasPrefix(l, "File:"), strings.HasPrefix(l, "Build ID:"), strings.HasPrefix(l, "Type:"),
			strings.HasPrefix(l, "Time:"), strings.HasPrefix(l, "Main binary"):
			continue
		}
		keep = append(keep, l)
	}
	return strings.TrimSpace(strings.Join(keep, "\n"))
}

// goBinary is the go command: from PATH, or the standard install.
func goBinary() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}
