// Package fsm applies Gantry's Raft entries to the bbolt store. It is the
// only writer of controller state. Each batch of committed entries is
// applied in one short write transaction; once it has committed, the changes
// are handed to an Observer (the in-memory hub and the scheduler), so that
// watchers are fed from memory and never from a transaction of their own.
package fsm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/command"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Errors returned as Raft responses (not panics). A request that is valid
// but not allowed by the job's state gets one of the lifecycle package's
// domain errors (lifecycle.ErrJobExists and its siblings); these are the
// FSM's own.
var (
	// ErrSkipped is the response to a committed entry that cannot be
	// applied (it does not decode, or breaks a limit). Every voter skips
	// it in the same way, so their states stay equal; retrying the same
	// entry can never succeed.
	ErrSkipped = errors.New("entry skipped")
	// ErrStopped is the response to entries that arrive after the store
	// failed for good; the node is shutting down and applies nothing more.
	ErrStopped = errors.New("fsm stopped after a store failure")
)

// Observer learns what each applied batch changed, after it committed.
// It is called from the Raft apply goroutine, so it must not block.
type Observer interface {
	Applied(c *Changes)
}

// Options tunes how the FSM reacts to failures.
type Options struct {
	// OnFatal is called once, on its own goroutine, when the store fails
	// in a way that waiting cannot fix (an I/O error). The node must stop:
	// its state no longer follows the log. Nil logs the error only.
	OnFatal func(error)
	// RetryEvery is how often a write that failed for lack of disk space
	// is tried again (default 1 s).
	RetryEvery time.Duration
}

// FSM implements raft.FSM and raft.BatchingFSM over a store.Store.
type FSM struct {
	store    *store.Store
	observer Observer
	log      *slog.Logger
	opts     Options
	applied  atomic.Uint64

	skipped     atomic.Uint64 // entries skipped whole
	rejected    atomic.Uint64 // records skipped inside applied ingest entries
	diskWaiting atomic.Bool   // a write is waiting for disk space
	alertsFull  atomic.Uint64 // alerts dropped from the full outbox
	fatal       atomic.Pointer[error]
	stop        chan struct{}
	stopOnce    sync.Once
}

var _ raft.BatchingFSM = (*FSM)(nil)

// AlertsDropped is how many undelivered alerts the full outbox dropped
// since this process started.
func (f *FSM) AlertsDropped() uint64 { return f.alertsFull.Load() }

// New returns an FSM writing to st and reporting to obs (which may be nil).
func New(st *store.Store, obs Observer, log *slog.Logger) *FSM {
	return NewWithOptions(st, obs, log, Options{})
}

// NewWithOptions is New with failure handling options.
func NewWithOptions(st *store.Store, obs Observer, log *slog.Logger, opts Options) *FSM {
	if opts.RetryEvery <= 0 {
		opts.RetryEvery = time.Second
	}
	return &FSM{store: st, observer: obs, log: log, opts: opts, stop: make(chan struct{})}
}

// AppliedIndex is the index of the last entry applied.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// Skipped is the number of committed entries skipped because they could not
// be applied.
func (f *FSM) Skipped() uint64 { return f.skipped.Load() }

// RejectedRecords is the number of agent records skipped at apply because
// they broke a limit or named a job of another node.
func (f *FSM) RejectedRecords() uint64 { return f.rejected.Load() }

// WaitingForDisk reports whether applies are blocked on a full disk.
func (f *FSM) WaitingForDisk() bool { return f.diskWaiting.Load() }

// Err is the fatal store error that stopped the FSM, or nil.
func (f *FSM) Err() error {
	if p := f.fatal.Load(); p != nil {
		return *p
	}
	return nil
}

// Close stops a write that is waiting for disk space, so that Raft can
// shut down. Entries it had not applied are applied again from the log
// at the next start.
func (f *FSM) Close() {
	f.stopOnce.Do(func() { close(f.stop) })
}

// IngestResult is the response to an ingest entry.
type IngestResult struct {
	Stored     int
	Duplicates int
	// Rejected counts records skipped: over a limit, or for a job that
	// is not the sending node's.
	Rejected int
}

