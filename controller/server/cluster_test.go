package server_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/agent/link"
	"github.com/gantry-ml/gantry/agent/spool"
	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
	"github.com/gantry-ml/gantry/controller/server"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/wire"
)

// testCluster is n in-process controllers bootstrapped with
// -bootstrap-expect n through serf, with 50 ms Raft timings.
type testCluster struct {
	t       *testing.T
	tlsDir  string
	nodes   []*server.Server
	dirs    []string
	ctrlTLS tlsutil.Files
	agent   tlsutil.Files
	// webhooks are given to every controller as -alert-webhook.
	webhooks []string
}

func startController(t *testing.T, c *testCluster, i int, join []string, expect int) *server.Server {
	t.Helper()
	return startControllerAt(t, c, i, join, expect, "127.0.0.1:0", "127.0.0.1:0")
}

// startControllerAt starts controller i with given Raft and serf addresses,
// as a restarted host would come back on its own address.
func startControllerAt(t *testing.T, c *testCluster, i int, join []string, expect int, raftAddr, serfAddr string) *server.Server {
	t.Helper()
	srv, err := server.Start(server.Config{
		NodeID: fmt.Sprintf("c%d", i), DataDir: c.dirs[i],
		HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: raftAddr, SerfAddr: serfAddr,
		Join: join, BootstrapExpect: expect, TLS: c.controllerTLS(i), Fast: true,
		LostGrace: time.Minute, Log: testLog(t), AlertWebhooks: c.webhooks,
	})
	if err != nil {
		t.Fatalf("start controller c%d: %v", i, err)
	}
	return srv
}

