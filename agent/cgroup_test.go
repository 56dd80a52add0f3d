package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gantry-ml/gantry/agent/gpu"
	"github.com/gantry-ml/gantry/agent/jobcgroup"
	"github.com/gantry-ml/gantry/agent/jobcgroup/cgrouptest"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// testJobCgroups opens job cgroups for this test's agent, or skips where
// they cannot be used (not root, no writable cgroup2 hierarchy).
func testJobCgroups(t *testing.T, a *Agent) *jobCgroups {
	t.Helper()
	cgrouptest.Skip(t, nil)
	c := openJobCgroups(Config{NodeID: fmt.Sprintf("agent-%s-%d", t.Name(), os.Getpid()), DataDir: a.cfg.DataDir},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if c == nil {
		_, err := jobcgroup.Open(jobcgroup.Options{NodeID: "probe"})
		cgrouptest.Skip(t, err)
		t.Fatal("job cgroups unavailable where they should work")
	}
	cgrouptest.Cleanup(t, c.m)
	a.cgroups = c
	return c
}

// startJobWithEscapee starts a job's main process (a session leader, as the
// runner's supervisor is), in group g when not nil, that daemonizes a sleep
// out of its session (double fork and setsid); it returns both pids.
func startJobWithEscapee(t *testing.T, g *jobcgroup.Group) (leader, escapee int) {
	t.Helper()
	cmd := exec.Command("sh", "-c", `(setsid sh -c 'echo $$; exec sleep 60' &); exec sleep 60`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if g != nil {
		dir, err := g.Create(time.Now().Add(10 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(dir.Fd())
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	escapee, err = strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Kill(escapee, unix.SIGKILL) })
	// It wrote its pid before exec: events name the command it runs.
	waitFor(t, "the escapee to exec sleep", func() bool {
		comm, err := os.ReadFile("/proc/" + strconv.Itoa(escapee) + "/comm")
		return err == nil && strings.TrimSpace(string(comm)) == "sleep"
	})
	if sid, err := unix.Getsid(escapee); err != nil || sid == cmd.Process.Pid {
		t.Fatalf("the escapee %d did not leave the job's session: %d, %v", escapee, sid, err)
	}
	return cmd.Process.Pid, escapee
}

// attributeEscapee runs the attribution of a job's escaped GPU process,
// with or without job cgroups, and returns the job's events by kind.
func attributeEscapee(t *testing.T, cgroups bool) (map[string][]string, int) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	started := 1700000000.25
	j := &job{a: a.Agent, id: "escaping", state: &gantrypb.AgentJob{JobId: "escaping", Gpus: []uint32{0}, StartedAt: started}}
	a.mu.Lock()
	a.jobs[j.id] = j
	a.mu.Unlock()
	var g *jobcgroup.Group
	if cgroups {
		testJobCgroups(t, a.Agent)
		g = a.cgroups.group(j, started)
	}
	leader, esc := startJobWithEscapee(t, g)
	j.state.Pid = int64(leader)
	j.publish()
	a.attributeProcesses([]gpu.Process{{GPU: 0, PID: uint32(esc), MemBytes: 2 << 30}})
	kinds := map[string][]string{}
	for _, e := range eventsOf(t, sp, j.id) {
		kinds[e.Kind] = append(kinds[e.Kind], e.Message)
	}
	return kinds, esc
}

// TestAttributionByCgroup: a GPU process the job daemonized out of its
// session is the job's by its cgroup: its memory is the job's, and it is
// not reported stray. Events still name the PID and the command.
func TestAttributionByCgroup(t *testing.T) {
	kinds, esc := attributeEscapee(t, true)
	if m := kinds[string(lifecycle.EventStrayGPUProcess)]; len(m) != 0 {
		t.Errorf("the job's own process reported stray: %q", m)
	}
	want := fmt.Sprintf("2.0 GiB of GPU memory on GPUs [0] (processes [%d])", esc)
	if m := kinds[string(lifecycle.EventGPUMemory)]; len(m) != 1 || !strings.Contains(m[0], want) {
		t.Errorf("gpu_memory events %q, want one with %q", m, want)
	}
}

// TestAttributionFallsBackToSession: without job cgroups the same process
// is attributed as before them, by session and ancestry: having left both,
// it is of no job, and reported stray with its PID and command.
func TestAttributionFallsBackToSession(t *testing.T) {
	kinds, esc := attributeEscapee(t, false)
	want := fmt.Sprintf("process %d (sleep) of no job uses 2.0 GiB on GPU 0", esc)
	if m := kinds[string(lifecycle.EventStrayGPUProcess)]; len(m) != 1 || !strings.Contains(m[0], want) {
		t.Errorf("stray events %q, want one with %q", m, want)
	}
}

// TestJobCgroupsConfig: off is off, and a parent names where the groups go.
func TestJobCgroupsConfig(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if c := openJobCgroups(Config{NodeID: "n", JobCgroups: JobCgroupsOff}, log); c != nil {
		t.Fatal("job cgroups on although off")
	}
	// Every method works on nil: the agent runs without cgroups.
	var c *jobCgroups
	if c.group(&job{id: "x"}, 1) != nil || func() bool { _, ok := c.owner(os.Getpid()); return ok }() {
		t.Fatal("nil job cgroups gave a group or an owner")
	}
	c.sweep(nil, log)
	if os.Geteuid() != 0 {
		t.Skip("a parent cgroup needs root")
	}
	parent := fmt.Sprintf("/gantry-agent-test-%d", os.Getpid())
	c = openJobCgroups(Config{NodeID: "n", DataDir: t.TempDir(), JobCgroups: parent}, log)
	if c == nil {
		t.Skip("no writable cgroup2 hierarchy here")
	}
	t.Cleanup(func() {
		for _, d := range []string{c.m.Dir(), strings.TrimSuffix(c.m.Dir(), c.m.Path()) + parent} {
			if err := unix.Rmdir(d); err != nil {
				t.Error(err)
			}
		}
	})
	if !strings.HasPrefix(c.m.Path(), parent+"/gantry-jobs-n-") {
		t.Fatalf("groups under %s", c.m.Path())
	}
}

// TestRecoverSweepsLeftoverCgroups: at start the agent removes the groups
// of job runs it does not follow again, and kills what runs in them.
func TestRecoverSweepsLeftoverCgroups(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	c := testJobCgroups(t, a.Agent)
	g := c.m.Group("forgotten", "1")
	leader, esc := startJobWithEscapee(t, g)
	if err := a.recover(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{leader, esc} {
		if !exited(pid) {
			t.Errorf("process %d of a forgotten job survived the agent's start", pid)
		}
	}
	if _, err := os.Stat(g.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the forgotten job's cgroup is still there: %v", err)
	}
}

// exited reports whether pid has ended (a zombie has).
func exited(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(data), ')')
	return i < 0 || i+2 >= len(data) || data[i+2] == 'Z' || data[i+2] == 'X'
}

// TestRestartKeepsJobCgroup: an agent restarted while a job runs finds the
// job's cgroup again by name (nothing stored but what the job's state
// already held), does not sweep it, attributes the job's escaped GPU
// process by it, and kills that process when the job is cancelled.
func TestRestartKeepsJobCgroup(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	first := newTestAgent(t, dir, sp)
	c := testJobCgroups(t, first.Agent)
	const id = "job-cg"
	first.start(&gantrypb.StartJob{JobId: id, Gpus: []uint32{0}, Spec: &gantrypb.JobSpec{
		Run: `(setsid sh -c 'echo $$ > esc.tmp; mv esc.tmp esc.pid; exec sleep 300' &); exec sleep 300`}})
	escFile := filepath.Join(jobDir(dir, id), "esc.pid")
	waitFor(t, "job running with its escapee", func() bool {
		st := savedJob(t, sp, id)
		_, err := os.Stat(escFile)
		return err == nil && st != nil && st.Pid != 0
	})
	data, err := os.ReadFile(escFile)
	if err != nil {
		t.Fatal(err)
	}
	esc, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Kill(esc, unix.SIGKILL) })
	name, ok := c.m.Owner(esc)
	if !ok {
		t.Fatal("the escapee is in no job cgroup")
	}
	first.stop()

	second := newTestAgent(t, dir, sp)
	second.cgroups = openJobCgroups(Config{NodeID: fmt.Sprintf("agent-%s-%d", t.Name(), os.Getpid()), DataDir: dir},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if second.cgroups == nil || second.cgroups.m.Dir() != c.m.Dir() {
		t.Fatal("the restarted agent has other job cgroups")
	}
	if err := second.recover(); err != nil {
		t.Fatal(err)
	}
	if exited(esc) {
		t.Fatal("the restart swept the running job's cgroup")
	}
	second.attributeProcesses([]gpu.Process{{GPU: 0, PID: uint32(esc), MemBytes: 1 << 30}})
	var memory, stray bool
	for _, e := range eventsOf(t, sp, id) {
		memory = memory || (e.Kind == string(lifecycle.EventGPUMemory) && strings.Contains(e.Message, fmt.Sprintf("processes [%d]", esc)))
		stray = stray || e.Kind == string(lifecycle.EventStrayGPUProcess)
	}
	if !memory || stray {
		t.Errorf("after the restart: the escapee's memory counted %v, reported stray %v", memory, stray)
	}
	(*linkHandler)(second.Agent).Cancel(&gantrypb.CancelJob{JobId: id})
	waitExit(t, sp, id)
	if !exited(esc) {
		t.Fatal("the escapee outlived its cancelled job")
	}
	if _, err := os.Stat(filepath.Join(c.m.Dir(), name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the job's cgroup is still there: %v", err)
	}
}