// Apply applies one entry.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies entries in one write transaction.
//
// Nothing in an entry can crash a voter. An entry that does not decode, or
// whose apply fails on the data (a key bbolt refuses, a panic in a
// handler), is skipped: the batch is rolled back and applied again without
// it, which gives the same result on every voter because it depends only
// on the entries and the state. A full disk makes the apply wait and try
// again, so nothing committed is lost; any other store failure stops the
// FSM and reports it through Options.OnFatal.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	responses := make([]any, len(logs))
	if err := f.Err(); err != nil {
		for i := range responses {
			responses[i] = fmt.Errorf("%w: %v", ErrStopped, err)
		}
		return responses
	}
	// Decode (and check) every entry once, outside the transaction. A retry
	// decodes again, because handlers may have changed the messages.
	msgs := make([]proto.Message, len(logs))
	skip := map[int]error{}
	var corrupt error
	decode := func(first bool) {
		for i, l := range logs {
			if l.Type != raft.LogCommand || skip[i] != nil {
				continue
			}
			msg, err := command.Decode(l.Data)
			if errors.Is(err, command.ErrCorrupt) {
				// This node's copy of the entry is damaged: the other
				// voters have the intact one and apply it, so skipping it
				// here would make this node's state differ from theirs.
				corrupt = fmt.Errorf("fsm: raft entry %d is damaged in this node's log: %w. Stop this controller, "+
					"move its raft directory aside and start it again: it rejoins and catches up from its peers", l.Index, err)
				return
			}
			if err == nil {
				err = checkCommand(msg)
			}
			if err != nil {
				skip[i] = err
				if first {
					f.skipped.Add(1)
					f.log.Error("committed raft entry cannot be applied; skipping it on every voter", "index", l.Index, "err", err)
				}
				continue
			}
			msgs[i] = msg
		}
	}
	decode(true)
	if corrupt != nil {
		f.fail(corrupt)
		return f.stopResponses(responses)
	}
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			decode(false)
		}
		changes := newChanges()
		var rejected int
		for i := range responses {
			responses[i] = nil
		}
		var last uint64
		bad, badErr := -1, error(nil)
		err := f.store.Update(func(tx *store.Tx) error {
			jobs := newJobCache()
			for i, l := range logs {
				last = l.Index
				if l.Type != raft.LogCommand {
					continue
				}
				if why, ok := skip[i]; ok {
					responses[i] = fmt.Errorf("%w: entry %d: %v", ErrSkipped, l.Index, why)
					continue
				}
				resp, err := f.applyEntry(tx, l.Index, msgs[i], changes, jobs)
				if err != nil {
					if isDomain(err) {
						responses[i] = err
						continue
					}
					bad, badErr = i, err
					return err
				}
				if r, ok := resp.(IngestResult); ok {
					rejected += r.Rejected
				}
				responses[i] = resp
			}
			if err := jobs.flush(tx); err != nil {
				return err
			}
			return tx.SetAppliedIndex(last)
		})
		switch {
		case err == nil:
			if f.diskWaiting.Swap(false) {
				f.log.Info("state store has disk space again; applies resumed")
			}
			f.rejected.Add(uint64(rejected))
			f.applied.Store(last)
			if f.observer != nil && !changes.empty() {
				f.observer.Applied(changes)
			}
			return responses
		case isDiskFull(err):
			if !f.waitForDisk(err) {
				return f.stopResponses(responses)
			}
		case bad >= 0:
			// The entry itself cannot be applied: skip it and redo the
			// batch, whose transaction was rolled back.
			skip[bad] = badErr
			f.skipped.Add(1)
			f.log.Error("committed raft entry cannot be applied; skipping it on every voter",
				"index", logs[bad].Index, "err", badErr)
		default:
			f.fail(fmt.Errorf("fsm: state store write failed at raft index %d: %w", last, err))
			return f.stopResponses(responses)
		}
	}
}

// applyEntry applies one decoded entry, turning a panic in a handler into
// an error so that one bad entry cannot crash the node.
func (f *FSM) applyEntry(tx *store.Tx, index uint64, msg proto.Message, ch *Changes, jobs *jobCache) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			resp, err = nil, fmt.Errorf("panic applying entry %d: %v", index, r)
		}
	}()
	return f.apply(tx, msg, ch, jobs)
}

func (f *FSM) stopResponses(responses []any) []any {
	for i := range responses {
		responses[i] = ErrStopped
	}
	return responses
}

// waitForDisk blocks until a retry is due, or returns false when the FSM
// is closing.
func (f *FSM) waitForDisk(err error) bool {
	if !f.diskWaiting.Swap(true) {
		f.log.Error("state store is out of disk space; applies wait until space is freed", "err", err)
	}
	select {
	case <-f.stop:
		return false
	case <-time.After(f.opts.RetryEvery):
	}
	return true
}

func (f *FSM) fail(err error) {
	if !f.fatal.CompareAndSwap(nil, &err) {
		return
	}
	f.log.Error("state store failed; this controller stops applying and must be restarted", "err", err)
	if f.opts.OnFatal != nil {
		go f.opts.OnFatal(err)
	}
}

func isDiskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

func isDomain(err error) bool {
	return errors.Is(err, lifecycle.ErrJobExists) || errors.Is(err, lifecycle.ErrJobNotFound) ||
		errors.Is(err, lifecycle.ErrTerminal) || errors.Is(err, lifecycle.ErrNotQueued) ||
		errors.Is(err, lifecycle.ErrNotDue) || errors.Is(err, lifecycle.ErrNodeNotFound)
}

func (f *FSM) apply(tx *store.Tx, msg proto.Message, ch *Changes, jobs *jobCache) (any, error) {
	if m, ok := msg.(*gantrypb.IngestCmd); ok {
		return f.ingest(tx, m, ch, jobs)
	}
	// Other commands read and write jobs in the store directly.
	if err := jobs.flush(tx); err != nil {
		return nil, err
	}
	switch m := msg.(type) {
	case *gantrypb.SubmitJobCmd:
		return f.submit(tx, m, ch)
	case *gantrypb.AssignJobCmd:
		return nil, f.assign(tx, m, ch)
	case *gantrypb.AssignGangCmd:
		return nil, f.assignGang(tx, m, ch)
	case *gantrypb.CancelJobCmd:
		return nil, f.cancel(tx, m, ch)
	case *gantrypb.NodeUpCmd:
		return nil, f.nodeUp(tx, m, ch)
	case *gantrypb.NodeDownCmd:
		return nil, f.nodeDown(tx, m, ch)
	case *gantrypb.EndJobCmd:
		return nil, f.endJob(tx, m, ch)
	case *gantrypb.QueueTimeoutCmd:
		return nil, f.queueTimeout(tx, m, ch)
	case *gantrypb.AlertsDeliveredCmd:
		return tx.SetAlertsDelivered(m.UpTo)
	case *gantrypb.DrainCmd:
		return nil, f.drain(tx, m, ch)
	}
	return nil, fmt.Errorf("no handler for %T", msg)
}

func (f *FSM) submit(tx *store.Tx, m *gantrypb.SubmitJobCmd, ch *Changes) (any, error) {
	if _, err := tx.Job(m.JobId); err == nil {
		return nil, fmt.Errorf("%w: %s", lifecycle.ErrJobExists, m.JobId)
	}
	job := &gantrypb.Job{
		Id:          m.JobId,
		Spec:        m.Spec,
		State:       gantrypb.JobState_JOB_STATE_QUEUED,
		CreatedAtMs: m.AtMs,
	}
	if err := tx.PutJob(job); err != nil {
		return nil, err
	}
	ch.job(job)
	return m.JobId, nil
}

func (f *FSM) job(tx *store.Tx, id string) (*gantrypb.Job, error) {
	job, err := tx.Job(id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", lifecycle.ErrJobNotFound, id)
	}
	return job, err
}

func (f *FSM) assign(tx *store.Tx, m *gantrypb.AssignJobCmd, ch *Changes) error {
	job, err := f.job(tx, m.JobId)
	if err != nil {
		return err
	}
	if job.State != gantrypb.JobState_JOB_STATE_QUEUED {
		return fmt.Errorf("%w: %s is %s", lifecycle.ErrNotQueued, job.Id, job.State)
	}
	if lifecycle.IsGang(job.Spec) {
		// A gang is placed whole, by assign_gang, never one node of it.
		return fmt.Errorf("assign_job %s refused: a multi-node job is assigned by assign_gang", job.Id)
	}
	job.State = gantrypb.JobState_JOB_STATE_ASSIGNED
	job.Node = m.NodeId
	job.Gpus = m.Gpus
	job.AssignedAtMs = m.AtMs
	if err := tx.PutJob(job); err != nil {
		return err
	}
	ch.job(job)
	return nil
}

func (f *FSM) cancel(tx *store.Tx, m *gantrypb.CancelJobCmd, ch *Changes) error {
	job, err := f.job(tx, m.JobId)
	if err != nil {
		return err
	}
	switch {
	case lifecycle.IsTerminal(job.State):
		return fmt.Errorf("%w: job %s is %s", lifecycle.ErrTerminal, job.Id, lifecycle.StateName(job.State))
	case job.State == gantrypb.JobState_JOB_STATE_QUEUED:
		// Not running: there are no metrics to wait for, so it ends here
		// (a requeued job keeps what its earlier attempts reported).
		why := "cancelled before it started"
		if job.Attempt > 0 {
			why = fmt.Sprintf("cancelled while queued for attempt %d", job.Attempt+1)
		}
		finish(job, gantrypb.JobState_JOB_STATE_CANCELLED, why, m.AtMs)
		if err := f.alertJobEnd(tx, job, ch); err != nil {
			return err
		}
	default:
		// The agent stops it; the exit record makes it terminal. A
		// requeue under way becomes a plain cancel: the user's word wins.
		job.CancelRequested = true
		job.RequeueReason = ""
	}
	if err := tx.PutJob(job); err != nil {
		return err
	}
	ch.job(job)
	return nil
}

