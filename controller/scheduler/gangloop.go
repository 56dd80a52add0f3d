package scheduler

import (
	"errors"
	"time"

	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// placeGang places a queued multi-node job, all ranks in one Raft entry
// (AssignGangCmd), and sends each rank's start. It reports whether the
// job was placed; when it was not, nothing is held.
func (s *Scheduler) placeGang(j *gantrypb.Job, candidates []Candidate, used, ports map[string]map[uint32]bool) bool {
	ranks, ok := PlaceGang(j.Spec, candidates)
	if !ok {
		return false
	}
	addr := s.agents.Addr(ranks[0].Node)
	if addr == "" {
		// Rank 0's agent left between the read and now; next pass.
		return false
	}
	port := MasterPort(j.Id, ports[ranks[0].Node])
	cmd := &gantrypb.AssignGangCmd{JobId: j.Id, MasterAddr: addr, MasterPort: port, AtMs: s.now().UnixMilli()}
	for _, r := range ranks {
		cmd.Ranks = append(cmd.Ranks, &gantrypb.GangRank{NodeId: r.Node, Gpus: r.GPUs})
	}
	if _, err := s.raft.Apply(cmd); err != nil {
		if !errors.Is(err, lifecycle.ErrNotQueued) {
			s.log.Warn("scheduler: assign gang failed", "job", j.Id, "err", err)
		}
		return true // not placed, but the job is no longer ours to place this pass
	}
	s.log.Info("gang assigned", "job", j.Id, "ranks", len(ranks), "master", addr, "port", port)
	for _, r := range ranks {
		mark(used, r.Node, r.GPUs...)
	}
	mark(ports, ranks[0].Node, port)
	j.State, j.Node, j.Gpus, j.MasterAddr, j.MasterPort = gantrypb.JobState_JOB_STATE_ASSIGNED, ranks[0].Node, ranks[0].GPUs, addr, port
	j.Ranks = make([]*gantrypb.Rank, len(ranks))
	for i, r := range ranks {
		j.Ranks[i] = &gantrypb.Rank{Rank: uint32(i), Node: r.Node, Gpus: r.GPUs, State: gantrypb.JobState_JOB_STATE_ASSIGNED}
	}
	s.startGang(j)
	return true
}

// reserve applies the anti-starvation rule to a multi-node job that could
// not be placed: once it has waited ReserveAfter, the GPUs ReserveGang
// names are marked used for the rest of this pass, so later (smaller)
// jobs cannot take them. Earlier jobs were already considered: creation
// order is the queue's order.
func (s *Scheduler) reserve(j *gantrypb.Job, candidates []Candidate) {
	if s.now().Sub(time.UnixMilli(j.CreatedAtMs)) < s.ReserveAfter {
		return
	}
	for node, gpus := range ReserveGang(j.Spec, candidates) {
		for _, c := range candidates {
			if c.ID == node {
				for _, g := range gpus {
					c.Used[g] = true
				}
			}
		}
	}
}

// startGang sends start to every rank of an assigned or running gang
// that has not started yet and whose agent is connected. SendOnce keeps
// it to once per session, and an agent ignores a job id it already runs.
func (s *Scheduler) startGang(j *gantrypb.Job) {
	if !lifecycle.HoldsGPUs(j.State) {
		return
	}
	n := uint32(len(j.Ranks))
	run := lifecycle.JobRunID(j)
	for _, r := range j.Ranks {
		if r.State != gantrypb.JobState_JOB_STATE_ASSIGNED || !s.agents.Connected(r.Node) {
			continue
		}
		s.tell(run, r.Node)
		err := s.agents.SendOnce(r.Node, startKey(run), &gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_Start{
			Start: &gantrypb.StartJob{JobId: run, Spec: j.Spec, Gpus: r.Gpus, NodeRank: r.Rank, Nnodes: n,
				MasterAddr: j.MasterAddr, MasterPort: j.MasterPort}}})
		if err != nil {
			s.log.Warn("scheduler: send start", "job", j.Id, "rank", r.Rank, "node", r.Node, "err", err)
		}
	}
}

// cancelRanks tells every connected node with a rank of j not known to
// have exited to stop it (SIGTERM, then SIGKILL after kill_grace, as any
// cancel).
func (s *Scheduler) cancelRanks(j *gantrypb.Job, reason string) {
	run := lifecycle.JobRunID(j)
	for _, r := range j.Ranks {
		if lifecycle.IsTerminal(r.State) || !s.agents.Connected(r.Node) {
			continue
		}
		s.tell(run, r.Node)
		err := s.agents.SendOnce(r.Node, cancelKey(run), &gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_Cancel{
			Cancel: &gantrypb.CancelJob{JobId: run, Reason: reason}}})
		if err != nil {
			s.log.Warn("scheduler: send cancel", "job", j.Id, "rank", r.Rank, "node", r.Node, "err", err)
		}
	}
}

// liveRanks reports whether a multi-node job has a rank that was assigned
// and is not known to have exited.
func liveRanks(j *gantrypb.Job) bool {
	for _, r := range j.GetRanks() {
		if !lifecycle.IsTerminal(r.State) {
			return true
		}
	}
	return false
}

// endedBadly returns a rank of j that failed or was lost, nil when none.
func endedBadly(j *gantrypb.Job) *gantrypb.Rank {
	for _, r := range j.GetRanks() {
		if r.State == gantrypb.JobState_JOB_STATE_FAILED || r.State == gantrypb.JobState_JOB_STATE_LOST {
			return r
		}
	}
	return nil
}
