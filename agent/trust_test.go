package agent

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/agent/metricsfile"
	"github.com/gantry-ml/gantry/agent/runner"
	"github.com/gantry-ml/gantry/agent/spool"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/flat"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// The agent's trust boundary with its jobs (issue 9): jobs get none of the
// agent's secrets, cannot make the agent read what they name or block it,
// cannot grow what it sends without bound, and a full spool loses nothing.

// reachableDir is a data dir a job user can reach: t.TempDir's parents are
// root's and 0700.
func reachableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gantry-agent-trust-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startJob starts a job on a and waits for its exit record.
func startJob(t *testing.T, a *testAgent, id, run string) *gantrypb.JobExit {
	t.Helper()
	a.start(&gantrypb.StartJob{JobId: id, Spec: &gantrypb.JobSpec{Run: run}})
	return waitExit(t, a.spool, id)
}

// eventsOf returns job id's spooled events.
func eventsOf(t *testing.T, sp *spool.Spool, id string) []*gantrypb.JobEvent {
	t.Helper()
	recs, _ := records(t, sp, id)
	var evs []*gantrypb.JobEvent
	for _, r := range recs {
		if e := r.GetEvent(); e != nil {
			evs = append(evs, e)
		}
	}
	return evs
}

// TestJobGetsNoSecrets: a job prints its environment and tries to read the
// agent's key; no secret of the agent's appears in anything spooled, and
// under a root agent the job runs as the job user, whose read fails.
func TestJobGetsNoSecrets(t *testing.T) {
	t.Setenv("GANTRY_TOKEN", "tok-SECRET-1")
	t.Setenv("GANTRY_GOSSIP_KEY", "gossip-SECRET-2")
	dir := reachableDir(t)
	keyDir := filepath.Join(dir, "tls")
	if err := os.Mkdir(keyDir, 0o755); err != nil { // too open: New must fix it
		t.Fatal(err)
	}
	key := filepath.Join(keyDir, "node-key.pem")
	if err := os.WriteFile(key, []byte("KEY-SECRET-3"), 0o644); err != nil {
		t.Fatal(err)
	}
	secureTLS(testTLSFiles(keyDir), slog.New(slog.NewTextHandler(io.Discard, nil)))
	for path, want := range map[string]os.FileMode{key: 0o640, keyDir: 0o750} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v (%v), want %v", path, fi.Mode().Perm(), err, want)
		}
	}
	// Opened up again: under a root agent the job user must still be
	// kept out, by the key file's own mode.
	if err := os.Chmod(keyDir, 0o755); err != nil {
		t.Fatal(err)
	}

	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	root := os.Geteuid() == 0
	if root {
		u, err := runner.LookupUser("nobody")
		if err != nil {
			t.Fatal(err)
		}
		a.jobUser = u
		if err := prepareDataDir(dir, u); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Log("not root: the job runs as the agent's user and can read its key; only the environment is checked")
	}
	run := `env; id -u; if cat '` + key + `'; then echo KEY-WAS-READ; else echo key-read-failed; fi`
	exit := startJob(t, a, "env-job", run)
	if exit.GetExitCode() != 0 || exit.Error != "" {
		t.Fatalf("exit = %v", exit)
	}
	recs, _ := records(t, sp, "env-job")
	var out strings.Builder
	for _, r := range recs {
		out.Write(r.GetLog().GetData())
		data, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range []string{"tok-SECRET-1", "gossip-SECRET-2"} {
			if strings.Contains(string(data), secret) {
				t.Errorf("the agent's secret %q reached the job (record %d)", secret, r.Seq)
			}
		}
	}
	log := out.String()
	if !strings.Contains(log, "GANTRY_JOB_ID=env-job") {
		t.Fatalf("job environment not in its log:\n%s", log)
	}
	if root {
		if strings.Contains(log, "KEY-SECRET-3") || strings.Contains(log, "KEY-WAS-READ") ||
			!strings.Contains(log, "key-read-failed") {
			t.Fatalf("the job read the agent's key:\n%s", log)
		}
		if !strings.Contains(log, fmt.Sprintf("\n%d\n", a.jobUser.UID)) {
			t.Fatalf("job did not run as uid %d:\n%s", a.jobUser.UID, log)
		}
		owner, err := dirOwner(jobDir(dir, "env-job"))
		if err != nil || owner != int(a.jobUser.UID) {
			t.Fatalf("job dir owned by %d (%v), want the job user", owner, err)
		}
	}
}

