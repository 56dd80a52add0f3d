package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// runJobs starts a dev controller on dataDir, runs each named job to the
// end and stops the controller, leaving its Raft log and state.db behind.
func runJobs(t *testing.T, dataDir string, names ...string) {
	t.Helper()
	d := startDev(t, dataDir, 0)
	for _, name := range names {
		id, err := d.api.Submit(context.Background(), apiv1.JobSpec{Name: name, Run: "true"})
		if err != nil {
			t.Fatal(err)
		}
		waitTerminal(t, d.api, id, 60*time.Second)
	}
	d.stop()
}

// failedStart runs the controller on dataDir, expecting it to refuse to
// start; it returns the exit status and everything it printed.
func failedStart(t *testing.T, dataDir string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "gantry-controller"), "-dev",
		"-data-dir", dataDir, "-http-addr", "127.0.0.1:0", "-quic-addr", "127.0.0.1:0", "-raft-addr", "127.0.0.1:0")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("controller on a damaged data dir: %v (want a non-zero exit)\n%s", err, out)
	}
	if ctx.Err() != nil {
		t.Fatalf("controller did not exit within 60s on a damaged data dir:\n%s", out)
	}
	return exit.ExitCode(), string(out)
}

func noPanic(t *testing.T, out string) {
	t.Helper()
	if strings.Contains(out, "panic:") || strings.Contains(out, "goroutine ") {
		t.Fatalf("start-up panicked instead of reporting the damage:\n%s", out)
	}
}

func onlySegment(t *testing.T, dataDir string) (string, []byte) {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dataDir, "raft", "wal", "*.wal"))
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments = %v, %v; want one", segs, err)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	return segs[0], b
}

// A byte flipped in the middle of the WAL crash-looped the controller
// with "panic: fsm: corrupt raft entry". The real binary must instead
// refuse to start with the segment file, the index and what to do, and
// exit with status 3 (which a supervisor can be told not to restart).
func TestCorruptWALClearStartupError(t *testing.T) {
	dataDir := t.TempDir()
	runJobs(t, dataDir, "durability-marker-one", "second-job")
	seg, b := onlySegment(t, dataDir)
	at := bytes.Index(b, []byte("durability-marker-one"))
	if at < 0 {
		t.Fatal("the first job's entry is not in the segment")
	}
	b[at+5] ^= 0x20
	if err := os.WriteFile(seg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := failedStart(t, dataDir)
	t.Logf("exit %d, output:\n%s", code, out)
	noPanic(t, out)
	if code != 3 {
		t.Fatalf("exit status %d, want 3\n%s", code, out)
	}
	for _, want := range []string{"raft log is corrupt at index", "in segment file " + seg, "checksum mismatch",
		"stop this controller", "mv " + filepath.Join(dataDir, "raft")} {
		if !strings.Contains(out, want) {
			t.Errorf("start-up error does not say %q:\n%s", want, out)
		}
	}
}

// A damaged state.db (it runs without fsync, so a power loss can tear it)
// does not keep the controller down: the file is only a cache of the Raft
// state. The controller moves it aside, warns naming it, and rebuilds the
// same jobs from its Raft log.
func TestDamagedStateDBMovedAsideWithWarning(t *testing.T) {
	dataDir := t.TempDir()
	runJobs(t, dataDir, "state-db-job")
	path := filepath.Join(dataDir, "state.db")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	page := os.Getpagesize()
	for _, off := range []int64{32, int64(page) + 32} { // both bbolt meta pages
		if _, err := f.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef}, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	d := startDev(t, dataDir, 0)
	logs := d.logs()
	noPanic(t, logs)
	for _, want := range []string{"level=WARN", "state database is corrupt", path + ".corrupt"} {
		if !strings.Contains(logs, want) {
			t.Errorf("start-up log does not say %q:\n%s", want, logs)
		}
	}
	if _, err := os.Stat(path + ".corrupt"); err != nil {
		t.Fatalf("the damaged file was not kept aside: %v", err)
	}
	jobs, err := d.api.Jobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].Name != "state-db-job" || jobs[0].State != apiv1.StateSucceeded {
		t.Fatalf("jobs after the restart = %+v, want the one succeeded job rebuilt from the log", jobs)
	}
}

var lostMetric = regexp.MustCompile(`(?m)^gantry_raft_log_lost_entries (\d+)`)

// A zeroed WAL tail made a single controller start silently with
// committed entries gone. It must now warn with the range lost, and
// export it on /metrics.
func TestZeroedWALTailWarns(t *testing.T) {
	dataDir := t.TempDir()
	runJobs(t, dataDir, "kept-job", "zeroed-job")
	seg, b := onlySegment(t, dataDir)
	at := bytes.Index(b, []byte("zeroed-job"))
	if at < 0 {
		t.Fatal("the second job's entry is not in the segment")
	}
	clear(b[at-64:])
	if err := os.WriteFile(seg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDev(t, dataDir, 0)
	logs := d.logs()
	if !strings.Contains(logs, "were lost from this node's log") || !strings.Contains(logs, "level=WARN") {
		t.Fatalf("no lost-tail warning at start-up:\n%s", logs)
	}
	resp, err := http.Get(d.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	m := lostMetric.FindSubmatch(body)
	if m == nil {
		t.Fatalf("no gantry_raft_log_lost_entries on /metrics")
	}
	if n, _ := strconv.Atoi(string(m[1])); n < 1 {
		t.Fatalf("gantry_raft_log_lost_entries = %s, want the lost entries counted", m[1])
	}
	// The disk guard's gauges are there too: plenty of space, not full.
	if !regexp.MustCompile(`(?m)^gantry_disk_full 0$`).Match(body) ||
		!regexp.MustCompile(`(?m)^gantry_raft_log_write_failed 0$`).Match(body) ||
		!regexp.MustCompile(`(?m)^gantry_data_dir_free_bytes [1-9]`).Match(body) {
		t.Fatalf("disk gauges missing or wrong on /metrics:\n%s", body)
	}
}
