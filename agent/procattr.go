package agent

import (
	"fmt"
	"slices"
	"time"

	"github.com/gantry-ml/gantry/agent/gpu"
	"github.com/gantry-ml/gantry/agent/runner"
	"github.com/gantry-ml/gantry/lifecycle"
)

// Per-process attribution: the compute and graphics processes NVML sees on
// each GPU are mapped to jobs by PID and cgroup. With job cgroups on
// (cgroup.go), a process whose /proc/PID/cgroup is a job run's group
// belongs to that job, whatever its session: no process of the job can
// leave the group, however it daemonizes. Otherwise, and for a process in
// no job's group, the session decides: a job runs in its own session (the
// runner makes its supervisor a session leader), so a process belongs to
// the job whose main PID is its session id, or failing that one of its
// ancestors (a process that started a session of its own). PIDs are those
// of the agent's PID namespace: an agent in a container that does not
// share the host's sees none of them, and attributes nothing.

// Bounds of the attribution.
const (
	// maxAncestry is how many parents are followed from a process.
	maxAncestry = 64
	// maxProcTold bounds what a job remembers having been told.
	maxProcTold = 256
	// memReportEvery spaces a job's gpu_memory events after the first.
	memReportEvery = time.Minute
)

// procTracker is a job's attribution state, guarded by job.healthMu.
type procTracker struct {
	told        map[string]bool // stray PIDs and foreign GPUs reported
	memReported uint64          // bytes in the last gpu_memory event
	memAt       time.Time
}

// ownerOf returns the job (by main PID in roots) that pid belongs to, ""
// for none, and the process's command name.
func ownerOf(pid int, roots map[int]*job) (*job, string) {
	p := pid
	var comm string
	for range maxAncestry {
		ppid, sid, c, err := runner.ProcParent(p)
		if err != nil {
			return nil, comm
		}
		if comm == "" {
			comm = c
		}
		if j := roots[p]; j != nil {
			return j, comm
		}
		if j := roots[sid]; j != nil {
			return j, comm
		}
		if ppid <= 1 {
			return nil, comm
		}
		p = ppid
	}
	return nil, comm
}

// attributeProcesses maps the GPUs' compute processes to jobs and reports,
// as job events: a job's GPU memory (its first use, then growth), a
// process of no job or of another job on a job's GPU (stray), and a job's
// process on a GPU it was not given.
func (a *Agent) attributeProcesses(procs []gpu.Process) {
	a.mu.Lock()
	all := make([]*job, 0, len(a.jobs))
	for _, j := range a.jobs {
		all = append(all, j)
	}
	a.mu.Unlock()
	roots := map[int]*job{}
	byGroup := map[string]*job{} // running jobs by the name of their cgroup
	var running []*job
	for _, j := range all {
		if s := j.seenState(); s.pid > 0 && !s.ended {
			roots[s.pid] = j
			running = append(running, j)
			if g := j.cgroup(); g != nil {
				byGroup[g.Name()] = j
			}
		}
	}
	if len(running) == 0 {
		return
	}
	type use struct {
		mem  uint64
		gpus []uint32
		pids []uint32
	}
	uses := map[*job]*use{}
	for _, p := range procs {
		owner, comm := ownerOf(int(p.PID), roots)
		if name, ok := a.cgroups.owner(int(p.PID)); ok && byGroup[name] != nil {
			owner = byGroup[name]
		}
		if owner != nil {
			u := uses[owner]
			if u == nil {
				u = &use{}
				uses[owner] = u
			}
			u.mem += p.MemBytes
			if !slices.Contains(u.gpus, p.GPU) {
				u.gpus = append(u.gpus, p.GPU)
			}
			if !slices.Contains(u.pids, p.PID) {
				u.pids = append(u.pids, p.PID)
			}
			if !owner.holdsGPU(p.GPU) {
				owner.tellOnce(fmt.Sprintf("gpu/%d", p.GPU), lifecycle.EventUnallocatedGPU,
					fmt.Sprintf("process %d (%s) of this job uses GPU %d, which it was not given (%s of memory); "+
						"it competes with whatever runs there", p.PID, comm, p.GPU, gib(p.MemBytes)))
			}
		}
		for _, j := range running {
			if j == owner || !j.holdsGPU(p.GPU) {
				continue
			}
			whose := "no job"
			if owner != nil {
				whose = "job " + owner.id
			}
			j.tellOnce(fmt.Sprintf("pid/%d/%d", p.PID, p.GPU), lifecycle.EventStrayGPUProcess,
				fmt.Sprintf("process %d (%s) of %s uses %s on GPU %d, which this job holds", p.PID, comm, whose, gib(p.MemBytes), p.GPU))
		}
	}
	now := time.Now()
	for j, u := range uses {
		j.healthMu.Lock()
		t := j.procs()
		report := u.mem > 0 && (t.memReported == 0 ||
			(u.mem >= t.memReported+(1<<30) && u.mem >= t.memReported*5/4 && now.Sub(t.memAt) >= memReportEvery))
		if report {
			t.memReported, t.memAt = u.mem, now
		}
		j.healthMu.Unlock()
		if report {
			slices.Sort(u.gpus)
			slices.Sort(u.pids)
			j.append(j.event(lifecycle.EventGPUMemory, fmt.Sprintf("the job uses %s of GPU memory on GPUs %v (processes %v)",
				gib(u.mem), u.gpus, u.pids), u.mem))
		}
	}
}

// procs returns the job's attribution state; call with healthMu held.
func (j *job) procs() *procTracker {
	if j.procTrack == nil {
		j.procTrack = &procTracker{told: map[string]bool{}}
	}
	return j.procTrack
}

// tellOnce spools an event of kind for key the first time key is seen.
func (j *job) tellOnce(key string, kind lifecycle.EventKind, msg string) {
	j.healthMu.Lock()
	t := j.procs()
	if t.told[key] || len(t.told) >= maxProcTold {
		j.healthMu.Unlock()
		return
	}
	t.told[key] = true
	j.healthMu.Unlock()
	j.a.log.Warn("GPU process attribution", "job", j.id, "kind", kind, "message", msg)
	j.append(j.event(kind, msg, 0))
}

// holdsGPU reports whether the job was given GPU g.
func (j *job) holdsGPU(g uint32) bool {
	return slices.Contains(j.seenState().gpus, g)
}

func gib(b uint64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }
