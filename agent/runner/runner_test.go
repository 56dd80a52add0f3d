package runner

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/lifecycle"
)

// testTimeout bounds every wait in these tests; real waits are far shorter.
const testTimeout = 10 * time.Second

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, testTimeout, cond, what)
}

// waitDone waits for the process to end and returns its result.
func waitDone(t *testing.T, p *Process) Result {
	t.Helper()
	select {
	case <-p.Done():
		return p.Result()
	case <-time.After(testTimeout):
		p.Cancel("test timeout")
		t.Fatalf("job pid %d did not finish", p.PID())
		return Result{}
	}
}

// fileExists reports whether path exists.
func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// readPID reads a pid a job wrote to a file.
func readPID(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("pid file %s: %v", path, err)
	}
	return pid
}

// processGone reports whether pid no longer runs. A zombie counts as gone:
// it holds no GPU and no memory; whoever it was reparented to reaps it.
func processGone(pid int) bool {
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return true
	}
	state, _, ok := procStat(pid)
	return !ok || state == 'Z' || state == 'X'
}

// recorder collects events.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) record(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) kinds() []lifecycle.EventKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var kinds []lifecycle.EventKind
	for _, ev := range r.events {
		kinds = append(kinds, ev.Kind)
	}
	return kinds
}

func (r *recorder) find(kind lifecycle.EventKind) (Event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.events {
		if ev.Kind == kind {
			return ev, true
		}
	}
	return Event{}, false
}

// start launches spec in a fresh temp job dir (unless spec names one) and
// registers a cleanup that kills the job if the test leaves it running.
func start(t *testing.T, spec Spec, rec *recorder) *Process {
	t.Helper()
	if spec.JobDir == "" {
		spec.JobDir = t.TempDir()
	}
	var onEvent func(Event)
	if rec != nil {
		onEvent = rec.record
	}
	p, err := Start(spec, onEvent)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		p.Cancel("cleanup")
		<-p.Done()
	})
	return p
}

func exitCode(r Result) string {
	if r.ExitCode == nil {
		return "<nil>"
	}
	return strconv.Itoa(*r.ExitCode)
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		run  string
		want int
	}{
		{"true", 0},
		{"exit 3", 3},
		{"false", 1},
		{"exit 255", 255},
	}
	for _, tt := range tests {
		t.Run(tt.run, func(t *testing.T) {
			t.Parallel()
			res := waitDone(t, start(t, Spec{JobID: "j", Run: tt.run}, nil))
			if res.ExitCode == nil || *res.ExitCode != tt.want {
				t.Fatalf("exit code = %s, want %d", exitCode(res), tt.want)
			}
			if res.Signal != "" || res.Reason != "" || res.Err != nil {
				t.Fatalf("result = %+v, want a plain exit", res)
			}
		})
	}
}

