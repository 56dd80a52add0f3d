package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gantry-ml/gantry/agent/jobcgroup"
	"github.com/gantry-ml/gantry/lifecycle"
)

// fakeAgentEnv makes the test binary act as an agent that starts one job
// (the Spec in JSON) and exits at once, printing the job's Identity and
// status file: the job is left running with no parent we could wait on,
// exactly as after an agent restart.
const fakeAgentEnv = "GANTRY_RUNNER_TEST_FAKE_AGENT"

// orphan is what the fake agent prints.
type orphan struct {
	Identity   Identity
	StatusFile string
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(fakeAgentEnv); spec != "" {
		// Like the supervisor, skip the race detector's one-second exit
		// sleep.
		syscall.Exit(fakeAgent(spec))
	}
	os.Exit(m.Run())
}

// orphanSpec is the part of a Spec the fake agent is given.
// CgroupDir, when set, is the directory of the job groups (a Manager's
// Dir) and CgroupJob the job's id in it: the job runs in its group.
type orphanSpec struct{ JobDir, Run, CgroupDir, CgroupJob string }

func fakeAgent(specJSON string) int {
	var spec orphanSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var g *jobcgroup.Group
	if spec.CgroupDir != "" {
		g = jobcgroup.GroupAt(spec.CgroupDir, spec.CgroupJob, "1")
	}
	p, err := Start(Spec{JobDir: spec.JobDir, Run: spec.Run, Cgroup: g}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := json.NewEncoder(os.Stdout).Encode(orphan{p.Identity(), p.StatusFile()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}

// startOrphan starts spec (in a fresh JobDir unless it names one) from a
// fake agent process that exits at once. The job is killed at cleanup if
// it still runs.
func startOrphan(t *testing.T, spec orphanSpec) orphan {
	t.Helper()
	if spec.JobDir == "" {
		spec.JobDir = t.TempDir()
	}
	data, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fakeAgentEnv+"="+string(data))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fake agent: %v\n%s", err, out)
	}
	var o orphan
	if err := json.Unmarshal(out, &o); err != nil {
		t.Fatalf("fake agent output %q: %v", out, err)
	}
	t.Cleanup(func() { killOrphan(o.Identity) })
	return o
}

// killOrphan kills an orphan's group, unless its pid belongs to someone
// else by now.
func killOrphan(id Identity) {
	if gone, err := id.check(); gone == nil && err == nil {
		_ = unix.Kill(-id.PID, unix.SIGKILL)
	}
}

// waitGone waits until the identified process has ended.
func waitGone(t *testing.T, id Identity) {
	t.Helper()
	waitFor(t, fmt.Sprintf("pid %d to end", id.PID), func() bool {
		gone, err := id.check()
		if err != nil {
			t.Fatal(err)
		}
		return gone != nil
	})
}

// adopt adopts o with the given kill grace and cleanup.
func adopt(t *testing.T, a Adoption, rec *recorder) *Process {
	t.Helper()
	var onEvent func(Event)
	if rec != nil {
		onEvent = rec.record
	}
	p, err := Adopt(a, onEvent)
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	t.Cleanup(func() {
		p.Cancel("cleanup")
		<-p.Done()
	})
	return p
}

// cancelLog records OnCancel calls.
type cancelLog struct {
	mu      sync.Mutex
	reasons []lifecycle.ExitReason
	at      []time.Time
}

func (c *cancelLog) record(reason lifecycle.ExitReason, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reasons = append(c.reasons, reason)
	c.at = append(c.at, at)
}

func (c *cancelLog) calls() []lifecycle.ExitReason {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]lifecycle.ExitReason(nil), c.reasons...)
}

func TestParseProcStart(t *testing.T) {
	t.Parallel()
	// Fields 3..22 of a real line; starttime is the last one here.
	tail := " S 1 120 120 0 -1 4194560 93 0 0 0 0 0 0 0 20 0 1 0 987654"
	tests := []struct {
		name  string
		data  string
		state byte
		start uint64
		ok    bool
	}{
		{"plain", "123 (sleep)" + tail + " 4096 1\n", 'S', 987654, true},
		{"comm with parens and spaces", "123 (a) b (c)" + tail, 'S', 987654, true},
		{"zombie", "123 (sh) Z" + tail[2:], 'Z', 987654, true},
		{"truncated before starttime", "123 (sleep) S 1 120 120 0 -1", 0, 0, false},
		{"no comm", "garbage", 0, 0, false},
		{"bad starttime", "123 (x)" + strings.Replace(tail, "987654", "soon", 1), 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseProcStart([]byte(tt.data))
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok %v", err, tt.ok)
			}
			if got.state != tt.state || got.startTime != tt.start {
				t.Fatalf("got (%q, %d), want (%q, %d)", got.state, got.startTime, tt.state, tt.start)
			}
		})
	}
}

