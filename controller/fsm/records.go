package fsm

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/gantry-ml/gantry/controller/admission"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// ingest stores a batch of agent records. Each (stream, seq) is applied at
// most once: the per-stream high-water mark makes dropping replays O(1)
// (invariant I3). Records of one job arrive in seq order, so the exit record
// is applied after every point before it, in this entry or an earlier one
// (invariant I2).
//
// A record is applied only if it passes admission and names a job assigned
// to the sending node: one agent can never write into another node's job,
// whatever its leader let through. Streams are keyed by (node, job), so
// records forged under another node's name cannot move a job's mark.
func (f *FSM) ingest(tx *store.Tx, m *gantrypb.IngestCmd, ch *Changes, jobs *jobCache) (any, error) {
	res := IngestResult{}
	touched := map[string]bool{} // jobs this entry changed
	// Jobs with many points in this entry have them stored in bulk
	// (store.Point.Bulk): a property of the entry, the same on every voter.
	points := map[string]int{}
	for _, rec := range m.Records {
		if rec.GetPoint() != nil {
			id, _, _ := lifecycle.ParseRunID(rec.GetJobId())
			points[id]++
		}
	}
	sc := pointScratch{tr: make([]uint32, len(m.Keys)), points: points}
	hw := map[string]uint64{} // high-water marks touched by this entry
	var order []string

	for _, rec := range m.Records {
		err := admission.CheckRecordIn(rec, len(m.Keys))
		if err != nil && rec.GetJobId() != "" && admission.Repair(rec) {
			err = admission.CheckRecordIn(rec, len(m.Keys)) // a pure function: every voter repairs alike
		}
		if err != nil {
			res.Rejected++
			f.log.Warn("agent record rejected at apply", "node", m.NodeId, "seq", rec.GetSeq(), "err", err)
			continue
		}
		stream := store.StreamKeyNode(m.NodeId)
		var job *gantrypb.Job
		var rank *gantrypb.Rank // the sending node's, of a multi-node job
		if rec.JobId != "" {
			// The record's job id is the run id of one attempt of the
			// job (lifecycle.RunID).
			jobID, attempt, okRun := lifecycle.ParseRunID(rec.JobId)
			var err error
			if okRun {
				job, err = jobs.get(tx, jobID)
			}
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, err // an unreadable job is corruption, not "unknown"
			}
			if !okRun || err != nil {
				res.Rejected++
				f.log.Warn("records for unknown job rejected", "job", rec.JobId, "node", m.NodeId, "seq", rec.Seq)
				continue
			}
			if attempt != job.Attempt {
				// An earlier attempt's records were all applied before it
				// was requeued (its exit is its last record), so these are
				// replays; a later attempt's do not exist yet.
				if attempt < job.Attempt && attemptRanOn(job, attempt, m.NodeId) {
					res.Duplicates++
				} else {
					res.Rejected++
					f.log.Warn("records for another attempt of a job rejected",
						"job", job.Id, "attempt", attempt, "current", job.Attempt, "node", m.NodeId, "seq", rec.Seq)
				}
				continue
			}
			rank = lifecycle.RankOf(job, m.NodeId)
			if rank == nil && !lifecycle.RunsOn(job, m.NodeId) {
				res.Rejected++
				f.log.Warn("records for a job of another node rejected",
					"job", rec.JobId, "job_node", job.Node, "node", m.NodeId, "seq", rec.Seq)
				continue
			}
			if l := rec.GetLog(); rec.Seq > math.MaxUint64-job.SeqBase ||
				l != nil && l.Offset+uint64(len(l.Data)) > math.MaxUint64-job.LogBase {
				// seq_base + seq (log_base + offset) would wrap around, into
				// an earlier attempt's seqs (bytes): no agent gets there
				// honestly.
				res.Rejected++
				f.log.Warn("record past the job's seq or log range rejected", "job", rec.JobId, "node", m.NodeId, "seq", rec.Seq)
				continue
			}
			if !touched[job.Id] {
				touched[job.Id] = true
				order = append(order, job.Id)
				jobs.dirty(job.Id)
			}
			// Per run: a requeued job's next attempt starts its seqs anew.
			stream = store.StreamKeyNodeJob(m.NodeId, rec.JobId)
		}
		mark, ok := hw[stream]
		if !ok {
			mark = tx.HighWater(stream)
			if mark == 0 && job != nil && job.Attempt == 0 {
				// Written before marks were per (node, job).
				mark = tx.HighWater(store.StreamKeyJob(job.Id))
			}
		}
		if rec.Seq <= mark {
			res.Duplicates++
			continue
		}
		if rec.Seq != mark+1 {
			f.log.Warn("record seq gap", "stream", stream, "have", mark, "got", rec.Seq)
		}
		hw[stream] = rec.Seq

		if job == nil {
			if g := rec.GetGpu(); g != nil {
				g.Seq = rec.Seq
				if err := tx.PutGPUSample(m.NodeId, g); err != nil {
					return nil, err
				}
				ch.gpu(m.NodeId, g)
				if err := f.gpuFaults(tx, m.NodeId, g, m.AtMs, ch); err != nil {
					return nil, err
				}
			}
			res.Stored++
			continue
		}
		if rank != nil {
			// A multi-node job: the sending node's rank, never another's.
			err = f.applyRankRecord(tx, job, rank, rec, m, ch, &sc)
		} else {
			err = f.applyJobRecord(tx, job, rec, m, ch, &sc)
		}
		if err != nil {
			if errors.Is(err, errStalePoint) {
				res.Rejected++
				continue
			}
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
		ch.job(jobs.jobs[id])
	}
	return res, nil
}

