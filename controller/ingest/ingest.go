// Package ingest is the controller's end of the agent link: a QUIC listener
// with mutual TLS, one session per agent. Record batches go straight into
// Raft in arrival order and are acked only after they commit, so an agent
// deletes from its spool only what every future leader will have
// (invariant I3). The control stream carries StartJob/CancelJob down.
package ingest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/admission"
	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
	"github.com/gantry-ml/gantry/proto/wire"
)

// Applier commits commands through Raft. ApplyAsync futures complete in the
// order they were started.
type Applier interface {
	ApplyAsync(m proto.Message) (*cluster.Pending, error)
	Apply(m proto.Message) (any, error)
	IsLeader() bool
}

// Events is told when agents come and go (the scheduler reconciles then).
type Events interface {
	AgentConnected(nodeID string)
	AgentDisconnected(nodeID string)
}

// Options configures the server.
type Options struct {
	Addr   string
	TLS    *tls.Config
	Raft   Applier
	Events Events
	Log    *slog.Logger
	// Version is reported to agents in HelloReply (informational).
	Version string
	// MaxInflight bounds the batches of one agent received and not yet
	// acked (queued, proposed or committing).
	MaxInflight int
	// EntryBytes caps the records of one Raft entry (DefaultEntryBytes when
	// 0). InflightBytes is the least the records proposed and not yet
	// applied, across all agents, may come to (DefaultInflightBytes when
	// 0); above it the proposer allows what Raft applies in about 25 ms at
	// the rate it measures. See proposer.
	EntryBytes, InflightBytes int
	// LeaderAddr returns the leader's agent-link address, sent to agents
	// that reach a follower so they reconnect there directly.
	LeaderAddr func() string
	// Owners maps jobs to their nodes for screening batches. Without it
	// the leader proposes records of any job and only the FSM's own
	// ownership check stands between agents (tests of the FSM's check).
	Owners Owners
	// FlatEntries reports whether every voter reads metric points in the
	// flat form, so entries may carry them so; when it says no, points go
	// into entries in the map form every release reads (a rolling
	// upgrade). nil: flat always (one controller, or tests).
	FlatEntries func() bool
	// Registry, when set, gets the ingest counters.
	Registry prometheus.Registerer
	// Blobs serves code archives on blob streams; nil refuses them.
	Blobs Blobs
}

// Server accepts agent connections.
type Server struct {
	opts Options
	ln   *quic.Listener

	mu       sync.Mutex
	sessions map[string]*Session

	refused *prometheus.CounterVec
	prop    *proposer
}

// Listen starts the QUIC listener.
func Listen(opts Options) (*Server, error) {
	if opts.MaxInflight <= 0 {
		opts.MaxInflight = 32
	}
	tlsConf := opts.TLS.Clone()
	tlsConf.NextProtos = []string{wire.ALPN}
	ln, err := quic.ListenAddr(opts.Addr, tlsConf, wire.QUICConfig())
	if err != nil {
		return nil, fmt.Errorf("ingest: listen on %s: %w", opts.Addr, err)
	}
	s := &Server{opts: opts, ln: ln, sessions: map[string]*Session{},
		prop: newProposer(opts.Raft, opts.EntryBytes, opts.InflightBytes, opts.FlatEntries),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gantry_ingest_refused_records_total",
			Help: "Agent records the leader refused before proposing them, by reason (limit, foreign_job, unknown_job).",
		}, []string{"reason"})}
	if opts.Registry != nil {
		if err := opts.Registry.Register(s.refused); err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("ingest: metrics: %w", err)
		}
	}
	return s, nil
}

// Addr is the bound UDP address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until ctx ends or the listener closes.
func (s *Server) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	pctx, stop := context.WithCancel(ctx)
	defer stop() // before wg.Wait, deferred later: the proposer's goroutines end first
	wg.Add(2)
	go func() { defer wg.Done(); s.prop.run(pctx) }()
	go func() { defer wg.Done(); s.prop.complete(pctx) }()
	for {
		conn, err := s.ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("ingest: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handle(ctx, conn)
		}()
	}
}

