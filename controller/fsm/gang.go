package fsm

import (
	"errors"
	"fmt"
	"slices"

	"github.com/gantry-ml/gantry/controller/admission"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// maxGangRanks bounds the ranks one AssignGangCmd may hold.
const maxGangRanks = limits.MaxNodesPerJob

// assignGang assigns every rank of a queued multi-node job at once. The
// entry is checked in full before anything changes, so a malformed one is
// refused alike on every voter and no partial gang is ever stored.
func (f *FSM) assignGang(tx *store.Tx, m *gantrypb.AssignGangCmd, ch *Changes) error {
	job, err := f.job(tx, m.JobId)
	if err != nil {
		return err
	}
	if job.State != gantrypb.JobState_JOB_STATE_QUEUED {
		return fmt.Errorf("%w: %s is %s", lifecycle.ErrNotQueued, job.Id, job.State)
	}
	if err := checkGang(job.Spec, m); err != nil {
		return fmt.Errorf("assign_gang %s refused: %w", job.Id, err)
	}
	job.State = gantrypb.JobState_JOB_STATE_ASSIGNED
	job.Node = m.Ranks[0].NodeId
	job.Gpus = m.Ranks[0].Gpus
	job.AssignedAtMs = m.AtMs
	job.MasterAddr, job.MasterPort = m.MasterAddr, m.MasterPort
	job.Ranks = make([]*gantrypb.Rank, len(m.Ranks))
	for i, r := range m.Ranks {
		job.Ranks[i] = &gantrypb.Rank{Rank: uint32(i), Node: r.NodeId, Gpus: r.Gpus, State: gantrypb.JobState_JOB_STATE_ASSIGNED}
	}
	if err := tx.PutJob(job); err != nil {
		return err
	}
	ch.job(job)
	return nil
}

// checkGang checks an AssignGangCmd against the job's spec: one rank per
// requested node, distinct well-formed node ids, the requested GPU count
// on each, a rendezvous address and port.
func checkGang(spec *gantrypb.JobSpec, m *gantrypb.AssignGangCmd) error {
	if !lifecycle.IsGang(spec) {
		return errors.New("the job is not a multi-node job")
	}
	n := int(spec.GetResources().GetNodes())
	if len(m.Ranks) != n || n > maxGangRanks {
		return fmt.Errorf("%d ranks for a job of %d nodes", len(m.Ranks), n)
	}
	seen := map[string]bool{}
	for i, r := range m.Ranks {
		if err := admission.CheckID("node id", r.GetNodeId()); err != nil {
			return fmt.Errorf("rank %d: %w", i, err)
		}
		if seen[r.NodeId] {
			return fmt.Errorf("rank %d: node %s already holds a rank", i, r.NodeId)
		}
		seen[r.NodeId] = true
		if len(r.Gpus) != int(spec.GetResources().GetGpus()) || len(r.Gpus) > limits.MaxGPUsPerNode {
			return fmt.Errorf("rank %d: %d GPUs, want %d", i, len(r.Gpus), spec.GetResources().GetGpus())
		}
	}
	if m.MasterPort == 0 || m.MasterPort > 65535 {
		return fmt.Errorf("master port %d", m.MasterPort)
	}
	if m.MasterAddr == "" || len(m.MasterAddr) > limits.MaxGPUStringBytes {
		return fmt.Errorf("master address of %d bytes", len(m.MasterAddr))
	}
	return nil
}

// applyRankRecord applies a record of one rank of a multi-node job. The
// rank is the sending node's (lifecycle.RankOf): a node can only ever
// write its own rank. Rank 0's points are the job's metrics; other ranks'
// points are stored apart (storeRankPoint). Logs and events of rank k > 0 are kept
// under RankStreamKey. The job becomes running once every rank started,
// and terminal only once every rank exited, with rank 0's final metrics
// (invariant I2 for the whole job).
//
// Rank 0's seqs and log offsets are placed after the job's earlier
// attempts' (seq_base, log_base), as a single-node job's are; another
// rank's streams are the current attempt's own (store.JobRankKey).
func (f *FSM) applyRankRecord(tx *store.Tx, job *gantrypb.Job, r *gantrypb.Rank, rec *gantrypb.Record, m *gantrypb.IngestCmd, ch *Changes, sc *pointScratch) error {
	atMs := m.AtMs
	key := store.JobRankKey(job, r.Rank)
	seq, logBase := rec.Seq, uint64(0)
	if r.Rank == 0 {
		seq, logBase = job.SeqBase+rec.Seq, job.LogBase
	}
	switch body := rec.Body.(type) {
	case *gantrypb.Record_Point:
		if r.Rank != 0 {
			return f.storeRankPoint(tx, job, r, key, seq, body.Point, m.Keys, sc)
		}
		r.Points++
		if err := f.storeJobPoint(tx, job, seq, body.Point, m.Keys, ch, sc); err != nil {
			return err
		}

	case *gantrypb.Record_Event:
		body.Event.Seq = seq
		return f.agentEvent(tx, job, key, body.Event, r.Rank == 0, ch)

	case *gantrypb.Record_Log:
		l := body.Log
		off := logBase + l.Offset
		if err := tx.PutLog(key, off, l.Data); err != nil {
			return err
		}
		if end := off + uint64(len(l.Data)); end > r.LogBytes {
			r.LogBytes = end
			if r.Rank == 0 {
				job.LogBytes = end
			}
		}

	case *gantrypb.Record_Started:
		if r.State == gantrypb.JobState_JOB_STATE_ASSIGNED {
			r.State = gantrypb.JobState_JOB_STATE_RUNNING
		}
		r.Pid = body.Started.Pid
		r.StartedAtMs = secondsToMs(body.Started.Ts, atMs)
		if r.Rank == 0 {
			job.Pid = r.Pid
		}
		if job.State == gantrypb.JobState_JOB_STATE_ASSIGNED && allRanks(job, func(r *gantrypb.Rank) bool {
			return r.State != gantrypb.JobState_JOB_STATE_ASSIGNED
		}) {
			// Running once every rank started: torchrun's rendezvous
			// needs them all.
			job.State = gantrypb.JobState_JOB_STATE_RUNNING
			job.StartedAtMs = atMs
		}

	case *gantrypb.Record_Exit:
		x := body.Exit
		if lifecycle.IsTerminal(r.State) {
			return nil // already ended (declared lost): history stays
		}
		r.ExitCode, r.Signal, r.Reason, r.LogTail = x.ExitCode, x.Signal, x.Reason, x.LogTail
		r.FinishedAtMs = secondsToMs(x.Ts, atMs)
		r.State, r.Error = lifecycle.ClassifyExit(x, job.CancelRequested)
		r.ExitSeq = seq
		if r.Rank == 0 {
			if n := admitKeys(job.LatestMetrics, x.FinalMetrics); n > 0 {
				if err := f.dropKeys(tx, job, seq, x.Ts, n, ch); err != nil {
					return err
				}
			}
			r.FinalMetrics = exitMetrics(job.LatestMetrics, x)
		}
		if lifecycle.IsTerminal(job.State) {
			return nil // a survivor of a lost job reporting its end
		}
		if allRanks(job, func(r *gantrypb.Rank) bool { return lifecycle.IsTerminal(r.State) }) {
			if job.RequeueReason != "" && requeuable(job) {
				return f.requeueGang(tx, job, x.Ts, atMs, ch)
			}
			finishGang(job, atMs)
			return f.alertJobEnd(tx, job, ch)
		}

	case *gantrypb.Record_Condition:
		c := body.Condition
		if lifecycle.IsTerminal(r.State) {
			// A check the rank's agent finished as its process exited:
			// about a process that is gone, and never a cause to cancel
			// the ranks still running.
			return nil
		}
		if r.Rank == 0 {
			// Rank 0's agent speaks for the job, as its metrics do; a
			// hung collective stalls every rank alike.
			return f.applyCondition(tx, job, seq, c, atMs, ch)
		}
		// Another rank's view is kept in that rank's own events.
		kind, msg := conditionEvent(c)
		e := &gantrypb.JobEvent{Seq: seq, Ts: c.Ts, Kind: kind, Message: admission.Clip(msg, limits.MaxEventMessageBytes)}
		return tx.PutEvent(key, e)

	default:
		f.log.Warn("record with unknown body skipped", "job", job.Id, "seq", rec.Seq)
	}
	return nil
}

// storeRankPoint stores a point of rank k > 0 under key (store.JobRankKey):
// a series of its own, read with ?rank=k, never mixed into the job's
// (rank 0's) metrics, charts or final metrics, and not sent to live
// watchers, who chart rank 0. The rank's keys are capped like a job's
// (limits.MaxKeysPerJob); values of keys past the cap are dropped,
// counted in the job's dropped_metric_keys.
func (f *FSM) storeRankPoint(tx *store.Tx, job *gantrypb.Job, r *gantrypb.Rank, key string, seq uint64, p *gantrypb.MetricPoint, keys []string, sc *pointScratch) error {
	if r.LastSeq > 0 && seq <= r.LastSeq {
		f.log.Warn("metric point below the rank's last point skipped", "job", job.Id, "rank", r.Rank, "seq", seq)
		return errStalePoint
	}
	names, vals := pointValues(p, keys, sc.names[:0], sc.vals[:0])
	if r.LatestMetrics == nil {
		r.LatestMetrics = map[string]float64{}
	}
	if drop := overCap(r.LatestMetrics, names); len(drop) > 0 {
		job.DroppedMetricKeys += uint64(len(drop))
		n := 0
		for i, k := range names {
			if !slices.Contains(drop, k) {
				names[n], vals[n] = k, vals[i]
				n++
			}
		}
		names, vals = names[:n], vals[:n]
	}
	dict, err := tx.MetricIDs(key, names, sc.dict[:0])
	if err != nil {
		return err
	}
	sc.names, sc.vals, sc.dict = names, vals, dict
	if err := tx.PutIDs(key, seq, p.Step, p.Ts, dict, vals, false); err != nil {
		if errors.Is(err, store.ErrStalePoint) {
			return errStalePoint
		}
		return err
	}
	for i, k := range names {
		r.LatestMetrics[k] = vals[i]
	}
	if p.Step != nil {
		r.LatestMetrics["step"] = float64(*p.Step)
	}
	r.Points++
	r.LastSeq = seq
	return nil
}

func allRanks(job *gantrypb.Job, ok func(*gantrypb.Rank) bool) bool {
	for _, r := range job.Ranks {
		if !ok(r) {
			return false
		}
	}
	return true
}

// FailedRank returns the rank whose failure ends a multi-node job: among
// the ranks that failed (not cancelled, not lost), the one that ended
// first by its agent's clock, ties to the lower rank; nil when none
// failed. Ranks cancelled because of it, or failing in its wake (a peer
// gone from the collective), come later.
func FailedRank(job *gantrypb.Job) *gantrypb.Rank {
	var first *gantrypb.Rank
	for _, r := range job.GetRanks() {
		if r.State != gantrypb.JobState_JOB_STATE_FAILED {
			continue
		}
		if first == nil || r.FinishedAtMs < first.FinishedAtMs {
			first = r
		}
	}
	return first
}

// finishGang makes a multi-node job terminal once every rank has exited:
// failed, naming the rank, when one failed; cancelled when a rank was
// cancelled (the user's cancel); else succeeded. The final metrics are
// rank 0's exit record's (with the latest values before it).
func finishGang(job *gantrypb.Job, atMs int64) {
	r0 := job.Ranks[0]
	job.RequeueReason = ""
	job.FinalMetrics = copyMetrics(gangFinal(job))
	job.Conditions = nil // an ended job has no current condition; its events remain
	job.FinishedAtMs = gangFinishedAt(job, atMs)
	if job.StartedAtMs == 0 {
		job.StartedAtMs = job.FinishedAtMs
	}
	job.ExitCode, job.Signal, job.LogTail = r0.ExitCode, r0.Signal, r0.LogTail
	if bad := FailedRank(job); bad != nil {
		job.State = gantrypb.JobState_JOB_STATE_FAILED
		job.Error = fmt.Sprintf("rank %d (node %s) failed: %s", bad.Rank, bad.Node, bad.Error)
		job.ExitCode, job.Signal, job.LogTail = bad.ExitCode, bad.Signal, bad.LogTail
		return
	}
	for _, r := range job.Ranks {
		if r.State == gantrypb.JobState_JOB_STATE_CANCELLED || r.State == gantrypb.JobState_JOB_STATE_LOST {
			job.State = gantrypb.JobState_JOB_STATE_CANCELLED
			job.Error = fmt.Sprintf("rank %d (node %s): %s", r.Rank, r.Node, r.Error)
			return
		}
	}
	job.State, job.Error = gantrypb.JobState_JOB_STATE_SUCCEEDED, ""
}

// gangFinal is a multi-node attempt's final metrics: rank 0's exit's, or
// the latest values when rank 0 reported no exit. The caller copies it.
func gangFinal(job *gantrypb.Job) map[string]float64 {
	if final := job.Ranks[0].FinalMetrics; final != nil {
		return final
	}
	return job.LatestMetrics
}

// gangFinishedAt is when a multi-node attempt ended: its last rank's end,
// and not before atMs.
func gangFinishedAt(job *gantrypb.Job, atMs int64) int64 {
	for _, r := range job.Ranks {
		atMs = max(atMs, r.FinishedAtMs)
	}
	return atMs
}

// loseRanks marks the ranks of a multi-node job that are not known to
// have exited and run on a node the store has down as lost (the job was
// declared lost because of them). Ranks on up nodes run on until their
// agents report the exit the scheduler's cancel brings.
func loseRanks(tx *store.Tx, job *gantrypb.Job, atMs int64) error {
	for _, r := range job.GetRanks() {
		if lifecycle.IsTerminal(r.State) {
			continue
		}
		n, err := tx.Node(r.Node)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if n.State == gantrypb.NodeState_NODE_STATE_DOWN {
			r.State, r.Error, r.FinishedAtMs = gantrypb.JobState_JOB_STATE_LOST, "node "+r.Node+" unreachable", atMs
		}
	}
	return nil
}
