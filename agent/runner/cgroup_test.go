package runner

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gantry-ml/gantry/agent/jobcgroup"
	"github.com/gantry-ml/gantry/agent/jobcgroup/cgrouptest"
	"github.com/gantry-ml/gantry/lifecycle"
)

// escape is shell that daemonizes a sleep out of the job: a double fork
// (the subshell exits, so init adopts it) and setsid (a session and process
// group of its own), writing its pid to esc.pid. Cancel and the end of the
// job signal the job's process group, which it is no longer in.
const escape = `(setsid sh -c 'echo $$ > esc.tmp; mv esc.tmp esc.pid; exec sleep 300' &)`

// testCgroups opens job cgroups for this test, or skips where they cannot
// be used (not root, no writable cgroup2 hierarchy).
func testCgroups(t *testing.T) *jobcgroup.Manager {
	t.Helper()
	return cgrouptest.Open(t, "runner")
}

// escapee waits for the daemonized sleep's pid and checks that it left the
// job's process group and session, and that it is killed at cleanup.
func escapee(t *testing.T, dir string, job int) int {
	t.Helper()
	pidFile := filepath.Join(dir, "esc.pid")
	waitFor(t, "the escapee to start", func() bool { return fileExists(pidFile) })
	pid := readPID(t, pidFile)
	t.Cleanup(func() { _ = unix.Kill(pid, unix.SIGKILL) })
	if _, pgrp, ok := procStat(pid); !ok || pgrp == job {
		t.Fatalf("escapee %d is still in the job's group %d", pid, job)
	}
	if sid, err := unix.Getsid(pid); err != nil || sid == job {
		t.Fatalf("escapee %d is still in the job's session: %d, %v", pid, sid, err)
	}
	return pid
}

// checkCgroupGone checks that the job's group was removed and that the
// escapee was named in an event.
func checkEscapeeKilled(t *testing.T, g *jobcgroup.Group, rec *recorder, esc int) {
	t.Helper()
	// Done waits for the group to empty: no polling here.
	if !processGone(esc) {
		t.Fatalf("escapee %d survived its job", esc)
	}
	if _, err := os.Stat(g.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the job's cgroup is still there: %v", err)
	}
	found := false
	rec.mu.Lock()
	for _, ev := range rec.events {
		if ev.Kind == lifecycle.EventOrphansKilled && strings.Contains(ev.Message, "left the job's process group but not its cgroup") &&
			strings.Contains(ev.Message, strconv.Itoa(esc)) {
			found = true
		}
	}
	rec.mu.Unlock()
	if !found {
		t.Fatalf("no event names escapee %d: %+v", esc, rec.events)
	}
}

// TestCgroupKillsEscapeeOnCancel: a process the job daemonized out of its
// session is killed on cancel, after the group's SIGTERM and grace.
func TestCgroupKillsEscapeeOnCancel(t *testing.T) {
	m := testCgroups(t)
	t.Parallel()
	dir := t.TempDir()
	g := m.Group("cancel", "1")
	rec := &recorder{}
	p := start(t, Spec{JobDir: dir, Run: escape + "; exec sleep 300", KillGrace: 200 * time.Millisecond, Cgroup: g}, rec)
	if p.Cgroup() != g {
		t.Fatal("the job runs without its cgroup")
	}
	// In the group from its first instruction: clone3 put it there.
	if name, ok := m.Owner(p.PID()); !ok || name != g.Name() {
		t.Fatalf("supervisor in %q %v, want %q", name, ok, g.Name())
	}
	esc := escapee(t, dir, p.PID())
	if name, ok := m.Owner(esc); !ok || name != g.Name() {
		t.Fatalf("escapee in %q %v, want %q", name, ok, g.Name())
	}
	p.Cancel("")
	res := waitDone(t, p)
	if res.Reason != lifecycle.ReasonCancelled {
		t.Fatalf("reason = %q", res.Reason)
	}
	checkEscapeeKilled(t, g, rec, esc)
}

// TestCgroupKillsEscapeeAtJobEnd: when the job ends by itself, what it
// daemonized does not outlive it.
func TestCgroupKillsEscapeeAtJobEnd(t *testing.T) {
	m := testCgroups(t)
	t.Parallel()
	dir := t.TempDir()
	g := m.Group("end", "1")
	rec := &recorder{}
	p := start(t, Spec{JobDir: dir, Run: escape + "; while [ ! -e esc.pid ]; do sleep 0.01; done; exit 0", Cgroup: g}, rec)
	esc := readPIDWhenThere(t, filepath.Join(dir, "esc.pid"))
	res := waitDone(t, p)
	if res.ExitCode == nil || *res.ExitCode != 0 {
		t.Fatalf("result %+v", res)
	}
	checkEscapeeKilled(t, g, rec, esc)
}

// readPIDWhenThere reads a pid file the job has written by the time it
// ends, killing that pid at cleanup.
func readPIDWhenThere(t *testing.T, path string) int {
	t.Helper()
	waitFor(t, path, func() bool { return fileExists(path) })
	pid := readPID(t, path)
	t.Cleanup(func() { _ = unix.Kill(pid, unix.SIGKILL) })
	return pid
}

