package ingest_test

import (
	"context"
	"crypto/tls"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/ingest"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/wire"
)

// events records the Events callbacks.
type events struct {
	mu           sync.Mutex
	connected    []string
	disconnected []string
}

func (e *events) AgentConnected(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.connected = append(e.connected, id)
}

func (e *events) AgentDisconnected(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.disconnected = append(e.disconnected, id)
}

func (e *events) counts() (int, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.connected), len(e.disconnected)
}

// env is an ingest server in front of a real single-node Raft over a real
// FSM and store, and the certificates of two agents.
type env struct {
	t      *testing.T
	st     *store.Store
	raft   *cluster.Node
	srv    *ingest.Server
	events *events
	tlsDir string
	agent1 tlsutil.Files
	// srvOwners is what the server's screen reads job owners from.
	srvOwners *storeOwners
}

func newEnv(t *testing.T, raftApplier func(*cluster.Node) ingest.Applier, leaderAddr func() string) *env {
	t.Helper()
	return newEnvWith(t, raftApplier, leaderAddr, nil)
}

// newEnvWith is newEnv with the server's options changed by tweak.
func newEnvWith(t *testing.T, raftApplier func(*cluster.Node) ingest.Applier, leaderAddr func() string, tweak func(*ingest.Options)) *env {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := t.TempDir()
	ctrl, agent1, err := tlsutil.EnsureDev(tlsDir, "agent1")
	if err != nil {
		t.Fatal(err)
	}
	node, err := cluster.Open(cluster.Config{NodeID: "c1", DataDir: dir, BindAddr: "127.0.0.1:0",
		Bootstrap: true, Fast: true, Log: logging.Discard(), TLS: ctrl}, fsm.New(st, nil, logging.Discard()))
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, node.IsLeader, "raft leadership")
	serverTLS, err := tlsutil.ServerConfig(ctrl, wire.ALPN, tlsutil.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	owners := &storeOwners{st: st, hidden: map[string]bool{}}
	var applier ingest.Applier = node
	if raftApplier != nil {
		applier = raftApplier(node)
	}
	opts := ingest.Options{Addr: "127.0.0.1:0", TLS: serverTLS, Raft: applier, Events: ev,
		Log: logging.Discard(), Version: "test", LeaderAddr: leaderAddr, Owners: owners}
	if tweak != nil {
		tweak(&opts)
	}
	srv, err := ingest.Listen(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := srv.Close(); err != nil {
			t.Errorf("ingest close: %v", err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after Close")
		}
		if err := node.Close(); err != nil {
			t.Errorf("raft close: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("store close: %v", err)
		}
	})
	return &env{t: t, st: st, raft: node, srv: srv, events: ev, tlsDir: tlsDir, agent1: agent1, srvOwners: owners}
}

// storeOwners is the controller's own Owners: jobs' nodes from the store,
// less the hidden ones (a leader whose state lags its log).
type storeOwners struct {
	st     *store.Store
	mu     sync.Mutex
	hidden map[string]bool
}

func (o *storeOwners) hide(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.hidden[id] = true
}

func (o *storeOwners) JobNodes(ids []string) (map[string][]string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string][]string{}
	err := o.st.View(func(tx *store.Tx) error {
		for _, id := range ids {
			if o.hidden[id] {
				continue
			}
			if j, err := tx.Job(id); err == nil && j.Node != "" {
				out[id] = []string{j.Node}
			}
		}
		return nil
	})
	return out, err
}