// TestIdentityCheck: only the very process that was identified counts as
// running; a pid that is free, reused, a zombie, or from another boot does
// not.
func TestIdentityCheck(t *testing.T) {
	t.Parallel()
	self, err := identify(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}

	// A zombie: a child that exited and is not reaped yet.
	zcmd := exec.Command("true")
	if err := zcmd.Start(); err != nil {
		t.Fatal(err)
	}
	zombie, err := identify(zcmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "child to become a zombie", func() bool {
		st, err := readProcStart(zombie.PID)
		return err == nil && st.state == 'Z'
	})
	defer zcmd.Wait()

	// A pid that is surely free: above the kernel's maximum.
	free := self
	free.PID = 1 << 30

	reused := self
	reused.StartTime++
	otherBoot := self
	otherBoot.BootID = "not-this-boot"

	tests := []struct {
		name string
		id   Identity
		want error // nil: running
		says string
	}{
		{"running", self, nil, ""},
		{"pid reused (start time differs)", reused, ErrVanished, "belongs to another process"},
		{"pid free", free, ErrVanished, "is gone"},
		{"zombie", zombie, ErrVanished, "has exited"},
		{"other boot", otherBoot, ErrRebooted, "not-this-boot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gone, err := tt.id.check()
			if err != nil {
				t.Fatalf("check: %v", err)
			}
			if tt.want == nil {
				if gone != nil {
					t.Fatalf("gone = %v, want running", gone)
				}
				return
			}
			if !errors.Is(gone, tt.want) || !strings.Contains(gone.Error(), tt.says) {
				t.Fatalf("gone = %v, want %v saying %q", gone, tt.want, tt.says)
			}
		})
	}
}

// TestAdoptWatchesToExit: an adopted job is followed until it exits, and
// its exit status, recorded by its supervisor, is reported although the
// adopter is not its parent.
func TestAdoptWatchesToExit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		run  string
		end  func(dir string) error
		code int // -1: killed by signal
		sig  string
	}{
		{
			name: "exit code",
			run:  "echo > ready; while [ ! -e go ]; do sleep 0.01; done; exit 7",
			end:  func(dir string) error { return os.WriteFile(filepath.Join(dir, "go"), nil, 0o600) },
			code: 7,
		},
		{
			name: "killed by a signal",
			run:  "echo $$ > pid; echo > ready; exec sleep 30",
			end: func(dir string) error {
				data, err := os.ReadFile(filepath.Join(dir, "pid"))
				if err != nil {
					return err
				}
				var pid int
				if _, err := fmt.Sscan(string(data), &pid); err != nil {
					return err
				}
				return unix.Kill(pid, unix.SIGUSR1)
			},
			code: -1,
			sig:  "SIGUSR1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			o := startOrphan(t, orphanSpec{JobDir: dir, Run: tt.run})
			waitFor(t, "job ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
			p := adopt(t, Adoption{JobID: "j", Identity: o.Identity, StatusFile: o.StatusFile}, nil)
			select {
			case <-p.Done():
				t.Fatalf("adopted job reported done while it runs: %+v", p.Result())
			case <-time.After(50 * time.Millisecond):
			}
			if err := tt.end(dir); err != nil {
				t.Fatal(err)
			}
			res := waitDone(t, p)
			if res.Err != nil || res.Reason != "" || res.Signal != tt.sig || res.EndedAt.IsZero() {
				t.Fatalf("result = %+v", res)
			}
			if tt.code >= 0 && (res.ExitCode == nil || *res.ExitCode != tt.code) {
				t.Fatalf("exit code = %s, want %d", exitCode(res), tt.code)
			}
			if tt.code < 0 && res.ExitCode != nil {
				t.Fatalf("exit code %d for a job killed by a signal", *res.ExitCode)
			}
		})
	}
}

