// Package scheduler places queued jobs on agents with free GPUs and drives
// agents toward the replicated state: it runs on every controller but acts
// only on the leader. Placement is a pure function; the loop reads state in
// one short transaction, then commits decisions through Raft and sends
// StartJob/CancelJob to the agents, never holding a transaction meanwhile.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/admission"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// Candidate is a node as placement sees it.
type Candidate struct {
	ID   string
	GPUs []*gantrypb.GPUInfo
	// Used holds the GPU indices held by assigned or running jobs.
	Used map[uint32]bool
	// Unusable holds GPUs nothing new may be placed on: failing
	// (Node.unhealthy_gpus) or drained (Node.drained_gpus).
	Unusable map[uint32]bool
	// Drained: nothing new is placed on the node.
	Drained bool
}

// NodeCandidate is node n as placement sees it, with used its held GPUs.
func NodeCandidate(n *gantrypb.Node, used map[uint32]bool) Candidate {
	c := Candidate{ID: n.Id, GPUs: n.Gpus, Used: used, Drained: n.Drained}
	for _, h := range n.UnhealthyGpus {
		if c.Unusable == nil {
			c.Unusable = map[uint32]bool{}
		}
		c.Unusable[h.Index] = true
	}
	for _, g := range n.DrainedGpus {
		if c.Unusable == nil {
			c.Unusable = map[uint32]bool{}
		}
		c.Unusable[g] = true
	}
	return c
}

// Place picks a node and GPU indices for a job, or ok=false when no
// candidate has room now (the job stays queued). Among fitting nodes it
// picks the one with the fewest free GPUs that still fit (best fit), so
// large jobs are not starved by small ones spread everywhere; ties go to
// the lowest node id for determinism. A drained node, and failing or
// drained GPUs (Candidate.Unusable), take nothing new.
func Place(spec *gantrypb.JobSpec, candidates []Candidate) (node string, gpus []uint32, ok bool) {
	want := int(spec.GetResources().GetGpus())
	gpuType := spec.GetResources().GetGpuType()
	bestFree := -1
	for _, c := range candidates {
		if (spec.GetNode() != "" && c.ID != spec.GetNode()) || c.Drained {
			continue
		}
		var free []uint32
		for _, g := range c.GPUs {
			if c.Used[g.Index] || c.Unusable[g.Index] {
				continue
			}
			if gpuType != "" && !matchesType(g.Name, gpuType) {
				continue
			}
			free = append(free, g.Index)
		}
		if len(free) < want {
			continue
		}
		if bestFree == -1 || len(free) < bestFree || (len(free) == bestFree && c.ID < node) {
			sort.Slice(free, func(a, b int) bool { return free[a] < free[b] })
			bestFree = len(free)
			node = c.ID
			gpus = append([]uint32(nil), free[:want]...)
		}
	}
	return node, gpus, bestFree >= 0
}

// matchesType compares a requested GPU type ("A100", "h100") with a device
// name ("NVIDIA A100-SXM4-40GB") case-insensitively by substring.
func matchesType(name, want string) bool {
	return strings.Contains(strings.ToLower(name), strings.ToLower(want))
}

// Raft is what the scheduler needs of the Raft node.
type Raft interface {
	Apply(m proto.Message) (any, error)
	IsLeader() bool
}

// Agents sends control messages to connected agents.
type Agents interface {
	// Connected reports whether the node has a live session to this controller.
	Connected(nodeID string) bool
	// SendOnce sends m to the node unless the same key was already sent on
	// its current session.
	SendOnce(nodeID, key string, m *gantrypb.ControlMessage) error
	// Addr is the address peers reach the node's host at (its agent's
	// advertised address), "" when it is not connected.
	Addr(nodeID string) string
	// Forget lets key be sent again on the node's current session, if it
	// has one; the scheduler calls it once the job the key names has
	// ended, so a session's record of what it sent does not only grow.
	Forget(nodeID, key string)
}

// Scheduler is the reconcile loop.
type Scheduler struct {
	store  *store.Store
	raft   Raft
	agents Agents
	log    *slog.Logger
	wake   Wakeup
	// Interval is the reconcile period when nothing wakes it.
	Interval time.Duration
	// LostGrace is how long a node may stay down before its assigned and
	// running jobs are declared lost.
	LostGrace time.Duration
	now       func() time.Time
	// told maps each job whose start or cancel was sent (or tried) to the
	// nodes it was sent to (one, or one per rank of a multi-node job),
	// until the job ends and no rank runs on: then its keys are forgotten.
	// Only the reconcile pass uses it.
	told map[string]map[string]bool
	// ReserveAfter is how long a multi-node job may wait queued before
	// it reserves the GPUs it needs (ReserveGang): later jobs may no
	// longer take them, so a stream of small jobs cannot starve it.
	ReserveAfter time.Duration
	// nextDeadline is the earliest queue_timeout deadline still ahead
	// after the last pass (zero: none); Run sets a timer for it.
	nextDeadline time.Time
}