// job submits a job and assigns it to node.
func (e *env) job(id, node string) {
	e.t.Helper()
	if _, err := e.raft.Apply(&gantrypb.SubmitJobCmd{JobId: id, Spec: &gantrypb.JobSpec{Run: "x"}}); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.raft.Apply(&gantrypb.AssignJobCmd{JobId: id, NodeId: node}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) clientTLS(f tlsutil.Files) *tls.Config {
	e.t.Helper()
	c, err := tlsutil.ClientConfig(f, wire.ALPN, "", tlsutil.Identity{Role: tlsutil.RoleController})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// agentConn is a hand-driven agent end of the wire.
type agentConn struct {
	conn *quic.Conn
	ctrl *wire.Stream
}

func (e *env) dial(f tlsutil.Files) *agentConn {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, e.srv.Addr().String(), e.clientTLS(f), wire.QUICConfig())
	if err != nil {
		e.t.Fatalf("dial: %v", err)
	}
	e.t.Cleanup(func() { conn.CloseWithError(wire.CodeOK, "test done") })
	qs, err := conn.OpenStreamSync(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	ctrl, err := wire.Open(qs, wire.StreamControl)
	if err != nil {
		e.t.Fatal(err)
	}
	return &agentConn{conn: conn, ctrl: ctrl}
}

// hello sends a hello and returns the reply, or the read error.
func (a *agentConn) hello(h *gantrypb.Hello) (*gantrypb.HelloReply, error) {
	if err := a.ctrl.Write(&gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_Hello{Hello: h}}); err != nil {
		return nil, err
	}
	var m gantrypb.ControlMessage
	if err := a.ctrl.Read(&m, 5*time.Second); err != nil {
		return nil, err
	}
	if m.GetHelloReply() == nil {
		return nil, errors.New("reply is not a HelloReply")
	}
	return m.GetHelloReply(), nil
}

func (e *env) node(id string) (*gantrypb.Node, error) {
	var n *gantrypb.Node
	err := e.st.View(func(tx *store.Tx) (err error) { n, err = tx.Node(id); return err })
	return n, err
}

func TestHelloNodeMustMatchCertificate(t *testing.T) {
	e := newEnv(t, nil, nil)
	a := e.dial(e.agent1)
	_, err := a.hello(&gantrypb.Hello{NodeId: "agent2"})
	var appErr *quic.ApplicationError
	if !errors.As(err, &appErr) || appErr.ErrorCode != wire.CodeProtocol || !strings.Contains(appErr.ErrorMessage, "certificate") {
		t.Fatalf("hello naming another node: err = %v, want a protocol close mentioning the certificate", err)
	}
	if _, err := e.node("agent2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("impostor node registered: %v", err)
	}
	if e.srv.Connected("agent2") || e.srv.Connected("agent1") {
		t.Fatal("a rejected hello left a session")
	}
	if c, _ := e.events.counts(); c != 0 {
		t.Fatal("AgentConnected for a rejected hello")
	}
}

func TestFirstStreamMustBeControl(t *testing.T) {
	e := newEnv(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, e.srv.Addr().String(), e.clientTLS(e.agent1), wire.QUICConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	qs, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wire.Open(qs, wire.StreamRecords); err != nil {
		t.Fatal(err)
	}
	select {
	case <-conn.Context().Done():
	case <-ctx.Done():
		t.Fatal("controller kept a connection whose first stream is not the control stream")
	}
	var appErr *quic.ApplicationError
	if err := context.Cause(conn.Context()); !errors.As(err, &appErr) || appErr.ErrorCode != wire.CodeProtocol {
		t.Fatalf("close cause = %v, want a protocol error", err)
	}
}

func TestSessionRecordsAckAndControl(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.job("j1", "agent1")
	a := e.dial(e.agent1)
	reply, err := a.hello(&gantrypb.Hello{NodeId: "agent1", Hostname: "h1", Version: "v",
		Gpus: []*gantrypb.GPUInfo{{Index: 0, Name: "A100"}}})
	if err != nil || !reply.Ok {
		t.Fatalf("hello: %v %v", reply, err)
	}
	n, err := e.node("agent1")
	if err != nil || n.State != gantrypb.NodeState_NODE_STATE_UP || n.Hostname != "h1" || len(n.Gpus) != 1 {
		t.Fatalf("registered node = %v, %v", n, err)
	}
	testutil.WaitFor(t, 5*time.Second, func() bool { return e.srv.Connected("agent1") }, "the session to be registered")
	if c, _ := e.events.counts(); c != 1 {
		t.Fatalf("AgentConnected calls = %d", c)
	}

	// Records stream: a batch is acked once committed, and a replay of it
	// is acked again without storing anything twice.
	qs, err := a.conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rs, err := wire.Open(qs, wire.StreamRecords)
	if err != nil {
		t.Fatal(err)
	}
	step := int64(1)
	batch := &gantrypb.RecordBatch{BatchId: 7, Records: []*gantrypb.Record{
		{JobId: "j1", Seq: 1, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Step: &step, Values: map[string]float64{"loss": 1}}}},
		{JobId: "j1", Seq: 2, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Values: map[string]float64{"loss": 0.5}}}},
	}}
	for i, id := range []uint64{7, 7} {
		if err := rs.Write(batch); err != nil {
			t.Fatal(err)
		}
		var ack gantrypb.BatchAck
		if err := rs.Read(&ack, 5*time.Second); err != nil {
			t.Fatalf("ack %d: %v", i, err)
		}
		if ack.BatchId != id || ack.Error != "" {
			t.Fatalf("ack %d = %v", i, &ack)
		}
		// The ack comes after commit: the data is already readable.
		var j *gantrypb.Job
		if err := e.st.View(func(tx *store.Tx) (err error) { j, err = tx.Job("j1"); return err }); err != nil {
			t.Fatal(err)
		}
		if j.Points != 2 || j.LatestMetrics["loss"] != 0.5 {
			t.Fatalf("after ack %d: points=%d latest=%v", i, j.Points, j.LatestMetrics)
		}
	}

	// SendOnce sends a key once per session; Forget re-arms it.
	sess, ok := e.srv.Session("agent1")
	if !ok {
		t.Fatal("no session")
	}
	start := &gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_Start{Start: &gantrypb.StartJob{JobId: "j1"}}}
	cancelMsg := &gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_Cancel{Cancel: &gantrypb.CancelJob{JobId: "j1"}}}
	for _, step := range []struct {
		key string
		m   *gantrypb.ControlMessage
	}{{"start/j1", start}, {"start/j1", start}, {"cancel/j1", cancelMsg}} {
		if err := sess.SendOnce(step.key, step.m); err != nil {
			t.Fatal(err)
		}
	}
	sess.Forget("start/j1")
	if err := sess.SendOnce("start/j1", start); err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := 0; i < 3; i++ {
		var m gantrypb.ControlMessage
		if err := a.ctrl.Read(&m, 5*time.Second); err != nil {
			t.Fatalf("control message %d: %v", i, err)
		}
		switch {
		case m.GetStart() != nil:
			got = append(got, "start")
		case m.GetCancel() != nil:
			got = append(got, "cancel")
		}
	}
	if strings.Join(got, ",") != "start,cancel,start" {
		t.Fatalf("control messages = %v, want start,cancel,start", got)
	}

	// Going away: the session ends, the node is recorded down, the
	// scheduler is told.
	a.conn.CloseWithError(wire.CodeOK, "bye")
	testutil.WaitFor(t, 10*time.Second, func() bool {
		n, err := e.node("agent1")
		return err == nil && n.State == gantrypb.NodeState_NODE_STATE_DOWN
	}, "the node to be recorded down")
	testutil.WaitFor(t, 5*time.Second, func() bool { _, d := e.events.counts(); return d == 1 }, "AgentDisconnected")
	if e.srv.Connected("agent1") {
		t.Fatal("session still registered after the agent left")
	}
}