// Close stops the listener and every session.
func (s *Server) Close() error {
	s.mu.Lock()
	for _, sess := range s.sessions {
		sess.conn.CloseWithError(wire.CodeShuttingDown, "controller shutting down")
	}
	s.mu.Unlock()
	return s.ln.Close()
}

// CloseAll ends every agent session (they reconnect, and a follower
// redirects them to the leader).
func (s *Server) CloseAll(code quic.ApplicationErrorCode, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sess := range s.sessions {
		sess.conn.CloseWithError(code, reason)
	}
}

// Session returns the live session of a node.
func (s *Server) Session(nodeID string) (*Session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[nodeID]
	return sess, ok
}

// Connected reports whether a node has a live session here.
func (s *Server) Connected(nodeID string) bool {
	_, ok := s.Session(nodeID)
	return ok
}

// Session is one agent's connection.
type Session struct {
	NodeID string
	// Addr is where peers of a multi-node job reach this agent's host: the
	// hello's advertise_addr, else the connection's source IP.
	Addr   string
	conn   *quic.Conn
	ctrlMu sync.Mutex
	ctrl   *wire.Stream

	sentMu sync.Mutex
	sent   map[string]bool // "start/<job>", "cancel/<job>" already sent on this session
}

// Send writes a control message to the agent.
func (sess *Session) Send(m *gantrypb.ControlMessage) error {
	sess.ctrlMu.Lock()
	defer sess.ctrlMu.Unlock()
	return sess.ctrl.Write(m)
}

// SendOnce sends m unless a message with the same key was already sent on
// this session. A new session (a reconnect) starts with nothing sent, so
// the leader re-sends what the agent may have missed; the agent ignores
// duplicates.
func (sess *Session) SendOnce(key string, m *gantrypb.ControlMessage) error {
	sess.sentMu.Lock()
	if sess.sent[key] {
		sess.sentMu.Unlock()
		return nil
	}
	sess.sent[key] = true
	sess.sentMu.Unlock()
	if err := sess.Send(m); err != nil {
		sess.sentMu.Lock()
		delete(sess.sent, key)
		sess.sentMu.Unlock()
		return err
	}
	return nil
}

// Forget lets key be sent again (the job left the state that needed it).
func (sess *Session) Forget(key string) {
	sess.sentMu.Lock()
	delete(sess.sent, key)
	sess.sentMu.Unlock()
}

func (s *Server) handle(ctx context.Context, conn *quic.Conn) {
	log := s.opts.Log.With("remote", conn.RemoteAddr().String())
	sess, hello, err := s.handshake(ctx, conn)
	if err != nil {
		code := wire.CodeProtocol
		var nl notLeaderError
		if errors.As(err, &nl) {
			// A redirect, or no leader yet: routine, not a failure.
			code = wire.CodeNotLeader
			log.Debug("agent sent elsewhere: this controller does not lead", "err", err)
		} else {
			log.Warn("agent handshake failed", "err", err)
		}
		conn.CloseWithError(code, truncate(err.Error(), 200))
		return
	}
	log = log.With("node", sess.NodeID)
	log.Info("agent connected", "gpus", len(hello.Gpus), "active_jobs", len(hello.ActiveJobs), "version", hello.Version)

	s.mu.Lock()
	if old := s.sessions[sess.NodeID]; old != nil {
		old.conn.CloseWithError(wire.CodeProtocol, "replaced by a newer connection from the same node")
	}
	s.sessions[sess.NodeID] = sess
	s.mu.Unlock()
	if s.opts.Events != nil {
		s.opts.Events.AgentConnected(sess.NodeID)
	}

	err = s.serve(ctx, sess, log)

	s.mu.Lock()
	current := s.sessions[sess.NodeID] == sess
	if current {
		delete(s.sessions, sess.NodeID)
	}
	s.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		log.Warn("agent disconnected", "err", err)
	} else {
		log.Info("agent disconnected")
	}
	if current {
		if s.opts.Raft.IsLeader() && ctx.Err() == nil {
			if _, err := s.opts.Raft.Apply(&gantrypb.NodeDownCmd{NodeId: sess.NodeID, AtMs: time.Now().UnixMilli()}); err != nil {
				log.Warn("could not record node down", "err", err)
			}
		}
		if s.opts.Events != nil {
			s.opts.Events.AgentDisconnected(sess.NodeID)
		}
	}
}