// TestEnvironment checks the layering agent < user < Gantry in a real child.
func TestEnvironment(t *testing.T) {
	// The agent's secrets, and anything else of its environment, must not
	// reach the job: only PATH, LANG and TZ are passed on.
	t.Setenv("GANTRY_TOKEN", "s3cret-token")
	t.Setenv("GANTRY_GOSSIP_KEY", "s3cret-gossip")
	t.Setenv("LANG", "C.UTF-8")
	t.Setenv("GANTRY_TEST_INHERITED", "agent")
	t.Setenv("GANTRY_TEST_OVERRIDDEN", "agent")
	t.Setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7") // the agent's own must not leak

	dir := t.TempDir()
	out := filepath.Join(dir, "env.txt")
	spec := Spec{
		JobID:       "job-42",
		JobDir:      dir,
		Run:         "env > " + out,
		GPUs:        []int{1, 5},
		MetricsFile: filepath.Join(dir, "metrics.jsonl"),
		Env: map[string]string{
			"GANTRY_TEST_OVERRIDDEN": "user",
			"GANTRY_TEST_USER":       "with spaces and = sign",
			"CUDA_VISIBLE_DEVICES":   "0,1,2,3", // Gantry's assignment wins
			"GANTRY_JOB_ID":          "spoofed",
		},
	}
	res := waitDone(t, start(t, spec, nil))
	if res.ExitCode == nil || *res.ExitCode != 0 {
		t.Fatalf("job failed: %+v", res)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			got[k] = v
		}
	}
	for _, k := range []string{"GANTRY_TOKEN", "GANTRY_GOSSIP_KEY", "GANTRY_TEST_INHERITED"} {
		if v, ok := got[k]; ok {
			t.Errorf("agent variable %s=%q leaked into the job", k, v)
		}
	}
	if strings.Contains(string(data), "s3cret") {
		t.Errorf("a secret of the agent is in the job's environment:\n%s", data)
	}
	want := map[string]string{
		"LANG":                   "C.UTF-8",
		"PATH":                   os.Getenv("PATH"),
		"HOME":                   os.Getenv("HOME"),
		"GANTRY_TEST_OVERRIDDEN": "user",
		"GANTRY_TEST_USER":       "with spaces and = sign",
		"CUDA_VISIBLE_DEVICES":   "1,5",
		"CUDA_DEVICE_ORDER":      "PCI_BUS_ID",
		"GANTRY_JOB_ID":          "job-42",
		"GANTRY_METRICS_FILE":    spec.MetricsFile,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

func TestCUDAVisibleDevices(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		gpus []int
		want string
	}{
		{"none hides all", nil, ""},
		{"empty hides all", []int{}, ""},
		{"one", []int{0}, "0"},
		{"two", []int{0, 3}, "0,3"},
		{"keeps order", []int{7, 2, 4}, "7,2,4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			out := filepath.Join(dir, "cvd")
			// Exit 9 if the variable is unset: unset would expose every GPU.
			run := `[ "${CUDA_VISIBLE_DEVICES+set}" = set ] || exit 9; printf %s "$CUDA_VISIBLE_DEVICES" > ` + out
			res := waitDone(t, start(t, Spec{JobDir: dir, Run: run, GPUs: tt.gpus}, nil))
			if res.ExitCode == nil || *res.ExitCode != 0 {
				t.Fatalf("job failed (9 = unset): %+v exit %s", res, exitCode(res))
			}
			data, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if string(data) != tt.want {
				t.Fatalf("CUDA_VISIBLE_DEVICES = %q, want %q", data, tt.want)
			}
		})
	}
}

func TestBuildEnvDeduplicates(t *testing.T) {
	t.Setenv("PATH", "/agent/bin")
	t.Setenv("GANTRY_TOKEN", "secret")
	env := buildEnv(Spec{JobID: "j", JobDir: "/jobs/j", Env: map[string]string{"PATH": "/user/bin", "B": "user"},
		User: &User{Name: "nobody", Home: "/nonexistent"}})
	count := map[string]int{}
	values := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		count[k]++
		values[k] = v
	}
	for k, n := range count {
		if n != 1 {
			t.Errorf("%s appears %d times", k, n)
		}
	}
	if values["PATH"] != "/user/bin" || values["B"] != "user" || values["GANTRY_JOB_ID"] != "j" {
		t.Fatalf("env = %v", env)
	}
	// A home that does not exist is no home: the job's directory is.
	if values["HOME"] != "/jobs/j" {
		t.Fatalf("HOME = %q, want the job directory", values["HOME"])
	}
	if _, ok := count["GANTRY_TOKEN"]; ok {
		t.Fatalf("agent's GANTRY_TOKEN passed on: %v", env)
	}
}

// The agent's metrics helper goes on PYTHONPATH after the spec's own.
func TestBuildEnvPythonPath(t *testing.T) {
	get := func(env []string) string {
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "PYTHONPATH="); ok {
				return v
			}
		}
		return ""
	}
	if got := get(buildEnv(Spec{JobID: "j", PythonPath: "/agent/python"})); got != "/agent/python" {
		t.Fatalf("PYTHONPATH = %q", got)
	}
	if got := get(buildEnv(Spec{JobID: "j", PythonPath: "/agent/python", Env: map[string]string{"PYTHONPATH": "/mine"}})); got != "/mine:/agent/python" {
		t.Fatalf("with the spec's own: PYTHONPATH = %q", got)
	}
	if got := get(buildEnv(Spec{JobID: "j"})); got != "" {
		t.Fatalf("without a helper: PYTHONPATH = %q", got)
	}
}

