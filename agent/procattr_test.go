package agent

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/agent/gpu"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// TestProcessAttribution: a job's process (a child of its session leader,
// in a session of its own even) is mapped to the job by PID; its GPU
// memory is reported once; its use of a GPU it was not given is reported,
// and so is a process of no job on the job's GPU, each once.
func TestProcessAttribution(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	// The job's main process: a session leader, as the runner makes it;
	// its child starts a session of its own.
	leader := exec.Command("sh", "-c", "setsid sleep 60 & echo $! ; wait")
	leader.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := leader.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-leader.Process.Pid, syscall.SIGKILL); _ = leader.Wait() })
	buf := make([]byte, 32)
	n, _ := out.Read(buf)
	var child int
	for _, c := range strings.TrimSpace(string(buf[:n])) {
		child = child*10 + int(c-'0')
	}
	if child == 0 {
		t.Fatalf("no child pid in %q", buf[:n])
	}
	j := &job{a: a.Agent, id: "attr", state: &gantrypb.AgentJob{JobId: "attr", Pid: int64(leader.Process.Pid), Gpus: []uint32{0}}}
	j.publish()
	a.mu.Lock()
	a.jobs[j.id] = j
	a.mu.Unlock()

	procs := []gpu.Process{
		{GPU: 0, PID: uint32(leader.Process.Pid), MemBytes: 3 << 30},
		{GPU: 1, PID: uint32(child), MemBytes: 1 << 30},       // not the job's GPU
		{GPU: 0, PID: uint32(os.Getpid()), MemBytes: 1 << 29}, // no job's: stray
	}
	a.attributeProcesses(procs)
	a.attributeProcesses(procs) // again: nothing new to say
	kinds := map[string][]string{}
	for _, e := range eventsOf(t, sp, "attr") {
		kinds[e.Kind] = append(kinds[e.Kind], e.Message)
	}
	if m := kinds[string(lifecycle.EventGPUMemory)]; len(m) != 1 || !strings.Contains(m[0], "4.0 GiB of GPU memory on GPUs [0 1]") {
		t.Errorf("gpu_memory events %q", m)
	}
	if m := kinds[string(lifecycle.EventUnallocatedGPU)]; len(m) != 1 || !strings.Contains(m[0], "uses GPU 1, which it was not given") {
		t.Errorf("unallocated_gpu events %q", m)
	}
	if m := kinds[string(lifecycle.EventStrayGPUProcess)]; len(m) != 1 || !strings.Contains(m[0], "of no job uses 0.5 GiB on GPU 0") {
		t.Errorf("stray_gpu_process events %q", m)
	}
}

// TestSamplerChecksNeverWaitForAJobsState: a job waiting for its spool
// share holds its state lock for as long as the flood lasts. The GPU
// sampler's checks (process attribution, fault reports) must not wait on
// it: they did, under the agent's lock, which the link's ack path also
// takes, so the acks that would end the wait never came (a failover under
// a flood froze the job for good).
func TestSamplerChecksNeverWaitForAJobsState(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	a := newTestAgent(t, dir, sp)
	j := &job{a: a.Agent, id: "held", state: &gantrypb.AgentJob{JobId: "held", Pid: int64(os.Getpid()), Gpus: []uint32{0}}}
	j.publish()
	a.mu.Lock()
	a.jobs[j.id] = j
	a.mu.Unlock()

	j.stMu.Lock() // as commit does while it waits for the job's share
	defer j.stMu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.attributeProcesses([]gpu.Process{{GPU: 0, PID: uint32(os.Getpid()), MemBytes: 1 << 30}})
		a.healthSample(&gantrypb.GPUSample{Gpus: []*gantrypb.GPUStat{{Index: 0, Fault: "XID 79"}}})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the sampler's checks waited for the job's state lock")
	}
	// The agent's lock is free meanwhile: the link's paths take it.
	if !a.mu.TryLock() {
		t.Fatal("the agent's lock is held")
	}
	a.mu.Unlock()
}
