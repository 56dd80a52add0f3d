// Package server wires one controller together: store, FSM, Raft, hub,
// feed, scheduler, QUIC ingest and the HTTP API. The binary and the tests
// both start controllers through it.
package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gantry-ml/gantry/controller/alert"
	"github.com/gantry-ml/gantry/controller/blobpeers"
	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/feed"
	"github.com/gantry-ml/gantry/controller/fleetmetrics"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/httpapi"
	"github.com/gantry-ml/gantry/controller/hub"
	"github.com/gantry-ml/gantry/controller/ingest"
	"github.com/gantry-ml/gantry/controller/scheduler"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/membership"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/wire"
)

// Version is the controller's version string.
var Version = "dev"

// Config configures a controller.
type Config struct {
	NodeID   string
	DataDir  string
	HTTPAddr string
	RaftAddr string
	QUICAddr string
	// Bootstrap starts a one-voter cluster when there is no Raft state.
	Bootstrap bool
	// TLS is the controller's certificate (role controller; with
	// clustering its ID must be NodeID) and the cluster CA, for the agent
	// link and for Raft.
	TLS   tlsutil.Files
	Token string
	// Fast uses 50 ms Raft timings (tests).
	Fast bool
	Log  *slog.Logger
	// Extra mounts more HTTP handlers (the dashboard).
	Extra func(*http.ServeMux)

	// Clustering. With no SerfAddr the controller runs alone (dev mode).
	SerfAddr      string
	SerfAdvertise string
	Join          []string
	// BootstrapExpect bootstraps Raft once this many controllers are seen.
	BootstrapExpect int
	// GossipKey is the base64 serf encryption key.
	GossipKey string
	// Advertised addresses of this controller, when they differ from the
	// bound ones (0.0.0.0, NAT).
	AdvertiseHTTP string
	AdvertiseQUIC string
	AdvertiseRaft string
	// LostGrace is how long a node may be down before its running jobs
	// become lost (default 60 s).
	LostGrace time.Duration

	// HTTPAllowedHosts are the Host names a tokenless API answers to
	// besides loopback names and this controller's own HTTP addresses
	// (DNS rebinding defence; ignored when Token is set).
	HTTPAllowedHosts []string
	// HTTPTLSCert and HTTPTLSKey, when set, serve the API over HTTPS with
	// this certificate; peers are then reached over https too.
	HTTPTLSCert string
	HTTPTLSKey  string
	// InsecureNoToken allows serving a tokenless API on a non-loopback
	// address; without it Start refuses, since anyone who reaches that
	// address could run commands on the GPU hosts.
	InsecureNoToken bool
	// HTTPLimits are the API server's timeouts and header cap (zero fields
	// take httpapi's defaults).
	HTTPLimits httpapi.Limits
	// MaxCodeArchive is the largest code archive (PUT /v1/blobs) taken;
	// 0 means DefaultMaxCodeArchive.
	MaxCodeArchive int64
	// Disk is the free-space guard on DataDir (cluster.DiskConfig).
	Disk cluster.DiskConfig
	// Fleet configures GET /metrics/fleet (controller/fleetmetrics): the
	// job metric keys exported and the bounds. Store, Leading, Connected
	// and Log are the server's.
	Fleet fleetmetrics.Options
	// AlertWebhooks are the URLs the leader posts alerts to
	// (controller/alert); none: alerts stay in the outbox.
	AlertWebhooks []string
}

// Server is a running controller.
type Server struct {
	cfg     Config
	store   *store.Store
	fsm     *fsm.FSM
	raft    *cluster.Node
	hub     *hub.Hub
	ingest  *ingest.Server
	sched   *scheduler.Scheduler
	alerts  *alert.Notifier
	api     *httpapi.API
	http    *http.Server
	httpLn  net.Listener
	members *membership.Node
	// blobs holds code archives (beside the Raft log, on every voter).
	blobs *blobpeers.Peers
	// flatOK caches flatEntries' answer, computed at flatCheckedAt
	// (unix ns, 0: never).
	flatOK        atomic.Bool
	flatCheckedAt atomic.Int64
	reg           *prometheus.Registry
	// membersChanged tells the leader's reconcile loop that serf
	// membership changed.
	membersChanged <-chan struct{}
	leaderChanges  prometheus.Counter
	// votersRefused counts controllers not made voters (nor bootstrapped
	// with) because they could not prove their identity on their Raft
	// address; refused maps each such member to its last refusal, so the
	// membership loop logs it once and does not dial it every second.
	votersRefused prometheus.Counter
	refusedMu     sync.Mutex
	refused       map[string]refusal

	// fatal receives the error that made this controller unable to go on
	// (its state store failed); the process must stop.
	fatal chan error

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	err    error
}