// Wakeup asks a scheduler for a reconcile soon. It exists apart from the
// Scheduler so that what wakes it (the FSM's feed, agent sessions) can be
// built before the scheduler itself, which needs them built first.
type Wakeup chan struct{}

// NewWakeup returns a Wakeup for New.
func NewWakeup() Wakeup { return make(Wakeup, 1) }

// Wake asks for a reconcile soon. It never blocks.
func (w Wakeup) Wake() {
	select {
	case w <- struct{}{}:
	default:
	}
}

// New returns a scheduler woken by w; call Run while this controller
// leads.
func New(st *store.Store, r Raft, agents Agents, w Wakeup, log *slog.Logger) *Scheduler {
	return &Scheduler{store: st, raft: r, agents: agents, log: log, wake: w,
		Interval: time.Second, LostGrace: 60 * time.Second, ReserveAfter: DefaultReserveAfter,
		now: time.Now, told: map[string]map[string]bool{}}
}

// Wake asks for a reconcile soon. It never blocks.
func (s *Scheduler) Wake() { s.wake.Wake() }

// Run reconciles until ctx ends. The server runs it only while this
// controller leads (after a barrier); the IsLeader check below only
// covers the moment between losing leadership and ctx ending.
//
// Besides the ticker and wake-ups, a timer fires at the earliest queue
// timeout deadline the last pass saw ahead, so a job fails at its deadline
// rather than up to an interval later, whatever the interval.
func (s *Scheduler) Run(ctx context.Context) {
	t := time.NewTicker(s.Interval)
	defer t.Stop()
	deadline := time.NewTimer(time.Hour)
	deadline.Stop()
	defer deadline.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.wake:
		case <-deadline.C:
		}
		if s.raft.IsLeader() {
			s.Reconcile()
			if next := s.nextDeadline; !next.IsZero() {
				deadline.Reset(max(next.Sub(s.now()), 0))
			}
		}
	}
}

type snapshot struct {
	jobs  []*gantrypb.Job // non-terminal, creation order
	nodes []*gantrypb.Node
	// strays are terminal multi-node jobs with ranks not known to have
	// exited (a job declared lost while its other ranks ran on): their
	// nodes are told to cancel them.
	strays []*gantrypb.Job
}

func (s *Scheduler) read() (snapshot, error) {
	var snap snapshot
	err := s.store.View(func(tx *store.Tx) error {
		if err := tx.Jobs(func(j *gantrypb.Job) bool {
			if !lifecycle.IsTerminal(j.State) {
				snap.jobs = append(snap.jobs, j)
			} else if liveRanks(j) {
				snap.strays = append(snap.strays, j)
			}
			return true
		}); err != nil {
			return err
		}
		var err error
		snap.nodes, err = tx.Nodes()
		return err
	})
	return snap, err
}

