package fsm

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/admission"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// Requeue: a health policy that stops a job and runs it again.
//
// A condition whose policy is requeue sets cancel_requested and
// requeue_reason; the leader's scheduler tells the agent to stop the run,
// through the same path as a user's cancel. When the run's exit record
// arrives (after every record before it: invariant I2), requeue keeps
// what the run reported as an Attempt, final metrics included, and puts
// the job back in the queue as the next attempt. That attempt runs under a
// new run id (lifecycle.RunID), so the agents' streams, directories and
// run-once rule are per attempt, and the records of the old run can never
// be taken for the new one's. The job's stored points, events and log stay
// single sequences: the new attempt's seqs and offsets are placed after the
// old one's (seq_base, log_base).

// policyAction applies the spec's policy for a condition that began, on a
// job not already being stopped, and says what it did (appended to the
// event and the alert; "" when the policy only notifies).
func policyAction(job *gantrypb.Job, c *gantrypb.HealthCondition) string {
	h := job.GetSpec().GetHealth()
	switch lifecycle.PolicyFor(h, c.Kind) {
	case lifecycle.PolicyCancel:
		job.CancelRequested = true
		return "; policy cancel: cancelling the job"
	case lifecycle.PolicyRequeue:
		job.CancelRequested = true
		limit := lifecycle.MaxRequeues(h)
		if job.Attempt >= limit {
			return fmt.Sprintf("; policy requeue: the job was requeued %d times already (max_requeues %d): cancelling it", job.Attempt, limit)
		}
		job.RequeueReason = fmt.Sprintf("%s: %s", c.Kind, c.Evidence)
		return fmt.Sprintf("; policy requeue: stopping the job to run it again (attempt %d of at most %d)", job.Attempt+2, limit+1)
	}
	return ""
}

// requeue ends the job's current (single-node) attempt with its exit x,
// whose seq in the job's streams is seq, and queues the job again.
func (f *FSM) requeue(tx *store.Tx, job *gantrypb.Job, x *gantrypb.JobExit, seq uint64, atMs int64, ch *Changes) error {
	a := &gantrypb.Attempt{
		Node: job.Node, Gpus: slices.Clone(job.Gpus), FinishedAtMs: secondsToMs(x.Ts, atMs),
		ExitCode: x.ExitCode, Signal: x.Signal, FinalMetrics: exitMetrics(job.LatestMetrics, x), LogTail: x.LogTail,
	}
	return f.queueAgain(tx, job, a, seq, x.Ts, atMs, lifecycle.DescribeExit(x), ch)
}

// requeuable reports whether a multi-node job whose ranks have all ended
// may be requeued: rank 0 was stopped by the cancel, and every other rank
// too or ended on its own (none failed, none lost), each with its exit. A lost rank's agent may still hold records
// of the attempt, and they would be refused once the next one runs.
func requeuable(job *gantrypb.Job) bool {
	return job.Ranks[0].State == gantrypb.JobState_JOB_STATE_CANCELLED && allRanks(job, func(r *gantrypb.Rank) bool {
		return r.State == gantrypb.JobState_JOB_STATE_CANCELLED || r.State == gantrypb.JobState_JOB_STATE_SUCCEEDED
	})
}

// requeueGang ends the current attempt of a multi-node job whose ranks
// were all stopped, keeping rank 0's final metrics and every rank as it
// ended, and queues the job again. ts and atMs are the last exit's.
func (f *FSM) requeueGang(tx *store.Tx, job *gantrypb.Job, ts float64, atMs int64, ch *Changes) error {
	r0 := job.Ranks[0]
	a := &gantrypb.Attempt{
		Node: r0.Node, Gpus: slices.Clone(r0.Gpus), FinishedAtMs: gangFinishedAt(job, atMs),
		ExitCode: r0.ExitCode, Signal: r0.Signal, FinalMetrics: copyMetrics(gangFinal(job)), LogTail: r0.LogTail,
	}
	for _, r := range job.Ranks {
		// How each rank ended; not what it reported (rank 0's final
		// metrics are the attempt's, every rank's log is stored), which
		// would make the job record, rewritten by every batch of its
		// records, grow with ranks times attempts.
		kept := proto.Clone(r).(*gantrypb.Rank)
		kept.LatestMetrics, kept.FinalMetrics, kept.LogTail = nil, nil, ""
		a.Ranks = append(a.Ranks, kept)
	}
	what := fmt.Sprintf("%d ranks stopped", len(job.Ranks))
	if err := f.queueAgain(tx, job, a, r0.ExitSeq, ts, atMs, what, ch); err != nil {
		return err
	}
	job.Ranks, job.MasterAddr, job.MasterPort = nil, "", 0
	return nil
}