// jobCache holds the jobs that ingest entries of one batch touch, so a
// job is read and written once per batch of Raft entries, however many of
// its entries the batch holds. Any other command flushes it first: they
// read and write jobs in the store directly.
type jobCache struct {
	jobs    map[string]*gantrypb.Job
	order   []string // dirty jobs, in first-touch order
	isDirty map[string]bool
}

func newJobCache() *jobCache {
	return &jobCache{jobs: map[string]*gantrypb.Job{}, isDirty: map[string]bool{}}
}

// get returns the cached job, reading it the first time.
func (c *jobCache) get(tx *store.Tx, id string) (*gantrypb.Job, error) {
	if j, ok := c.jobs[id]; ok {
		return j, nil
	}
	j, err := tx.Job(id)
	if err != nil {
		return nil, err
	}
	c.jobs[id] = j
	return j, nil
}

// dirty marks a cached job as changed.
func (c *jobCache) dirty(id string) {
	if !c.isDirty[id] {
		c.isDirty[id] = true
		c.order = append(c.order, id)
	}
}

// flush writes the changed jobs and empties the cache.
func (c *jobCache) flush(tx *store.Tx) error {
	for _, id := range c.order {
		if err := tx.PutJob(c.jobs[id]); err != nil {
			return err
		}
	}
	clear(c.jobs)
	clear(c.isDirty)
	c.order = c.order[:0]
	return nil
}

// errStalePoint is applyJobRecord's word that it skipped a point below the
// job's stored ones.
var errStalePoint = errors.New("point below the job's stored points")

// overCap returns the names among names that would take the job past
// limits.MaxKeysPerJob distinct metrics, given the ones it has (known).
// Which ones is decided in sorted order, never by map order, so every
// voter drops the same ones. It is nil when all fit.
func overCap(known map[string]float64, names []string) []string {
	var fresh []string
	for _, k := range names {
		if _, ok := known[k]; !ok {
			fresh = append(fresh, k)
		}
	}
	room := max(limits.MaxKeysPerJob-len(known), 0)
	if len(fresh) <= room {
		return nil
	}
	slices.Sort(fresh)
	return fresh[room:]
}

