package fsm

import (
	"errors"
	"fmt"
	"math"

	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/link"
)

// ingest stores a batch of agent records. Each (stream, seq) is applied at
// most once: the per-stream high-water mark makes dropping replays O(1)
// (invariant I3). Records of one job arrive in seq order, so the exit record
// is applied after every point before it, in this entry or an earlier one
// (invariant I2).
func (f *FSM) ingest(tx *store.Tx, m *gantrypb.IngestCmd, ch *Changes) (any, error) {
	res := IngestResult{}
	jobs := map[string]*gantrypb.Job{} // jobs touched by this entry, written once at the end
	hw := map[string]uint64{}          // high-water marks touched by this entry
	var order []string

	for _, rec := range m.Records {
		stream := store.StreamKeyNode(m.NodeId)
		if rec.JobId != "" {
			stream = store.StreamKeyJob(rec.JobId)
		}
		mark, ok := hw[stream]
		if !ok {
			mark = tx.HighWater(stream)
		}
		if rec.Seq <= mark {
			res.Duplicates++
			continue
		}
		if rec.Seq != mark+1 {
			f.log.Warn("record seq gap", "stream", stream, "have", mark, "got", rec.Seq)
		}
		hw[stream] = rec.Seq

		if rec.JobId == "" {
			if g := rec.GetGpu(); g != nil {
				g.Seq = rec.Seq
				if err := tx.PutGPUSample(m.NodeId, g); err != nil {
					return nil, err
				}
				ch.gpu(m.NodeId, g)
			}
			res.Stored++
			continue
		}

		job, ok := jobs[rec.JobId]
		if !ok {
			var err error
			job, err = tx.Job(rec.JobId)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, err // an unreadable job is corruption, not "unknown"
			}
			if err != nil {
				// Records for a job this cluster never had: keep the mark so
				// the agent's replays stay cheap, but there is nothing to store.
				f.log.Warn("records for unknown job dropped", "job", rec.JobId, "node", m.NodeId, "seq", rec.Seq)
				continue
			}
			jobs[rec.JobId] = job
			order = append(order, rec.JobId)
		}
		if err := f.applyJobRecord(tx, job, rec, m.AtMs, ch); err != nil {
			return nil, err
		}
		res.Stored++
	}

	for stream, seq := range hw {
		if err := tx.SetHighWater(stream, seq); err != nil {
			return nil, err
		}
	}
	for _, id := range order {
		job := jobs[id]
		if err := tx.PutJob(job); err != nil {
			return nil, err
		}
		ch.job(job)
	}
	return res, nil
}

func (f *FSM) applyJobRecord(tx *store.Tx, job *gantrypb.Job, rec *gantrypb.Record, atMs int64, ch *Changes) error {
	switch body := rec.Body.(type) {
	case *gantrypb.Record_Point:
		p := body.Point
		p.Seq = rec.Seq
		if err := tx.PutPoint(job.Id, p); err != nil {
			return err
		}
		job.Points++
		job.LastSeq = rec.Seq
		if job.LatestMetrics == nil {
			job.LatestMetrics = map[string]float64{}
		}
		for k, v := range p.Values {
			job.LatestMetrics[k] = v
		}
		if p.Step != nil {
			job.LatestMetrics["step"] = float64(*p.Step)
		}
		ch.point(job.Id, p)

	case *gantrypb.Record_Event:
		e := body.Event
		e.Seq = rec.Seq
		if err := tx.PutEvent(job.Id, e); err != nil {
			return err
		}
		job.Events++
		if e.Kind == link.EventBadMetricLines {
			job.BadLines += e.Count
		}
		ch.event(job.Id, e)

	case *gantrypb.Record_Log:
		l := body.Log
		if err := tx.PutLog(job.Id, l.Offset, l.Data); err != nil {
			return err
		}
		if end := l.Offset + uint64(len(l.Data)); end > job.LogBytes {
			job.LogBytes = end
		}

	case *gantrypb.Record_Started:
		if job.State == gantrypb.JobState_JOB_STATE_ASSIGNED {
			job.State = gantrypb.JobState_JOB_STATE_RUNNING
		}
		job.Pid = body.Started.Pid
		job.StartedAtMs = secondsToMs(body.Started.Ts, atMs)

	case *gantrypb.Record_Exit:
		if IsTerminal(job.State) {
			// Terminal means final: a late exit record (the job was
			// declared lost while its agent was cut off) does not rewrite
			// history, but it is kept as an event so nothing is hidden.
			e := &gantrypb.JobEvent{Seq: rec.Seq, Ts: body.Exit.Ts, Kind: "late_exit",
				Message: fmt.Sprintf("exit reported after the job was already %s: %s", job.State, describeExit(body.Exit))}
			if err := tx.PutEvent(job.Id, e); err != nil {
				return err
			}
			job.Events++
			ch.event(job.Id, e)
			return nil
		}
		f.applyExit(job, body.Exit, atMs)

	default:
		f.log.Warn("record with unknown body skipped", "job", job.Id, "seq", rec.Seq)
	}
	return nil
}

// applyExit makes the job terminal with its final metrics, all in the same
// write as the points that precede it.
func (f *FSM) applyExit(job *gantrypb.Job, x *gantrypb.JobExit, atMs int64) {
	final := copyMetrics(job.LatestMetrics)
	for k, v := range x.FinalMetrics {
		final[k] = v
	}
	job.FinalMetrics = final
	job.ExitCode = x.ExitCode
	job.Signal = x.Signal
	job.LogTail = x.LogTail
	job.FinishedAtMs = secondsToMs(x.Ts, atMs)
	if job.StartedAtMs == 0 {
		job.StartedAtMs = job.FinishedAtMs
	}
	switch {
	case x.Reason == "cancelled" || (job.CancelRequested && x.Reason == ""):
		job.State = gantrypb.JobState_JOB_STATE_CANCELLED
		job.Error = "cancelled: " + describeExit(x)
		if x.ExitCode != nil && *x.ExitCode == 0 && x.Signal == "" {
			// It finished on its own before the signal landed.
			job.State = gantrypb.JobState_JOB_STATE_SUCCEEDED
			job.Error = ""
		}
	case x.Error != "":
		job.State = gantrypb.JobState_JOB_STATE_FAILED
		job.Error = x.Error
	case x.Reason == "max_duration":
		job.State = gantrypb.JobState_JOB_STATE_FAILED
		job.Error = "exceeded max_duration: " + describeExit(x)
	case x.ExitCode != nil && *x.ExitCode == 0 && x.Signal == "":
		job.State = gantrypb.JobState_JOB_STATE_SUCCEEDED
		job.Error = ""
	default:
		job.State = gantrypb.JobState_JOB_STATE_FAILED
		job.Error = describeExit(x)
	}
}

func describeExit(x *gantrypb.JobExit) string {
	switch {
	case x.Signal != "":
		return "killed by " + x.Signal
	case x.ExitCode != nil:
		return fmt.Sprintf("exited with code %d", *x.ExitCode)
	case x.Error != "":
		return x.Error
	}
	return "exit status unknown"
}

// secondsToMs converts an agent timestamp, falling back to the leader's
// clock when the agent sent none.
func secondsToMs(ts float64, fallbackMs int64) int64 {
	if ts <= 0 || math.IsNaN(ts) || math.IsInf(ts, 0) {
		return fallbackMs
	}
	return int64(ts * 1000)
}
