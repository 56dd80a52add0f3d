package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/membership"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// startMembership joins the serf cluster with this controller's tags.
func (s *Server) startMembership() error {
	cfg := s.cfg
	tags := map[string]string{
		membership.TagRole:     membership.RoleController,
		membership.TagRaftAddr: s.raft.Addr(),
		membership.TagQUICAddr: advertised(cfg.AdvertiseQUIC, s.QUICAddr()),
		membership.TagHTTPAddr: advertised(cfg.AdvertiseHTTP, s.HTTPAddr()),
		membership.TagExpect:   strconv.Itoa(cfg.BootstrapExpect),
		// What this release reads in Raft entries that older ones do not.
		membership.TagFeatures: membership.FeatureFlatPoints + "," + membership.FeatureRequeue,
	}
	if s.raft.HasState() {
		tags[membership.TagRaftBootstrap] = "1"
	}
	m, err := membership.Start(membership.Config{
		Name: cfg.NodeID, BindAddr: cfg.SerfAddr, Advertise: cfg.SerfAdvertise, Tags: tags,
		Key: cfg.GossipKey, Fast: cfg.Fast, Log: cfg.Log.With("component", "serf"),
	})
	if err != nil {
		return err
	}
	s.members = m
	s.membersChanged = m.Changed()
	if len(cfg.Join) > 0 {
		if _, err := m.Join(cfg.Join); err != nil {
			// Not fatal: the others may not be up yet; retried in the loop.
			cfg.Log.Warn("serf join failed; will retry", "join", cfg.Join, "err", err)
		}
	}
	return nil
}

// advertised returns addr unless it is empty, else the bound address.
func advertised(addr, bound string) string {
	if addr != "" {
		return addr
	}
	return bound
}

// membershipLoop keeps this controller in the serf cluster (joining again
// while it is alone) and bootstraps Raft once -bootstrap-expect
// controllers are seen. What only the leader does with membership is in
// reconcileLoop, started by establishLeadership.
func (s *Server) membershipLoop(ctx context.Context) {
	changed := s.members.Changed()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		}
		if len(s.cfg.Join) > 0 && len(s.members.Members()) <= 1 {
			_, _ = s.members.Join(s.cfg.Join)
		}
		s.tryBootstrap()
	}
}

// verifyTimeout bounds the TLS handshake that proves a controller's
// identity on its Raft address.
const verifyTimeout = 3 * time.Second

// verifyController reports whether m proved, on its advertised Raft
// address, that it holds the controller certificate for its member name
// from the cluster CA. Serf membership only needs the gossip key, which
// every agent host has; a vote needs the controller certificate. This node
// needs no handshake with itself: Start checked its certificate.
//
// A member that failed is not dialled again at the same address for
// refusedRetry: whoever holds the gossip key can advertise many fake
// controllers at addresses that never answer, and the membership loop
// (which also turns agent failures into node state) must not spend a
// handshake timeout on each of them every second. Both the membership
// loop (bootstrap) and the leader's reconcile loop call it: s.refused is
// guarded by s.refusedMu, never held across a handshake.
func (s *Server) verifyController(m membership.Member) bool {
	return len(s.verifyAll([]membership.Member{m})) == 1
}

// recordVerify keeps the outcome of a handshake with m, logging a
// refusal once per reason.
func (s *Server) recordVerify(m membership.Member, err error) bool {
	s.refusedMu.Lock()
	defer s.refusedMu.Unlock()
	if err == nil {
		if _, was := s.refused[m.Name]; was {
			s.cfg.Log.Info("controller identity verified", "member", m.Name, "addr", m.RaftAddr)
			delete(s.refused, m.Name)
		}
		return true
	}
	s.votersRefused.Inc()
	prev, seen := s.refused[m.Name]
	s.refused[m.Name] = refusal{addr: m.RaftAddr, reason: err.Error(), at: time.Now()}
	if !seen || prev.reason != err.Error() {
		s.cfg.Log.Warn("not making a serf member a raft voter: it did not prove a controller certificate of the cluster CA for its name",
			"member", m.Name, "addr", m.RaftAddr, "err", err)
	}
	return false
}

// verifyAll verifies many members at once, so that one pass of the loop
// takes one handshake timeout however many candidates there are.
func (s *Server) verifyAll(ms []membership.Member) []membership.Member {
	errs := make([]error, len(ms))
	dial := make([]bool, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		if m.Name == s.cfg.NodeID {
			continue
		}
		if s.recentlyRefused(m) {
			errs[i] = errRecentlyRefused
			continue
		}
		dial[i] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.raft.VerifyPeer(m.Name, m.RaftAddr, verifyTimeout)
		}()
	}
	wg.Wait()
	var ok []membership.Member
	for i, m := range ms {
		if dial[i] {
			if !s.recordVerify(m, errs[i]) {
				continue
			}
		} else if errs[i] != nil {
			continue
		}
		ok = append(ok, m)
	}
	return ok
}