// admitKeys removes from values the keys that would take the job past
// limits.MaxKeysPerJob distinct metrics (overCap), and returns how many
// it removed.
func admitKeys(known map[string]float64, values map[string]float64) int {
	names := make([]string, 0, len(values))
	for k := range values {
		names = append(names, k)
	}
	drop := overCap(known, names)
	for _, k := range drop {
		delete(values, k)
	}
	return len(drop)
}

// bulkPoints is how many points of one job an entry must hold for them to
// be stored in bulk (store.Point.Bulk).
const bulkPoints = 32

// pointScratch is reused across the points of one entry.
type pointScratch struct {
	names []string
	vals  []float64
	dict  []uint32
	// ids maps, per job, the entry's key table to the job's dictionary
	// ids, 1-based (0: not stored for the job in this entry yet).
	ids map[string]tableIDs
	// points counts the entry's points per job.
	points map[string]int
	// tr maps the entry's key table to Changes.Keys, 1-based (0: not yet).
	tr []uint32
}

// tableIDs is one job's map from an entry's key table to its dictionary
// ids, 1-based.
type tableIDs []uint32

// all reports whether every index in idx has an id.
func (t tableIDs) all(idx []uint32) bool {
	for _, k := range idx {
		if int(k) >= len(t) || t[k] == 0 {
			return false
		}
	}
	return true
}

// idsOf returns job's table map for this entry.
func (sc *pointScratch) idsOf(job string, n int) tableIDs {
	if sc.ids == nil {
		sc.ids = map[string]tableIDs{}
	}
	t, ok := sc.ids[job]
	if !ok {
		t = make(tableIDs, n)
		sc.ids[job] = t
	}
	return t
}

// storePoint stores a metric point of job, in either form, and updates
// the job's counters and latest metrics. A flat point is rewritten to
// index ch.Keys, for the feed.
func (f *FSM) storePoint(tx *store.Tx, job *gantrypb.Job, p *gantrypb.MetricPoint, keys []string, ch *Changes, sc *pointScratch) error {
	if job.LastSeq > 0 && p.Seq <= job.LastSeq {
		// Below the job's last point: refused before it counts or drops
		// anything (the store would refuse it too).
		return fmt.Errorf("%w: job %q seq %d, last %d", store.ErrStalePoint, job.Id, p.Seq, job.LastSeq)
	}
	if job.LatestMetrics == nil {
		job.LatestMetrics = map[string]float64{}
	}
	flat := len(p.KeyIdx) > 0
	bulk := sc.points[job.Id] >= bulkPoints
	// A flat point whose every metric this entry has already stored for
	// the job takes the fast path: its table indexes map straight to the
	// job's dictionary ids, with no name looked up again.
	ids := sc.idsOf(job.Id, len(keys))
	if fast := flat && ids.all(p.KeyIdx); fast {
		names, vals, dict := sc.names[:0], p.Vals, sc.dict[:0]
		for _, k := range p.KeyIdx {
			names, dict = append(names, keys[k]), append(dict, ids[k]-1)
		}
		sc.names, sc.dict = names, dict
		if err := tx.PutIDs(job.Id, p.Seq, p.Step, p.Ts, dict, vals, bulk); err != nil {
			return err
		}
		return f.pointStored(job, p, names, vals, keys, ch, sc)
	}
	names, vals := pointValues(p, keys, sc.names[:0], sc.vals[:0])
	if drop := overCap(job.LatestMetrics, names); len(drop) > 0 {
		if err := f.dropKeys(tx, job, p.Seq, p.Ts, len(drop), ch); err != nil {
			return err
		}
		n := 0
		for i, k := range names {
			if slices.Contains(drop, k) {
				delete(p.Values, k)
				continue
			}
			names[n], vals[n] = k, vals[i]
			if flat {
				p.KeyIdx[n], p.Vals[n] = p.KeyIdx[i], p.Vals[i]
			}
			n++
		}
		names, vals = names[:n], vals[:n]
		if flat {
			p.KeyIdx, p.Vals = p.KeyIdx[:n], p.Vals[:n]
		}
	}
	sc.names, sc.vals = names, vals
	dict, err := tx.MetricIDs(job.Id, names, sc.dict[:0])
	if err != nil {
		return err
	}
	sc.dict = dict
	if err := tx.PutIDs(job.Id, p.Seq, p.Step, p.Ts, dict, vals, bulk); err != nil {
		return err
	}
	if flat {
		// These metrics are the job's now: the next points of the entry
		// that hold only them take the fast path.
		for i, k := range p.KeyIdx {
			ids[k] = dict[i] + 1
		}
	}
	return f.pointStored(job, p, names, vals, keys, ch, sc)
}

