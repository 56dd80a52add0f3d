package server

import (
	"context"
	"sync"
	"time"

	"github.com/gantry-ml/gantry/proto/wire"
)

// leadershipLoop is the one place where this controller takes up the
// leader's duties and lays them down, as Nomad's establishLeadership and
// revokeLeadership do: the scheduler (placement, starts and cancels,
// lost nodes), the alert notifier and, with clustering, voter reconciliation and agent
// failures. Nothing else reacts to leadership.
func (s *Server) leadershipLoop(ctx context.Context) {
	var duties *leaderDuties
	defer func() { duties.stop() }()
	for {
		select {
		case <-ctx.Done():
			return
		case leader := <-s.raft.LeaderCh():
			s.cfg.Log.Info("raft leadership changed", "leader", leader)
			s.leaderChanges.Inc()
			if duties != nil {
				duties.cancel() // stop asking; wait for them below
			}
			if !leader {
				// Send agents to the new leader now, not once the old
				// duties' pass (handshakes, a barrier) has wound down.
				s.revokeLeadership()
			}
			duties.stop()
			duties = nil
			if leader {
				duties = s.establishLeadership(ctx)
			}
		}
	}
}

// leaderDuties are the goroutines that run while this controller leads.
type leaderDuties struct {
	cancel context.CancelFunc
	done   sync.WaitGroup
}

// stop ends the duties and waits for them; a nil receiver has none.
func (d *leaderDuties) stop() {
	if d == nil {
		return
	}
	d.cancel()
	d.done.Wait()
}

// establishLeadership starts the leader's duties once a barrier has
// applied everything earlier leaders committed: acting on a state that
// lags the log would, say, place a job on GPUs that a committed but
// unapplied assignment already holds.
func (s *Server) establishLeadership(parent context.Context) *leaderDuties {
	ctx, cancel := context.WithCancel(parent)
	d := &leaderDuties{cancel: cancel}
	d.done.Add(1)
	go func() {
		defer d.done.Done()
		for {
			err := s.raft.Barrier(10 * time.Second)
			if err == nil {
				break
			}
			s.cfg.Log.Warn("barrier after gaining leadership failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return // leadership lost (or shutting down) before it settled
			case <-time.After(100 * time.Millisecond):
			}
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.sched.Run(ctx)
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.alerts.Run(ctx) // only the leader delivers alerts
		}()
		if s.members != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.reconcileLoop(ctx)
			}()
		}
		s.sched.Wake()
		wg.Wait()
	}()
	return d
}

// revokeLeadership sends agents away: streaming to a deposed leader, they
// would only see their batches fail. (The duties were stopped already.)
func (s *Server) revokeLeadership() {
	s.ingest.CloseAll(wire.CodeNotLeader, "leadership lost")
}

// reconcileLoop turns serf membership into Raft voters and agent failures
// into node state, every second and whenever membership changes.
func (s *Server) reconcileLoop(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		s.reconcileMembers()
		select {
		case <-ctx.Done():
			return
		case <-s.membersChanged:
		case <-tick.C:
		}
	}
}
