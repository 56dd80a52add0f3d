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
	"sync/atomic"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/command"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Domain errors returned as Raft responses (not panics: the entry is valid,
// the request is not).
var (
	ErrJobExists   = errors.New("job already exists")
	ErrJobNotFound = errors.New("job not found")
	ErrTerminal    = errors.New("job already ended")
	ErrNotQueued   = errors.New("job is not queued")
)

// Observer learns what each applied batch changed, after it committed.
// It is called from the Raft apply goroutine, so it must not block.
type Observer interface {
	Applied(c *Changes)
}

// FSM implements raft.FSM and raft.BatchingFSM over a store.Store.
type FSM struct {
	store    *store.Store
	observer Observer
	log      *slog.Logger
	applied  atomic.Uint64
}

var _ raft.BatchingFSM = (*FSM)(nil)

// New returns an FSM writing to st and reporting to obs (which may be nil).
func New(st *store.Store, obs Observer, log *slog.Logger) *FSM {
	return &FSM{store: st, observer: obs, log: log}
}

// AppliedIndex is the index of the last entry applied.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// IngestResult is the response to an ingest entry.
type IngestResult struct {
	Stored     int
	Duplicates int
}

// Apply applies one entry.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies entries in one write transaction. A corrupt entry or a
// failing store panics: continuing would make this node's state diverge.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	responses := make([]any, len(logs))
	changes := newChanges()
	var last uint64
	err := f.store.Update(func(tx *store.Tx) error {
		for i, l := range logs {
			last = l.Index
			if l.Type != raft.LogCommand {
				continue
			}
			msg, err := command.Decode(l.Data)
			if err != nil {
				panic(fmt.Sprintf("fsm: corrupt raft entry %d: %v", l.Index, err))
			}
			resp, err := f.apply(tx, msg, changes)
			if err != nil {
				if isDomain(err) {
					responses[i] = err
					continue
				}
				return fmt.Errorf("apply entry %d (%T): %w", l.Index, msg, err)
			}
			responses[i] = resp
		}
		return tx.SetAppliedIndex(last)
	})
	if err != nil {
		panic(fmt.Sprintf("fsm: store write failed: %v", err))
	}
	f.applied.Store(last)
	if f.observer != nil && !changes.empty() {
		f.observer.Applied(changes)
	}
	return responses
}

func isDomain(err error) bool {
	return errors.Is(err, ErrJobExists) || errors.Is(err, ErrJobNotFound) ||
		errors.Is(err, ErrTerminal) || errors.Is(err, ErrNotQueued)
}

func (f *FSM) apply(tx *store.Tx, msg proto.Message, ch *Changes) (any, error) {
	switch m := msg.(type) {
	case *gantrypb.SubmitJobCmd:
		return f.submit(tx, m, ch)
	case *gantrypb.AssignJobCmd:
		return nil, f.assign(tx, m, ch)
	case *gantrypb.CancelJobCmd:
		return nil, f.cancel(tx, m, ch)
	case *gantrypb.IngestCmd:
		return f.ingest(tx, m, ch)
	case *gantrypb.NodeUpCmd:
		return nil, f.nodeUp(tx, m, ch)
	case *gantrypb.NodeDownCmd:
		return nil, f.nodeDown(tx, m, ch)
	case *gantrypb.EndJobCmd:
		return nil, f.endJob(tx, m, ch)
	}
	panic(fmt.Sprintf("fsm: no handler for %T", msg))
}

func (f *FSM) submit(tx *store.Tx, m *gantrypb.SubmitJobCmd, ch *Changes) (any, error) {
	if _, err := tx.Job(m.JobId); err == nil {
		return nil, fmt.Errorf("%w: %s", ErrJobExists, m.JobId)
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
		return nil, fmt.Errorf("%w: %s", ErrJobNotFound, id)
	}
	return job, err
}

func (f *FSM) assign(tx *store.Tx, m *gantrypb.AssignJobCmd, ch *Changes) error {
	job, err := f.job(tx, m.JobId)
	if err != nil {
		return err
	}
	if job.State != gantrypb.JobState_JOB_STATE_QUEUED {
		return fmt.Errorf("%w: %s is %s", ErrNotQueued, job.Id, job.State)
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
	case IsTerminal(job.State):
		return fmt.Errorf("%w: %s is %s", ErrTerminal, job.Id, job.State)
	case job.State == gantrypb.JobState_JOB_STATE_QUEUED:
		// Never ran: there are no metrics to wait for, so it ends here.
		finish(job, gantrypb.JobState_JOB_STATE_CANCELLED, "cancelled before it started", m.AtMs)
	default:
		// The agent stops it; the exit record makes it terminal.
		job.CancelRequested = true
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
	if IsTerminal(job.State) {
		return fmt.Errorf("%w: %s is %s", ErrTerminal, job.Id, job.State)
	}
	finish(job, m.State, m.Error, m.AtMs)
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
	var lost []*gantrypb.Job
	err := tx.Jobs(func(j *gantrypb.Job) bool {
		if j.Node == node.Id && j.State == gantrypb.JobState_JOB_STATE_RUNNING && !active[j.Id] {
			lost = append(lost, j)
		}
		return true
	})
	if err != nil {
		return err
	}
	for _, j := range lost {
		finish(j, gantrypb.JobState_JOB_STATE_LOST, "the agent on "+node.Id+" came back without this job (its local state was lost)", m.AtMs)
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
	node.State = gantrypb.NodeState_NODE_STATE_DOWN
	node.LastSeenMs = m.AtMs
	if err := tx.PutNode(node); err != nil {
		return err
	}
	ch.node(node)
	return nil
}

// IsTerminal reports whether a job in this state never changes again.
func IsTerminal(s gantrypb.JobState) bool {
	switch s {
	case gantrypb.JobState_JOB_STATE_SUCCEEDED, gantrypb.JobState_JOB_STATE_FAILED,
		gantrypb.JobState_JOB_STATE_CANCELLED, gantrypb.JobState_JOB_STATE_LOST:
		return true
	}
	return false
}

// finish makes a job terminal for a reason the controller established. The
// final metrics are the latest values stored, so even a lost job keeps what
// it reported (invariant I2).
func finish(job *gantrypb.Job, state gantrypb.JobState, reason string, atMs int64) {
	job.State = state
	job.Error = reason
	job.FinishedAtMs = atMs
	job.FinalMetrics = copyMetrics(job.LatestMetrics)
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
