package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/agent/metricsfile"
	"github.com/gantry-ml/gantry/agent/runner"
	"github.com/gantry-ml/gantry/agent/safefile"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Re-adoption of jobs after an agent restart.
//
// Jobs run in their own sessions under a supervisor (agent/runner), so
// stopping or upgrading the agent does not stop them. What a restarted agent
// needs to carry on is in each job's AgentJob state in the spool:
//
//   - the process identity (pid, start time, boot id), to find the process
//     again and never mistake a later process with the same pid for it;
//   - the status file its supervisor writes when the job ends, for the exit
//     status of a process that is no longer anybody's child;
//   - the metrics and log file offsets that the spooled records cover,
//     stored in the same spool transaction as those records
//     (spool.AppendWithJob): a crash at any point leaves offsets and
//     records in agreement, so the successor resumes exactly at the first
//     byte not spooled. Deduplicating on the controller instead would need
//     the file offset in every point and a per-job index of them there;
//     one transaction on the agent costs nothing extra.
//   - a cancel in progress, so that SIGKILL still follows after kill_grace.
//
// The final-metrics accumulator is not stored: it is rebuilt by reading the
// metrics file up to the stored offset again without sending anything, which
// is exact and cheap (a long run's file parses in well under a second per
// hundred megabytes) and costs nothing while the job runs. (If the file was
// truncated during the run, keys seen only before the truncation are lost
// from the final metrics; the controller's latest_metrics still has them.)

// Reasons a saved job cannot be followed after a restart.
var (
	errNoPID = errors.New("the agent stopped while launching the job, before its process was recorded; " +
		"whether it started is unknown, and it is not followed")
	errNoIdentity = errors.New("the job was started by an agent version that cannot re-adopt jobs " +
		"(no process start time or status file recorded); its exit status is unknown")
)

// recover takes over the jobs a previous agent process started and did not
// finish reporting: a job still running is watched and tailed as if this
// process had started it; a job that ended meanwhile is reported with the
// exit status its supervisor recorded, or an error saying it is unknown.
// Every such job stays in Hello.active_jobs until its exit is acked.
func (a *Agent) recover() error {
	saved, err := a.spool.Jobs()
	if err != nil {
		return fmt.Errorf("agent: read job state: %w", err)
	}
	ids := make([]string, 0, len(saved))
	for id := range saved {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	keep := map[string]bool{} // the cgroups of the jobs followed again
	for _, id := range ids {
		st := &gantrypb.AgentJob{}
		if err := proto.Unmarshal(saved[id], st); err != nil {
			return fmt.Errorf("agent: decode job state %s: %w", id, err)
		}
		if st.ExitIndex > 0 {
			continue // exit already spooled; the link delivers it
		}
		j := &job{a: a, id: id, state: st, resumed: true}
		j.publish()
		a.mu.Lock()
		a.jobs[id] = j
		ctx := a.ctx
		a.mu.Unlock()

		log := a.log.With("job", id, "pid", st.Pid)
		proc, err := j.adopt()
		if err != nil {
			log.Warn("job from before restart cannot be followed", "err", err)
			j.fail(err.Error())
			continue
		}
		msg := fmt.Sprintf("the agent restarted; it re-adopted the job's process (pid %d) and resumes "+
			"its metrics file at byte %d and its log at byte %d", st.Pid, st.MetricsOffset, st.LogOffset)
		select {
		case <-proc.Done():
			msg = fmt.Sprintf("the agent restarted; the job's process (pid %d) ended while it was down; "+
				"its files are read from byte %d (metrics) and %d (log)", st.Pid, st.MetricsOffset, st.LogOffset)
			log.Info("job ended while the agent was down")
		default:
			log.Info("re-adopted job", "metrics_offset", st.MetricsOffset, "log_offset", st.LogOffset)
		}
		if g := proc.Cgroup(); g != nil {
			keep[g.Name()] = true
		}
		j.append(j.event(lifecycle.EventReadopted, msg, 0))
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			j.follow(ctx, proc)
		}()
	}
	// Only once every saved job has been looked at: the groups of the
	// jobs not followed (ended, or unknown to the spool) are leftovers.
	a.cgroups.sweep(keep, a.log)
	return nil
}

