// Package cluster runs the controller's Raft node: the log in raft-wal, file
// snapshots, a mutual-TLS transport between controller certificates, and
// the FSM. It exposes Apply for writers and the numbers /v1/cluster reports.
package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/command"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/tlsutil"
)

var (
	// ErrNotLeader is returned by Apply on a node that is not the leader.
	// Callers check it with errors.Is and forward to the leader.
	ErrNotLeader = errors.New("not the raft leader")
	// ErrNoLeader is returned when no leader is known (election running).
	ErrNoLeader = errors.New("no raft leader elected")
)

// Config configures a Raft node.
type Config struct {
	NodeID   string
	DataDir  string
	BindAddr string // host:port for the Raft transport
	// Advertise is the address peers dial; defaults to the bound address.
	Advertise string
	// Bootstrap makes this node a one-voter cluster if it has no state yet.
	Bootstrap bool
	// Fast shortens Raft's timings (tests: 50 ms heartbeats).
	Fast bool
	// ApplyTimeout bounds one Apply; default 10 s.
	ApplyTimeout time.Duration
	Log          *slog.Logger
	// TLS is this controller's certificate (role controller) and the
	// cluster CA. Required: Raft runs only over mutual TLS between
	// controller certificates of that CA.
	TLS tlsutil.Files
	// PrevApplied is the applied index the state database had reached
	// before this start (store.Store.PrevApplied), 0 if unknown. Open
	// warns when the Raft log and snapshots end below it (a lost tail).
	PrevApplied uint64
	// Disk configures the free-space guard on DataDir (see DiskGuard).
	Disk DiskConfig
}

// Node is one controller's Raft participant.
type Node struct {
	cfg       Config
	raft      *raft.Raft
	log       *wal.WAL
	meta      *metadb.BoltMetaDB
	transport *raft.NetworkTransport
	stream    *tlsStreamLayer
	fsm       raft.FSM
	hadState  bool
	check     LogCheck
	disk      *DiskGuard
	writes    *writeWatch
	// bootIndex is the last index of the local log when the node opened,
	// and openedAt when: see CaughtUp.
	bootIndex uint64
	openedAt  time.Time
	caughtUp  atomic.Bool
}

// Open starts Raft over fsm.
func Open(cfg Config, fsm raft.FSM) (*Node, error) {
	if cfg.ApplyTimeout == 0 {
		cfg.ApplyTimeout = 10 * time.Second
	}
	walDir := filepath.Join(cfg.DataDir, "raft", "wal")
	// raft-wal needs its directory to exist before Open.
	if err := os.MkdirAll(walDir, 0o750); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	hcl := logging.HCLog(cfg.Log, "raft")
	// WAL.Close leaves raft-wal's own meta database (a bbolt file) open and
	// flock'ed, so reopening the log in the same process would block on
	// the lock forever. Own the meta store and close it ourselves.
	meta := &metadb.BoltMetaDB{}
	logStore, err := openWAL(walDir, cfg.DataDir, hcl, meta)
	if err != nil {
		_ = meta.Close() // the open error is the one worth reporting
		return nil, fmt.Errorf("cluster: %w", err)
	}
	closeLog := func() {
		// Error paths only: the error being returned says what went wrong.
		_ = logStore.Close()
		_ = meta.Close()
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(cfg.DataDir, "raft"), 2, hcl.Named("snapshots"))
	if err != nil {
		closeLog()
		return nil, fmt.Errorf("cluster: snapshot store: %w", err)
	}
	check, err := verifyLog(cfg, logStore, snaps, walDir)
	if err != nil {
		closeLog()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	// With no advertise address the transport advertises what it bound,
	// which also resolves a ":0" port.
	var adv net.Addr
	if cfg.Advertise != "" {
		adv, err = net.ResolveTCPAddr("tcp", cfg.Advertise)
		if err != nil {
			closeLog()
			return nil, fmt.Errorf("cluster: advertise address %q: %w", cfg.Advertise, err)
		}
	}
	stream, err := listenTLS(cfg.BindAddr, adv, cfg.TLS)
	if err != nil {
		closeLog()
		return nil, fmt.Errorf("cluster: raft transport on %s: %w", cfg.BindAddr, err)
	}
	transport := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: 5, Timeout: 10 * time.Second, Logger: hcl.Named("transport"),
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hcl
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	if cfg.Fast {
		// 200 ms, not the 50 ms of hashicorp/raft's own tests: three nodes
		// in one -race test process on a loaded 2-core CI machine miss
		// 50 ms heartbeats and re-elect every second, which turns every
		// timing-independent assertion into a flaky one.
		rc.HeartbeatTimeout = 200 * time.Millisecond
		rc.ElectionTimeout = 200 * time.Millisecond
		rc.LeaderLeaseTimeout = 100 * time.Millisecond
		rc.CommitTimeout = 5 * time.Millisecond
	} else {
		// hashicorp/raft's defaults (1 s heartbeat and election, 500 ms
		// lease): tighter ones made a busy leader step down under a flood
		// of large ingest entries. CommitTimeout stays short for latency.
		rc.CommitTimeout = 5 * time.Millisecond
	}

	has, err := raft.HasExistingState(logStore, logStore, snaps)
	if err != nil {
		transport.Close()
		closeLog()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if cfg.Bootstrap {
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{
				Suffrage: raft.Voter, ID: rc.LocalID, Address: transport.LocalAddr(),
			}}}
			if err := raft.BootstrapCluster(rc, logStore, logStore, snaps, transport, conf); err != nil {
				transport.Close()
				closeLog()
				return nil, fmt.Errorf("cluster: bootstrap: %w", err)
			}
		}
	}

	writes := &writeWatch{WAL: logStore, dir: walDir, log: cfg.Log}
	r, err := raft.NewRaft(rc, fsm, writes, logStore, snaps, transport)
	if err != nil {
		transport.Close()
		closeLog()
		return nil, fmt.Errorf("cluster: start raft: %w", err)
	}
	n := &Node{cfg: cfg, raft: r, log: logStore, meta: meta, transport: transport, stream: stream, fsm: fsm, hadState: has || cfg.Bootstrap, check: check, writes: writes,
		bootIndex: r.LastIndex(), openedAt: time.Now()}
	n.disk = startDiskGuard(cfg.DataDir, cfg.Disk, cfg.Log, n.stepDownForDisk)
	return n, nil
}