// TestEscapeeSurvivesWithoutCgroup is the control of the two tests above:
// without a cgroup the daemonized process outlives the job, so they test
// the cgroup and not something else that kills it.
func TestEscapeeSurvivesWithoutCgroup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := start(t, Spec{JobDir: dir, Run: escape + "; exec sleep 300", KillGrace: 200 * time.Millisecond}, nil)
	esc := escapee(t, dir, p.PID())
	p.Cancel("")
	waitDone(t, p)
	if processGone(esc) {
		t.Fatalf("escapee %d was killed without a cgroup: the cgroup tests prove nothing", esc)
	}
}

// TestCgroupFallback: a job whose cgroup cannot be made, or that cannot be
// started into it (an old kernel), runs without it and says so.
func TestCgroupFallback(t *testing.T) {
	m := testCgroups(t)
	t.Run("create fails", func(t *testing.T) {
		// A file where the directory of job groups should be.
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		checkFallback(t, jobcgroup.GroupAt(file, "blocked", "1"))
	})
	t.Run("clone into cgroup fails", func(t *testing.T) {
		// Not parallel: startCmd is the package's.
		saved := startCmd
		t.Cleanup(func() { startCmd = saved })
		startCmd = func(c *exec.Cmd) error {
			if c.SysProcAttr.UseCgroupFD {
				return syscall.ENOSYS
			}
			return saved(c)
		}
		g := m.Group("old-kernel", "1")
		checkFallback(t, g)
		if _, err := os.Stat(g.Dir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the unused group is still there: %v", err)
		}
	})
}

// checkFallback runs a job with group g, which cannot be used.
func checkFallback(t *testing.T, g *jobcgroup.Group) {
	t.Helper()
	dir := t.TempDir()
	rec := &recorder{}
	p := start(t, Spec{JobDir: dir, Run: "exit 7", Cgroup: g}, rec)
	if p.Cgroup() != nil {
		t.Error("Cgroup() names a group the job is not in")
	}
	res := waitDone(t, p)
	if res.ExitCode == nil || *res.ExitCode != 7 {
		t.Fatalf("result %+v", res)
	}
	ev, ok := rec.find(lifecycle.EventNoCgroup)
	if !ok || !strings.Contains(ev.Message, "runs without its own cgroup") {
		t.Fatalf("no %s event: %v", lifecycle.EventNoCgroup, rec.kinds())
	}
}

// TestAdoptedCgroup: an agent restarted while the job ran kills what the
// job daemonized, whether the job ends under it or ended while no agent
// watched.
func TestAdoptedCgroup(t *testing.T) {
	m := testCgroups(t)
	for _, c := range []struct {
		name, run string
		ended     bool
	}{
		{"ended while down", escape + "; while [ ! -e esc.pid ]; do sleep 0.01; done; exit 0", true},
		{"cancelled after adoption", escape + "; exec sleep 300", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			job := strings.ReplaceAll(c.name, " ", "-")
			o := startOrphan(t, orphanSpec{JobDir: dir, Run: c.run, CgroupDir: m.Dir(), CgroupJob: job})
			g := m.Group(job, "1")
			esc := readPIDWhenThere(t, filepath.Join(dir, "esc.pid"))
			if c.ended {
				waitGone(t, o.Identity)
			}
			if processGone(esc) {
				t.Fatal("the escapee died with the fake agent")
			}
			rec := &recorder{}
			p := adopt(t, Adoption{JobID: job, Identity: o.Identity, StatusFile: o.StatusFile,
				KillGrace: 200 * time.Millisecond, Cgroup: g}, rec)
			if !c.ended {
				p.Cancel("")
			}
			waitDone(t, p)
			checkEscapeeKilled(t, g, rec, esc)
		})
	}
}

// TestCgroupJobAsUserCannotLeave: a job that runs as an unprivileged user
// is started into its group all the same (the agent's credentials place
// it), and cannot move itself out: the groups are root's.
func TestCgroupJobAsUserCannotLeave(t *testing.T) {
	m := testCgroups(t)
	u, err := LookupUser("nobody")
	if err != nil {
		t.Fatal(err)
	}
	dir := userDir(t, u)
	g := m.Group("as-user", "1")
	// The root of the hierarchy is where a process would go to leave.
	root := strings.TrimSuffix(m.Dir(), m.Path())
	rec := &recorder{}
	p := start(t, Spec{JobDir: dir, User: u, Cgroup: g,
		Run: `echo $$ > ` + root + `/cgroup.procs && echo LEFT > left; echo $$ > mine.tmp; mv mine.tmp mine; exec sleep 300`}, rec)
	mine := readPIDWhenThere(t, filepath.Join(dir, "mine"))
	if fileExists(filepath.Join(dir, "left")) {
		t.Fatal("the job's user moved itself out of its cgroup")
	}
	if name, ok := m.Owner(mine); !ok || name != g.Name() {
		t.Fatalf("the job's shell is in %q %v, want %q", name, ok, g.Name())
	}
	p.Cancel("")
	waitDone(t, p)
	if !processGone(mine) {
		t.Fatal("the job survived its cancel")
	}
	if _, ok := rec.find(lifecycle.EventNoCgroup); ok {
		t.Fatal("the job ran without its cgroup")
	}
}
