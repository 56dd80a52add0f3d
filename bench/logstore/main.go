// Command logstore measures the two hashicorp/raft log stores Gantry could
// use, raft-wal and raft-boltdb/v2, on one disk: raw StoreLogs throughput,
// single-entry StoreLog latency, and raft.Apply through a real single-node
// Raft. It prints markdown tables and writes the same figures as JSON.
//
// It lives in its own module because raft-boltdb/v2 only builds with
// go-metrics v0.6.x, and pinning that with a replace must not leak into the
// main module (see README.md).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"time"
)

var (
	errBadConfig    = errors.New("bad configuration")
	errNoLeader     = errors.New("no raft leader")
	errStraceFormat = errors.New("unexpected strace summary line")
	errUnknownStore = errors.New("unknown store")
)

// Config holds everything one run needs; flags fill it.
type Config struct {
	Dir      string        // parent of the run's temp dir; all stores share its disk
	Out      string        // JSON output path; empty skips the file
	Quick    bool          // shorter cases, for a ~10 s smoke run
	Batch    int           // entries per StoreLogs call
	Sizes    []int         // entry payload sizes in bytes
	CaseTime time.Duration // measured wall time per case, over all rounds
	Rounds   int           // slices each case is split into, interleaved
	Syncs    bool          // count fsyncs per call with strace, if available
}

// Report is the JSON document written to -out.
type Report struct {
	GeneratedAt string   `json:"generated_at"`
	GoVersion   string   `json:"go_version"`
	GOOS        string   `json:"goos"`
	GOARCH      string   `json:"goarch"`
	NumCPU      int      `json:"num_cpu"`
	GOMAXPROCS  int      `json:"gomaxprocs"`
	Dir         string   `json:"dir"`
	FSType      string   `json:"fs_type"`
	Quick       bool     `json:"quick"`
	Batch       int      `json:"batch"`
	Sizes       []int    `json:"entry_sizes"`
	CaseSeconds float64  `json:"case_seconds"`
	Rounds      int      `json:"rounds"`
	SyncMethod  string   `json:"sync_count_method"`
	Results     []Result `json:"results"`
	Notes       []string `json:"notes,omitempty"`
}

// Result is one measured case.
type Result struct {
	// Test is "storelogs" (batches), "storelog" (one entry per call) or
	// "raft_apply" (raft.Apply on a single-node cluster).
	Test       string `json:"test"`
	Store      string `json:"store"`
	EntryBytes int    `json:"entry_bytes"`
	// Batch is the entries per StoreLogs call (storelogs, storelog).
	Batch int `json:"batch,omitempty"`
	// Appliers is the number of goroutines calling Apply (raft_apply).
	Appliers      int     `json:"appliers,omitempty"`
	Calls         int     `json:"calls"`
	Entries       int     `json:"entries"`
	Seconds       float64 `json:"seconds"`
	EntriesPerSec float64 `json:"entries_per_sec"`
	// MiBPerSec counts entry payload bytes only, not store framing.
	MiBPerSec float64 `json:"mib_per_sec"`
	P50Micros float64 `json:"p50_us"`
	P99Micros float64 `json:"p99_us"`
	// RoundEntriesPerSec is the throughput of each round, to show how much
	// the disk varied during the run.
	RoundEntriesPerSec []float64 `json:"round_entries_per_sec"`
	// SyncsPerCall is fsync+fdatasync per call, counted with strace; nil
	// when not counted.
	SyncsPerCall *float64 `json:"syncs_per_call,omitempty"`
}