// pointValues appends p's metric names and values, in either form, to
// names and vals.
func pointValues(p *gantrypb.MetricPoint, keys []string, names []string, vals []float64) ([]string, []float64) {
	if len(p.KeyIdx) > 0 {
		for i, k := range p.KeyIdx {
			names, vals = append(names, keys[k]), append(vals, p.Vals[i])
		}
		return names, vals
	}
	for k, v := range p.Values {
		names, vals = append(names, k), append(vals, v)
	}
	return names, vals
}

// pointStored updates the job for a point just stored and hands the point
// to the feed (a flat one re-indexed to ch.Keys).
func (f *FSM) pointStored(job *gantrypb.Job, p *gantrypb.MetricPoint, names []string, vals []float64, keys []string, ch *Changes, sc *pointScratch) error {
	flat := len(p.KeyIdx) > 0
	for i, k := range names {
		job.LatestMetrics[k] = vals[i]
	}
	if p.Step != nil {
		job.LatestMetrics["step"] = float64(*p.Step)
	}
	job.Points++
	job.LastSeq = p.Seq
	if flat {
		for i, k := range p.KeyIdx {
			if sc.tr[k] == 0 {
				sc.tr[k] = ch.key(keys[k]) + 1
			}
			p.KeyIdx[i] = sc.tr[k] - 1
		}
	}
	ch.point(job.Id, p)
	return nil
}

// addEvent stores e as one of job's own events, counts it, and hands it
// to the feed.
func (f *FSM) addEvent(tx *store.Tx, job *gantrypb.Job, e *gantrypb.JobEvent, ch *Changes) error {
	if err := tx.PutEvent(job.Id, e); err != nil {
		return err
	}
	job.Events++
	ch.event(job.Id, e)
	return nil
}

// agentEvent stores an event an agent reported under key: the job's own
// (own: a single-node job's, or rank 0's of a multi-node job), which are
// counted and fed to watchers, or another rank's. Rejected records count
// for the job whichever rank they were; bad lines only as the job's own.
func (f *FSM) agentEvent(tx *store.Tx, job *gantrypb.Job, key string, e *gantrypb.JobEvent, own bool, ch *Changes) error {
	if err := tx.PutEvent(key, e); err != nil {
		return err
	}
	if own {
		job.Events++
		ch.event(job.Id, e)
	}
	switch lifecycle.EventKind(e.Kind) {
	case lifecycle.EventBadMetricLines:
		if own {
			job.BadLines += e.Count
		}
	case lifecycle.EventRecordRejected:
		job.RejectedRecords++
	}
	return nil
}

// dropKeys records that n metric values of job were refused by admitKeys,
// with an event the first time it happens.
func (f *FSM) dropKeys(tx *store.Tx, job *gantrypb.Job, seq uint64, ts float64, n int, ch *Changes) error {
	first := job.DroppedMetricKeys == 0
	job.DroppedMetricKeys += uint64(n)
	if !first {
		return nil
	}
	e := &gantrypb.JobEvent{Seq: seq, Ts: ts, Kind: string(lifecycle.EventMetricKeysDropped), Count: uint64(n),
		Message: fmt.Sprintf("the job reached %d distinct metric keys; values of new keys are dropped from here on (see dropped_metric_keys)", limits.MaxKeysPerJob)}
	if err := f.addEvent(tx, job, e, ch); err != nil {
		return err
	}
	return nil
}