// Start opens everything and serves until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Server{cfg: cfg, hub: hub.New(), reg: prometheus.NewRegistry(),
		refused: map[string]refusal{}, fatal: make(chan error, 1)}
	s.leaderChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gantry_raft_leader_changes_total", Help: "Raft leadership changes seen by this controller."})
	s.votersRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gantry_raft_voters_refused_total",
		Help: "Controllers seen in serf but not made Raft voters: no controller certificate of the cluster CA for their name on their Raft address."})
	s.reg.MustRegister(s.leaderChanges, s.votersRefused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gantry_raft_is_leader", Help: "1 while this controller is the Raft leader."},
		func() float64 {
			if s.raft != nil && s.raft.IsLeader() {
				return 1
			}
			return 0
		}))
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()

	// Check the certificate before opening anything, so that an old one
	// or one of the wrong role stops start-up with the way to fix it.
	id, err := tlsutil.LoadIdentity(cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if id.Role != tlsutil.RoleController {
		return nil, fmt.Errorf("server: %s is %s; a controller needs a controller certificate", cfg.TLS.Cert, id)
	}
	if cfg.SerfAddr != "" && id.ID != cfg.NodeID {
		// The leader makes a member a voter only once its Raft address
		// proves the member's name: with another ID, this node would
		// never get a vote.
		return nil, fmt.Errorf("server: %s is %s but this controller's node id is %q; issue it one with "+
			"`gantry-controller tls issue --role controller DIR %s`", cfg.TLS.Cert, id, cfg.NodeID, cfg.NodeID)
	}
	s.store, err = store.Open(filepath.Join(cfg.DataDir, "state.db"))
	if err != nil {
		return nil, err
	}
	if err := s.store.PrevAppliedErr(); err != nil {
		cfg.Log.Warn("the state database left by the last run is damaged", "err", err)
	}
	// What wakes the scheduler exists before the scheduler, which needs
	// Raft and the agent link built first.
	wake := scheduler.NewWakeup()
	alertWake := scheduler.NewWakeup()
	s.fsm = fsm.NewWithOptions(s.store, alertObserver{feed.New(s.hub, cfg.Log.With("component", "feed"), wake.Wake), alertWake}, cfg.Log.With("component", "fsm"),
		fsm.Options{OnFatal: s.fail})
	s.registerFSMMetrics()
	s.raft, err = cluster.Open(cluster.Config{
		NodeID: cfg.NodeID, DataDir: cfg.DataDir, BindAddr: cfg.RaftAddr, Advertise: cfg.AdvertiseRaft,
		Bootstrap: cfg.Bootstrap, Fast: cfg.Fast, Log: cfg.Log, TLS: cfg.TLS,
		PrevApplied: s.store.PrevApplied(), Disk: cfg.Disk,
	}, s.fsm)
	if err != nil {
		return nil, err
	}
	s.registerDurabilityMetrics()

	// The agent link serves agent certificates only: the session's node is
	// the certificate's ID, and a controller certificate is no node.
	tlsConf, err := tlsutil.ServerConfig(cfg.TLS, wire.ALPN, tlsutil.RoleAgent)
	if err != nil {
		return nil, fmt.Errorf("server: agent link TLS: %w", err)
	}
	maxArchive := cmp.Or(cfg.MaxCodeArchive, DefaultMaxCodeArchive)
	scheme := "http"
	if cfg.HTTPTLSCert != "" {
		scheme = "https"
	}
	if s.blobs, err = s.openBlobs(filepath.Join(cfg.DataDir, "blobs"), maxArchive, scheme); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.ingest, err = ingest.Listen(ingest.Options{
		Blobs: blobSource{st: s.store, blobs: s.blobs},
		Addr:  cfg.QUICAddr, TLS: tlsConf, Raft: s.raft, Events: agentEvents{wake},
		Owners: jobOwners{s.store}, Registry: s.reg, FlatEntries: s.flatEntries,
		Log: cfg.Log.With("component", "ingest"), Version: Version,
		LeaderAddr: func() string {
			m, err := s.leaderMember()
			if err != nil {
				return ""
			}
			return m.QUICAddr
		},
	})
	if err != nil {
		return nil, err
	}
	s.sched = scheduler.New(s.store, s.raft, agentSet{s.ingest}, wake, cfg.Log.With("component", "scheduler"))
	s.alerts = alert.New(alert.Options{Store: s.store, Raft: s.raft, Webhooks: cfg.AlertWebhooks,
		Log: cfg.Log.With("component", "alerts"), Wake: alertWake})
	if cfg.LostGrace > 0 {
		s.sched.LostGrace = cfg.LostGrace
	}

	httpTLS, peerTransport, err := httpTLS(cfg)
	if err != nil {
		return nil, err
	}
	s.blobs.Transport = cmp.Or[http.RoundTripper](peerTransport, http.DefaultTransport)
	fleetOpts := cfg.Fleet
	fleetOpts.Store, fleetOpts.Leading, fleetOpts.Connected = s.store, s.raft.IsLeader, s.ingest.Connected
	fleetOpts.Log = cfg.Log.With("component", "fleetmetrics")
	fleet, err := fleetmetrics.New(fleetOpts)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.reg.MustRegister(fleet.SelfMetrics()...)
	s.api = httpapi.New(httpapi.Options{
		Fleet: fleet,
		Blobs: s.blobs,
		Store: s.store, Raft: s.raft, Applied: s.fsm.AppliedIndex, Ready: s.caughtUp, Hub: s.hub, Agents: s.ingest,
		Log: cfg.Log.With("component", "api"), Token: cfg.Token, Extra: cfg.Extra,
		AllowedHosts: allowedHosts(cfg), Limits: cfg.HTTPLimits, TLS: httpTLS != nil, PeerTransport: peerTransport,
		Registry: s.reg, NodeID: cfg.NodeID, Peers: s.peerHTTPAddrs,
		LastContact: s.raft.LastContact, VerifyLeader: s.raft.VerifyLeader, CanRequeue: s.votersRequeue,
		Leader: func(ctx context.Context) (string, error) {
			if cfg.SerfAddr == "" {
				return "", nil // alone: always the leader or nobody
			}
			return s.leaderHTTP(ctx)
		},
	})
	if err := checkHTTPBind(cfg); err != nil {
		return nil, err
	}
	s.httpLn, err = net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("server: http listen on %s: %w", cfg.HTTPAddr, err)
	}
	if httpTLS != nil {
		// HTTP/1.1 only (no "h2" in NextProtos): WebSocket upgrades need it.
		s.httpLn = tls.NewListener(s.httpLn, httpTLS)
	}
	s.http = s.api.NewHTTPServer()
	if cfg.SerfAddr != "" {
		if err := s.startMembership(); err != nil {
			return nil, err
		}
		s.goRun(func() { s.membershipLoop(ctx) })
	}

	s.goRun(func() {
		if err := s.ingest.Serve(ctx); err != nil {
			cfg.Log.Error("agent link stopped", "err", err)
		}
	})
	s.goRun(func() {
		if err := s.http.Serve(s.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Log.Error("http server stopped", "err", err)
		}
	})
	s.goRun(func() { s.leadershipLoop(ctx) })
	s.goRun(func() { s.blobGCLoop(ctx) })
	s.goRun(func() {
		restartAfterLogFailure(ctx, s.raft.LogWriteFailed, func() bool { _, full := s.raft.DiskFree(); return full }, time.Second, s.fail)
	})
	ok = true
	cfg.Log.Info("controller started", "node", cfg.NodeID, "http", s.HTTPAddr(), "quic", s.QUICAddr(), "raft", cfg.RaftAddr)
	return s, nil
}

