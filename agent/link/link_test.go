package link_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/agent/link"
	"github.com/gantry-ml/gantry/agent/spool"
	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/ingest"
	"github.com/gantry-ml/gantry/controller/server"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/wire"
)

const waitLong = 20 * time.Second

type controller struct {
	*server.Server
	ctrlTLS  tlsutil.Files
	agentTLS *tls.Config
}

func startController(t *testing.T) *controller {
	t.Helper()
	ctrl, agent, err := tlsutil.EnsureDev(t.TempDir(), "agent1")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.Start(server.Config{
		NodeID: "c1", DataDir: t.TempDir(),
		HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		Bootstrap: true, Fast: true, TLS: ctrl, LostGrace: time.Minute, Log: logging.Discard(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if err := srv.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	agentTLS, err := tlsutil.ClientConfig(agent, wire.ALPN, "", tlsutil.Identity{Role: tlsutil.RoleController})
	if err != nil {
		t.Fatal(err)
	}
	return &controller{Server: srv, ctrlTLS: ctrl, agentTLS: agentTLS}
}

func (c *controller) job(t *testing.T, id string) *gantrypb.Job {
	t.Helper()
	var j *gantrypb.Job
	if err := c.Store().View(func(tx *store.Tx) (err error) { j, err = tx.Job(id); return err }); err != nil {
		t.Fatal(err)
	}
	return j
}

func (c *controller) points(t *testing.T, id string) []*gantrypb.MetricPoint {
	t.Helper()
	var pts []*gantrypb.MetricPoint
	if err := c.Store().View(func(tx *store.Tx) (err error) { pts, err = tx.Points(id, 0, 0); return err }); err != nil {
		t.Fatal(err)
	}
	return pts
}

// handler is a fake agent: it records what the controller asks.
type handler struct {
	nodeID  string
	mu      sync.Mutex
	active  []string
	starts  []string
	cancels []string
	acked   atomic.Uint64
}

func (h *handler) Hello() *gantrypb.Hello {
	h.mu.Lock()
	defer h.mu.Unlock()
	return &gantrypb.Hello{NodeId: h.nodeID, Hostname: "host", ActiveJobs: append([]string(nil), h.active...)}
}

func (h *handler) Start(s *gantrypb.StartJob) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.starts = append(h.starts, s.JobId)
}

func (h *handler) Cancel(c *gantrypb.CancelJob) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cancels = append(h.cancels, c.JobId)
}

func (h *handler) Acked(upTo uint64) { h.acked.Store(upTo) }

func (h *handler) got(list *[]string, id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range *list {
		if s == id {
			return true
		}
	}
	return false
}

// running is a link started in the background; stop ends it and waits.
type running struct {
	*link.Link
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned, err then set
	err    error
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("Run: %v", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("link did not stop")
	}
}

func runLink(t *testing.T, opts link.Options) *running {
	t.Helper()
	if opts.Log == nil {
		opts.Log = logging.Discard()
	}
	opts.MinBackoff = 20 * time.Millisecond
	opts.MaxBackoff = 200 * time.Millisecond
	l := link.New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Link: l, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = l.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

func openSpool(t *testing.T, path string) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	return sp
}

func pending(t *testing.T, sp *spool.Spool) int {
	t.Helper()
	n, _, err := sp.Pending()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// appendPoints spools n points of job in batches of 100; the value of
// "i" is the running count, so the last point's value is known.
func appendPoints(t *testing.T, sp *spool.Spool, job string, from, n int) uint64 {
	t.Helper()
	var last uint64
	for i := 0; i < n; i += 100 {
		var recs []*gantrypb.Record
		for k := i; k < min(i+100, n); k++ {
			v := float64(from + k)
			step := int64(from + k)
			recs = append(recs, &gantrypb.Record{JobId: job, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{
				Step: &step, Ts: v, Values: map[string]float64{"i": v}}}})
		}
		idx, err := sp.Append(recs...)
		if err != nil {
			t.Fatal(err)
		}
		last = idx
	}
	return last
}

// submit adds a job already assigned to agent1: the controller takes a
// job's records only from the node it is assigned to, and these tests
// spool records before the scheduler could have placed the job.
func submit(t *testing.T, c *controller, id string) {
	t.Helper()
	if _, err := c.Raft().Apply(&gantrypb.SubmitJobCmd{JobId: id, AtMs: 1,
		Spec: &gantrypb.JobSpec{Run: "x", Resources: &gantrypb.Resources{Gpus: 0}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Raft().Apply(&gantrypb.AssignJobCmd{JobId: id, NodeId: "agent1", AtMs: 1}); err != nil {
		t.Fatal(err)
	}
}

// checkDense fails unless the job holds exactly the points with seqs
// first..last, each once.
func checkDense(t *testing.T, c *controller, id string, first, last uint64) {
	t.Helper()
	pts := c.points(t, id)
	if uint64(len(pts)) != last-first+1 {
		t.Fatalf("job %s holds %d points, want %d", id, len(pts), last-first+1)
	}
	for i, p := range pts {
		if p.Seq != first+uint64(i) {
			t.Fatalf("point %d has seq %d, want %d", i, p.Seq, first+uint64(i))
		}
	}
	if j := c.job(t, id); j.Points != uint64(len(pts)) || j.LastSeq != last || j.Node == "" {
		t.Fatalf("job counters points=%d last_seq=%d, want %d and %d", j.Points, j.LastSeq, len(pts), last)
	}
	var hw uint64
	j := c.job(t, id)
	_ = c.Store().View(func(tx *store.Tx) error { hw = tx.HighWater(store.StreamKeyNodeJob(j.Node, id)); return nil })
	if hw < last {
		t.Fatalf("high-water %d below the last stored seq %d", hw, last)
	}
}

func TestStreamExactlyOnceAcrossCuts(t *testing.T) {
	c := startController(t)
	submit(t, c, "j1")
	h := &handler{nodeID: "agent1", active: []string{"j1"}}
	sp := openSpool(t, filepath.Join(t.TempDir(), "spool.db"))
	opts := link.Options{Addrs: []string{c.QUICAddr()}, TLS: c.agentTLS, Spool: sp, Handler: h}

	l1 := runLink(t, opts)
	// The scheduler places the zero-GPU job on the only agent and the
	// start reaches the handler over the control stream.
	testutil.WaitFor(t, waitLong, func() bool { return h.got(&h.starts, "j1") }, "StartJob for j1")
	if !l1.Connected() || l1.Connects() != 1 {
		t.Fatalf("connected=%v connects=%d", l1.Connected(), l1.Connects())
	}
	if _, err := sp.Append(&gantrypb.Record{JobId: "j1", Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{Pid: 9, Ts: 1}}}); err != nil {
		t.Fatal(err)
	}
	last := appendPoints(t, sp, "j1", 1, 3000)
	// Cut the link mid-stream: as soon as something was acked, while (most
	// likely) batches are still in flight.
	testutil.WaitFor(t, waitLong, func() bool { return h.acked.Load() > 0 }, "a first ack")
	l1.stop(t)
	if l1.Connected() {
		t.Fatal("link reports connected after Run returned")
	}
	last = appendPoints(t, sp, "j1", 3001, 1000) // written while disconnected

	// A new link on the same spool resends everything unacked.
	l2 := runLink(t, opts)
	// Acked is told after the spool deletes, so wait for both.
	testutil.WaitFor(t, waitLong, func() bool { return pending(t, sp) == 0 && h.acked.Load() == last },
		"the spool to empty and the handler to hear the last ack")
	if !l2.Connected() {
		t.Fatal("second link not connected")
	}
	// seq 1 is the started record; points are seqs 2..4001.
	checkDense(t, c, "j1", 2, 4001)
	if s := c.job(t, "j1").State; s != gantrypb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("job is %s, want running (its agent reported it active)", s)
	}

	// Cancel travels down the control stream; the exit record comes up
	// after the last points and ends the job with them as final metrics.
	if _, err := c.Raft().Apply(&gantrypb.CancelJobCmd{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, waitLong, func() bool { return h.got(&h.cancels, "j1") }, "CancelJob for j1")
	if _, err := sp.Append(&gantrypb.Record{JobId: "j1", Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{Signal: "SIGTERM", Ts: 5}}}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, waitLong, func() bool {
		return pending(t, sp) == 0 && c.job(t, "j1").State == gantrypb.JobState_JOB_STATE_CANCELLED
	}, "the exit record")
	j := c.job(t, "j1")
	if want := map[string]float64{"i": 4000, "step": 4000}; !maps.Equal(j.FinalMetrics, want) {
		t.Fatalf("final metrics = %v, want %v", j.FinalMetrics, want)
	}
	checkDense(t, c, "j1", 2, 4001)
}

func TestReplayOfAckedRecordsStoresNothing(t *testing.T) {
	c := startController(t)
	submit(t, c, "j1")
	h := &handler{nodeID: "agent1", active: []string{"j1"}}
	dir := t.TempDir()
	sp := openSpool(t, filepath.Join(dir, "spool.db"))
	appendPoints(t, sp, "j1", 1, 500)
	gpu := &gantrypb.Record{Body: &gantrypb.Record_Gpu{Gpu: &gantrypb.GPUSample{Ts: 1, Gpus: []*gantrypb.GPUStat{{Index: 0}}}}}
	if _, err := sp.Append(gpu); err != nil {
		t.Fatal(err)
	}
	// A copy of the spool as it is before any ack: replaying it is what an
	// agent does when the acks were lost (a crash between commit and
	// delete). Appends are fsynced, so the file is complete on disk.
	img, err := os.ReadFile(filepath.Join(dir, "spool.db"))
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(dir, "copy.db")
	if err := os.WriteFile(copyPath, img, 0o600); err != nil {
		t.Fatal(err)
	}

	l1 := runLink(t, link.Options{Addrs: []string{c.QUICAddr()}, TLS: c.agentTLS, Spool: sp, Handler: h})
	testutil.WaitFor(t, waitLong, func() bool { return pending(t, sp) == 0 }, "the first spool to empty")
	checkDense(t, c, "j1", 1, 500)
	l1.stop(t)

	sp2 := openSpool(t, copyPath)
	if n := pending(t, sp2); n != 501 {
		t.Fatalf("copied spool holds %d records, want 501", n)
	}
	h2 := &handler{nodeID: "agent1", active: []string{"j1"}}
	runLink(t, link.Options{Addrs: []string{c.QUICAddr()}, TLS: c.agentTLS, Spool: sp2, Handler: h2})
	testutil.WaitFor(t, waitLong, func() bool { return pending(t, sp2) == 0 }, "the replayed spool to be acked")
	checkDense(t, c, "j1", 1, 500)
	var samples []*gantrypb.GPUSample
	_ = c.Store().View(func(tx *store.Tx) (err error) { samples, err = tx.GPUSamples("agent1", 10); return err })
	if len(samples) != 1 {
		t.Fatalf("GPU samples after replay = %d, want 1", len(samples))
	}
}

func TestHelloWithAnotherNodesNameRejected(t *testing.T) {
	c := startController(t)
	logs := &testutil.SyncBuffer{}
	sp := openSpool(t, filepath.Join(t.TempDir(), "spool.db"))
	l := runLink(t, link.Options{Addrs: []string{c.QUICAddr()}, TLS: c.agentTLS, Spool: sp,
		Handler: &handler{nodeID: "impostor"}, Log: slog.New(slog.NewTextHandler(logs, nil))})
	testutil.WaitFor(t, waitLong, func() bool { return strings.Count(logs.String(), "controller link down") >= 2 }, "the link to be refused twice")
	if l.Connects() != 0 || l.Connected() {
		t.Fatalf("a link whose hello names another node connected (%d times)", l.Connects())
	}
	if !strings.Contains(logs.String(), "certificate") {
		t.Fatalf("the refusal's reason did not reach the agent's log:\n%s", logs)
	}
	var nodes []*gantrypb.Node
	_ = c.Store().View(func(tx *store.Tx) (err error) { nodes, err = tx.Nodes(); return err })
	if len(nodes) != 0 {
		t.Fatalf("nodes registered: %v", nodes)
	}
}

// notLeader is an ingest Applier on a follower.
type notLeader struct{}

func (notLeader) IsLeader() bool                   { return false }
func (notLeader) Apply(proto.Message) (any, error) { return nil, cluster.ErrNotLeader }
func (notLeader) ApplyAsync(proto.Message) (*cluster.Pending, error) {
	return nil, cluster.ErrNotLeader
}

func TestFollowsRedirectToLeader(t *testing.T) {
	c := startController(t)
	serverTLS, err := tlsutil.ServerConfig(c.ctrlTLS, wire.ALPN, tlsutil.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	follower, err := ingest.Listen(ingest.Options{Addr: "127.0.0.1:0", TLS: serverTLS, Raft: notLeader{},
		Log: logging.Discard(), LeaderAddr: c.QUICAddr})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { _ = follower.Serve(ctx); close(served) }()
	defer func() { cancel(); follower.Close(); <-served }()

	submit(t, c, "j1")
	sp := openSpool(t, filepath.Join(t.TempDir(), "spool.db"))
	appendPoints(t, sp, "j1", 1, 10)
	h := &handler{nodeID: "agent1", active: []string{"j1"}}
	// Only the follower is configured; Discover returns nothing new.
	l := runLink(t, link.Options{Addrs: []string{follower.Addr().String()}, Discover: func() []string { return nil },
		TLS: c.agentTLS, Spool: sp, Handler: h})
	testutil.WaitFor(t, waitLong, func() bool { return pending(t, sp) == 0 }, "records to reach the leader")
	checkDense(t, c, "j1", 1, 10)
	if l.Connects() != 1 {
		t.Fatalf("connects = %d, want 1 (to the leader only)", l.Connects())
	}
}
