package cluster_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// restoreCounter counts snapshot restores the FSM reports.
type restoreCounter struct{ n atomic.Int64 }

func (r *restoreCounter) Applied(c *fsm.Changes) {
	if c.Restored {
		r.n.Add(1)
	}
}

type node struct {
	*cluster.Node
	st       *store.Store
	fsm      *fsm.FSM
	restores *restoreCounter
}

// open starts a node on dataDir with a fresh store, as the controller does
// on every start.
func open(t *testing.T, dataDir, bind string, bootstrap bool) *node {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	rc := &restoreCounter{}
	f := fsm.New(st, rc, logging.Discard())
	n, err := cluster.Open(cluster.Config{
		NodeID: "c1", DataDir: dataDir, BindAddr: bind, Bootstrap: bootstrap, Fast: true, Log: logging.Discard(),
		TLS: controllerTLS(t, t.TempDir(), "c1"),
	}, f)
	if err != nil {
		st.Close()
		t.Fatalf("cluster.Open: %v", err)
	}
	nd := &node{Node: n, st: st, fsm: f, restores: rc}
	t.Cleanup(func() { nd.close(t) })
	return nd
}

var closed = map[*node]bool{}

func (n *node) close(t *testing.T) {
	t.Helper()
	if closed[n] {
		return
	}
	closed[n] = true
	if err := n.Close(); err != nil {
		t.Errorf("close raft: %v", err)
	}
	if err := n.st.Close(); err != nil {
		t.Errorf("close store: %v", err)
	}
}

func waitLeader(t *testing.T, n *node) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, n.IsLeader, "the bootstrapped node to become leader")
}

func (n *node) jobIDs(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	if err := n.st.View(func(tx *store.Tx) error {
		return tx.Jobs(func(j *gantrypb.Job) bool { out[j.Id] = true; return true })
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func submit(t *testing.T, n *node, id string) {
	t.Helper()
	resp, err := n.Apply(&gantrypb.SubmitJobCmd{JobId: id, Spec: &gantrypb.JobSpec{Run: "x"}})
	if err != nil {
		t.Fatalf("Apply submit %s: %v", id, err)
	}
	if resp != id {
		t.Fatalf("Apply response = %v, want %s", resp, id)
	}
}

func boundAddr(t *testing.T, n *node) string {
	t.Helper()
	st, err := n.Status(0)
	if err != nil || len(st.Servers) != 1 {
		t.Fatalf("Status: %v %v", st, err)
	}
	return st.Servers[0].Address
}

func TestSingleNode(t *testing.T) {
	dir := t.TempDir()
	n := open(t, dir, "127.0.0.1:0", true)
	waitLeader(t, n)
	if err := n.WaitLeader(time.Second); err != nil {
		t.Fatal(err)
	}
	submit(t, n, "j1")
	if !n.jobIDs(t)["j1"] {
		t.Fatal("applied job not in the store")
	}
	// A domain error comes back as the error, checkable with errors.Is.
	if _, err := n.Apply(&gantrypb.SubmitJobCmd{JobId: "j1"}); !errors.Is(err, lifecycle.ErrJobExists) {
		t.Fatalf("duplicate submit err = %v, want ErrJobExists", err)
	}
	if err := n.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}

	st, err := n.Status(n.fsm.AppliedIndex())
	if err != nil {
		t.Fatal(err)
	}
	if st.NodeID != "c1" || st.State != "Leader" || st.LeaderID != "c1" || st.Leader == "" || st.Term < 1 {
		t.Fatalf("status = %+v", st)
	}
	if len(st.Servers) != 1 || st.Servers[0].ID != "c1" || !st.Servers[0].Leader || st.Servers[0].Suffrage != "Voter" || st.Servers[0].Address != st.Leader {
		t.Fatalf("peers = %+v", st.Servers)
	}
	if st.AppliedIndex == 0 || st.AppliedIndex > st.LastIndex || st.CommitIndex < st.AppliedIndex {
		t.Fatalf("indexes applied=%d commit=%d last=%d", st.AppliedIndex, st.CommitIndex, st.LastIndex)
	}
	select {
	case <-n.LeaderCh():
	default:
		// LeaderCh is edge-triggered and may have been consumed; having it
		// non-nil is what callers rely on.
		if n.LeaderCh() == nil {
			t.Fatal("LeaderCh is nil")
		}
	}
}

func TestNotLeader(t *testing.T) {
	// No bootstrap and no peers: this node can never lead.
	n := open(t, t.TempDir(), "127.0.0.1:0", false)
	if n.IsLeader() {
		t.Fatal("an unbootstrapped node leads")
	}
	if _, err := n.Apply(&gantrypb.SubmitJobCmd{JobId: "x"}); !errors.Is(err, cluster.ErrNotLeader) {
		t.Fatalf("Apply on a follower = %v, want ErrNotLeader", err)
	}
	if err := n.WaitLeader(100 * time.Millisecond); !errors.Is(err, cluster.ErrNoLeader) {
		t.Fatalf("WaitLeader = %v, want ErrNoLeader", err)
	}
}

func TestApplyUnknownMessage(t *testing.T) {
	n := open(t, t.TempDir(), "127.0.0.1:0", true)
	waitLeader(t, n)
	if _, err := n.Apply(&gantrypb.Job{}); err == nil {
		t.Fatal("Apply of a non-command message succeeded")
	}
}

func TestRestartReplaysLog(t *testing.T) {
	dir := t.TempDir()
	n := open(t, dir, "127.0.0.1:0", true)
	waitLeader(t, n)
	for i := 0; i < 5; i++ {
		submit(t, n, fmt.Sprintf("j%d", i))
	}
	addr := boundAddr(t, n)
	n.close(t)

	// Same data dir and address, fresh (empty) store: the log rebuilds it.
	n2 := open(t, dir, addr, true)
	waitLeader(t, n2)
	testutil.WaitFor(t, 10*time.Second, func() bool { return len(n2.jobIDs(t)) == 5 }, "the log to be replayed into the new store")
	if n2.restores.n.Load() != 0 {
		t.Fatal("restored from a snapshot that was never taken")
	}
	submit(t, n2, "after-restart")
	if _, err := n2.Apply(&gantrypb.SubmitJobCmd{JobId: "j0"}); !errors.Is(err, lifecycle.ErrJobExists) {
		t.Fatalf("replayed job not known to the FSM: %v", err)
	}
}

func TestRestartFromSnapshot(t *testing.T) {
	dir := t.TempDir()
	n := open(t, dir, "127.0.0.1:0", true)
	waitLeader(t, n)
	submit(t, n, "before-snapshot")
	if err := n.Snapshot(); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	submit(t, n, "after-snapshot")
	addr := boundAddr(t, n)
	n.close(t)

	n2 := open(t, dir, addr, true)
	// The snapshot is restored while Raft starts, before it leads.
	if n2.restores.n.Load() != 1 {
		t.Fatalf("restores at start = %d, want 1", n2.restores.n.Load())
	}
	if !n2.jobIDs(t)["before-snapshot"] {
		t.Fatal("snapshot restore did not bring the job back")
	}
	waitLeader(t, n2)
	testutil.WaitFor(t, 10*time.Second, func() bool { return n2.jobIDs(t)["after-snapshot"] }, "the log after the snapshot to be replayed")
	if got := len(n2.jobIDs(t)); got != 2 {
		t.Fatalf("jobs after restart = %d, want 2", got)
	}
}