func testTLSFiles(dir string) tlsutil.Files {
	return tlsutil.Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "node.pem"),
		Key: filepath.Join(dir, "node-key.pem")}
}

// TestResolveJobUser: a root agent refuses to start when the job user is
// missing, rather than run jobs as root; root itself must be named.
func TestResolveJobUser(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	u, err := resolveJobUser("no-such-user-gantry-test", log)
	if os.Geteuid() != 0 {
		if u != nil || err != nil {
			t.Fatalf("not root: %v, %v; want jobs as the agent's user", u, err)
		}
		t.Skip("the rest needs root")
	}
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing job user: %v, %v; want a clear error", u, err)
	}
	if u, err := resolveJobUser("root", log); u != nil || err != nil {
		t.Fatalf("-job-user root: %v, %v", u, err)
	}
	if u, err := resolveJobUser("nobody", log); err != nil || u == nil || u.UID == 0 {
		t.Fatalf("nobody: %v, %v", u, err)
	}
}

// TestUnsafeMetricsFiles: a job whose metrics file is a FIFO, a link to
// /dev/zero or a link to a file outside its directory ends when its process
// does, its exit record comes with a read_error event and nothing of the
// target is read; a cancelled one ends cancelled; and the next job on the
// agent succeeds.
func TestUnsafeMetricsFiles(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(secret, []byte(`{"step": 1, "stolen": 666}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	for _, c := range []struct{ name, make string }{
		{"fifo", `mkfifo "$GANTRY_METRICS_FILE"`},
		{"devzero", `ln -s /dev/zero "$GANTRY_METRICS_FILE"`},
		{"outside", `ln -s '` + secret + `' "$GANTRY_METRICS_FILE"`},
		{"shadow", `ln -s /etc/shadow "$GANTRY_METRICS_FILE"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := "unsafe-" + c.name
			exit := startJob(t, a, id, c.make+"; echo done")
			if exit.GetExitCode() != 0 {
				t.Fatalf("exit = %v", exit)
			}
			if v, ok := exit.FinalMetrics["stolen"]; ok {
				t.Fatalf("the agent read the link's target: stolen = %v", v)
			}
			var refused bool
			for _, e := range eventsOf(t, sp, id) {
				refused = refused || (e.Kind == string(lifecycle.EventReadError) && strings.Contains(e.Message, "refused"))
			}
			if !refused {
				t.Fatalf("no read_error event saying the file was refused: %v", eventsOf(t, sp, id))
			}
		})
	}
	t.Run("cancel", func(t *testing.T) {
		const id = "unsafe-cancel"
		a.start(&gantrypb.StartJob{JobId: id, Spec: &gantrypb.JobSpec{
			Run: `mkfifo "$GANTRY_METRICS_FILE"; echo > ready; exec sleep 60`, KillGraceMs: 200}})
		waitFor(t, "job ready", func() bool {
			_, err := os.Stat(filepath.Join(jobDir(dir, id), "ready"))
			return err == nil
		})
		waitFor(t, "job's process known", func() bool {
			a.mu.Lock()
			j := a.jobs[id]
			a.mu.Unlock()
			if j == nil {
				return false
			}
			j.mu.Lock()
			defer j.mu.Unlock()
			return j.proc != nil
		})
		(*linkHandler)(a.Agent).Cancel(&gantrypb.CancelJob{JobId: id})
		if exit := waitExit(t, sp, id); exit.Reason != string(lifecycle.ReasonCancelled) {
			t.Fatalf("exit = %v, want cancelled", exit)
		}
	})
	exit := startJob(t, a, "after-unsafe", `echo '{"step": 1, "loss": 0.5}' >> "$GANTRY_METRICS_FILE"`)
	if exit.GetExitCode() != 0 || exit.FinalMetrics["loss"] != 0.5 {
		t.Fatalf("next job: %v", exit)
	}
}