func TestLogFileAppendsStdoutAndStderr(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "job.log")
	if err := os.WriteFile(logPath, []byte("earlier attempt\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	res := waitDone(t, start(t, Spec{JobDir: dir, LogFile: logPath, Run: "echo to-stdout; echo to-stderr >&2"}, nil))
	if res.ExitCode == nil || *res.ExitCode != 0 {
		t.Fatalf("job failed: %+v", res)
	}
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"earlier attempt\n", "to-stdout\n", "to-stderr\n"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("log %q lacks %q", data, want)
		}
	}

	fresh := filepath.Join(dir, "fresh.log")
	waitDone(t, start(t, Spec{JobDir: dir, LogFile: fresh, Run: "true"}, nil))
	fi, err := os.Stat(fresh)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 || perm&0o600 != 0o600 {
		t.Fatalf("new log file mode %v, want 0640 (less umask)", perm)
	}
}

func TestWorkdir(t *testing.T) {
	t.Parallel()
	jobDir := t.TempDir()
	other := t.TempDir()
	if err := os.Mkdir(filepath.Join(jobDir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, workdir, want string
	}{
		{"default is job dir", "", jobDir},
		{"relative to job dir", "sub", filepath.Join(jobDir, "sub")},
		{"absolute", other, other},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "pwd"+strconv.Itoa(i))
			res := waitDone(t, start(t, Spec{JobDir: jobDir, Workdir: tt.workdir, Run: "pwd -P > " + out}, nil))
			if res.ExitCode == nil || *res.ExitCode != 0 {
				t.Fatalf("job failed: %+v", res)
			}
			data, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			want, err := filepath.EvalSymlinks(tt.want)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(data)); got != want {
				t.Fatalf("pwd = %q, want %q", got, want)
			}
		})
	}
}

func TestStartErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name   string
		spec   Spec
		target error
		also   error
	}{
		{"missing workdir", Spec{Run: "true", Workdir: filepath.Join(dir, "nope")}, ErrStart, fs.ErrNotExist},
		{"log dir missing", Spec{Run: "true", LogFile: filepath.Join(dir, "nope", "log")}, ErrStart, fs.ErrNotExist},
		{"empty run", Spec{Run: "  "}, ErrInvalidSpec, nil},
		{"negative kill grace", Spec{Run: "true", KillGrace: -time.Second}, ErrInvalidSpec, nil},
		{"negative max duration", Spec{Run: "true", MaxDuration: -time.Second}, ErrInvalidSpec, nil},
		{"negative gpu", Spec{Run: "true", GPUs: []int{0, -1}}, ErrInvalidSpec, nil},
		{"env key with =", Spec{Run: "true", Env: map[string]string{"A=B": "c"}}, ErrInvalidSpec, nil},
		{"empty env key", Spec{Run: "true", Env: map[string]string{"": "c"}}, ErrInvalidSpec, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := Start(tt.spec, nil)
			if err == nil {
				<-p.Done()
				t.Fatal("Start succeeded")
			}
			if !errors.Is(err, tt.target) {
				t.Fatalf("err = %v, want %v", err, tt.target)
			}
			if tt.also != nil && !errors.Is(err, tt.also) {
				t.Fatalf("err = %v, want it to wrap %v", err, tt.also)
			}
		})
	}
}

func TestSetup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		setup    string
		run      string
		wantCode int
		wantOut  string // content of out.txt, "" = must not exist
	}{
		{"setup failure stops the job", "echo step1\nfalse\necho step3", "echo ran > out.txt", 1, ""},
		{"setup failure keeps its code", "sh -c 'exit 7'", "echo ran > out.txt", 7, ""},
		{"same shell", "X=from-setup", `echo "$X" > out.txt`, 0, "from-setup\n"},
		{"run is not set -e", "true", "false; echo still > out.txt", 0, "still\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			res := waitDone(t, start(t, Spec{JobDir: dir, Setup: tt.setup, Run: tt.run}, nil))
			if res.ExitCode == nil || *res.ExitCode != tt.wantCode {
				t.Fatalf("exit code = %s, want %d", exitCode(res), tt.wantCode)
			}
			data, err := os.ReadFile(filepath.Join(dir, "out.txt"))
			switch {
			case tt.wantOut == "" && err == nil:
				t.Fatalf("run executed after failed setup: %q", data)
			case tt.wantOut == "" && !errors.Is(err, fs.ErrNotExist):
				t.Fatal(err)
			case tt.wantOut != "" && string(data) != tt.wantOut:
				t.Fatalf("out.txt = %q (%v), want %q", data, err, tt.wantOut)
			}
		})
	}
}