func main() {
	// A copy of this binary run under strace to count fsyncs does only that.
	if runProbeFromEnv() {
		return
	}
	var (
		cfg     Config
		sizes   string
		noSyncs bool
	)
	flag.StringVar(&cfg.Dir, "dir", os.TempDir(), "directory on the disk to measure (a temp dir is made under it and removed)")
	flag.StringVar(&cfg.Out, "out", "results.json", "write results as JSON here (empty: don't)")
	flag.BoolVar(&cfg.Quick, "quick", false, "short run (~10 s) instead of the full one (~60 s)")
	flag.IntVar(&cfg.Batch, "batch", 64, "entries per StoreLogs call")
	flag.StringVar(&sizes, "sizes", "512,4096", "comma-separated entry sizes in bytes")
	flag.DurationVar(&cfg.CaseTime, "case-time", 0, "time per measured case (default 3s, 0.4s with -quick)")
	flag.IntVar(&cfg.Rounds, "rounds", 0, "interleaved slices per case (default 3, 2 with -quick)")
	flag.BoolVar(&noSyncs, "no-syncs", false, "skip counting fsyncs with strace")
	flag.Parse()

	var err error
	if cfg.Sizes, err = parseSizes(sizes); err != nil {
		fmt.Fprintln(os.Stderr, "logstore:", err)
		os.Exit(2)
	}
	if cfg.CaseTime == 0 {
		cfg.CaseTime = 3 * time.Second
		if cfg.Quick {
			cfg.CaseTime = 400 * time.Millisecond
		}
	}
	if cfg.Rounds == 0 {
		cfg.Rounds = 3
		if cfg.Quick {
			cfg.Rounds = 2
		}
	}
	cfg.Syncs = !noSyncs

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, err := Run(ctx, cfg, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "logstore:", err)
		os.Exit(1)
	}
	if err := writeMarkdown(os.Stdout, rep); err != nil {
		fmt.Fprintln(os.Stderr, "logstore:", err)
		os.Exit(1)
	}
	if cfg.Out != "" {
		if err := writeJSON(cfg.Out, rep); err != nil {
			fmt.Fprintln(os.Stderr, "logstore:", err)
			os.Exit(1)
		}
	}
}

// Run measures every case and returns the report. Progress goes to logw.
func Run(ctx context.Context, cfg Config, logw io.Writer) (*Report, error) {
	if cfg.Batch < 1 || len(cfg.Sizes) == 0 || cfg.CaseTime <= 0 || cfg.Rounds < 1 {
		return nil, fmt.Errorf("%w: batch %d, sizes %v, case time %v, rounds %d",
			errBadConfig, cfg.Batch, cfg.Sizes, cfg.CaseTime, cfg.Rounds)
	}
	root, err := os.MkdirTemp(cfg.Dir, "gantry-logstore-*")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(root)

	rep := &Report{
		GeneratedAt: time.Now().UTC().Format(time.RFC3339),
		GoVersion:   runtime.Version(),
		GOOS:        runtime.GOOS,
		GOARCH:      runtime.GOARCH,
		NumCPU:      runtime.NumCPU(),
		GOMAXPROCS:  runtime.GOMAXPROCS(0),
		Dir:         cfg.Dir,
		FSType:      fsType(root),
		Quick:       cfg.Quick,
		Batch:       cfg.Batch,
		Sizes:       cfg.Sizes,
		CaseSeconds: cfg.CaseTime.Seconds(),
		Rounds:      cfg.Rounds,
		SyncMethod:  "not counted (-no-syncs)",
	}
	if rep.FSType == "tmpfs" {
		// fsync is free on tmpfs, which would flatter BoltDB's second sync.
		rep.Notes = append(rep.Notes, "dir is on tmpfs: fsync costs nothing here, figures do not reflect a disk")
	}

	var syncs map[syncKey]float64
	if cfg.Syncs {
		fmt.Fprintln(logw, "counting fsyncs per call with strace")
		syncs, rep.SyncMethod = countSyncs(ctx, root, []int{cfg.Batch, 1})
	}
	// Every case runs in cfg.Rounds slices, round-major, with the stores
	// alternating inside each case: this VM-class disk has bursts of slow
	// fsyncs, and spreading each case over the whole run makes a burst hit
	// both stores alike instead of deciding the comparison.
	type benchCase struct {
		tmpl Result
		run  func(d time.Duration) (sample, error)
		got  []sample
	}
	var cases []*benchCase
	for _, size := range cfg.Sizes {
		for _, st := range stores {
			cases = append(cases, &benchCase{
				tmpl: Result{Test: "storelogs", Store: st.name, EntryBytes: size, Batch: cfg.Batch},
				run: func(d time.Duration) (sample, error) {
					return benchStoreLogs(ctx, root, st, cfg.Batch, size, d)
				},
			})
		}
	}
	for _, size := range cfg.Sizes {
		for _, st := range stores {
			cases = append(cases, &benchCase{
				tmpl: Result{Test: "storelog", Store: st.name, EntryBytes: size, Batch: 1},
				run: func(d time.Duration) (sample, error) {
					return benchStoreLogs(ctx, root, st, 1, size, d)
				},
			})
		}
	}
	for _, size := range cfg.Sizes {
		for _, appliers := range []int{8, 1} {
			for _, st := range stores {
				cases = append(cases, &benchCase{
					tmpl: Result{Test: "raft_apply", Store: st.name, EntryBytes: size, Appliers: appliers},
					run: func(d time.Duration) (sample, error) {
						return benchRaftApply(ctx, root, st, appliers, size, d)
					},
				})
			}
		}
	}
	slice := cfg.CaseTime / time.Duration(cfg.Rounds)
	for round := range cfg.Rounds {
		fmt.Fprintf(logw, "round %d/%d: %d cases of %v\n", round+1, cfg.Rounds, len(cases), slice)
		for _, c := range cases {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			smp, err := c.run(slice)
			if err != nil {
				return nil, fmt.Errorf("%s %s %d B: %w", c.tmpl.Test, c.tmpl.Store, c.tmpl.EntryBytes, err)
			}
			c.got = append(c.got, smp)
		}
	}
	for _, c := range cases {
		r := c.tmpl
		fill(&r, c.got)
		if v, ok := syncs[syncKey{r.Store, r.Batch}]; ok && r.Test != "raft_apply" {
			r.SyncsPerCall = &v
		}
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%w: entry size %q", errBadConfig, f)
		}
		out = append(out, n)
	}
	return out, nil
}