// refusal is the last failed identity check of a member.
type refusal struct {
	addr, reason string
	at           time.Time
}

// refusedRetry is how long a member that failed its identity check is
// left alone at the same address (Fast timings: a second).
const refusedRetry = 30 * time.Second

func (s *Server) recentlyRefused(m membership.Member) bool {
	wait := refusedRetry
	if s.cfg.Fast {
		wait = time.Second
	}
	s.refusedMu.Lock()
	defer s.refusedMu.Unlock()
	r, ok := s.refused[m.Name]
	return ok && r.addr == m.RaftAddr && time.Since(r.at) < wait
}

var errRecentlyRefused = errors.New("refused recently at this address")

func (s *Server) tryBootstrap() {
	expect := s.cfg.BootstrapExpect
	if expect == 0 || s.raft.HasState() {
		return
	}
	if servers, err := s.raft.Servers(); err == nil && len(servers) > 0 {
		// Joined an existing cluster since it opened: its leader added it.
		return
	}
	seen := s.members.Controllers()
	for _, c := range seen {
		// A cluster exists: its leader adds this node. Only a verified
		// controller says so, or the gossip key alone could stop a new
		// cluster from ever bootstrapping.
		if c.Bootstrapped && s.verifyController(c) {
			return
		}
	}
	if len(seen) < expect {
		return
	}
	// Bootstrap with verified controllers only: a member with the gossip
	// key but no controller certificate must not become a founding voter.
	controllers := s.verifyAll(seen)
	if len(controllers) < expect {
		return
	}
	var servers []raft.Server
	for _, c := range controllers {
		if c.Expect != expect {
			s.cfg.Log.Error("controllers disagree on -bootstrap-expect; not bootstrapping",
				"member", c.Name, "theirs", c.Expect, "ours", expect)
			return
		}
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(c.Name), Address: raft.ServerAddress(c.RaftAddr)})
	}
	if err := s.raft.Bootstrap(servers); err != nil {
		s.cfg.Log.Error("raft bootstrap failed", "err", err)
		return
	}
	s.cfg.Log.Info("raft cluster bootstrapped", "servers", len(servers))
	if err := s.members.SetTag(membership.TagRaftBootstrap, "1"); err != nil {
		s.cfg.Log.Warn("could not tag this controller as bootstrapped", "err", err)
	}
}

func (s *Server) reconcileMembers() {
	servers, err := s.raft.Servers()
	if err != nil {
		s.cfg.Log.Warn("reconcile: raft configuration", "err", err)
		return
	}
	inRaft := map[string]string{}
	for _, srv := range servers {
		inRaft[string(srv.ID)] = string(srv.Address)
	}
	var nodeStates map[string]gantrypb.NodeState
	var candidates []membership.Member
	for _, m := range s.members.Members() {
		switch m.Role {
		case membership.RoleController:
			addr, ok := inRaft[m.Name]
			switch {
			case m.Status == membership.StatusAlive && (!ok || addr != m.RaftAddr) && m.RaftAddr != "":
				candidates = append(candidates, m)
			case m.Status == membership.StatusLeft && ok && m.Name != s.cfg.NodeID:
				// A leave can be forged with the gossip key: a voter that
				// still proves its identity at its Raft address has not
				// left, and removing it would cost the cluster a vote.
				if s.raft.VerifyPeer(m.Name, addr, verifyTimeout) == nil {
					s.cfg.Log.Warn("serf says a raft voter left, but it still answers as that controller; keeping it", "id", m.Name, "addr", addr)
					continue
				}
				s.cfg.Log.Info("removing raft server that left", "id", m.Name)
				if err := s.raft.RemoveServer(m.Name); err != nil {
					s.cfg.Log.Warn("remove server failed", "id", m.Name, "err", err)
				}
			}
		case membership.RoleAgent:
			if m.Status != membership.StatusFailed && m.Status != membership.StatusLeft {
				continue
			}
			if s.ingest.Connected(m.Name) {
				continue // the QUIC session is the stronger signal
			}
			if nodeStates == nil {
				nodeStates = s.nodeStates()
			}
			if nodeStates[m.Name] == gantrypb.NodeState_NODE_STATE_UP {
				s.cfg.Log.Warn("agent failed in serf; marking node down", "node", m.Name, "status", m.Status)
				if _, err := s.raft.Apply(&gantrypb.NodeDownCmd{NodeId: m.Name, AtMs: time.Now().UnixMilli()}); err != nil && !errors.Is(err, cluster.ErrNotLeader) {
					s.cfg.Log.Warn("node down", "node", m.Name, "err", err)
				}
			}
		}
	}
	// Last, so that agent failures above are never held up by handshakes.
	s.addVoters(candidates)
}