type notLeaderError struct{ error }

func (s *Server) handshake(ctx context.Context, conn *quic.Conn) (*Session, *gantrypb.Hello, error) {
	// The session's node is the certificate's identity, never what the
	// hello claims: only an agent certificate registers a node, so a
	// controller certificate (or one from before roles) cannot pose as one
	// even if the TLS config let it through.
	peer, err := tlsutil.PeerIdentity(conn.ConnectionState().TLS)
	if err != nil {
		return nil, nil, fmt.Errorf("client certificate: %w", err)
	}
	if peer.Role != tlsutil.RoleAgent {
		return nil, nil, fmt.Errorf("client certificate is %s; only an agent certificate registers a node", peer)
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	qs, err := conn.AcceptStream(hctx)
	if err != nil {
		return nil, nil, fmt.Errorf("waiting for the control stream: %w", err)
	}
	typ, ctrl, err := wire.Accept(qs, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	if typ != wire.StreamControl {
		return nil, nil, fmt.Errorf("first stream is type %d, want the control stream", typ)
	}
	var msg gantrypb.ControlMessage
	if err := ctrl.Read(&msg, 10*time.Second); err != nil {
		return nil, nil, err
	}
	hello := msg.GetHello()
	if hello == nil {
		return nil, nil, errors.New("first control message is not hello")
	}
	if err := admission.CheckHello(hello); err != nil {
		return nil, nil, fmt.Errorf("hello: %w", err)
	}
	if hello.NodeId != peer.ID {
		return nil, nil, fmt.Errorf("hello names node %q but the certificate is %s", hello.NodeId, peer)
	}
	reply := func(ok bool, reason, leader string) error {
		return ctrl.Write(&gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_HelloReply{
			HelloReply: &gantrypb.HelloReply{Ok: ok, Error: reason, LeaderAddr: leader, FlatPoints: true,
				CodeArchives: s.opts.Blobs != nil}}})
	}
	if !s.opts.Raft.IsLeader() {
		leader := ""
		if s.opts.LeaderAddr != nil {
			leader = s.opts.LeaderAddr()
		}
		if err := reply(false, wire.NotLeaderReason, leader); err == nil {
			// Let the agent read the redirect before the connection
			// closes: closing at once can drop the reply in flight.
			select {
			case <-conn.Context().Done():
			case <-time.After(2 * time.Second):
			}
		}
		return nil, nil, notLeaderError{fmt.Errorf("not the leader (leader: %q)", leader)}
	}
	_, err = s.opts.Raft.Apply(&gantrypb.NodeUpCmd{
		Node: &gantrypb.Node{
			Id: hello.NodeId, Hostname: hello.Hostname, Gpus: hello.Gpus, Version: hello.Version,
		},
		ActiveJobs: hello.ActiveJobs,
		AtMs:       time.Now().UnixMilli(),
	})
	if err != nil {
		_ = reply(false, err.Error(), "")
		return nil, nil, fmt.Errorf("register node: %w", err)
	}
	if err := reply(true, "", ""); err != nil {
		return nil, nil, err
	}
	addr := hello.AdvertiseAddr
	if addr == "" {
		if ua, ok := conn.RemoteAddr().(*net.UDPAddr); ok {
			addr = ua.IP.String()
		}
	}
	return &Session{NodeID: hello.NodeId, Addr: addr, conn: conn, ctrl: ctrl, sent: map[string]bool{}}, hello, nil
}

// serve runs the session until any of its parts fails: one errgroup per
// connection, so one failure closes all.
func (s *Server) serve(ctx context.Context, sess *Session, log *slog.Logger) error {
	g, gctx := errgroup.WithContext(ctx)
	// One queue per node at the proposer: registering drops what an older
	// session of this node left unproposed, before this one reads a batch.
	q := s.prop.register(sess.NodeID)
	defer s.prop.unregister(q)
	// slots bounds the batches received and not yet acked.
	slots := make(chan struct{}, s.opts.MaxInflight)

	g.Go(func() error {
		// Control stream: the agent sends nothing after hello today; reading
		// it notices a closed stream promptly.
		for {
			var m gantrypb.ControlMessage
			if err := sess.ctrl.Read(&m, 0); err != nil {
				return fmt.Errorf("control stream: %w", err)
			}
			log.Debug("ignoring control message from agent", "msg", m.String())
		}
	})
	g.Go(func() error {
		qs, err := sess.conn.AcceptStream(gctx)
		if err != nil {
			return fmt.Errorf("waiting for the records stream: %w", err)
		}
		typ, rs, err := wire.Accept(qs, 10*time.Second)
		if err != nil {
			return err
		}
		if typ != wire.StreamRecords {
			return fmt.Errorf("second stream is type %d, want the records stream", typ)
		}
		g.Go(func() error { return s.ack(gctx, rs, q, slots) })
		g.Go(func() error { return s.serveBlobStreams(gctx, sess, log) })
		for {
			var batch gantrypb.RecordBatch
			if err := rs.Read(&batch, 0); err != nil {
				return fmt.Errorf("records stream: %w", err)
			}
			log.Debug("batch received", "batch", batch.BatchId, "records", len(batch.Records))
			if n := len(batch.Records); n > limits.MaxRecordsPerBatch {
				return fmt.Errorf("batch %d has %d records; the limit is %d", batch.BatchId, n, limits.MaxRecordsPerBatch)
			}
			// The key table serves every flat point of the batch: one
			// that is not a table of metric names is framing gone wrong,
			// like an oversize batch.
			if err := admission.CheckKeyTable(batch.Keys); err != nil {
				return fmt.Errorf("batch %d: %w", batch.BatchId, err)
			}
			records, err := s.screen(sess.NodeID, batch.Records, len(batch.Keys), log)
			if err != nil {
				return err
			}
			select {
			case slots <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			// Not leading, the proposal fails and the session ends with
			// it; checked here too, so that a deposed leader stops taking
			// batches at once.
			if !s.opts.Raft.IsLeader() {
				return cluster.ErrNotLeader
			}
			if err := s.prop.offer(q, batch.BatchId, batch.Keys, records); err != nil {
				return err
			}
		}
	})
	g.Go(func() error {
		<-gctx.Done()
		code := wire.CodeOK
		if !s.opts.Raft.IsLeader() {
			code = wire.CodeNotLeader
		}
		sess.conn.CloseWithError(code, "session ended")
		return nil
	})
	return g.Wait()
}

// screen returns the records of a batch that may be proposed, and counts
// and logs (once per batch) the ones refused.
func (s *Server) screen(node string, recs []*gantrypb.Record, nkeys int, log *slog.Logger) ([]*gantrypb.Record, error) {
	if s.opts.Owners == nil {
		return recs, nil
	}
	owners, err := s.opts.Owners.JobNodes(jobIDs(recs))
	if err != nil {
		return nil, fmt.Errorf("looking up the batch's jobs: %w", err)
	}
	out := screen(node, recs, nkeys, owners)
	if len(out.refused) > 0 {
		for reason, n := range out.refused {
			s.refused.WithLabelValues(reason).Add(float64(n))
		}
		log.Warn("agent records refused", "refused", out.refused, "first", out.first)
	}
	return out.records, nil
}

// ack acks the session's batches as the proposer reports their entries
// applied, in order: a batch only once the entry holding its last record
// is (invariant I3).
func (s *Server) ack(ctx context.Context, rs *wire.Stream, q *queue, slots <-chan struct{}) error {
	for {
		rss, err := q.take(ctx)
		if err != nil {
			return err
		}
		for _, r := range rss {
			if r.err != nil {
				if !errors.Is(r.err, fsm.ErrSkipped) {
					return fmt.Errorf("batches %v: %w", r.ids, r.err)
				}
				// Every voter skipped it, and would skip it again:
				// resending can never succeed, so the agent may drop it.
				s.opts.Log.Error("batch was committed but could not be applied; acking it so the agent moves on", "batches", r.ids, "err", r.err)
			}
			for _, id := range r.ids {
				s.opts.Log.Debug("batch committed", "batch", id)
				if err := rs.Write(&gantrypb.BatchAck{BatchId: id}); err != nil {
					return err
				}
				<-slots
			}
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