// storeJobPoint stores one of the job's own points (a single-node job's,
// or rank 0's of a multi-node job) under seq.
func (f *FSM) storeJobPoint(tx *store.Tx, job *gantrypb.Job, seq uint64, p *gantrypb.MetricPoint, keys []string, ch *Changes, sc *pointScratch) error {
	p.Seq = seq
	err := f.storePoint(tx, job, p, keys, ch, sc)
	if errors.Is(err, store.ErrStalePoint) {
		// The job's points went backwards (its stream restarted under a
		// new mark): keep what is stored, on every voter.
		f.log.Warn("metric point below the job's last point skipped", "job", job.Id, "seq", seq, "err", err)
		return errStalePoint
	}
	return err
}

// attemptRanOn reports whether the job's earlier attempt ran on node.
func attemptRanOn(job *gantrypb.Job, attempt uint32, node string) bool {
	return slices.Contains(lifecycle.AttemptNodes(job, attempt), node)
}

// applyJobRecord applies a record of the job's current attempt. Its seq
// and log offsets are the attempt's own; the job's seq_base and log_base
// place them after the earlier attempts' in the job's stored streams.
func (f *FSM) applyJobRecord(tx *store.Tx, job *gantrypb.Job, rec *gantrypb.Record, m *gantrypb.IngestCmd, ch *Changes, sc *pointScratch) error {
	atMs := m.AtMs
	seq := job.SeqBase + rec.Seq
	switch body := rec.Body.(type) {
	case *gantrypb.Record_Point:
		if err := f.storeJobPoint(tx, job, seq, body.Point, m.Keys, ch, sc); err != nil {
			return err
		}

	case *gantrypb.Record_Event:
		body.Event.Seq = seq
		return f.agentEvent(tx, job, job.Id, body.Event, true, ch)

	case *gantrypb.Record_Log:
		l := body.Log
		off := job.LogBase + l.Offset
		if err := tx.PutLog(job.Id, off, l.Data); err != nil {
			return err
		}
		if end := off + uint64(len(l.Data)); end > job.LogBytes {
			job.LogBytes = end
		}

	case *gantrypb.Record_Started:
		if job.State == gantrypb.JobState_JOB_STATE_ASSIGNED {
			job.State = gantrypb.JobState_JOB_STATE_RUNNING
		}
		job.Pid = body.Started.Pid
		job.StartedAtMs = secondsToMs(body.Started.Ts, atMs)

	case *gantrypb.Record_Exit:
		if lifecycle.IsTerminal(job.State) {
			// Terminal means final: a late exit record (the job was
			// declared lost while its agent was cut off) does not rewrite
			// history, but it is kept as an event so nothing is hidden.
			e := &gantrypb.JobEvent{Seq: seq, Ts: body.Exit.Ts, Kind: string(lifecycle.EventLateExit),
				Message: fmt.Sprintf("exit reported after the job was already %s: %s", job.State, lifecycle.DescribeExit(body.Exit))}
			if err := f.addEvent(tx, job, e, ch); err != nil {
				return err
			}
			return nil
		}
		if n := admitKeys(job.LatestMetrics, body.Exit.FinalMetrics); n > 0 {
			if err := f.dropKeys(tx, job, seq, body.Exit.Ts, n, ch); err != nil {
				return err
			}
		}
		if job.RequeueReason != "" {
			if st, _ := lifecycle.ClassifyExit(body.Exit, job.CancelRequested); st == gantrypb.JobState_JOB_STATE_CANCELLED {
				return f.requeue(tx, job, body.Exit, seq, atMs, ch)
			}
			// It ended on its own before the stop landed: that is its end.
		}
		f.applyExit(job, body.Exit, atMs)
		return f.alertJobEnd(tx, job, ch)

	case *gantrypb.Record_Condition:
		return f.applyCondition(tx, job, seq, body.Condition, atMs, ch)

	default:
		f.log.Warn("record with unknown body skipped", "job", job.Id, "seq", rec.Seq)
	}
	return nil
}