// TestCancelTerm cancels jobs that die on SIGTERM, with sh exec'ing the
// command and with sh forking it.
func TestCancelTerm(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, run string }{
		{"exec", "echo > ready; exec sleep 30"},
		{"fork", "echo > ready; sleep 30; echo not reached"},
		{"shell loop", "echo > ready; while :; do sleep 0.05; done"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			rec := &recorder{}
			p := start(t, Spec{JobDir: dir, Run: tt.run}, rec) // default 10 s grace
			waitFor(t, "job ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
			began := time.Now()
			p.Cancel("")
			res := waitDone(t, p)
			if elapsed := time.Since(began); elapsed >= DefaultKillGrace {
				t.Fatalf("cancel took %s: SIGTERM did not end the job", elapsed)
			}
			if res.Reason != lifecycle.ReasonCancelled {
				t.Fatalf("reason = %q, want %q", res.Reason, lifecycle.ReasonCancelled)
			}
			// The shell either dies of the signal or, if it handles it,
			// exits with 128+15.
			if res.Signal != "SIGTERM" && (res.ExitCode == nil || *res.ExitCode != 143) {
				t.Fatalf("result = signal %q exit %s, want SIGTERM or 143", res.Signal, exitCode(res))
			}
			if _, ok := rec.find(lifecycle.EventKillEscalated); ok {
				t.Fatal("kill escalated although the job obeyed SIGTERM")
			}
		})
	}
}