func (s *Server) goRun(fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

// Fatal delivers the error that made this controller stop working (its
// state store failed in a way waiting cannot fix). The owner of the
// server should Close it and exit non-zero, with the error.
func (s *Server) Fatal() <-chan error { return s.fatal }

// fail reports a fatal error once.
func (s *Server) fail(err error) {
	select {
	case s.fatal <- err:
	default:
	}
}

// registerFSMMetrics exports what the FSM skipped, refused and waits for.
func (s *Server) registerFSMMetrics() {
	s.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gantry_fsm_skipped_entries_total",
			Help: "Committed Raft entries skipped because they could not be applied (the same on every voter)."},
			func() float64 { return float64(s.fsm.Skipped()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gantry_fsm_rejected_records_total",
			Help: "Agent records skipped at apply: over a limit, or for a job of another node."},
			func() float64 { return float64(s.fsm.RejectedRecords()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gantry_alerts_dropped_total",
			Help: "Undelivered alerts dropped because the alert outbox was full (no webhook, or webhooks down for long)."},
			func() float64 { return float64(s.fsm.AlertsDropped()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gantry_alerts_delivered_total",
			Help: "Alert deliveries (alert, webhook) that succeeded, on this controller while it led."},
			func() float64 { d, _, _ := s.alerts.Stats(); return float64(d) }), // Stats is nil-safe
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gantry_alerts_failed_total",
			Help: "Alert deliveries (alert, webhook) given up after the retries, on this controller while it led."},
			func() float64 { _, f, _ := s.alerts.Stats(); return float64(f) }), // Stats is nil-safe
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gantry_fsm_waiting_for_disk",
			Help: "1 while applies wait for disk space on the state store."},
			func() float64 {
				if s.fsm.WaitingForDisk() {
					return 1
				}
				return 0
			}),
	)
}