// addVoters adds the candidates that prove their identity, all verified
// at once. Once every voter reads flat points, the leader writes them into
// Raft entries, and a controller of an older release could not apply
// those: it is refused, with what to do, until it is upgraded.
func (s *Server) addVoters(candidates []membership.Member) {
	flat := s.flatEntries()
	for _, m := range s.verifyAll(candidates) {
		if flat && !m.Has(membership.FeatureFlatPoints) {
			s.cfg.Log.Error("not adding a controller of an older release as a raft voter: the cluster writes entries it cannot apply; upgrade it to this release",
				"id", m.Name, "addr", m.RaftAddr)
			continue
		}
		s.cfg.Log.Info("adding raft voter", "id", m.Name, "addr", m.RaftAddr)
		if err := s.raft.AddVoter(m.Name, m.RaftAddr); err != nil {
			s.cfg.Log.Warn("add voter failed", "id", m.Name, "err", err)
		}
	}
}

func (s *Server) nodeStates() map[string]gantrypb.NodeState {
	out := map[string]gantrypb.NodeState{}
	err := s.store.View(func(tx *store.Tx) error {
		nodes, err := tx.Nodes()
		for _, n := range nodes {
			out[n.Id] = n.State
		}
		return err
	})
	if err != nil {
		s.cfg.Log.Warn("read nodes", "err", err)
	}
	return out
}

// leaderMember returns the serf member of the current Raft leader.
func (s *Server) leaderMember() (membership.Member, error) {
	_, id := s.raft.Leader()
	if id == "" {
		return membership.Member{}, cluster.ErrNoLeader
	}
	if s.members == nil {
		return membership.Member{}, fmt.Errorf("leader %s: no membership to find its address", id)
	}
	m, ok := s.members.Member(id)
	if !ok {
		return membership.Member{}, fmt.Errorf("leader %s is not a known member", id)
	}
	return m, nil
}

// flatCheckEvery is how long the answer of flatEntries is reused.
const flatCheckEvery = time.Second

// flatEntries reports whether every Raft voter's release reads flat
// points (membership.FeatureFlatPoints), so that the leader may write
// them into entries. During a rolling upgrade, while any voter is older
// (or not seen in serf yet), entries carry points in the map form that
// every release reads. A controller without clustering is its only voter.
func (s *Server) flatEntries() bool {
	if s.members == nil {
		return true
	}
	now := time.Now().UnixNano()
	if last := s.flatCheckedAt.Load(); last != 0 && now-last < int64(flatCheckEvery) {
		return s.flatOK.Load()
	}
	ok := s.votersReadFlat()
	s.flatOK.Store(ok)
	s.flatCheckedAt.Store(now)
	return ok
}

func (s *Server) votersReadFlat() bool {
	servers, err := s.raft.Servers()
	if err != nil {
		return false
	}
	return votersHave(servers, s.members.Members(), membership.FeatureFlatPoints)
}

// votersRequeue says why the cluster cannot take a spec with the requeue
// policy (nil when it can): a voter of an older release would apply the
// job's exit differently from the others.
func (s *Server) votersRequeue() error {
	if s.members == nil {
		return nil
	}
	servers, err := s.raft.Servers()
	if err != nil {
		return err
	}
	if !votersHave(servers, s.members.Members(), membership.FeatureRequeue) {
		return errors.New("a controller of this cluster runs an older release that cannot requeue jobs (or is not seen yet); " +
			"upgrade every controller, or use on_stall/on_idle notify or cancel")
	}
	return nil
}

// votersHave reports whether every voter among servers is a member whose
// release has feature f; a voter serf does not list counts as without.
func votersHave(servers []raft.Server, members []membership.Member, f string) bool {
	byName := map[string]membership.Member{}
	for _, m := range members {
		byName[m.Name] = m
	}
	for _, srv := range servers {
		if srv.Suffrage != raft.Voter {
			continue
		}
		if m, ok := byName[string(srv.ID)]; !ok || !m.Has(f) {
			return false
		}
	}
	return true
}
