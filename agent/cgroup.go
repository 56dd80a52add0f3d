package agent

import (
	"log/slog"
	"math"
	"strconv"

	"time"

	"golang.org/x/sys/unix"

	"github.com/gantry-ml/gantry/agent/jobcgroup"
)

// Job cgroups (agent/jobcgroup): where the host allows it, every job run
// gets a cgroup of its own. Its supervisor is started inside it, so every
// process of the job is in it, even one that left the job's session; at
// the job's end whatever is left there is killed, and GPU processes are
// attributed to jobs by it (procattr.go). Where cgroups cannot be used the
// agent says so once and attributes by session, as before.

// Values of Config.JobCgroups besides a parent cgroup's path.
const (
	JobCgroupsAuto = "auto"
	JobCgroupsOff  = "off"
)

// sweepDeadline bounds the wait for leftover groups to empty at start.
const sweepDeadline = 5 * time.Second

// jobCgroups is the agent's job cgroups; nil (every method works on nil)
// when they are off or unavailable.
type jobCgroups struct {
	m *jobcgroup.Manager
}

// withoutCgroups says what running jobs without cgroups means.
const withoutCgroups = "GPU processes are attributed to jobs by session, and a process that leaves its job's session survives the job"

// openJobCgroups opens the job cgroups as cfg.JobCgroups says, or returns
// nil after logging why there are none.
func openJobCgroups(cfg Config, log *slog.Logger) *jobCgroups {
	o := jobcgroup.Options{NodeID: cfg.NodeID, Instance: cfg.DataDir}
	switch cfg.JobCgroups {
	case JobCgroupsOff:
		log.Info("job cgroups off: " + withoutCgroups)
		return nil
	case "", JobCgroupsAuto:
	default:
		o.Parent = cfg.JobCgroups
	}
	m, err := jobcgroup.Open(o)
	if err != nil {
		log.Warn("job cgroups unavailable: "+withoutCgroups, "err", err)
		return nil
	}
	log.Info("job cgroups on", "dir", m.Dir(), "agent_moved_to_leaf", m.Moved())
	return &jobCgroups{m: m}
}

// groupSuffix is the last part of a job's group name: the run's start
// time (AgentJob.started_at, unix seconds) in milliseconds. It is stored
// already, so a restarted agent derives the same name without a field of
// its own. (A requeued job's next attempt has a run id of its own,
// lifecycle.RunID, and so a group of its own anyway.)
func groupSuffix(startedAt float64) string {
	return strconv.FormatInt(int64(math.Round(startedAt*1000)), 10)
}

// group is the cgroup of j's run started at startedAt, kept on j for
// attribution (job.cgroup); nil when cgroups are off.
func (c *jobCgroups) group(j *job, startedAt float64) *jobcgroup.Group {
	if c == nil {
		return nil
	}
	g := c.m.Group(j.id, groupSuffix(startedAt))
	j.mu.Lock()
	j.cg = g
	j.mu.Unlock()
	return g
}

// close removes the agent's directory of job groups if no group is left in
// it: the jobs that run on keep theirs, and the next agent finds them. A
// directory still in use is no error.
func (c *jobCgroups) close() {
	if c == nil {
		return
	}
	_ = unix.Rmdir(c.m.Dir()) // ENOTEMPTY/EBUSY: jobs run on, as they should
}

// owner returns the name of the job group process pid is in, if any.
func (c *jobCgroups) owner(pid int) (string, bool) {
	if c == nil {
		return "", false
	}
	return c.m.Owner(pid)
}

// sweep removes the groups of runs that are not in keep (group names), with
// whatever still runs in them: the leftovers of jobs that ended, or that
// this agent does not follow.
func (c *jobCgroups) sweep(keep map[string]bool, log *slog.Logger) {
	if c == nil {
		return
	}
	removed, err := c.m.Sweep(keep, time.Now().Add(sweepDeadline))
	if len(removed) > 0 {
		log.Info("removed the cgroups of jobs that no longer run, and what was left in them", "groups", removed)
	}
	if err != nil {
		log.Warn("could not remove every leftover job cgroup", "err", err)
	}
}

// cgroup is the cgroup of j's run; nil when it has none.
func (j *job) cgroup() *jobcgroup.Group {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.cg
}