// Reconcile runs one pass: place queued jobs, then make sure every
// connected agent has been told to start its assigned jobs and stop its
// cancelled ones. It is not safe to run two passes at once.
func (s *Scheduler) Reconcile() {
	snap, err := s.read()
	if err != nil {
		s.log.Error("scheduler: read state", "err", err)
		return
	}
	s.forgetEnded(append(snap.jobs[:len(snap.jobs):len(snap.jobs)], snap.strays...))
	used := map[string]map[uint32]bool{}
	ports := map[string]map[uint32]bool{} // rendezvous ports of live gangs, by rank 0's node
	for _, j := range snap.jobs {
		if lifecycle.HoldsGPUs(j.State) {
			lifecycle.MarkHoldings(used, j, true)
			if j.MasterPort != 0 {
				mark(ports, j.Node, j.MasterPort)
			}
		}
	}
	var candidates []Candidate
	for _, j := range snap.strays {
		// A lost gang's surviving ranks run until their cancel lands:
		// their GPUs are still busy.
		lifecycle.MarkHoldings(used, j, true)
	}
	for _, n := range snap.nodes {
		if n.State != gantrypb.NodeState_NODE_STATE_UP || !s.agents.Connected(n.Id) {
			continue
		}
		mark(used, n.Id)
		candidates = append(candidates, NodeCandidate(n, used[n.Id]))
	}

	downSince := map[string]time.Time{}
	for _, n := range snap.nodes {
		if n.State == gantrypb.NodeState_NODE_STATE_DOWN {
			downSince[n.Id] = time.UnixMilli(n.LastSeenMs)
		}
	}

	s.nextDeadline = time.Time{}
	// fleet explains why jobs wait; built once per pass, and only when a
	// queue timeout needs the explanation.
	var fleet *Fleet
	for _, j := range snap.strays {
		s.cancelRanks(j, "the job already ended ("+lifecycle.StateName(j.State)+")")
	}
	for _, j := range snap.jobs {
		if node, since, down := s.downHolding(j, downSince); down {
			if s.now().Sub(since) >= s.LostGrace {
				s.markLost(j, node, since)
			}
			continue
		}
		waiting := func() {
			if due, ok := s.queueDeadline(j); ok {
				if fleet == nil {
					fleet = s.fleet(snap)
				}
				s.queueTimeout(j, fleet.Reason(j.Id))
			} else if !due.IsZero() && (s.nextDeadline.IsZero() || due.Before(s.nextDeadline)) {
				s.nextDeadline = due
			}
		}
		if lifecycle.IsGang(j.Spec) {
			if j.State == gantrypb.JobState_JOB_STATE_QUEUED && !s.placeGang(j, candidates, used, ports) {
				s.reserve(j, candidates)
				waiting()
				continue
			}
			s.startGang(j)
			if j.CancelRequested {
				s.cancelRanks(j, cancelReason(j))
			} else if r := endedBadly(j); r != nil {
				// One rank failed: the collective cannot go on without
				// it, so the others are stopped rather than left hanging
				// in a rendezvous or all_reduce.
				s.cancelRanks(j, fmt.Sprintf("rank %d on %s ended %s", r.Rank, r.Node, lifecycle.StateName(r.State)))
			}
			continue
		}
		switch j.State {
		case gantrypb.JobState_JOB_STATE_QUEUED:
			node, gpus, ok := Place(j.Spec, candidates)
			if !ok {
				waiting()
				continue
			}
			_, err := s.raft.Apply(&gantrypb.AssignJobCmd{JobId: j.Id, NodeId: node, Gpus: gpus, AtMs: time.Now().UnixMilli()})
			if err != nil {
				if !errors.Is(err, lifecycle.ErrNotQueued) {
					s.log.Warn("scheduler: assign failed", "job", j.Id, "node", node, "err", err)
				}
				continue
			}
			s.log.Info("job assigned", "job", j.Id, "node", node, "gpus", gpus)
			for _, g := range gpus {
				used[node][g] = true
			}
			j.State, j.Node, j.Gpus = gantrypb.JobState_JOB_STATE_ASSIGNED, node, gpus
			s.start(j)
		case gantrypb.JobState_JOB_STATE_ASSIGNED:
			s.start(j)
		}
		if j.CancelRequested && s.agents.Connected(j.Node) {
			run := lifecycle.JobRunID(j)
			s.tell(run, j.Node)
			err := s.agents.SendOnce(j.Node, cancelKey(run), &gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_Cancel{
				Cancel: &gantrypb.CancelJob{JobId: run, Reason: cancelReason(j)}}})
			if err != nil {
				s.log.Warn("scheduler: send cancel", "job", j.Id, "node", j.Node, "err", err)
			}
		}
	}
}

// fleet builds the reasons a queue timeout reports. Unlike a reader of the
// store, the leader knows which agents are connected to it, and Place
// skips the others: such a node is shown as down, so a timed-out job never
// claims it "fits now" on a node the scheduler cannot use.
func (s *Scheduler) fleet(snap snapshot) *Fleet {
	nodes := make([]*gantrypb.Node, len(snap.nodes))
	for i, n := range snap.nodes {
		if n.State == gantrypb.NodeState_NODE_STATE_UP && !s.agents.Connected(n.Id) {
			n = proto.Clone(n).(*gantrypb.Node)
			n.State = gantrypb.NodeState_NODE_STATE_DOWN
		}
		nodes[i] = n
	}
	return NewFleetAt(nodes, snap.jobs, s.now().UnixMilli(), s.ReserveAfter)
}

// queueDeadline returns when a queued job's queue_timeout runs out (zero
// without one) and whether that moment has come. It is computed from the
// stored created_at, so a new leader finds the same deadlines.
func (s *Scheduler) queueDeadline(j *gantrypb.Job) (time.Time, bool) {
	ms, ok := lifecycle.QueueDeadlineMs(j)
	if !ok {
		return time.Time{}, false
	}
	due := time.UnixMilli(ms)
	return due, !s.now().Before(due)
}