// adopt finds the job's process again (runner.Adopt) and rebuilds the final
// metrics of the lines already spooled.
func (j *job) adopt() (*runner.Process, error) {
	st := j.state
	switch {
	case st.Pid == 0:
		return nil, errNoPID
	case st.StartTime == 0 || st.BootId == "" || st.StatusFile == "":
		return nil, fmt.Errorf("%w (pid %d)", errNoIdentity, st.Pid)
	}
	metricsPath := filepath.Join(jobDir(j.a.cfg.DataDir, j.id), MetricsFileName)
	final, err := replayFinal(metricsPath, st.MetricsOffset)
	j.final = final
	if err != nil {
		// The job is still worth following; its final metrics may lack
		// keys last written before the restart, and the user is told.
		j.append(j.event(lifecycle.EventReadError,
			fmt.Sprintf("final metrics may miss values written before the agent restarted: %v", err), 0))
		j.a.log.Error("rebuild final metrics", "job", j.id, "err", err)
	}

	spec := st.Spec
	ad := runner.Adoption{
		JobID:      j.id,
		Identity:   runner.Identity{PID: int(st.Pid), StartTime: st.StartTime, BootID: st.BootId},
		StatusFile: st.StatusFile,
		KillGrace:  time.Duration(spec.GetKillGraceMs()) * time.Millisecond,
		OnCancel:   j.cancelling,
		Cgroup:     j.a.cgroups.group(j, st.StartedAt),
	}
	if ms := spec.GetMaxDurationMs(); ms > 0 {
		ad.Deadline = unixTime(st.StartedAt).Add(time.Duration(ms) * time.Millisecond)
	}
	if st.CancelReason != "" {
		ad.CancelReason, ad.CancelAt = lifecycle.ExitReason(st.CancelReason), unixTime(st.CancelAt)
	}
	proc, err := runner.Adopt(ad, j.runnerEvent)
	if err != nil {
		return nil, fmt.Errorf("cannot re-adopt the job after an agent restart: %w", err)
	}
	return proc, nil
}

// replayFinal folds the lines of the metrics file before offset into a
// Final, as the tailer did when it read them. Lines it skipped as bad are
// skipped here too; nothing is sent.
func replayFinal(path string, offset int64) (metricsfile.Final, error) {
	var final metricsfile.Final
	if offset <= 0 {
		return final, nil
	}
	// The job may have swapped its metrics file for a FIFO or a link
	// while no agent watched: opened as the tailer opens it, never
	// blocking, never through a link out of the job directory.
	f, err := safefile.Open(path, safefile.AnyOwner)
	if err != nil {
		return final, fmt.Errorf("replay metrics file: %w", err)
	}
	defer f.Close() // read-only: a close error loses nothing
	r := bufio.NewReaderSize(io.LimitReader(f, offset), 64<<10)
	var line []byte
	tooLong := false
	for {
		chunk, err := r.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > metricsfile.MaxLineBytes+1 {
				tooLong, line = true, line[:0]
			} else {
				line = append(line, chunk...)
			}
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == nil:
			if !tooLong {
				if l, perr := metricsfile.ParseLine(line[:len(line)-1]); perr == nil {
					final.Observe(&l)
				}
			}
			line, tooLong = line[:0], false
		case errors.Is(err, io.EOF):
			// The offset is a line boundary, so nothing is left over
			// unless the file shrank meanwhile; the tailer sees that.
			return final, nil
		default:
			return final, fmt.Errorf("replay metrics file: %w", err)
		}
	}
}

// unixTime converts unix seconds as stored in AgentJob.
func unixTime(sec float64) time.Time {
	return time.Unix(0, int64(sec*1e9))
}