// queueAgain keeps the attempt a (its outcome filled in by the caller) in
// the job's history and makes the job queued as its next attempt. seq is
// the attempt's last seq in the job's streams (its exit's), ts the time of
// its end as the agent saw it, atMs the entry's time (the leader's clock),
// and ended says how it ended.
func (f *FSM) queueAgain(tx *store.Tx, job *gantrypb.Job, a *gantrypb.Attempt, seq uint64, ts float64, atMs int64, ended string, ch *Changes) error {
	seq = max(seq, job.SeqBase, job.LastSeq) // never below what is stored
	a.LogTail = admission.ClipTail(a.LogTail, attemptLogTailBytes)
	logEnd := max(job.LogBytes, job.LogBase)
	a.Attempt, a.AssignedAtMs, a.StartedAtMs = job.Attempt, job.AssignedAtMs, cmp.Or(job.StartedAtMs, a.FinishedAtMs)
	a.Reason, a.FirstSeq, a.LastSeq, a.LogStart, a.LogEnd = job.RequeueReason, job.SeqBase+1, seq, job.LogBase, logEnd
	job.Attempts = append(job.Attempts, a)
	job.Attempt++

	// The log reads on across attempts; a line says where the next begins.
	sep := fmt.Sprintf("\n--- gantry: attempt %d of %d stopped (%s); the job is queued again ---\n",
		a.Attempt+1, lifecycle.MaxRequeues(job.GetSpec().GetHealth())+1, admission.Clip(a.Reason, 200))
	if err := tx.PutLog(job.Id, logEnd, []byte(sep)); err != nil {
		return err
	}
	job.LogBytes = logEnd + uint64(len(sep))
	job.LogBase = job.LogBytes
	// The exit's seq holds no point, and no event unless the exit's final
	// metrics were cut to the key cap (dropKeys's event takes its seq):
	// the requeued event takes the first free one, and the next
	// attempt's records come after it.
	if seq > 0 {
		evs, err := tx.Events(job.Id, seq-1, 1)
		if err != nil {
			return err
		}
		if len(evs) == 1 && evs[0].Seq == seq && seq < math.MaxUint64 {
			seq++
		}
	}
	job.SeqBase = seq

	e := &gantrypb.JobEvent{Seq: seq, Ts: ts, Kind: string(lifecycle.EventRequeued), Message: admission.Clip(fmt.Sprintf(
		"attempt %d on %s stopped (%s) after %s; queued again as attempt %d",
		a.Attempt+1, a.Node, ended, a.Reason, job.Attempt+1), limits.MaxEventMessageBytes)}
	if err := f.addEvent(tx, job, e, ch); err != nil {
		return err
	}

	job.State = gantrypb.JobState_JOB_STATE_QUEUED
	job.Node, job.Gpus, job.Pid = "", nil, 0
	job.AssignedAtMs, job.StartedAtMs = 0, 0
	job.CancelRequested, job.RequeueReason = false, ""
	job.Conditions = nil
	job.ExitCode, job.Signal, job.LogTail, job.Error = nil, "", "", ""
	// The queue deadline is checked by the leader's clock (QueueTimeoutCmd):
	// an agent's clock behind it must not shorten the new wait.
	job.QueuedAtMs = max(a.FinishedAtMs, atMs)
	return f.alert(tx, &gantrypb.Alert{AtMs: a.FinishedAtMs, Kind: string(lifecycle.EventRequeued), JobId: job.Id,
		JobName: job.GetSpec().GetName(), Node: a.Node,
		Text:     fmt.Sprintf("Gantry: job %s requeued: attempt %d on %s stopped after %s", jobLabel(job), a.Attempt+1, a.Node, a.Reason),
		Evidence: a.Reason}, ch)
}

// attemptLogTailBytes bounds the log tail an attempt keeps: enough to see
// how it ended; its whole log stays in the job's.
const attemptLogTailBytes = 2 << 10