// TestManyKeysJob: 14 lines of 75,000 distinct keys each (issue 9, item 7)
// end with a small exit record, every record fits a batch many times over,
// the drops are reported in one event, and the next job succeeds.
func TestManyKeysJob(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 writes the metrics file")
	}
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	const id = "many-keys"
	run := `python3 -c '
import json, os
with open(os.environ["GANTRY_METRICS_FILE"], "w") as f:
    for line in range(14):
        d = {"%x%04x" % (line, i): 1 for i in range(75000)}
        d["step"] = line
        d["loss"] = 1.0 / (line + 1)
        f.write(json.dumps(d, separators=(",", ":")) + "\n")
'`
	exit := startJob(t, a, id, run)
	if exit.GetExitCode() != 0 {
		t.Fatalf("exit = %v", exit)
	}
	if n := len(exit.FinalMetrics); n > limits.MaxKeysPerJob {
		t.Fatalf("final metrics hold %d keys, over %d", n, limits.MaxKeysPerJob)
	}
	if exit.FinalMetrics["step"] != 13 {
		t.Fatalf("final step = %v, want 13", exit.FinalMetrics["step"])
	}
	recs, _ := records(t, sp, id)
	var dropped uint64
	var points int
	for _, r := range recs {
		if size := proto.Size(r); size > limits.MaxBatchBytes/8 {
			t.Errorf("record %d is %d bytes", r.Seq, size)
		}
		if p := r.GetPoint(); p != nil {
			points++
			if n := len(flat.Values(p, nil)); n > limits.MaxKeysPerPoint {
				t.Errorf("point with %d keys", n)
			}
		}
		if e := r.GetEvent(); e != nil && e.Kind == string(lifecycle.EventMetricKeysDropped) {
			dropped += e.Count
		}
	}
	if exitSize := proto.Size(recs[len(recs)-1]); exitSize > 64<<10 {
		t.Fatalf("exit record is %d bytes", exitSize)
	}
	if points != 14 {
		t.Fatalf("%d points, want 14", points)
	}
	// Each line stays under metricsfile.MaxLineBytes (about 750 KB), so
	// only the key caps apply. Per line, 75,001 metric keys of which 256 kept; of those, the job
	// keeps MaxJobKeys distinct ones.
	if want := uint64(14*75001 - metricsfile.MaxJobKeys); dropped != want {
		t.Fatalf("events report %d dropped values, want %d", dropped, want)
	}
	next := startJob(t, a, "after-many-keys", `echo '{"step": 2, "acc": 0.9}' >> "$GANTRY_METRICS_FILE"`)
	if next.GetExitCode() != 0 || next.FinalMetrics["acc"] != 0.9 {
		t.Fatalf("next job: %v", next)
	}
}

// TestSpoolFullLosesNothing (issue 9, item 9): the spool lives on a small
// tmpfs that fills up while a job writes; the job's records wait in its
// files, and once space returns every seq arrives, every step once, and
// the final metrics are right.
func TestSpoolFullLosesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs for the spool needs root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	sp, err := spool.Open(filepath.Join(mnt, "spool.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	// Leave the spool ~256 KiB; the job's records need several MiB.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(mnt, &st); err != nil {
			t.Fatal(err)
		}
		if st.Bavail*uint64(st.Bsize) < 256<<10 {
			break
		}
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	logs := &testutil.SyncBuffer{}
	a := newTestAgent(t, dir, sp)
	a.log = slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), nil))
	const id = "disk-full"
	const lines = 3000
	// 40 keys a line: about 1 KiB of spool per point.
	run := fmt.Sprintf(`i=1; while [ $i -le %d ]; do
  printf '{"step": %%d, "loss": %%d' $i $i
  k=0; while [ $k -lt 40 ]; do printf ', "m%%d": %%d' $k $i; k=$((k+1)); done
  printf '}\n'; i=$((i+1))
done >> "$GANTRY_METRICS_FILE"; echo finished`, lines)
	a.start(&gantrypb.StartJob{JobId: id, Spec: &gantrypb.JobSpec{Run: run}})
	waitFor(t, "the spool to fill up", func() bool {
		return strings.Contains(logs.String(), "spool write failed")
	})
	st := func() *gantrypb.AgentJob { return savedJob(t, sp, id) }
	if s := st(); s != nil && s.ExitIndex != 0 {
		t.Fatal("the exit was spooled although the spool is full")
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	exit := waitExit(t, sp, id)
	if exit.GetExitCode() != 0 {
		t.Fatalf("exit = %v", exit)
	}
	if !strings.Contains(logs.String(), "spool writable again") {
		t.Error("no log of the spool recovering")
	}
	recs, _ := records(t, sp, id)
	var steps []int64
	for i, r := range recs {
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d has seq %d: a gap", i, r.Seq)
		}
		if p := r.GetPoint(); p != nil {
			steps = append(steps, p.GetStep())
		}
	}
	want := make([]int64, lines)
	for i := range want {
		want[i] = int64(i + 1)
	}
	if !slices.Equal(steps, want) {
		t.Fatalf("%d steps spooled, want 1..%d once each", len(steps), lines)
	}
	if exit.FinalMetrics["step"] != lines || exit.FinalMetrics["loss"] != lines || exit.FinalMetrics["m39"] != lines {
		t.Fatalf("final metrics = %v", exit.FinalMetrics)
	}
}

