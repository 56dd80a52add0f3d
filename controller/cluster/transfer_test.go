package cluster

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// countFSM counts applied commands: enough for Raft, no store needed.
type countFSM struct{ n atomic.Int64 }

func (f *countFSM) Apply(*raft.Log) any { return f.n.Add(1) }
func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) {
	return nil, errors.New("countFSM: no snapshots in this test")
}
func (f *countFSM) Restore(rc io.ReadCloser) error { return rc.Close() }

// A leader whose disk runs short hands leadership to a healthy peer, and
// the cluster goes on accepting writes there.
func TestDiskFullLeaderHandsOverLeadership(t *testing.T) {
	const minFree = 1 << 20
	var nodes []*Node
	var disks []*fakeDisk
	pki := t.TempDir()
	if err := tlsutil.InitCA(pki); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		files, err := tlsutil.Issue(pki, tlsutil.RoleController, fmt.Sprintf("c%d", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		d := &fakeDisk{}
		d.free.Store(100 << 20)
		n, err := Open(Config{
			NodeID: fmt.Sprintf("c%d", i), DataDir: t.TempDir(), BindAddr: "127.0.0.1:0", Fast: true,
			Log: logging.Discard(), TLS: files,
			Disk: DiskConfig{MinFree: minFree, Interval: 20 * time.Millisecond, statfs: d.statfs},
		}, &countFSM{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := n.Close(); err != nil {
				t.Errorf("close c%d: %v", i, err)
			}
		})
		nodes, disks = append(nodes, n), append(disks, d)
	}
	var servers []raft.Server
	for i, n := range nodes {
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(fmt.Sprintf("c%d", i)), Address: raft.ServerAddress(n.Addr())})
	}
	for _, n := range nodes {
		if err := n.Bootstrap(servers); err != nil {
			t.Fatal(err)
		}
	}
	leader := func() int {
		for i, n := range nodes {
			if n.IsLeader() {
				return i
			}
		}
		return -1
	}
	testutil.WaitFor(t, 20*time.Second, func() bool { return leader() >= 0 }, "a leader")
	full := leader()
	if _, err := nodes[full].Apply(&gantrypb.NodeDownCmd{NodeId: "x"}); err != nil {
		t.Fatal(err)
	}

	disks[full].free.Store(minFree / 2)
	testutil.WaitFor(t, 20*time.Second, func() bool {
		l := leader()
		return l >= 0 && l != full
	}, "leadership to move off the node whose disk is full")
	if _, err := nodes[full].ApplyAsync(&gantrypb.NodeDownCmd{NodeId: "x"}); !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrDiskFull) {
		t.Fatalf("ApplyAsync on the full node = %v, want ErrNotLeader (forwarded) or ErrDiskFull", err)
	}
	// Elections may hand it back for a moment; the guard hands it on
	// again, so writes succeed on whichever healthy node leads.
	testutil.WaitFor(t, 20*time.Second, func() bool {
		l := leader()
		if l < 0 || l == full {
			return false
		}
		_, err := nodes[l].Apply(&gantrypb.NodeDownCmd{NodeId: "y"})
		return err == nil
	}, "a write on the healthy leader")

	disks[full].free.Store(100 << 20)
	testutil.WaitFor(t, 5*time.Second, func() bool { _, f := nodes[full].DiskFree(); return !f }, "the node to see space again")
}