// conditionEvent is the kind and message of the event a condition record
// becomes: the condition's kind, with EventCleared when it ends, and its
// evidence with the signal that decided.
func conditionEvent(c *gantrypb.HealthCondition) (kind, msg string) {
	kind = c.Kind
	if !c.Active {
		kind += lifecycle.EventCleared
	}
	return kind, fmt.Sprintf("%s (signal: %s)", c.Evidence, c.Signal)
}

// applyCondition sets or clears a health condition on the job, records it
// as a job event, and applies the spec's policy. A condition that is
// already held (or a clear of one that is not) changes nothing and
// records nothing: a restarted agent may say again what was said. A
// condition on a job that has ended is not a condition of anything.
func (f *FSM) applyCondition(tx *store.Tx, job *gantrypb.Job, seq uint64, c *gantrypb.HealthCondition, atMs int64, ch *Changes) error {
	if lifecycle.IsTerminal(job.State) {
		return nil
	}
	held := slices.IndexFunc(job.Conditions, func(x *gantrypb.JobCondition) bool { return x.Kind == c.Kind })
	kind, msg := conditionEvent(c)
	var action string // what the policy did, worded for people
	switch {
	case c.Active && held >= 0, !c.Active && held < 0:
		return nil
	case c.Active:
		if len(job.Conditions) >= limits.MaxJobConditions {
			f.log.Warn("health condition over the cap skipped", "job", job.Id, "kind", c.Kind)
			return nil
		}
		if c.Kind == lifecycle.CondHung {
			// hung is the stall, diagnosed: it replaces stalled.
			job.Conditions = slices.DeleteFunc(job.Conditions, func(x *gantrypb.JobCondition) bool {
				return x.Kind == lifecycle.CondStalled
			})
		}
		job.Conditions = append(job.Conditions, &gantrypb.JobCondition{Kind: c.Kind, SinceMs: secondsToMs(c.Ts, atMs),
			Evidence: c.Evidence, Gpus: slices.Clone(c.Gpus)})
		if !job.CancelRequested {
			action = policyAction(job, c)
			msg += action
		}
	default:
		job.Conditions = slices.Delete(job.Conditions, held, held+1)
	}
	e := &gantrypb.JobEvent{Seq: seq, Ts: c.Ts, Kind: kind, Message: admission.Clip(msg, limits.MaxEventMessageBytes)}
	if err := f.addEvent(tx, job, e, ch); err != nil {
		return err
	}
	return f.alert(tx, conditionAlert(job, kind, c, action, secondsToMs(c.Ts, atMs)), ch)
}

// applyExit makes the job terminal with its final metrics, all in the same
// write as the points that precede it. Which terminal state is the
// lifecycle's rule (lifecycle.ClassifyExit).
func (f *FSM) applyExit(job *gantrypb.Job, x *gantrypb.JobExit, atMs int64) {
	job.FinalMetrics = exitMetrics(job.LatestMetrics, x)
	job.ExitCode = x.ExitCode
	job.Signal = x.Signal
	job.LogTail = x.LogTail
	job.FinishedAtMs = secondsToMs(x.Ts, atMs)
	if job.StartedAtMs == 0 {
		job.StartedAtMs = job.FinishedAtMs
	}
	job.State, job.Error = lifecycle.ClassifyExit(x, job.CancelRequested)
	job.Conditions = nil // an ended job has no current condition; its events remain
	job.RequeueReason = ""
}

// secondsToMs converts an agent timestamp, falling back to the leader's
// clock when the agent sent none.
func secondsToMs(ts float64, fallbackMs int64) int64 {
	if ts <= 0 || math.IsNaN(ts) || math.IsInf(ts, 0) {
		return fallbackMs
	}
	return int64(ts * 1000)
}