// Apply commits a command and returns the FSM's response. A domain error
// from the FSM comes back as the error.
func (n *Node) Apply(m proto.Message) (any, error) {
	p, err := n.ApplyAsync(m)
	if err != nil {
		return nil, err
	}
	return p.Wait()
}

// ApplyAsync starts committing a command; Wait for its result. Commands
// complete in the order they were started.
func (n *Node) ApplyAsync(m proto.Message) (*Pending, error) {
	if n.raft.State() != raft.Leader {
		return nil, ErrNotLeader
	}
	// A follower short of disk still says ErrNotLeader above, so writes
	// are forwarded to the leader, which is the node that must accept
	// them. The leader refuses them while its own disk is short, rather
	// than letting raft-wal hit ENOSPC (see DiskGuard).
	if err := n.disk.Err(); err != nil {
		return nil, err
	}
	b, err := command.Encode(m)
	if err != nil {
		return nil, err
	}
	return &Pending{f: n.raft.Apply(b, n.cfg.ApplyTimeout)}, nil
}

// Pending is a command on its way through Raft.
type Pending struct{ f raft.ApplyFuture }

// Index is the command's Raft log index, once Wait has returned.
func (p *Pending) Index() uint64 { return p.f.Index() }

// Wait waits until the command is committed and applied and returns the
// FSM's response; a domain error from the FSM comes back as the error,
// and a lost leadership as ErrNotLeader.
func (p *Pending) Wait() (any, error) {
	f := p.f
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return nil, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return nil, fmt.Errorf("raft apply: %w", err)
	}
	resp := f.Response()
	if err, ok := resp.(error); ok {
		return nil, err
	}
	return resp, nil
}

// IsLeader reports whether this node leads now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// LeaderCh delivers true when this node gains leadership and false when it
// loses it.
func (n *Node) LeaderCh() <-chan bool { return n.raft.LeaderCh() }