func TestCancelEscalatesToSIGKILL(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rec := &recorder{}
	p := start(t, Spec{
		JobDir:    dir,
		Run:       "trap '' TERM; echo > ready; while :; do sleep 0.05; done",
		KillGrace: 200 * time.Millisecond,
	}, rec)
	waitFor(t, "trap installed", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	began := time.Now()
	p.Cancel(lifecycle.ReasonCancelled)
	res := waitDone(t, p)
	if elapsed := time.Since(began); elapsed < 200*time.Millisecond {
		t.Fatalf("killed after %s, before the grace was over", elapsed)
	}
	if res.Signal != "SIGKILL" || res.ExitCode != nil || res.Reason != lifecycle.ReasonCancelled {
		t.Fatalf("result = %+v (exit %s), want SIGKILL, cancelled", res, exitCode(res))
	}
	ev, ok := rec.find(lifecycle.EventKillEscalated)
	if !ok {
		t.Fatalf("no %s event; got %v", lifecycle.EventKillEscalated, rec.kinds())
	}
	if !strings.Contains(ev.Message, "SIGKILL") || !strings.Contains(ev.Message, "200ms") {
		t.Fatalf("event message %q", ev.Message)
	}
}

// TestCancelKillsGrandchild: the main shell dies on SIGTERM at once, a
// grandchild ignoring SIGTERM must still be killed once the grace is over.
func TestCancelKillsGrandchild(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rec := &recorder{}
	// Write then rename, so the test never reads a half-written pid file.
	run := `sh -c 'trap "" TERM; echo $$ > gc.tmp; mv gc.tmp gc.pid; exec sleep 30' & wait`
	p := start(t, Spec{JobDir: dir, Run: run, KillGrace: 200 * time.Millisecond}, rec)
	pidFile := filepath.Join(dir, "gc.pid")
	waitFor(t, "grandchild started", func() bool { return fileExists(pidFile) })
	gc := readPID(t, pidFile)
	if _, pgrp, ok := procStat(gc); !ok || pgrp != p.PID() {
		t.Fatalf("grandchild %d not in job group %d", gc, p.PID())
	}
	p.Cancel("")
	res := waitDone(t, p)
	if res.Reason != lifecycle.ReasonCancelled {
		t.Fatalf("reason = %q", res.Reason)
	}
	if !processGone(gc) {
		t.Fatalf("grandchild %d still alive after Done", gc)
	}
	if _, ok := rec.find(lifecycle.EventKillEscalated); !ok {
		t.Fatalf("no %s event for the TERM-ignoring grandchild; got %v", lifecycle.EventKillEscalated, rec.kinds())
	}
}

// TestCancelGivesForkedTrainerItsGrace: sh forks the trainer and dies on
// SIGTERM at once; the trainer handles SIGTERM and needs a moment to save.
// It must get that moment rather than an instant SIGKILL.
func TestCancelGivesForkedTrainerItsGrace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	trainer := `trap 'sleep 0.3; echo saved > saved; exit 0' TERM
echo > ready
while :; do sleep 0.05; done
`
	if err := os.WriteFile(filepath.Join(dir, "trainer.sh"), []byte(trainer), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	p := start(t, Spec{JobDir: dir, Run: "sh ./trainer.sh; echo not reached", KillGrace: 5 * time.Second}, rec)
	waitFor(t, "trainer ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	began := time.Now()
	p.Cancel("")
	res := waitDone(t, p)
	if !fileExists(filepath.Join(dir, "saved")) {
		t.Fatal("trainer was killed before it could save")
	}
	if elapsed := time.Since(began); elapsed >= 5*time.Second {
		t.Fatalf("Done waited %s, the whole grace, although the group had emptied", elapsed)
	}
	if res.Reason != lifecycle.ReasonCancelled {
		t.Fatalf("reason = %q", res.Reason)
	}
	if kinds := rec.kinds(); len(kinds) != 0 {
		t.Fatalf("unexpected events %v", kinds)
	}
}

// TestOrphansKilledWhenMainExits: a background process left behind (and
// holding the log file) must neither block Done nor survive the job.
func TestOrphansKilledWhenMainExits(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rec := &recorder{}
	p := start(t, Spec{
		JobDir:  dir,
		LogFile: filepath.Join(dir, "job.log"),
		Run:     "sleep 30 & echo $! > bg.pid; exit 0",
	}, rec)
	res := waitDone(t, p)
	if res.ExitCode == nil || *res.ExitCode != 0 || res.Reason != "" {
		t.Fatalf("result = %+v", res)
	}
	bg := readPID(t, filepath.Join(dir, "bg.pid"))
	waitFor(t, "orphan killed", func() bool { return processGone(bg) })
	ev, ok := rec.find(lifecycle.EventOrphansKilled)
	if !ok {
		t.Fatalf("no %s event; got %v", lifecycle.EventOrphansKilled, rec.kinds())
	}
	if !strings.Contains(ev.Message, strconv.Itoa(bg)) {
		t.Fatalf("event %q does not name pid %d", ev.Message, bg)
	}
}

func TestMaxDuration(t *testing.T) {
	t.Parallel()
	began := time.Now()
	p := start(t, Spec{Run: "exec sleep 30", MaxDuration: 200 * time.Millisecond}, nil)
	res := waitDone(t, p)
	if elapsed := time.Since(began); elapsed < 200*time.Millisecond {
		t.Fatalf("stopped after %s, before max_duration", elapsed)
	}
	if res.Reason != lifecycle.ReasonMaxDuration || res.Signal != "SIGTERM" {
		t.Fatalf("result = %+v, want SIGTERM with reason %q", res, lifecycle.ReasonMaxDuration)
	}
}

func TestCancelIdempotentAndSafeAfterExit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := start(t, Spec{JobDir: dir, Run: "echo > ready; exec sleep 30"}, nil)
	waitFor(t, "job ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if i == 0 {
				p.Cancel(lifecycle.ReasonMaxDuration)
			} else {
				p.Cancel("")
			}
		})
	}
	wg.Wait()
	res := waitDone(t, p)
	if !slices.Contains([]lifecycle.ExitReason{lifecycle.ReasonCancelled, lifecycle.ReasonMaxDuration}, res.Reason) {
		t.Fatalf("reason = %q", res.Reason)
	}
	p.Cancel("late") // after exit: must neither panic nor change the result
	if got := p.Result(); got.Reason != res.Reason {
		t.Fatalf("late cancel changed reason to %q", got.Reason)
	}

	// A job that ended by itself keeps an empty reason.
	q := start(t, Spec{Run: "exit 0"}, nil)
	waitDone(t, q)
	q.Cancel("")
	if r := q.Result(); r.Reason != "" {
		t.Fatalf("cancel after exit set reason %q", r.Reason)
	}
}