// TestRestartAdoptsJobOfJobUser: a job run as the job user is re-adopted by
// a restarted agent, its files (the job user's) are still read, and its
// exit status (written by its supervisor as the job user) is reported.
func TestRestartAdoptsJobOfJobUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running a job as another user needs root")
	}
	u, err := runner.LookupUser("nobody")
	if err != nil {
		t.Fatal(err)
	}
	dir := reachableDir(t)
	if err := prepareDataDir(dir, u); err != nil {
		t.Fatal(err)
	}
	sp := openSpool(t, dir)
	first := newTestAgent(t, dir, sp)
	first.jobUser = u
	const id = "adopt-as-user"
	first.start(&gantrypb.StartJob{JobId: id, Spec: &gantrypb.JobSpec{Run: twoHalves}})
	jd := jobDir(dir, id)
	waitFor(t, "first half written", func() bool {
		_, err := os.Stat(filepath.Join(jd, "half"))
		return err == nil
	})
	first.stop()
	if err := os.WriteFile(filepath.Join(jd, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	second := newTestAgent(t, dir, sp)
	second.jobUser = u
	if err := second.recover(); err != nil {
		t.Fatal(err)
	}
	exit := waitExit(t, sp, id)
	if exit.GetExitCode() != 0 || exit.Error != "" {
		t.Fatalf("exit = %v", exit)
	}
	for k, v := range map[string]float64{"step": 20, "early": 5, "last_only": 1} {
		if exit.FinalMetrics[k] != v {
			t.Errorf("final %s = %v, want %v (all: %v)", k, exit.FinalMetrics[k], v, exit.FinalMetrics)
		}
	}
	if !strings.Contains(exit.LogTail, "line 20") {
		t.Errorf("log tail %q lacks the last line", exit.LogTail)
	}
}

// TestDrainAfterExitIsBounded: reading the metrics file after the job's
// process exited stops at drainMaxBytes, with an event saying so, and the
// job ends. The file is a huge sparse file with no newline, which never
// reaches its end within the bound however the test is scheduled.
func TestDrainAfterExitIsBounded(t *testing.T) {
	oldBytes := drainMaxBytes
	drainMaxBytes = 32 << 20
	t.Cleanup(func() { drainMaxBytes = oldBytes })
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	const id = "sparse"
	exit := startJob(t, a, id, `truncate -s 64G "$GANTRY_METRICS_FILE"`)
	if exit.GetExitCode() != 0 {
		t.Fatalf("exit = %v", exit)
	}
	cut := false
	for _, e := range eventsOf(t, sp, id) {
		cut = cut || (e.Kind == string(lifecycle.EventReadError) && strings.Contains(e.Message, "stopped reading the metrics file"))
	}
	if !cut {
		t.Fatalf("no event saying the drain was cut: %v", eventsOf(t, sp, id))
	}
	next := startJob(t, a, "after-sparse", `echo '{"step": 1, "ok": 1}' >> "$GANTRY_METRICS_FILE"`)
	if next.GetExitCode() != 0 || next.FinalMetrics["ok"] != 1 {
		t.Fatalf("next job: %v", next)
	}
}

// TestEventAndExitCaps: whatever text a job's failure produces (a huge
// error, invalid UTF-8), event messages and exit errors stay within the
// limits and marshal.
func TestEventAndExitCaps(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	j := &job{a: a.Agent, id: "caps", state: &gantrypb.AgentJob{JobId: "caps"}}
	huge := strings.Repeat("é\xff", 1<<20)
	ev := j.event(lifecycle.EventKind(strings.Repeat("k", 1000)), huge, 1).GetEvent()
	if len(ev.Message) > limits.MaxEventMessageBytes || len(ev.Kind) > limits.MaxEventKindBytes {
		t.Fatalf("event of %d/%d bytes", len(ev.Kind), len(ev.Message))
	}
	j.fail(huge)
	exit := waitExit(t, sp, "caps")
	if len(exit.Error) > limits.MaxExitErrorBytes || !strings.HasSuffix(exit.Error, "...") {
		t.Fatalf("exit error of %d bytes", len(exit.Error))
	}
	for _, s := range []string{ev.Message, exit.Error} {
		if !utf8.ValidString(s) {
			t.Fatalf("invalid UTF-8: %q", s[:20])
		}
	}
}

// TestDrainReadsWhatTheFileHeldAtExit: the drain after the exit is not cut
// by time while it reads what the file held when the process exited, so a
// job that wrote faster than the pipeline drains keeps its last line
// (invariant I2); only a file that keeps growing after the exit is.
func TestDrainReadsWhatTheFileHeldAtExit(t *testing.T) {
	oldTime := drainMaxTime
	drainMaxTime = time.Nanosecond // every poll past what was there is over time
	t.Cleanup(func() { drainMaxTime = oldTime })
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	const lines = 3000 // many polls' worth
	exit := startJob(t, a, "burst", fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo "{\"step\": $i, \"loss\": $i}"; i=$((i+1)); done > "$GANTRY_METRICS_FILE"`, lines))
	if exit.GetExitCode() != 0 || exit.FinalMetrics["step"] != lines || exit.FinalMetrics["loss"] != lines {
		t.Fatalf("exit %v: want the last line in the final metrics", exit)
	}
	for _, e := range eventsOf(t, sp, "burst") {
		if e.Kind == string(lifecycle.EventReadError) {
			t.Fatalf("the drain was cut: %s", e.Message)
		}
	}

	// A process that escaped the job's group keeps appending: cut.
	drainMaxTime = 200 * time.Millisecond
	pidFile := filepath.Join(dir, "writer.pid")
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	// The job's process exits once the writer has written 200 lines: what
	// the file holds at the exit (those, and the few written while the
	// process ends) is read in full, what keeps coming after it is cut by
	// time.
	exit = startJob(t, a, "grows", fmt.Sprintf(`ready="$GANTRY_METRICS_FILE.ready"; `+
		`setsid sh -c 'echo $$ > %s; i=0; while :; do echo "{\"x\": 1}"; i=$((i+1)); if [ $i = 200 ]; then : > "$0"; fi; done' "$ready" >> "$GANTRY_METRICS_FILE" 2>/dev/null & `+
		`while [ ! -e "$ready" ]; do :; done`, pidFile))
	cut := false
	for _, e := range eventsOf(t, sp, "grows") {
		cut = cut || (e.Kind == string(lifecycle.EventReadError) && strings.Contains(e.Message, "still being written"))
	}
	if !cut {
		t.Fatalf("a file growing after the exit was not cut: exit %v, events %v", exit, eventsOf(t, sp, "grows"))
	}
}

// TestJobImportsTheMetricsHelper: a job's Python finds gantry_metrics with
// nothing installed and no sys.path edit: the agent ships it on the job's
// PYTHONPATH. (The demo's trainer, run as the job user by a root dev
// controller, imports it the same way.)
func TestJobImportsTheMetricsHelper(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("no python3")
	}
	dir := reachableDir(t)
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	exit := startJob(t, a, "py", `cd / && python3 -c 'import gantry_metrics; gantry_metrics.log(step=3, loss=0.25)'`)
	if exit.GetExitCode() != 0 {
		t.Fatalf("the job failed: %v", exit)
	}
	if exit.FinalMetrics["loss"] != 0.25 || exit.FinalMetrics["step"] != 3 {
		t.Fatalf("final metrics %v, want the helper's line", exit.FinalMetrics)
	}
}