// controllerTLS issues controller i its own certificate, for
// gantry://controller/c<i>, from the cluster's CA: the other controllers
// make it a voter only once it proves that name on its Raft address.
func (c *testCluster) controllerTLS(i int) tlsutil.Files {
	c.t.Helper()
	f, err := tlsutil.Issue(c.tlsDir, tlsutil.RoleController, fmt.Sprintf("c%d", i), nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

// testLog discards logs unless GANTRY_TEST_LOG is set (debugging).
func testLog(t *testing.T) *slog.Logger {
	if os.Getenv("GANTRY_TEST_LOG") == "" {
		return logging.Discard()
	}
	l, err := logging.New(os.Stderr, "debug")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func newTestCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	return newTestClusterWith(t, n, nil)
}

// newTestClusterWith is newTestCluster with alert webhooks.
func newTestClusterWith(t *testing.T, n int, webhooks []string) *testCluster {
	t.Helper()
	c := &testCluster{t: t, tlsDir: t.TempDir(), webhooks: webhooks}
	var err error
	c.ctrlTLS, c.agent, err = tlsutil.EnsureDev(c.tlsDir, "agent1")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		c.dirs = append(c.dirs, t.TempDir())
	}
	var join []string
	for i := 0; i < n; i++ {
		srv := startController(t, c, i, join, n)
		c.nodes = append(c.nodes, srv)
		if i == 0 {
			join = []string{srv.Members().LocalAddr()}
		}
	}
	t.Cleanup(func() {
		for _, s := range c.nodes {
			if s != nil {
				s.Close()
			}
		}
	})
	c.waitLeader()
	return c
}

// waitLeader waits until exactly one live node leads and returns it.
func (c *testCluster) waitLeader() *server.Server {
	c.t.Helper()
	var leader *server.Server
	testutil.WaitFor(c.t, 15*time.Second, func() bool {
		leader = nil
		count := 0
		for _, s := range c.nodes {
			if s != nil && s.Raft().IsLeader() {
				leader = s
				count++
			}
		}
		return count == 1
	}, "one leader")
	return leader
}

func (c *testCluster) follower() *server.Server {
	for _, s := range c.nodes {
		if s != nil && !s.Raft().IsLeader() {
			return s
		}
	}
	c.t.Fatal("no follower")
	return nil
}

func apiOf(s *server.Server) *client.Client { return client.New("http://" + s.HTTPAddr()) }

// submit submits through s, retrying while an election makes the cluster
// answer 503, as any client must. A retried submit whose first attempt
// committed after all leaves an extra job: callers count with that in mind.
func submit(t *testing.T, s *server.Server, spec apiv1.JobSpec) string {
	t.Helper()
	var id string
	var err error
	testutil.WaitFor(t, 15*time.Second, func() bool {
		id, err = apiOf(s).Submit(context.Background(), spec)
		var apiErr *client.APIError
		if errors.As(err, &apiErr) && apiErr.Status == http.StatusServiceUnavailable {
			return false
		}
		return true
	}, "a leader to accept the submit")
	if err != nil {
		t.Fatalf("submit %q: %v", spec.Name, err)
	}
	return id
}

// countPoints reads a job's stored point count from one node's store.
func countPoints(t *testing.T, s *server.Server, jobID string) int {
	t.Helper()
	n := 0
	err := s.Store().View(func(tx *store.Tx) error {
		pts, err := tx.Points(jobID, 0, 0)
		n = len(pts)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// agentLink runs agent1's link to addrs (tried in order) over a real
// spool, its handler a fakeAgent, until the test ends.
func (c *testCluster) agentLink(t *testing.T, addrs []string) (*link.Link, *spool.Spool, *fakeAgent) {
	t.Helper()
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"))
	if err != nil {
		t.Fatal(err)
	}
	clientTLS, err := tlsutil.ClientConfig(c.agent, wire.ALPN, "", tlsutil.Identity{Role: tlsutil.RoleController})
	if err != nil {
		t.Fatal(err)
	}
	fa := &fakeAgent{started: make(chan string, 16)}
	ctx, stop := context.WithCancel(context.Background())
	l := link.New(link.Options{Addrs: addrs, TLS: clientTLS, Spool: sp, Handler: fa, Log: testLog(t),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		<-done
		sp.Close()
	})
	return l, sp, fa
}

// fakeAgent is a link with a real spool whose handler records starts.
type fakeAgent struct {
	started chan string
}

func (f *fakeAgent) Hello() *gantrypb.Hello {
	return &gantrypb.Hello{NodeId: "agent1", Hostname: "h", Gpus: []*gantrypb.GPUInfo{{Index: 0, Name: "Mock A100"}}}
}
func (f *fakeAgent) Start(m *gantrypb.StartJob) {
	select {
	case f.started <- m.JobId:
	default:
	}
}
func (f *fakeAgent) Cancel(*gantrypb.CancelJob) {}
func (f *fakeAgent) Acked(uint64)               {}

func TestClusterElectsForwardsAndFailsOver(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	leader := c.waitLeader()

	// Every node knows the same three voters.
	for _, s := range c.nodes {
		var st apiv1.Cluster
		testutil.WaitFor(t, 10*time.Second, func() bool {
			var err error
			st, err = apiOf(s).Cluster(ctx)
			return err == nil && len(st.Peers) == 3 && st.Leader != ""
		}, "three peers and a leader in /v1/cluster")
		for _, p := range st.Peers {
			if !p.Reachable {
				t.Errorf("%s: peer %s unreachable in cluster status: %s", st.NodeID, p.ID, p.Error)
			}
		}
	}

	// A write on a follower is forwarded to the leader.
	f := c.follower()
	id := submit(t, f, apiv1.JobSpec{Name: "forwarded", Run: "true"})
	testutil.WaitFor(t, 5*time.Second, func() bool {
		_, err := apiOf(f).Job(ctx, id)
		return err == nil
	}, "the forwarded job replicated back to the follower")

	// An agent that dials a follower is redirected to the leader and its
	// records are stored once on every node.
	var addrs []string
	for _, s := range c.nodes {
		if !s.Raft().IsLeader() {
			addrs = append(addrs, s.QUICAddr())
		}
	}
	for _, s := range c.nodes {
		if s.Raft().IsLeader() {
			addrs = append(addrs, s.QUICAddr())
		}
	}
	l, sp, fa := c.agentLink(t, addrs)
	testutil.WaitFor(t, 10*time.Second, l.Connected, "the agent link connected (via redirect)")

	job := submit(t, leader, apiv1.JobSpec{Name: "streamed", Run: "true", Resources: apiv1.Resources{GPUs: 1}})
	deadline := time.After(10 * time.Second)
	for started := ""; started != job; {
		select {
		case started = <-fa.started: // the forwarded job may come first
		case <-deadline:
			t.Fatal("the leader never sent StartJob")
		}
	}

	const perPhase = 2000
	appendPoints := func(from, n int) {
		recs := make([]*gantrypb.Record, 0, 100)
		for i := from; i < from+n; i++ {
			step := int64(i)
			recs = append(recs, &gantrypb.Record{JobId: job, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{
				Step: &step, Ts: float64(time.Now().UnixNano()) / 1e9, Values: map[string]float64{"loss": float64(i)}}}})
			if len(recs) == 100 {
				if _, err := sp.Append(recs...); err != nil {
					t.Fatal(err)
				}
				recs = recs[:0]
			}
		}
		if len(recs) > 0 {
			if _, err := sp.Append(recs...); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendPoints(1, perPhase)

	// Kill the leader mid-stream.
	for i, s := range c.nodes {
		if s == leader {
			s.Close()
			c.nodes[i] = nil
		}
	}
	appendPoints(perPhase+1, perPhase)
	newLeader := c.waitLeader()
	if newLeader == leader {
		t.Fatal("the closed leader is still the leader")
	}
	testutil.WaitFor(t, 20*time.Second, func() bool {
		n, _, err := sp.Pending()
		return err == nil && n == 0
	}, "the spool drained to the new leader")
	for _, s := range c.nodes {
		if s == nil {
			continue
		}
		testutil.WaitFor(t, 10*time.Second, func() bool { return countPoints(t, s, job) == 2*perPhase }, "every point on every live node")
		j, err := apiOf(s).Job(ctx, job)
		if err != nil {
			t.Fatal(err)
		}
		if j.Points != 2*perPhase {
			t.Errorf("node job record counts %d points, want %d (a duplicate or a loss)", j.Points, 2*perPhase)
		}
	}
	// Writes are accepted again through any live node.
	submit(t, c.follower(), apiv1.JobSpec{Name: "after-failover", Run: "true"})
}

func TestClusterNodeRejoinsAfterWipe(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	leader := c.waitLeader()
	var ids []string
	for i := 0; i < 20; i++ {
		ids = append(ids, submit(t, leader, apiv1.JobSpec{Name: fmt.Sprint("j", i), Run: "true"}))
	}
	for _, s := range c.nodes {
		if err := s.Raft().Snapshot(); err != nil {
			t.Fatalf("snapshot: %v", err)
		}
	}
	// Wipe a follower: stop it, give it an empty data dir, start it again
	// with the same name; it catches up from the leader's snapshot.
	var victim int
	for i, s := range c.nodes {
		if !s.Raft().IsLeader() {
			victim = i
			break
		}
	}
	raftAddr, serfAddr := c.nodes[victim].Raft().Addr(), c.nodes[victim].Members().LocalAddr()
	c.nodes[victim].Close()
	c.dirs[victim] = t.TempDir()
	c.nodes[victim] = startControllerAt(t, c, victim, []string{leader.Members().LocalAddr()}, 3, raftAddr, serfAddr)
	testutil.WaitFor(t, 20*time.Second, func() bool {
		jobs, err := apiOf(c.nodes[victim]).Jobs(ctx)
		if err != nil {
			return false
		}
		have := map[string]bool{}
		for _, j := range jobs {
			have[j.ID] = true
		}
		for _, id := range ids {
			if !have[id] {
				return false
			}
		}
		return true
	}, "the wiped node caught up")
}

// TestFollowerWatchersSeeWhatLeaderWatchersSee: every controller serves
// live watchers from its own FSM, so a watcher on a follower receives the
// same points, in the same order, as one on the leader.
func TestFollowerWatchersSeeWhatLeaderWatchersSee(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	leader := c.waitLeader()
	follower := c.follower()

	l, sp, _ := c.agentLink(t, []string{leader.QUICAddr()})
	testutil.WaitFor(t, 10*time.Second, l.Connected, "agent connected")

	job := submit(t, leader, apiv1.JobSpec{Name: "watched", Run: "true"})
	testutil.WaitFor(t, 10*time.Second, func() bool {
		j, err := apiOf(follower).Job(ctx, job)
		return err == nil && j.State == apiv1.StateAssigned
	}, "job assigned, seen on the follower")

	type seen struct {
		seqs  []uint64
		final bool
	}
	watch := func(s *server.Server, out *seen, done chan<- error) {
		done <- apiOf(s).Watch(ctx, job, func(f apiv1.Frame) error {
			for _, p := range f.Points {
				out.seqs = append(out.seqs, p.Seq)
			}
			out.final = out.final || f.Type == apiv1.FrameFinal
			return nil
		})
	}
	var onLeader, onFollower seen
	doneL, doneF := make(chan error, 1), make(chan error, 1)
	go watch(leader, &onLeader, doneL)
	go watch(follower, &onFollower, doneF)
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return scrapeWatchers(t, leader) == 1 && scrapeWatchers(t, follower) == 1
	}, "both watchers connected")

	const points = 3000
	for i := 1; i <= points; i += 50 {
		var recs []*gantrypb.Record
		for k := i; k < i+50; k++ {
			step := int64(k)
			recs = append(recs, &gantrypb.Record{JobId: job, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{
				Step: &step, Ts: 1, Values: map[string]float64{"loss": float64(k)}}}})
		}
		if _, err := sp.Append(recs...); err != nil {
			t.Fatal(err)
		}
	}
	code := int32(0)
	if _, err := sp.Append(&gantrypb.Record{JobId: job, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: &code, Ts: 2}}}); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan error{"leader": doneL, "follower": doneF} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("%s watcher: %v", name, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s watcher did not end", name)
		}
	}
	if !onLeader.final || !onFollower.final {
		t.Fatalf("final frame: leader %v follower %v", onLeader.final, onFollower.final)
	}
	if len(onLeader.seqs) != points || len(onFollower.seqs) != points {
		t.Fatalf("points seen: leader %d follower %d, want %d each", len(onLeader.seqs), len(onFollower.seqs), points)
	}
	for i := range onLeader.seqs {
		if onLeader.seqs[i] != onFollower.seqs[i] {
			t.Fatalf("point %d: leader seq %d, follower seq %d", i, onLeader.seqs[i], onFollower.seqs[i])
		}
		if i > 0 && onLeader.seqs[i] <= onLeader.seqs[i-1] {
			t.Fatalf("seqs not increasing at %d: %d after %d", i, onLeader.seqs[i], onLeader.seqs[i-1])
		}
	}
}

func scrapeWatchers(t *testing.T, s *server.Server) int {
	t.Helper()
	resp, err := http.Get("http://" + s.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "gantry_ws_watchers" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return -1
}