func (f *FSM) endJob(tx *store.Tx, m *gantrypb.EndJobCmd, ch *Changes) error {
	job, err := f.job(tx, m.JobId)
	if err != nil {
		return err
	}
	if lifecycle.IsTerminal(job.State) {
		return fmt.Errorf("%w: job %s is %s", lifecycle.ErrTerminal, job.Id, lifecycle.StateName(job.State))
	}
	finish(job, m.State, m.Error, m.AtMs)
	if m.State == gantrypb.JobState_JOB_STATE_LOST {
		if err := loseRanks(tx, job, m.AtMs); err != nil {
			return err
		}
	}
	if err := f.alertJobEnd(tx, job, ch); err != nil {
		return err
	}
	if err := tx.PutJob(job); err != nil {
		return err
	}
	ch.job(job)
	return nil
}

// queueTimeout fails a job that was still queued at its deadline. The
// leader decided the deadline passed, but between its decision and this
// entry the job may have been placed or cancelled: only the state at this
// point of the log counts, so every voter refuses such an entry alike and
// the job keeps running. The job ends failed rather than cancelled: no one
// asked to stop it, the cluster could not run it in the time its owner
// allowed, and scripts that wait for a job treat failed as "look at the
// error".
func (f *FSM) queueTimeout(tx *store.Tx, m *gantrypb.QueueTimeoutCmd, ch *Changes) error {
	job, err := f.job(tx, m.JobId)
	if err != nil {
		return err
	}
	if job.State != gantrypb.JobState_JOB_STATE_QUEUED {
		return fmt.Errorf("%w: %s is %s", lifecycle.ErrNotQueued, job.Id, lifecycle.StateName(job.State))
	}
	if due, ok := lifecycle.QueueDeadlineMs(job); !ok || m.AtMs < due {
		return fmt.Errorf("%w: %s (created at %d ms, queue timeout %d ms, entry at %d ms)",
			lifecycle.ErrNotDue, job.Id, job.CreatedAtMs, job.GetSpec().GetQueueTimeoutMs(), m.AtMs)
	}
	finish(job, gantrypb.JobState_JOB_STATE_FAILED, m.Error, m.AtMs)
	if err := f.alertJobEnd(tx, job, ch); err != nil {
		return err
	}
	// A queued job's current attempt was never assigned, so no agent
	// stream has written an event for it: the first seq after the earlier
	// attempts' is free, and nothing will come after it.
	e := &gantrypb.JobEvent{Seq: job.SeqBase + 1, Ts: float64(m.AtMs) / 1000, Kind: string(lifecycle.EventQueueTimeout), Message: m.Error}
	if err := f.addEvent(tx, job, e, ch); err != nil {
		return err
	}
	if err := tx.PutJob(job); err != nil {
		return err
	}
	ch.job(job)
	return nil
}