func TestNewConnectionReplacesOld(t *testing.T) {
	e := newEnv(t, nil, nil)
	a1 := e.dial(e.agent1)
	if r, err := a1.hello(&gantrypb.Hello{NodeId: "agent1"}); err != nil || !r.Ok {
		t.Fatalf("first hello: %v %v", r, err)
	}
	a2 := e.dial(e.agent1)
	if r, err := a2.hello(&gantrypb.Hello{NodeId: "agent1"}); err != nil || !r.Ok {
		t.Fatalf("second hello: %v %v", r, err)
	}
	select {
	case <-a1.conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the older connection was not closed")
	}
	// The replaced session's end must not mark the node down or drop the
	// new session.
	testutil.WaitFor(t, 5*time.Second, func() bool {
		s, ok := e.srv.Session("agent1")
		return ok && s != nil
	}, "the new session")
	n, err := e.node("agent1")
	if err != nil || n.State != gantrypb.NodeState_NODE_STATE_UP {
		t.Fatalf("node after replacement = %v, %v", n, err)
	}
	if _, d := e.events.counts(); d != 0 {
		t.Fatal("AgentDisconnected for a replaced session")
	}
}

// follower is an Applier that is not the leader.
type follower struct{ *cluster.Node }

func (follower) IsLeader() bool { return false }
func (follower) Apply(proto.Message) (any, error) {
	return nil, cluster.ErrNotLeader
}
func (follower) ApplyAsync(proto.Message) (*cluster.Pending, error) {
	return nil, cluster.ErrNotLeader
}

func TestFollowerRedirects(t *testing.T) {
	e := newEnv(t, func(n *cluster.Node) ingest.Applier { return follower{n} }, func() string { return "10.0.0.1:7481" })
	a := e.dial(e.agent1)
	reply, err := a.hello(&gantrypb.Hello{NodeId: "agent1"})
	if err != nil {
		t.Fatalf("hello to a follower: %v", err)
	}
	if reply.Ok || reply.LeaderAddr != "10.0.0.1:7481" {
		t.Fatalf("follower's reply = %v, want a refusal naming the leader", reply)
	}
	if _, err := e.node("agent1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("a follower registered the node")
	}
}