// TestAdoptCancel: cancel reaches an adopted job's group and escalates to
// SIGKILL after the grace, as for a job the agent started.
func TestAdoptCancel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		run       string
		sig       string
		escalates bool
	}{
		{"obeys SIGTERM", "echo > ready; exec sleep 30", "SIGTERM", false},
		{"ignores SIGTERM", "trap '' TERM; echo > ready; while :; do sleep 0.01; done", "SIGKILL", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			o := startOrphan(t, orphanSpec{JobDir: dir, Run: tt.run})
			waitFor(t, "job ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
			rec, cancels := &recorder{}, &cancelLog{}
			p := adopt(t, Adoption{Identity: o.Identity, StatusFile: o.StatusFile,
				KillGrace: 200 * time.Millisecond, OnCancel: cancels.record}, rec)
			p.Cancel(lifecycle.ReasonCancelled)
			res := waitDone(t, p)
			if res.Signal != tt.sig || res.Reason != lifecycle.ReasonCancelled || res.ExitCode != nil {
				t.Fatalf("result = %+v, want %s, cancelled", res, tt.sig)
			}
			if _, ok := rec.find(lifecycle.EventKillEscalated); ok != tt.escalates {
				t.Fatalf("kill escalated = %v, want %v (events %v)", ok, tt.escalates, rec.kinds())
			}
			if got := cancels.calls(); len(got) != 1 || got[0] != lifecycle.ReasonCancelled {
				t.Fatalf("OnCancel calls = %v, want one with %q", got, lifecycle.ReasonCancelled)
			}
			waitGone(t, o.Identity)
			if live := liveGroupMembers(o.Identity.PID); len(live) > 0 {
				t.Fatalf("group members left after cancel: %v", live)
			}
		})
	}
}