func TestPIDIsGroupLeader(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := start(t, Spec{JobDir: dir, Run: "echo > ready; exec sleep 30"}, nil)
	waitFor(t, "job ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	pgid, err := unix.Getpgid(p.PID())
	if err != nil {
		t.Fatal(err)
	}
	sid, err := unix.Getsid(p.PID())
	if err != nil {
		t.Fatal(err)
	}
	if pgid != p.PID() || sid != p.PID() {
		t.Fatalf("pid %d has pgid %d sid %d, want its own session", p.PID(), pgid, sid)
	}
	if pgid == unix.Getpgrp() {
		t.Fatal("job shares the agent's process group")
	}
}

func TestParseProcStat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		data  string
		state byte
		pgrp  int
		ok    bool
	}{
		{"plain", "123 (sleep) S 1 120 120 0 -1", 'S', 120, true},
		{"comm with parens and spaces", "123 (a) b (c) Z 1 77 77 0", 'Z', 77, true},
		{"truncated", "123 (sleep) S 1", 0, 0, false},
		{"no comm", "garbage", 0, 0, false},
		{"bad pgrp", "123 (x) R 1 nan 0", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state, pgrp, ok := parseProcStat([]byte(tt.data))
			if state != tt.state || pgrp != tt.pgrp || ok != tt.ok {
				t.Fatalf("got (%q, %d, %v), want (%q, %d, %v)", state, pgrp, ok, tt.state, tt.pgrp, tt.ok)
			}
		})
	}
}

// userDir makes a directory the job's user can reach (t.TempDir's parents
// are root's and 0700) and owns.
func userDir(t *testing.T, u *User) string {
	t.Helper()
	top, err := os.MkdirTemp("", "gantry-runner-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	if err := os.Chmod(top, 0o711); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(top, "job")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := u.Chown(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestJobRunsAsUser: with the agent as root, the job (and its supervisor)
// run as the given unprivileged user, which cannot read a root-only file
// such as the agent's TLS key, and its log file is its own.
func TestJobRunsAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("switching users needs root; run the tests as root to cover it")
	}
	u, err := LookupUser("nobody")
	if err != nil {
		t.Fatal(err)
	}
	keyDir := t.TempDir()
	key := filepath.Join(keyDir, "agent-key.pem")
	if err := os.WriteFile(key, []byte("PRIVATE KEY"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(keyDir), 0o755); err != nil { // the key file's mode alone must stop it
		t.Fatal(err)
	}
	if err := os.Chmod(keyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := userDir(t, u)
	logFile := filepath.Join(dir, "output.log")
	spec := Spec{JobID: "as-user", JobDir: dir, LogFile: logFile, User: u,
		Run: `id -u; id -g; echo "HOME=$HOME"; cat '` + key + `' && echo READ-THE-KEY; exit 0`}
	res := waitDone(t, start(t, spec, nil))
	if res.ExitCode == nil || *res.ExitCode != 0 || res.Err != nil {
		t.Fatalf("job failed: %+v", res)
	}
	out, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(out), "\n")
	if len(lines) < 3 || lines[0] != fmt.Sprint(u.UID) || lines[1] != fmt.Sprint(u.GID) {
		t.Fatalf("job ran as %q, want uid %d gid %d; log:\n%s", lines, u.UID, u.GID, out)
	}
	if strings.Contains(string(out), "PRIVATE KEY") || strings.Contains(string(out), "READ-THE-KEY") {
		t.Fatalf("the job read a root-only key file:\n%s", out)
	}
	fi, err := os.Stat(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != u.UID {
		t.Fatalf("log file owned by uid %d, want the job's %d", st.Uid, u.UID)
	}
}

// TestLogFileSymlinkRefused: the agent does not create or append to a file
// a symlink in the job's directory names.
func TestLogFileSymlinkRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(target, []byte("untouched"), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "output.log")
	if err := os.Symlink(target, logFile); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(Spec{JobDir: dir, LogFile: logFile, Run: "echo written"}, nil); !errors.Is(err, ErrStart) {
		t.Fatalf("Start = %v, want ErrStart", err)
	}
	if data, _ := os.ReadFile(target); string(data) != "untouched" {
		t.Fatalf("symlink target changed: %q", data)
	}
}

// A multi-node rank's rendezvous variables win over the spec's env, so a
// spec cannot point a rank at another master.
func TestBuildEnvRendezvousWins(t *testing.T) {
	env := buildEnv(Spec{JobID: "j", JobDir: "/jobs/j", Env: map[string]string{"MASTER_ADDR": "evil", "USER_VAR": "1"},
		Rendezvous: map[string]string{"MASTER_ADDR": "10.0.0.1", "GANTRY_NODE_RANK": "1"}})
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := got[k]; dup {
			t.Fatalf("%s set twice in %v", k, env)
		}
		got[k] = v
	}
	if got["MASTER_ADDR"] != "10.0.0.1" || got["GANTRY_NODE_RANK"] != "1" || got["USER_VAR"] != "1" {
		t.Fatalf("env %v", env)
	}
}
