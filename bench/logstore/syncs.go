package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// probeCalls is how many StoreLogs calls a counting probe makes. Opening a
// store and its first appends sync too (file creation, directory fsync), so
// each probe first makes warmupCalls calls, each count is taken with
// probeCalls and with zero further calls, and the difference is divided by
// probeCalls.
const probeCalls = 100

// probeSize is the probe's entry size; sync counts do not depend on it
// until a batch outgrows a raft-wal segment.
const probeSize = 512

// syncSyscalls are the calls that make data durable; Go's File.Sync is
// fsync, bbolt's commit is fdatasync on Linux.
const syncSyscalls = "fsync,fdatasync,sync_file_range,syncfs,sync,msync"

// syncKey identifies a sync count: a store and the entries per call.
type syncKey struct {
	store string
	batch int
}

// probeEnv carries a probe's arguments to the child, as
// "dir|store|calls|batch|size". An environment variable rather than flags
// lets a test binary act as the child too (see TestMain).
const probeEnv = "GANTRY_LOGSTORE_PROBE"

// probeArgs are the arguments of a probe run.
type probeArgs struct {
	dir   string
	store string
	calls int
	batch int
	size  int
}

func (p probeArgs) encode() string {
	return fmt.Sprintf("%s|%s|%d|%d|%d", p.dir, p.store, p.calls, p.batch, p.size)
}

func decodeProbeArgs(s string) (probeArgs, error) {
	f := strings.Split(s, "|")
	if len(f) != 5 {
		return probeArgs{}, fmt.Errorf("%w: %s=%q", errBadConfig, probeEnv, s)
	}
	p := probeArgs{dir: f[0], store: f[1]}
	for i, dst := range []*int{&p.calls, &p.batch, &p.size} {
		n, err := strconv.Atoi(f[2+i])
		if err != nil || n < 0 {
			return probeArgs{}, fmt.Errorf("%w: %s=%q", errBadConfig, probeEnv, s)
		}
		*dst = n
	}
	return p, nil
}

// runProbeFromEnv runs the probe and exits the process if this process is
// a probe child; otherwise it returns false.
func runProbeFromEnv() bool {
	v, ok := os.LookupEnv(probeEnv)
	if !ok {
		return false
	}
	p, err := decodeProbeArgs(v)
	if err == nil {
		err = runProbe(p)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "logstore probe:", err)
		os.Exit(1)
	}
	os.Exit(0)
	return true
}

// countSyncs counts sync syscalls per StoreLogs call for every store and
// batch size by running this binary under strace. It returns the counts and
// a description of the method, or no counts and why.
func countSyncs(ctx context.Context, root string, batches []int) (map[syncKey]float64, string) {
	straceBin, err := exec.LookPath("strace")
	if err != nil {
		return nil, "not counted: strace not found (from the source: raft-wal 1 fsync per StoreLogs, raft-boltdb 2 fdatasyncs)"
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Sprintf("not counted: %v", err)
	}
	out := make(map[syncKey]float64)
	for _, st := range stores {
		for _, b := range batches {
			var counts [2]int
			for i, calls := range []int{0, probeCalls} {
				n, err := straceCount(ctx, straceBin, self, root, probeArgs{store: st.name, calls: calls, batch: b, size: probeSize})
				if err != nil {
					return nil, fmt.Sprintf("not counted: %v", err)
				}
				counts[i] = n
			}
			out[syncKey{st.name, b}] = float64(counts[1]-counts[0]) / probeCalls
		}
	}
	return out, fmt.Sprintf("strace -f -c -e trace=%s, (syncs with %d calls - syncs with 0 calls) / %d, %d B entries",
		syncSyscalls, probeCalls, probeCalls, probeSize)
}

// straceCount runs one probe under strace and returns its sync syscalls.
func straceCount(ctx context.Context, straceBin, self, root string, p probeArgs) (int, error) {
	dir, err := os.MkdirTemp(root, "probe-*")
	if err != nil {
		return 0, fmt.Errorf("probe dir: %w", err)
	}
	defer os.RemoveAll(dir)
	summary := filepath.Join(dir, "strace.txt")
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	p.dir = dir
	cmd := exec.CommandContext(ctx, straceBin, "-f", "-qq", "-c", "-o", summary, "-e", "trace="+syncSyscalls, self)
	cmd.Env = append(os.Environ(), probeEnv+"="+p.encode())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("strace probe %s: %w: %s", p.store, err, strings.TrimSpace(stderr.String()))
	}
	f, err := os.Open(summary)
	if err != nil {
		return 0, fmt.Errorf("strace summary: %w", err)
	}
	defer f.Close()
	return parseStraceSummary(f)
}

// parseStraceSummary sums the calls column of an `strace -c` table. Rows
// are "% time, seconds, usecs/call, calls, [errors,] syscall"; the errors
// column is blank when there were none, so calls is always the fourth.
func parseStraceSummary(r io.Reader) (int, error) {
	total := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || strings.HasPrefix(fields[0], "-") || fields[0] == "%" {
			continue
		}
		if fields[len(fields)-1] == "total" {
			continue
		}
		n, err := strconv.Atoi(fields[3])
		if err != nil {
			return 0, fmt.Errorf("%w: %q", errStraceFormat, sc.Text())
		}
		total += n
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read strace summary: %w", err)
	}
	return total, nil
}

// runProbe is the child side: open the store, make warmupCalls and then
// p.calls StoreLogs calls, close it, with nothing else that syncs.
func runProbe(p probeArgs) error {
	var st *storeKind
	for i := range stores {
		if stores[i].name == p.store {
			st = &stores[i]
		}
	}
	if st == nil {
		return fmt.Errorf("%w: %q", errUnknownStore, p.store)
	}
	s, err := st.open(filepath.Join(p.dir, "store"))
	if err != nil {
		return err
	}
	payload := randomPayload(p.size)
	next := uint64(1)
	for range warmupCalls + p.calls {
		logs := make([]*raft.Log, p.batch)
		for i := range logs {
			logs[i] = &raft.Log{Index: next, Term: 1, Type: raft.LogCommand, Data: payload}
			next++
		}
		if err := s.StoreLogs(logs); err != nil {
			s.Close()
			return fmt.Errorf("StoreLogs: %w", err)
		}
	}
	if err := s.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}
