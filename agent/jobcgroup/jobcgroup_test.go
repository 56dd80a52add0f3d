package jobcgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testTimeout bounds every wait here; real waits are far shorter.
const testTimeout = 10 * time.Second

func TestParseMountinfo(t *testing.T) {
	for _, c := range []struct {
		name, in, want string
		ok             bool
	}{
		{"unified", "24 1 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n", "/sys/fs/cgroup", true},
		{"hybrid", "40 31 0:37 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n" +
			"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup/unified", true},
		{"escaped", `41 31 0:38 / /mnt/my\040cgroups rw - cgroup2 none rw` + "\n", "/mnt/my cgroups", true},
		{"v1 only", "40 31 0:37 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", "", false},
		{"garbage", "nothing to see\n - \n\n", "", false},
	} {
		got, ok := parseMountinfo([]byte(c.in))
		if got != c.want || ok != c.ok {
			t.Errorf("%s: got %q %v, want %q %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestParseCgroup(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"0::/\n", "/", true},
		{"12:memory:/x\n1:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n", "/system.slice/a.service", true},
		{"0::/gone (deleted)\n", "", false},
		{"4:memory:/x\n", "", false},
		{"0::relative\n", "", false},
		{"", "", false},
	} {
		got, ok := parseCgroup([]byte(c.in))
		if got != c.want || ok != c.ok {
			t.Errorf("%q: got %q %v, want %q %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func TestSanitize(t *testing.T) {
	if got := sanitize("gpu-1.example_a"); got != "gpu-1.example_a" {
		t.Errorf("a safe name changed: %q", got)
	}
	a, b := sanitize("a/b"), sanitize("a b")
	if a == b || !strings.HasPrefix(a, "a_b_") || strings.ContainsAny(a, "/ ") {
		t.Errorf("unsafe names: %q %q", a, b)
	}
	long := sanitize(strings.Repeat("x", 300))
	if len(long) > maxNameBytes+9 || long == sanitize(strings.Repeat("x", 301)) {
		t.Errorf("long name %q", long)
	}
	if e := sanitize(""); e == "" || e == "." {
		t.Errorf("empty name %q", e)
	}
	if sanitize("..") == ".." {
		t.Error(`".." kept`)
	}
}

// writeTemp writes a file for Options.Mountinfo or SelfCgroup.
func writeTemp(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOpenUnavailable: every reason cgroups cannot be used is an error
// wrapping ErrUnavailable, never a panic or another kind of error.
func TestOpenUnavailable(t *testing.T) {
	noV2 := writeTemp(t, "mi", "40 31 0:37 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
	v2 := writeTemp(t, "mi", "41 31 0:38 / "+t.TempDir()+" rw - cgroup2 cgroup2 rw\n")
	root := writeTemp(t, "cg", "0::/\n")
	for _, c := range []struct {
		name string
		o    Options
		want string
	}{
		{"no mountinfo", Options{Mountinfo: "/nonexistent/mountinfo"}, "no such file"},
		{"no cgroup2", Options{Mountinfo: noV2, SelfCgroup: root}, "no cgroup2"},
		{"no self cgroup", Options{Mountinfo: v2, SelfCgroup: "/nonexistent/cgroup"}, "no such file"},
		{"v1 only process", Options{Mountinfo: v2, SelfCgroup: writeTemp(t, "cg", "4:memory:/\n")}, "no cgroup v2"},
		{"not delegated", Options{Mountinfo: v2, SelfCgroup: writeTemp(t, "cg", "0::/user.slice/session-1.scope\n")}, "not delegated"},
		// A plain directory is not a cgroup: mkdir works, no control files.
		{"not a cgroup", Options{NodeID: "n", Mountinfo: v2, SelfCgroup: root}, "is not a cgroup"},
		{"too long", Options{Mountinfo: writeTemp(t, "mi", strings.Repeat("x", maxMountinfoBytes+1))}, "longer than"},
	} {
		m, err := Open(c.o)
		if m != nil || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Open = %v, %v; want ErrUnavailable with %q", c.name, m, err, c.want)
		}
	}
}

// realManager opens a Manager on the host's cgroup2 hierarchy for a node
// named after the test, or skips where that cannot work.
func realManager(t *testing.T, o Options) *Manager {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("job cgroups need root (mkdir in the cgroup2 hierarchy)")
	}
	if o.NodeID == "" {
		o.NodeID = fmt.Sprintf("test-%s-%d", t.Name(), os.Getpid())
	}
	m, err := Open(o)
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("no writable cgroup2 hierarchy here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := m.Sweep(nil, time.Now().Add(testTimeout)); err != nil {
			t.Error(err)
		}
		if err := unix.Rmdir(m.Dir()); err != nil {
			t.Errorf("remove %s: %v", m.Dir(), err)
		}
	})
	return m
}

// startIn starts sh -c script directly in group g and returns it.
func startIn(t *testing.T, g *Group, script string) *exec.Cmd {
	t.Helper()
	dir, err := g.Create(time.Now().Add(testTimeout))
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// gone reports whether pid no longer runs (a zombie has ended).
func gone(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(data), ')')
	return i < 0 || i+2 >= len(data) || data[i+2] == 'Z' || data[i+2] == 'X'
}

// waitFor polls cond until it holds or testTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readPIDFile waits for a pid a process writes to path.
func readPIDFile(t *testing.T, path string) int {
	t.Helper()
	var pid int
	waitFor(t, "pid file "+path, func() bool {
		data, err := os.ReadFile(path)
		if err != nil || !strings.HasSuffix(string(data), "\n") {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
		return err == nil
	})
	return pid
}

// TestGroupLifecycle: a process started into a group, and one it double
// forks out of its session, are both found in the group and attributed to
// it by Owner; Remove kills both and removes the group.
func TestGroupLifecycle(t *testing.T) {
	m := realManager(t, Options{})
	if !strings.HasPrefix(m.Dir(), "/") || !strings.HasSuffix(m.Path(), "/"+jobsPrefix+sanitize(fmt.Sprintf("test-%s-%d", t.Name(), os.Getpid()))) {
		t.Fatalf("dir %s path %s", m.Dir(), m.Path())
	}
	g := m.Group("job/1", "1700000000000")
	if g.Name() != GroupName("job/1", "1700000000000") || filepath.Dir(g.Dir()) != m.Dir() {
		t.Fatalf("group %s at %s", g.Name(), g.Dir())
	}
	pidFile := filepath.Join(t.TempDir(), "escapee")
	cmd := startIn(t, g, `(setsid sh -c 'echo $$ > `+pidFile+`.tmp; mv `+pidFile+`.tmp `+pidFile+`; exec sleep 300' &); exec sleep 300`)
	escapee := readPIDFile(t, pidFile)
	if sid, _ := unix.Getsid(escapee); sid == cmd.Process.Pid {
		t.Fatalf("the escapee %d did not leave the session", escapee)
	}
	for _, pid := range []int{cmd.Process.Pid, escapee} {
		if name, ok := m.Owner(pid); !ok || name != g.Name() {
			t.Errorf("Owner(%d) = %q %v, want %q", pid, name, ok, g.Name())
		}
	}
	if _, ok := m.Owner(os.Getpid()); ok {
		t.Error("the test process is attributed to a job group")
	}
	if _, ok := m.Owner(1 << 30); ok {
		t.Error("a pid that does not exist is attributed")
	}
	procs, err := g.Procs()
	if err != nil || !slices.Contains(procs, cmd.Process.Pid) || !slices.Contains(procs, escapee) {
		t.Fatalf("Procs = %v, %v", procs, err)
	}
	if pop, err := g.Populated(); !pop || err != nil {
		t.Fatalf("Populated = %v, %v", pop, err)
	}
	if err := g.Remove(time.Now().Add(testTimeout)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the escapee to die", func() bool { return gone(escapee) })
	if _, err := os.Stat(g.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("group still there: %v", err)
	}
	// Gone already: nothing to do, and no error.
	if err := g.Remove(time.Now()); err != nil {
		t.Errorf("Remove of a removed group: %v", err)
	}
	if err := g.Kill(); err != nil {
		t.Errorf("Kill of a removed group: %v", err)
	}
	if pop, err := g.Populated(); pop || err != nil {
		t.Errorf("Populated of a removed group = %v, %v", pop, err)
	}
	if pids, err := g.Procs(); len(pids) != 0 || err != nil {
		t.Errorf("Procs of a removed group = %v, %v", pids, err)
	}
}

// TestCreateReplacesLeftover: a group left over from an earlier run with
// the same name is emptied and made anew.
func TestCreateReplacesLeftover(t *testing.T) {
	m := realManager(t, Options{})
	g := m.Group("j", "1")
	old := startIn(t, g, "exec sleep 300")
	dir, err := g.Create(time.Now().Add(testTimeout))
	if err != nil {
		t.Fatal(err)
	}
	_ = dir.Close()
	waitFor(t, "the leftover to die", func() bool { return gone(old.Process.Pid) })
	if pids, err := g.Procs(); len(pids) != 0 || err != nil {
		t.Errorf("new group holds %v, %v", pids, err)
	}
}

// TestKillWithoutCgroupKill: where the kernel has no cgroup.kill (before
// 5.14), each pid of cgroup.procs gets SIGKILL. A plain directory with a
// cgroup.procs file plays such a group.
func TestKillWithoutCgroupKill(t *testing.T) {
	sleeper := exec.Command("sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })
	fake := &Group{name: "fake", dir: t.TempDir()}
	if err := os.WriteFile(filepath.Join(fake.dir, "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := fake.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := sleeper.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("the process was not killed: %v", err)
	}
	// A pid that is gone by now is no error either.
	if err := fake.Kill(); err != nil {
		t.Errorf("Kill of a dead pid: %v", err)
	}
	// cgroup.events missing or without its populated line.
	if pop, err := fake.Populated(); pop || err != nil {
		t.Errorf("Populated without cgroup.events = %v, %v", pop, err)
	}
	if err := os.WriteFile(filepath.Join(fake.dir, "cgroup.events"), []byte("frozen 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := fake.Populated(); err == nil || !strings.Contains(err.Error(), "no populated line") {
		t.Errorf("Populated without a populated line: %v", err)
	}
	if err := fake.Remove(time.Now()); err == nil {
		t.Error("Remove of a group whose cgroup.events cannot be read succeeded")
	}
	if err := os.WriteFile(filepath.Join(fake.dir, "cgroup.events"), []byte("populated 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := fake.Remove(time.Now()); err == nil || !strings.Contains(err.Error(), "still there after SIGKILL") {
		t.Errorf("Remove of a group that stays populated past its deadline: %v", err)
	}
}

// TestSweep removes the groups not kept, with what runs in them, and
// leaves the kept ones alone.
func TestSweep(t *testing.T) {
	m := realManager(t, Options{})
	keep, stale := m.Group("running", "1"), m.Group("ended", "1")
	kept := startIn(t, keep, "exec sleep 300")
	left := startIn(t, stale, "exec sleep 300")
	// Not a job group: never touched.
	other := filepath.Join(m.Dir(), "not-a-job")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	defer unix.Rmdir(other)
	removed, err := m.Sweep(map[string]bool{keep.Name(): true}, time.Now().Add(testTimeout))
	if err != nil || !slices.Equal(removed, []string{stale.Name()}) {
		t.Fatalf("Sweep = %v, %v", removed, err)
	}
	waitFor(t, "the leftover to die", func() bool { return gone(left.Process.Pid) })
	if gone(kept.Process.Pid) {
		t.Error("a kept group's process was killed")
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a directory that is no job group: %v", err)
	}
}

// TestParentOption: an explicit parent is used as is, and the agent's
// directory of job groups is made under it.
func TestParentOption(t *testing.T) {
	parent := fmt.Sprintf("/gantry-test-parent-%d", os.Getpid())
	var m *Manager
	t.Cleanup(func() {
		// After realManager's own clean-up, which empties it.
		if m != nil {
			if err := unix.Rmdir(filepath.Dir(m.Dir())); err != nil {
				t.Error(err)
			}
		}
	})
	m = realManager(t, Options{Parent: parent + "/"})
	if filepath.Dir(m.Path()) != parent || m.Moved() {
		t.Fatalf("path %s, moved %v", m.Path(), m.Moved())
	}
}

// TestDelegatedMovesAgentIntoLeaf: in a cgroup systemd delegated to it,
// the agent moves itself into its own leaf and makes the job groups beside
// it, so the delegated cgroup holds no process (cgroup v2's
// no-internal-processes rule). The test process plays the agent.
func TestDelegatedMovesAgentIntoLeaf(t *testing.T) {
	probe := realManager(t, Options{})
	mount := strings.TrimSuffix(probe.Dir(), filepath.FromSlash(probe.Path()))
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	own, _ := parseCgroup(data)
	unit := filepath.Join(mount, own, fmt.Sprintf("gantry-test-unit-%d", os.Getpid()))
	if err := os.Mkdir(unit, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(unit, "trusted.delegate", []byte("1"), 0); err != nil {
		_ = unix.Rmdir(unit)
		t.Skipf("cannot mark a cgroup delegated here: %v", err)
	}
	ownDir := filepath.Join(mount, own)
	t.Cleanup(func() {
		// Back where the test started, then the unit's groups go.
		if err := writeFile(filepath.Join(ownDir, "cgroup.procs"), strconv.Itoa(os.Getpid())); err != nil {
			t.Errorf("move back: %v", err)
		}
		for _, d := range []string{filepath.Join(unit, AgentLeaf), unit} {
			if err := unix.Rmdir(d); err != nil {
				t.Errorf("remove %s: %v", d, err)
			}
		}
	})
	if err := writeFile(filepath.Join(unit, "cgroup.procs"), strconv.Itoa(os.Getpid())); err != nil {
		t.Fatal(err)
	}
	m := realManager(t, Options{NodeID: "deleg", Instance: "/var/lib/a"})
	unitRel := strings.TrimPrefix(unit, mount)
	if !m.Moved() || !strings.HasPrefix(m.Path(), unitRel+"/"+jobsPrefix+"deleg-") {
		t.Fatalf("moved %v, path %s", m.Moved(), m.Path())
	}
	data, err = os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if now, _ := parseCgroup(data); now != unitRel+"/"+AgentLeaf {
		t.Fatalf("the agent is in %s", now)
	}
	procs, err := os.ReadFile(filepath.Join(unit, "cgroup.procs"))
	if err != nil || len(strings.TrimSpace(string(procs))) != 0 {
		t.Fatalf("the delegated cgroup holds %q, %v", procs, err)
	}
	// An agent started again in its leaf (exec) keeps the same layout.
	again, err := Open(Options{NodeID: "deleg", Instance: "/var/lib/a"})
	if err != nil || again.Path() != m.Path() || again.Moved() {
		t.Fatalf("reopen: %+v, %v", again, err)
	}
}

// TestInstanceSeparates: two agents with one node id on one host (test
// runs side by side) get directories of their own; one agent gets the
// same directory at every start.
func TestInstanceSeparates(t *testing.T) {
	node := fmt.Sprintf("twin-%d", os.Getpid())
	a := realManager(t, Options{NodeID: node, Instance: "/data/a"})
	b := realManager(t, Options{NodeID: node, Instance: "/data/b"})
	if a.Dir() == b.Dir() {
		t.Fatalf("both agents use %s", a.Dir())
	}
	again, err := Open(Options{NodeID: node, Instance: "/data/a"})
	if err != nil || again.Dir() != a.Dir() {
		t.Fatalf("restart: %v, %v", again, err)
	}
}

// TestInstanceSpellingsAgree: one data directory spelled two ways (a
// trailing slash, a doubled one) is one agent: a restarted agent must
// find the directory, and the jobs' groups, its predecessor made.
func TestInstanceSpellingsAgree(t *testing.T) {
	mount := t.TempDir()
	mi := writeTemp(t, "mi", "41 31 0:38 / "+mount+" rw - cgroup2 cgroup2 rw\n")
	root := writeTemp(t, "cg", "0::/\n")
	dirOf := func(instance string) string {
		// A plain directory is not a cgroup, and the error names the
		// directory Open chose.
		_, err := Open(Options{NodeID: "n", Instance: instance, Mountinfo: mi, SelfCgroup: root})
		if err == nil {
			t.Fatal("a plain directory taken for a cgroup")
		}
		return strings.Fields(strings.TrimPrefix(err.Error(), ErrUnavailable.Error()+": "))[0]
	}
	a, b, c := dirOf("/data/a"), dirOf("/data/a/"), dirOf("/data//a")
	if a != b || a != c {
		t.Errorf("directories %s, %s and %s for one data directory", a, b, c)
	}
}