// HTTPAddr is the bound HTTP address.
func (s *Server) HTTPAddr() string { return s.httpLn.Addr().String() }

// QUICAddr is the bound agent-link address.
func (s *Server) QUICAddr() string { return s.ingest.Addr().String() }

// Raft exposes the Raft node (tests, dev mode).
func (s *Server) Raft() *cluster.Node { return s.raft }

// Store exposes the store (tests).
func (s *Server) Store() *store.Store { return s.store }

// WaitLeader waits until this node is the leader and serves reads.
func (s *Server) WaitLeader(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !s.raft.IsLeader() {
		if time.Now().After(deadline) {
			return cluster.ErrNoLeader
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A new leader serves reads once it has applied what it committed.
	for s.caughtUp() != nil {
		if time.Now().After(deadline) {
			return s.caughtUp()
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// Close stops serving and closes everything, in reverse order of start.
func (s *Server) Close() error {
	s.once.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		var errs []error
		if s.http != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := s.http.Shutdown(sctx); err != nil {
				s.http.Close()
			}
			cancel()
		}
		if s.ingest != nil {
			errs = append(errs, s.ingest.Close())
		}
		if s.fsm != nil {
			// Let an apply that waits for disk space give up first: a
			// barrier or an ingest ack waiting on it would otherwise keep
			// the goroutines below, and Raft's shutdown, from ending.
			s.fsm.Close()
		}
		s.wg.Wait()
		if s.members != nil {
			// Shut down, not Leave: a controller that is stopping (restart,
			// upgrade) must stay a Raft voter. Leave makes the leader remove
			// it, and stopping several in turn would shrink the voter set
			// until a restarted majority could not elect anyone.
			errs = append(errs, s.members.Shutdown())
		}
		if s.raft != nil {
			errs = append(errs, s.raft.Close())
		}
		if s.store != nil {
			errs = append(errs, s.store.Close())
		}
		s.err = errors.Join(errs...)
	})
	return s.err
}

// Members is this controller's serf membership (nil without clustering).
func (s *Server) Members() *membership.Node { return s.members }

// leaderHTTP returns the leader's HTTP address, or "" when this node leads.
// While an election runs it waits up to 5 s for one.
func (s *Server) leaderHTTP(ctx context.Context) (string, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s.raft.IsLeader() {
			return "", nil
		}
		m, err := s.leaderMember()
		if err == nil && m.HTTPAddr != "" {
			return m.HTTPAddr, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("leader %s has no HTTP address", m.Name)
			}
			return "", fmt.Errorf("no leader to forward to: %w", err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// peerHTTPAddrs maps Raft server ids to their HTTP addresses.
func (s *Server) peerHTTPAddrs() map[string]string {
	out := map[string]string{}
	if s.members == nil {
		return out
	}
	for _, m := range s.members.Members() {
		if m.Role == membership.RoleController && m.HTTPAddr != "" {
			out[m.Name] = m.HTTPAddr
		}
	}
	return out
}

// jobOwners answers the ingest screen's question (which node runs each
// job) from the store, in one short read transaction per batch.
type jobOwners struct{ st *store.Store }

func (o jobOwners) JobNodes(ids []string) (map[string][]string, error) {
	out := make(map[string][]string, len(ids))
	err := o.st.View(func(tx *store.Tx) error {
		for _, id := range ids {
			// ids are run ids (lifecycle.RunID): one attempt of a job.
			jobID, attempt, ok := lifecycle.ParseRunID(id)
			if !ok {
				continue
			}
			job, err := tx.Job(jobID)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if attempt < job.Attempt {
				// An earlier attempt's nodes: its replays are duplicates
				// there, forgeries anywhere else.
				if nodes := lifecycle.AttemptNodes(job, attempt); len(nodes) > 0 {
					out[id] = nodes
				}
				continue
			}
			if attempt > job.Attempt {
				continue // not started: the FSM refuses it at its place in the log
			}
			// Every rank's node, ended or not: a replay of an ended
			// rank's acked records is a duplicate, not a forgery.
			if nodes := lifecycle.Nodes(job); len(nodes) > 0 {
				out[id] = nodes
			}
		}
		return nil
	})
	return out, err
}

// agentSet adapts the ingest server to the scheduler's Agents interface.
type agentSet struct{ ingest *ingest.Server }

func (a agentSet) Connected(nodeID string) bool { return a.ingest.Connected(nodeID) }

func (a agentSet) SendOnce(nodeID, key string, m *gantrypb.ControlMessage) error {
	sess, ok := a.ingest.Session(nodeID)
	if !ok {
		return fmt.Errorf("agent %s is not connected", nodeID)
	}
	return sess.SendOnce(key, m)
}

// Addr is where peers reach the agent's host (multi-node rendezvous).
func (a agentSet) Addr(nodeID string) string {
	if sess, ok := a.ingest.Session(nodeID); ok {
		return sess.Addr
	}
	return ""
}

func (a agentSet) Forget(nodeID, key string) {
	if sess, ok := a.ingest.Session(nodeID); ok {
		sess.Forget(key)
	}
}

// alertObserver passes applied changes to the feed and wakes the alert
// notifier when the outbox grew, so an alert goes out at once rather than
// at the notifier's next poll.
type alertObserver struct {
	*feed.Feed
	wake scheduler.Wakeup
}

// Applied implements fsm.Observer.
func (o alertObserver) Applied(c *fsm.Changes) {
	o.Feed.Applied(c)
	if c.Alerts > 0 {
		o.wake.Wake()
	}
}

// agentEvents wakes the scheduler when agents come and go: a new agent may
// take queued jobs, and one that left may hold jobs to re-send.
type agentEvents struct{ wake scheduler.Wakeup }

func (a agentEvents) AgentConnected(string)    { a.wake.Wake() }
func (a agentEvents) AgentDisconnected(string) { a.wake.Wake() }

// caughtUp is the API's readiness: nil once this controller's state is as
// new as what it could serve before it started (cluster.Node.CaughtUp).
func (s *Server) caughtUp() error {
	applied := s.fsm.AppliedIndex()
	if ok, want := s.raft.CaughtUp(applied); !ok {
		return fmt.Errorf("this controller has just started and is catching up with its Raft log (applied %d of %d); retry in a moment", applied, want)
	}
	return nil
}