// TestAdoptFinishesCancelInProgress: a cancel sent before the agent
// restarted is not sent again; SIGKILL follows at the old deadline.
func TestAdoptFinishesCancelInProgress(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	o := startOrphan(t, orphanSpec{JobDir: dir, Run: "trap '' TERM; echo > ready; while :; do sleep 0.01; done"})
	waitFor(t, "job ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	rec, cancels := &recorder{}, &cancelLog{}
	began := time.Now()
	p := adopt(t, Adoption{Identity: o.Identity, StatusFile: o.StatusFile, KillGrace: time.Hour,
		CancelReason: lifecycle.ReasonMaxDuration, CancelAt: time.Now().Add(-time.Hour), OnCancel: cancels.record}, rec)
	res := waitDone(t, p)
	if elapsed := time.Since(began); elapsed > 5*time.Second {
		t.Fatalf("took %s: the overdue SIGKILL was not sent at once", elapsed)
	}
	if res.Signal != "SIGKILL" || res.Reason != lifecycle.ReasonMaxDuration {
		t.Fatalf("result = %+v, want SIGKILL, %s", res, lifecycle.ReasonMaxDuration)
	}
	if _, ok := rec.find(lifecycle.EventKillEscalated); !ok {
		t.Fatalf("no escalation event: %v", rec.kinds())
	}
	if got := cancels.calls(); len(got) != 0 {
		t.Fatalf("OnCancel called %v for a cancel already persisted", got)
	}
}

// TestAdoptDeadline: max_duration still applies to an adopted job.
func TestAdoptDeadline(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	o := startOrphan(t, orphanSpec{JobDir: dir, Run: "echo > ready; exec sleep 30"})
	waitFor(t, "job ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	cancels := &cancelLog{}
	p := adopt(t, Adoption{Identity: o.Identity, StatusFile: o.StatusFile,
		Deadline: time.Now().Add(100 * time.Millisecond), OnCancel: cancels.record}, nil)
	res := waitDone(t, p)
	if res.Signal != "SIGTERM" || res.Reason != lifecycle.ReasonMaxDuration {
		t.Fatalf("result = %+v, want SIGTERM, %s", res, lifecycle.ReasonMaxDuration)
	}
	if got := cancels.calls(); len(got) != 1 || got[0] != lifecycle.ReasonMaxDuration {
		t.Fatalf("OnCancel calls = %v", got)
	}
}

// TestAdoptEndedWhileDown: a job that is not running any more at adoption
// is reported at once: with its recorded status if there is one, and
// otherwise with an error saying the status is unknown, never as a
// success and never by signalling whatever has its pid now.
func TestAdoptEndedWhileDown(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// run is the job; prepare ends it (or not) and returns the
		// Identity to adopt.
		run     string
		prepare func(t *testing.T, o orphan) Identity
		code    int // -1: none
		wantErr error
		running bool // the process must still run afterwards
	}{
		{
			name:    "exit recorded",
			run:     "exit 3",
			prepare: func(t *testing.T, o orphan) Identity { waitGone(t, o.Identity); return o.Identity },
			code:    3,
		},
		{
			name: "vanished with its supervisor",
			run:  "echo > ready; exec sleep 30",
			prepare: func(t *testing.T, o orphan) Identity {
				if err := unix.Kill(-o.Identity.PID, unix.SIGKILL); err != nil {
					t.Fatal(err)
				}
				waitGone(t, o.Identity)
				return o.Identity
			},
			code:    -1,
			wantErr: ErrVanished,
		},
		{
			name: "pid now someone else's",
			run:  "echo > ready; exec sleep 30",
			prepare: func(t *testing.T, o orphan) Identity {
				id := o.Identity
				id.StartTime-- // the job we knew started earlier: this one is another process
				return id
			},
			code:    -1,
			wantErr: ErrVanished,
			running: true,
		},
		{
			name: "host rebooted",
			run:  "echo > ready; exec sleep 30",
			prepare: func(t *testing.T, o orphan) Identity {
				id := o.Identity
				id.BootID = "an-earlier-boot"
				return id
			},
			code:    -1,
			wantErr: ErrRebooted,
			running: true,
		},
		{
			name: "exit recorded before a reboot",
			run:  "exit 4",
			prepare: func(t *testing.T, o orphan) Identity {
				waitGone(t, o.Identity)
				id := o.Identity
				id.BootID = "an-earlier-boot"
				return id
			},
			code: 4,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			o := startOrphan(t, orphanSpec{JobDir: dir, Run: tt.run})
			if strings.Contains(tt.run, "ready") {
				waitFor(t, "job ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
			}
			id := tt.prepare(t, o)
			p, err := Adopt(Adoption{Identity: id, StatusFile: o.StatusFile, KillGrace: 50 * time.Millisecond}, nil)
			if err != nil {
				t.Fatalf("Adopt: %v", err)
			}
			select {
			case <-p.Done():
			default:
				t.Fatal("a job that is not running was adopted as running")
			}
			p.Cancel("") // must not signal anyone
			res := p.Result()
			if !errors.Is(res.Err, tt.wantErr) || (tt.wantErr == nil && res.Err != nil) {
				t.Fatalf("err = %v, want %v", res.Err, tt.wantErr)
			}
			switch {
			case tt.code >= 0 && (res.ExitCode == nil || *res.ExitCode != tt.code):
				t.Fatalf("exit code = %s, want %d", exitCode(res), tt.code)
			case tt.code < 0 && (res.ExitCode != nil || res.Signal != ""):
				t.Fatalf("result = %+v: an unknown status must not look like a known one", res)
			}
			if tt.running {
				time.Sleep(100 * time.Millisecond) // a stray signal would land by now
				if gone, err := o.Identity.check(); gone != nil || err != nil {
					t.Fatalf("the process that now has the pid was harmed: %v %v", gone, err)
				}
			}
		})
	}
}

func TestAdoptInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		a    Adoption
	}{
		{"no pid", Adoption{StatusFile: "x"}},
		{"no status file", Adoption{Identity: Identity{PID: 1, StartTime: 1, BootID: "b"}}},
		{"negative grace", Adoption{Identity: Identity{PID: 1}, StatusFile: "x", KillGrace: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Adopt(tt.a, nil); !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("err = %v, want %v", err, ErrInvalidSpec)
			}
		})
	}
}

