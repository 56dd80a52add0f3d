package fsm

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
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
		if len(job.Ranks) > 0 {
			// Refused at submit; a spec that got here anyway is cancelled.
			return "; policy requeue does not apply to a multi-node job: cancelling the job"
		}
		if job.Attempt >= limit {
			return fmt.Sprintf("; policy requeue: the job was requeued %d times already (max_requeues %d): cancelling it", job.Attempt, limit)
		}
		job.RequeueReason = fmt.Sprintf("%s: %s", c.Kind, c.Evidence)
		return fmt.Sprintf("; policy requeue: stopping the job to run it again (attempt %d of at most %d)", job.Attempt+2, limit+1)
	}
	return ""
}

// requeue ends the job's current attempt with its exit x (whose seq in the
// job's streams is seq) and queues the job again as the next attempt.
func (f *FSM) requeue(tx *store.Tx, job *gantrypb.Job, x *gantrypb.JobExit, seq uint64, atMs int64, ch *Changes) error {
	final := copyMetrics(job.LatestMetrics)
	for k, v := range x.FinalMetrics {
		final[k] = v
	}
	finished := secondsToMs(x.Ts, atMs)
	logEnd := max(job.LogBytes, job.LogBase)
	a := &gantrypb.Attempt{
		Attempt: job.Attempt, Node: job.Node, Gpus: slices.Clone(job.Gpus),
		AssignedAtMs: job.AssignedAtMs, StartedAtMs: cmp.Or(job.StartedAtMs, finished), FinishedAtMs: finished,
		ExitCode: x.ExitCode, Signal: x.Signal, FinalMetrics: final, Reason: job.RequeueReason,
		LogTail: x.LogTail, FirstSeq: job.SeqBase + 1, LastSeq: seq, LogStart: job.LogBase, LogEnd: logEnd,
	}
	job.Attempts = append(job.Attempts, a)
	job.Attempt++

	// The log reads on across attempts; a line says where the next begins.
	sep := fmt.Sprintf("\n--- gantry: attempt %d of %d stopped (%s); the job is queued again ---\n",
		a.Attempt+1, lifecycle.MaxRequeues(job.GetSpec().GetHealth())+1, clipText(job.RequeueReason, 200))
	if err := tx.PutLog(job.Id, logEnd, []byte(sep)); err != nil {
		return err
	}
	job.LogBytes = logEnd + uint64(len(sep))
	job.LogBase = job.LogBytes
	job.SeqBase = seq

	e := &gantrypb.JobEvent{Seq: seq, Ts: x.Ts, Kind: string(lifecycle.EventRequeued), Message: clipText(fmt.Sprintf(
		"attempt %d on %s stopped (%s) after %s; queued again as attempt %d",
		a.Attempt+1, a.Node, lifecycle.DescribeExit(x), job.RequeueReason, job.Attempt+1), 1024)}
	if err := tx.PutEvent(job.Id, e); err != nil {
		return err
	}
	job.Events++
	ch.event(job.Id, e)

	node := job.Node
	job.State = gantrypb.JobState_JOB_STATE_QUEUED
	job.Node, job.Gpus, job.Pid = "", nil, 0
	job.AssignedAtMs, job.StartedAtMs = 0, 0
	job.CancelRequested, job.RequeueReason = false, ""
	job.Conditions = nil
	job.ExitCode, job.Signal, job.LogTail, job.Error = nil, "", "", ""
	job.QueuedAtMs = finished
	return f.alert(tx, &gantrypb.Alert{AtMs: finished, Kind: string(lifecycle.EventRequeued), JobId: job.Id,
		JobName: job.GetSpec().GetName(), Node: node,
		Text:     fmt.Sprintf("Gantry: job %s requeued: attempt %d on %s stopped after %s", jobLabel(job), a.Attempt+1, node, a.Reason),
		Evidence: a.Reason}, ch)
}