func writeJSON(path string, rep *Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// writeMarkdown prints one table per test kind.
func writeMarkdown(w io.Writer, rep *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "hashicorp/raft log stores: %s/%s, %d CPUs, %s, dir %s (%s), %.1fs per case in %d rounds\n",
		rep.GOOS, rep.GOARCH, rep.NumCPU, rep.GoVersion, rep.Dir, rep.FSType, rep.CaseSeconds, rep.Rounds)
	fmt.Fprintf(&b, "fsync counts: %s\n", rep.SyncMethod)
	for _, n := range rep.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}

	sections := []struct{ test, title string }{
		{"storelogs", fmt.Sprintf("StoreLogs, %d entries per call", rep.Batch)},
		{"storelog", "StoreLog, one entry per call"},
		{"raft_apply", "raft.Apply, single node, in-memory transport"},
	}
	for _, s := range sections {
		fmt.Fprintf(&b, "\n### %s\n\n", s.title)
		if s.test == "raft_apply" {
			b.WriteString("| store | entry | appliers | applies | applies/s | MiB/s | p50 | p99 |\n")
			b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|\n")
		} else {
			b.WriteString("| store | entry | calls | entries/s | MiB/s | p50 | p99 | fsyncs/call |\n")
			b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|\n")
		}
		for _, r := range rep.Results {
			if r.Test != s.test {
				continue
			}
			if s.test == "raft_apply" {
				fmt.Fprintf(&b, "| %s | %d B | %d | %d | %.0f | %.2f | %s | %s |\n",
					r.Store, r.EntryBytes, r.Appliers, r.Calls, r.EntriesPerSec, r.MiBPerSec,
					fmtMicros(r.P50Micros), fmtMicros(r.P99Micros))
				continue
			}
			syncs := "n/a"
			if r.SyncsPerCall != nil {
				syncs = fmt.Sprintf("%.2f", *r.SyncsPerCall)
			}
			fmt.Fprintf(&b, "| %s | %d B | %d | %.0f | %.2f | %s | %s | %s |\n",
				r.Store, r.EntryBytes, r.Calls, r.EntriesPerSec, r.MiBPerSec,
				fmtMicros(r.P50Micros), fmtMicros(r.P99Micros), syncs)
		}
	}
	_, err := io.WriteString(w, b.String())
	if err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

func fmtMicros(us float64) string {
	if us >= 1000 {
		return fmt.Sprintf("%.2f ms", us/1000)
	}
	return fmt.Sprintf("%.0f µs", us)
}