// TestSupervisor runs the supervisor directly: it mirrors the job's end in
// its own exit code and records it in the status file.
func TestSupervisor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		argv     []string
		exitCode int
		want     statusRecord
	}{
		{"exit code", []string{"/bin/sh", "-c", "exit 4"}, 4, statusRecord{ExitCode: ptr(4)}},
		{"signal", []string{"/bin/sh", "-c", "kill -TERM $$"}, 128 + 15, statusRecord{Signal: "SIGTERM"}},
		{"cannot start", []string{"/nonexistent/shell"}, supervisorFailed, statusRecord{Error: "cannot start /nonexistent/shell"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			status := filepath.Join(t.TempDir(), "status.json")
			cmd := exec.Command(os.Args[0], append([]string{supervisorArg, status, noReadyFD}, tt.argv...)...)
			err := cmd.Run()
			var exitErr *exec.ExitError
			if got := 0; err != nil && !errors.As(err, &exitErr) {
				t.Fatal(err)
			} else if err != nil {
				got = exitErr.ExitCode()
				if got != tt.exitCode {
					t.Fatalf("supervisor exit code %d, want %d", got, tt.exitCode)
				}
			} else if tt.exitCode != 0 {
				t.Fatalf("supervisor exit code 0, want %d", tt.exitCode)
			}
			st, err := readStatus(status)
			if err != nil {
				t.Fatal(err)
			}
			if st.Version != statusVersion || st.EndedAt.IsZero() || st.Signal != tt.want.Signal ||
				!strings.HasPrefix(st.Error, tt.want.Error) || (st.ExitCode == nil) != (tt.want.ExitCode == nil) ||
				(st.ExitCode != nil && *st.ExitCode != *tt.want.ExitCode) {
				t.Fatalf("status = %+v, want %+v", st, tt.want)
			}
		})
	}
}

// TestStaleStatusFileIgnored: a status file left by an earlier run in the
// same place is removed at Start, so a job whose supervisor dies before
// writing cannot inherit an old exit status.
func TestStaleStatusFileIgnored(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	status := filepath.Join(dir, "custom-status.json")
	if err := writeStatus(status, statusRecord{Version: 1, ExitCode: ptr(0), EndedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	p := start(t, Spec{JobDir: dir, StatusFile: status, Run: "echo > ready; exec sleep 30"}, nil)
	waitFor(t, "job ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	if p.StatusFile() != status {
		t.Fatalf("StatusFile() = %q, want %q", p.StatusFile(), status)
	}
	if err := unix.Kill(-p.PID(), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	res := waitDone(t, p)
	if res.Signal != "SIGKILL" || res.ExitCode != nil {
		t.Fatalf("result = %+v (exit %s), want SIGKILL: the stale status was used", res, exitCode(res))
	}
}

// TestOnCancelBeforeDone: OnCancel is called once, with the reason, before
// Done closes.
func TestOnCancelBeforeDone(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cancels := &cancelLog{}
	p := start(t, Spec{JobDir: dir, Run: "echo > ready; exec sleep 30", OnCancel: cancels.record}, nil)
	waitFor(t, "job ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	before := time.Now()
	p.Cancel(lifecycle.ReasonMaxDuration)
	p.Cancel(lifecycle.ReasonCancelled)
	<-p.Done()
	cancels.mu.Lock()
	defer cancels.mu.Unlock()
	if len(cancels.reasons) != 1 || cancels.reasons[0] != lifecycle.ReasonMaxDuration || cancels.at[0].Before(before) {
		t.Fatalf("OnCancel calls = %v at %v", cancels.reasons, cancels.at)
	}
}

func ptr[T any](v T) *T { return &v }

// TestAdoptWithoutPidfd: on kernels without pidfd_open the exit of an
// adopted job is found by polling /proc.
func TestAdoptWithoutPidfd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	o := startOrphan(t, orphanSpec{JobDir: dir, Run: "echo > ready; while [ ! -e go ]; do sleep 0.01; done; exit 5"})
	waitFor(t, "job ready", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	p := newProcess(o.Identity, o.StatusFile, 0, nil, nil)
	go p.watchAdopted(nil)
	select {
	case <-p.Done():
		t.Fatalf("done while the job runs: %+v", p.Result())
	case <-time.After(3 * adoptPollInterval):
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	res := waitDone(t, p)
	if res.ExitCode == nil || *res.ExitCode != 5 || res.Err != nil {
		t.Fatalf("result = %+v (exit %s), want exit 5", res, exitCode(res))
	}
}
