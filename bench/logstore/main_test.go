package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary serve as the strace probe child, as the
// command binary does, so that TestCountSyncs can run countSyncs as is.
func TestMain(m *testing.M) {
	if runProbeFromEnv() {
		return
	}
	os.Exit(m.Run())
}

func TestPercentile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		out := make([]time.Duration, len(ns))
		for i, n := range ns {
			out[i] = time.Duration(n) * time.Millisecond
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one", ms(7), 0.99, 7 * time.Millisecond},
		{"p50 of four is the second", ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
		{"p99 of four is the last", ms(1, 2, 3, 4), 0.99, 4 * time.Millisecond},
		{"p50 of 1..100", hundred, 0.5, 50 * time.Millisecond},
		{"p99 of 1..100", hundred, 0.99, 99 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestParseStraceSummary(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int
		wantErr bool
	}{
		{
			name: "two syscalls and total",
			in: `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 72.10    0.120000         600       200           fdatasync
 27.90    0.046000         460       101           fsync
------ ----------- ----------- --------- --------- ----------------
100.00    0.166000         550       301           total
`,
			want: 301,
		},
		{
			name: "errors column filled",
			in: `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000          10       100         3 fsync
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000          10       100         3 total
`,
			want: 100,
		},
		{name: "no syscalls", in: "", want: 0},
		{
			name:    "garbled",
			in:      "100.00 0.1 10 many fsync\n",
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStraceSummary(strings.NewReader(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %d, want %d", got, tt.want)
			}
		})
	}
}

func TestProbeArgsRoundTrip(t *testing.T) {
	in := probeArgs{dir: "/tmp/x y", store: "raft-wal", calls: 100, batch: 64, size: 512}
	got, err := decodeProbeArgs(in.encode())
	if err != nil {
		t.Fatal(err)
	}
	if got != in {
		t.Errorf("got %+v, want %+v", got, in)
	}
	for _, bad := range []string{"", "a|b|c", "d|raft-wal|x|1|1", "d|raft-wal|1|-1|1"} {
		if _, err := decodeProbeArgs(bad); err == nil {
			t.Errorf("decodeProbeArgs(%q) succeeded", bad)
		}
	}
}

// TestRunSmoke runs every case briefly on a temp dir and checks that each
// produced sane figures and that both outputs carry them.
func TestRunSmoke(t *testing.T) {
	cfg := Config{Dir: t.TempDir(), Batch: 8, Sizes: []int{256}, CaseTime: 40 * time.Millisecond, Rounds: 2}
	rep, err := Run(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, r := range rep.Results {
		count[r.Test]++
		if r.Calls == 0 || r.EntriesPerSec <= 0 || r.MiBPerSec <= 0 {
			t.Errorf("%s %s: no throughput: %+v", r.Test, r.Store, r)
		}
		if r.P50Micros <= 0 || r.P99Micros < r.P50Micros {
			t.Errorf("%s %s: p50 %v p99 %v", r.Test, r.Store, r.P50Micros, r.P99Micros)
		}
		if len(r.RoundEntriesPerSec) != cfg.Rounds {
			t.Errorf("%s %s: %d rounds recorded, want %d", r.Test, r.Store, len(r.RoundEntriesPerSec), cfg.Rounds)
		}
		wantEntries := r.Calls
		if r.Test == "storelogs" {
			wantEntries = r.Calls * cfg.Batch
		}
		if r.Entries != wantEntries {
			t.Errorf("%s %s: %d entries for %d calls", r.Test, r.Store, r.Entries, r.Calls)
		}
	}
	// Two stores times: one size for storelogs and storelog, two applier
	// counts for raft_apply.
	want := map[string]int{"storelogs": 2, "storelog": 2, "raft_apply": 4}
	for k, v := range want {
		if count[k] != v {
			t.Errorf("%d %s results, want %d (all: %v)", count[k], k, v, count)
		}
	}

	var md bytes.Buffer
	if err := writeMarkdown(&md, rep); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"raft-wal", "raft-boltdb", "| 256 B | 8 |", "### raft.Apply"} {
		if !strings.Contains(md.String(), s) {
			t.Errorf("markdown lacks %q:\n%s", s, md.String())
		}
	}

	out := filepath.Join(t.TempDir(), "results.json")
	if err := writeJSON(out, rep); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Results) != len(rep.Results) || back.Results[0].EntriesPerSec != rep.Results[0].EntriesPerSec {
		t.Errorf("JSON round trip changed results")
	}

	// The run's temp dir must be gone.
	left, err := os.ReadDir(cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("left behind in -dir: %v", left)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no batch", Config{Batch: 0, Sizes: []int{1}, CaseTime: time.Millisecond, Rounds: 1}},
		{"no sizes", Config{Batch: 1, CaseTime: time.Millisecond, Rounds: 1}},
		{"no time", Config{Batch: 1, Sizes: []int{1}, Rounds: 1}},
		{"no rounds", Config{Batch: 1, Sizes: []int{1}, CaseTime: time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Dir = t.TempDir()
			if _, err := Run(context.Background(), tt.cfg, io.Discard); err == nil {
				t.Error("Run accepted a bad config")
			}
		})
	}
}

// TestCountSyncs checks the figure the store choice rests on: raft-wal
// makes one fsync per StoreLogs and BoltDB at least two.
func TestCountSyncs(t *testing.T) {
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace not installed")
	}
	// Containers may forbid ptrace; that is the only reason to skip.
	if out, err := exec.Command("strace", "-qq", "-o", os.DevNull, "true").CombinedOutput(); err != nil {
		t.Skipf("strace cannot trace here: %v: %s", err, out)
	}
	syncs, method := countSyncs(context.Background(), t.TempDir(), []int{4})
	if syncs == nil {
		t.Fatalf("no counts: %s", method)
	}
	if got := syncs[syncKey{"raft-wal", 4}]; got != 1 {
		t.Errorf("raft-wal: %v syncs per StoreLogs, want 1", got)
	}
	if got := syncs[syncKey{"raft-boltdb", 4}]; got < 2 || got >= 3 {
		t.Errorf("raft-boltdb: %v syncs per StoreLogs, want 2 (plus the odd file growth)", got)
	}
}