func (f *FSM) nodeUp(tx *store.Tx, m *gantrypb.NodeUpCmd, ch *Changes) error {
	node := proto.Clone(m.Node).(*gantrypb.Node)
	node.State = gantrypb.NodeState_NODE_STATE_UP
	node.LastSeenMs = m.AtMs
	if old, err := tx.Node(node.Id); err == nil {
		node.RegisteredAtMs = old.RegisteredAtMs
		// What the controller decided about the node outlives the agent's
		// restart: a failed GPU is fixed, and a drain lifted, by an
		// operator's undrain.
		node.UnhealthyGpus, node.Drained, node.DrainedGpus = old.UnhealthyGpus, old.Drained, old.DrainedGpus
	} else {
		node.RegisteredAtMs = m.AtMs
	}
	if err := tx.PutNode(node); err != nil {
		return err
	}
	ch.node(node)

	// A running job its agent no longer knows is gone: the agent lost its
	// state (a wiped host). Say so instead of showing it running forever.
	active := make(map[string]bool, len(m.ActiveJobs))
	for _, id := range m.ActiveJobs {
		active[id] = true
	}
	var lost, gangs []*gantrypb.Job
	err := tx.Jobs(func(j *gantrypb.Job) bool {
		if active[lifecycle.JobRunID(j)] {
			return true
		}
		if r := lifecycle.RankOf(j, node.Id); r != nil {
			// A running rank its agent no longer knows is lost. So is a
			// rank of an ended job that never started here: no start will
			// be sent for it any more, and it would stay a stray.
			if r.State == gantrypb.JobState_JOB_STATE_RUNNING ||
				(lifecycle.IsTerminal(j.State) && r.State == gantrypb.JobState_JOB_STATE_ASSIGNED) {
				gangs = append(gangs, j)
			}
			return true
		}
		if j.Node == node.Id && j.State == gantrypb.JobState_JOB_STATE_RUNNING {
			lost = append(lost, j)
		}
		return true
	})
	if err != nil {
		return err
	}
	for _, j := range gangs {
		// This node's rank is gone with the agent's state: the rank is
		// lost, and so is the job if it was still going (its other ranks
		// are cancelled as strays by the scheduler).
		r := lifecycle.RankOf(j, node.Id)
		r.State, r.Error, r.FinishedAtMs = gantrypb.JobState_JOB_STATE_LOST, "the agent came back without this rank", m.AtMs
		if !lifecycle.IsTerminal(j.State) {
			finish(j, gantrypb.JobState_JOB_STATE_LOST,
				fmt.Sprintf("rank %d: the agent on %s came back without it (its local state was lost)", r.Rank, node.Id), m.AtMs)
			if err := f.alertJobEnd(tx, j, ch); err != nil {
				return err
			}
		}
		if err := tx.PutJob(j); err != nil {
			return err
		}
		ch.job(j)
	}
	for _, j := range lost {
		finish(j, gantrypb.JobState_JOB_STATE_LOST, "the agent on "+node.Id+" came back without this job (its local state was lost)", m.AtMs)
		if err := f.alertJobEnd(tx, j, ch); err != nil {
			return err
		}
		if err := tx.PutJob(j); err != nil {
			return err
		}
		ch.job(j)
	}
	return nil
}

func (f *FSM) nodeDown(tx *store.Tx, m *gantrypb.NodeDownCmd, ch *Changes) error {
	node, err := tx.Node(m.NodeId)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	}
	wasUp := node.State == gantrypb.NodeState_NODE_STATE_UP
	node.State = gantrypb.NodeState_NODE_STATE_DOWN
	node.LastSeenMs = m.AtMs
	if err := tx.PutNode(node); err != nil {
		return err
	}
	if wasUp {
		if err := f.alert(tx, &gantrypb.Alert{AtMs: m.AtMs, Kind: lifecycle.AlertNodeLost, Node: node.Id,
			Text: fmt.Sprintf("Gantry: node %s (%s) lost: its agent stopped answering", node.Id, node.Hostname)}, ch); err != nil {
			return err
		}
	}
	ch.node(node)
	return nil
}

// finish makes a job terminal for a reason the controller established. The
// final metrics are the latest values stored, so even a lost job keeps what
// it reported (invariant I2).
func finish(job *gantrypb.Job, state gantrypb.JobState, reason string, atMs int64) {
	job.State = state
	job.Error = reason
	job.FinishedAtMs = atMs
	job.FinalMetrics = copyMetrics(job.LatestMetrics)
	job.Conditions = nil
	job.RequeueReason = ""
}

// exitMetrics is what an exit makes final: the latest values, with the
// exit record's final metrics over them (a new map).
func exitMetrics(latest map[string]float64, x *gantrypb.JobExit) map[string]float64 {
	final := copyMetrics(latest)
	for k, v := range x.FinalMetrics {
		final[k] = v
	}
	return final
}

func copyMetrics(m map[string]float64) map[string]float64 {
	out := make(map[string]float64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Snapshot pins the current state (a bbolt read transaction, taken here on
// the apply goroutine so it matches the snapshot index exactly); Persist
// writes it while applies go on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	im, err := f.store.Image()
	if err != nil {
		return nil, err
	}
	return &snapshot{image: im}, nil
}

// Restore replaces the state with a snapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.store.Restore(rc); err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	var applied uint64
	if err := f.store.View(func(tx *store.Tx) error { applied = tx.AppliedIndex(); return nil }); err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	f.applied.Store(applied)
	if f.observer != nil {
		f.observer.Applied(&Changes{Restored: true})
	}
	return nil
}

type snapshot struct {
	image *store.Image
}

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.image.WriteTo(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("fsm: snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() { s.image.Release() }