// WaitLeader blocks until some leader is known or the timeout passes.
func (n *Node) WaitLeader(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if addr, _ := n.raft.LeaderWithID(); addr != "" {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return ErrNoLeader
}

// Barrier waits until every committed entry is applied to the local FSM.
func (n *Node) Barrier(timeout time.Duration) error {
	return n.raft.Barrier(timeout).Error()
}

// Snapshot forces a snapshot (tests, operators).
func (n *Node) Snapshot() error { return n.raft.Snapshot().Error() }

// CaughtUp reports whether this node's state is at least as new as what
// it could serve before it (re)started. On start the state is rebuilt from
// the latest snapshot, and the log entries after it are applied only once
// a leader says they are committed; until then a read would miss jobs that
// exist (a 404 for a job created after the snapshot). It is caught up once
// it has applied its whole log as it was at start, or, after hearing from
// a leader (or being one), everything the cluster has committed (a tail of
// entries that were never committed is dropped by the new leader and never
// applied). Once caught up it stays so. want says how far it
// is when it is not. applied is the index the FSM has applied and
// committed to its store (Raft's own applied index runs ahead of it: it
// counts entries handed to the FSM, not stored).
func (n *Node) CaughtUp(applied uint64) (ok bool, want uint64) {
	if n.caughtUp.Load() {
		return true, 0
	}
	if applied >= n.bootIndex {
		n.caughtUp.Store(true)
		return true, n.bootIndex
	}
	if n.raft.State() == raft.Leader || n.raft.LastContact().After(n.openedAt) {
		commit, _ := strconv.ParseUint(n.raft.Stats()["commit_index"], 10, 64)
		if commit > 0 && applied >= commit {
			n.caughtUp.Store(true)
			return true, commit
		}
	}
	return false, n.bootIndex
}

// Status is this node's view of the Raft cluster.
type Status struct {
	NodeID       string
	State        string // Leader, Follower, Candidate, Shutdown
	Leader       string // the leader's Raft address, "" when none is known
	LeaderID     string
	Term         uint64
	CommitIndex  uint64
	AppliedIndex uint64
	LastIndex    uint64
	Servers      []Server
}

// Server is one member of the Raft configuration.
type Server struct {
	ID, Address, Suffrage string
	Leader                bool
}

// Status reports this node's Raft state; applied is the FSM's index.
func (n *Node) Status(applied uint64) (Status, error) {
	leaderAddr, leaderID := n.raft.LeaderWithID()
	out := Status{
		NodeID:       n.cfg.NodeID,
		State:        n.raft.State().String(),
		Leader:       string(leaderAddr),
		LeaderID:     string(leaderID),
		AppliedIndex: applied,
		LastIndex:    n.raft.LastIndex(),
	}
	stats := n.raft.Stats()
	out.Term, _ = strconv.ParseUint(stats["term"], 10, 64)
	out.CommitIndex, _ = strconv.ParseUint(stats["commit_index"], 10, 64)
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return out, fmt.Errorf("cluster: configuration: %w", err)
	}
	for _, s := range cf.Configuration().Servers {
		out.Servers = append(out.Servers, Server{
			ID: string(s.ID), Address: string(s.Address), Suffrage: s.Suffrage.String(),
			Leader: s.ID == leaderID,
		})
	}
	return out, nil
}

// HasState reports whether this node had Raft state when it opened (or
// bootstrapped itself): such a node must never bootstrap again.
func (n *Node) HasState() bool { return n.hadState }

// Addr is the address this node advertises to its Raft peers.
func (n *Node) Addr() string { return string(n.transport.LocalAddr()) }

// Bootstrap makes the given servers the initial configuration. Every
// server of a -bootstrap-expect cluster calls it with the same list; Raft
// refuses it on a node that already has state.
func (n *Node) Bootstrap(servers []raft.Server) error {
	if err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		return fmt.Errorf("cluster: bootstrap: %w", err)
	}
	n.hadState = true
	return nil
}

// Servers returns the current Raft configuration.
func (n *Node) Servers() ([]raft.Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("cluster: configuration: %w", err)
	}
	return f.Configuration().Servers, nil
}

// AddVoter adds (or re-addresses) a voter. Leader only.
func (n *Node) AddVoter(id, addr string) error {
	return n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second).Error()
}

// RemoveServer removes a server from the configuration. Leader only.
func (n *Node) RemoveServer(id string) error {
	return n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error()
}

// Leader returns the leader's Raft address and id ("" when unknown).
func (n *Node) Leader() (addr, id string) {
	a, i := n.raft.LeaderWithID()
	return string(a), string(i)
}

// LastContact is when this node last heard from the leader (zero on the
// leader itself).
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// VerifyLeader confirms with a quorum that this node still leads.
func (n *Node) VerifyLeader() error {
	if err := n.raft.VerifyLeader().Error(); err != nil {
		return fmt.Errorf("%w: %v", ErrNotLeader, err)
	}
	return nil
}

// Close shuts Raft down and closes its log.
func (n *Node) Close() error {
	n.disk.Stop()
	err := n.raft.Shutdown().Error()
	if cerr := n.transport.Close(); err == nil {
		err = cerr
	}
	if cerr := n.log.Close(); err == nil {
		err = cerr
	}
	if cerr := n.meta.Close(); err == nil {
		err = cerr
	}
	return err
}