// queueTimeout fails a job still queued at its deadline, saying what it
// waited for. The FSM refuses the entry if the job was placed or cancelled
// in the meantime (ErrNotQueued), which is not worth a warning.
func (s *Scheduler) queueTimeout(j *gantrypb.Job, reason string) {
	wait := time.Duration(j.GetSpec().GetQueueTimeoutMs()) * time.Millisecond
	msg := admission.Clip(fmt.Sprintf("still queued after %s: %s", wait, reason), limits.MaxEventMessageBytes)
	_, err := s.raft.Apply(&gantrypb.QueueTimeoutCmd{JobId: j.Id, Error: msg, AtMs: s.now().UnixMilli()})
	if err != nil {
		if !errors.Is(err, lifecycle.ErrNotQueued) && !errors.Is(err, lifecycle.ErrTerminal) {
			s.log.Warn("scheduler: queue timeout", "job", j.Id, "err", err)
		}
		return
	}
	s.log.Info("job failed: queue timeout", "job", j.Id, "reason", msg)
}

// mark sets m[node][k] for each k (GPU indices, ports), making the node's
// map when it has none.
func mark(m map[string]map[uint32]bool, node string, keys ...uint32) {
	if m[node] == nil {
		m[node] = map[uint32]bool{}
	}
	for _, k := range keys {
		m[node][k] = true
	}
}

// cancelReason is what a cancel of j tells its agent.
func cancelReason(j *gantrypb.Job) string {
	if j.RequeueReason != "" {
		return admission.Clip("stopped to be requeued: "+j.RequeueReason, limits.MaxEventMessageBytes)
	}
	return "cancelled"
}

// markLost ends a job whose node has been down past the grace period. Its
// final metrics are the last values stored (the FSM keeps them).
func (s *Scheduler) markLost(j *gantrypb.Job, node string, since time.Time) {
	reason := fmt.Sprintf("node %s unreachable since %s (more than %s)", node, since.UTC().Format(time.RFC3339), s.LostGrace)
	if r := lifecycle.RankOf(j, node); r != nil {
		reason = fmt.Sprintf("rank %d: %s", r.Rank, reason)
	}
	_, err := s.raft.Apply(&gantrypb.EndJobCmd{JobId: j.Id, State: gantrypb.JobState_JOB_STATE_LOST, Error: reason, AtMs: s.now().UnixMilli()})
	if err != nil && !errors.Is(err, lifecycle.ErrTerminal) {
		s.log.Warn("scheduler: mark lost", "job", j.Id, "err", err)
		return
	}
	s.log.Warn("job lost", "job", j.Id, "node", node, "reason", reason)
	// The other ranks of a gang run on: the next pass finds the job among
	// the strays and tells their nodes to cancel them.
	s.Wake()
}

// downHolding returns a node of j's that has been down (and is not
// connected here) while j holds GPUs there, with the time it went down.
func (s *Scheduler) downHolding(j *gantrypb.Job, downSince map[string]time.Time) (string, time.Time, bool) {
	if !lifecycle.HoldsGPUs(j.State) {
		return "", time.Time{}, false
	}
	for _, h := range lifecycle.Holdings(j) {
		if since, down := downSince[h.Node]; down && h.Node != "" && !s.agents.Connected(h.Node) {
			return h.Node, since, true
		}
	}
	return "", time.Time{}, false
}

func (s *Scheduler) start(j *gantrypb.Job) {
	if !s.agents.Connected(j.Node) {
		return
	}
	// The agent runs the job's current attempt under its run id: a
	// requeued job is a new run there, started once like any other.
	run := lifecycle.JobRunID(j)
	s.tell(run, j.Node)
	err := s.agents.SendOnce(j.Node, startKey(run), &gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_Start{
		Start: &gantrypb.StartJob{JobId: run, Spec: j.Spec, Gpus: j.Gpus}}})
	if err != nil {
		s.log.Warn("scheduler: send start", "job", j.Id, "node", j.Node, "err", err)
	}
}

// forgetEnded forgets the start and cancel keys of every job told to an
// agent that is no longer among the live jobs: it ended (or is gone), so
// neither message will be needed again.
func (s *Scheduler) forgetEnded(live []*gantrypb.Job) {
	if len(s.told) == 0 {
		return
	}
	alive := make(map[string]bool, len(live))
	for _, j := range live {
		alive[lifecycle.JobRunID(j)] = true
	}
	for id, nodes := range s.told {
		if alive[id] {
			continue
		}
		for node := range nodes {
			s.agents.Forget(node, startKey(id))
			s.agents.Forget(node, cancelKey(id))
		}
		delete(s.told, id)
	}
}

// tell records that a start or cancel of run id (lifecycle.RunID) was
// sent to node.
func (s *Scheduler) tell(id, node string) {
	if s.told[id] == nil {
		s.told[id] = map[string]bool{}
	}
	s.told[id][node] = true
}

// startKey and cancelKey are the SendOnce keys of a run's messages.
func startKey(id string) string  { return "start/" + id }
func cancelKey(id string) string { return "cancel/" + id }
