// Package httpapi serves Gantry's HTTP and WebSocket API (docs/ARCHITECTURE.md,
// "Contracts"). Reads come from the local store in short transactions that
// close before the response is written; writes go through Raft. WebSocket
// watchers are fed from the in-memory hub and hold no store handle while
// they wait or write (invariant I1).
package httpapi

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/admission"
	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/downsample"
	"github.com/gantry-ml/gantry/controller/hub"
	"github.com/gantry-ml/gantry/controller/scheduler"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/controller/view"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// Limits of the API.
const (
	maxSpecBytes      = 1 << 20
	defaultPointLimit = 1000
	maxPointLimit     = 10000
	defaultLogLimit   = 1 << 20
	maxLogLimit       = 8 << 20
	defaultGPULimit   = 60
)

// Raft is what the API needs of the Raft node.
type Raft interface {
	Apply(m proto.Message) (any, error)
	Status(applied uint64) (cluster.Status, error)
}

// Agents tells whether a node's agent is connected to this controller.
type Agents interface {
	Connected(nodeID string) bool
}

// Options configures the API.
type Options struct {
	Store   *store.Store
	Raft    Raft
	Applied func() uint64
	// Ready returns why reads would be stale (the controller is still
	// catching up with its Raft log after a start), or nil. Reads of jobs
	// and nodes answer 503 with Retry-After meanwhile, never a 404 for a
	// job that exists. nil: always ready.
	Ready  func() error
	Hub    *hub.Hub
	Agents Agents
	Log    *slog.Logger
	// Token, when set, is required as "Authorization: Bearer TOKEN" on
	// /v1 endpoints (WebSocket upgrades may pass ?token= as browsers
	// cannot set headers there; nothing else may, so the token does not
	// end up in access logs and browser history).
	Token string
	// AllowedHosts lists the Host names (with or without a port) the API
	// answers to when no Token is set, besides the loopback names. Without
	// a token this is the defence against DNS rebinding: a hostile page
	// reaches the API only under its own host name, which is not listed.
	AllowedHosts []string
	// AllowedOrigins lists extra Origins allowed to open WebSockets; the
	// request's own host is always allowed, as is a missing Origin (CLI).
	AllowedOrigins []string
	// Limits are the HTTP server's timeouts and header limit (see
	// NewHTTPServer); zero fields take the defaults.
	Limits Limits
	// TLS says the API (this node's and its peers') is served over HTTPS,
	// so forwarded requests and peer status queries use https.
	TLS bool
	// PeerTransport carries forwarded requests and peer status queries to
	// other controllers (it holds the CA pool that trusts their HTTPS
	// certificates); nil uses http.DefaultTransport.
	PeerTransport http.RoundTripper
	// WatchQueue is each watcher's hub queue length.
	WatchQueue int
	// Registry receives the API's Prometheus metrics; nil makes one.
	Registry *prometheus.Registry
	// Fleet, when set, is served alone on GET /metrics/fleet: the
	// cluster's GPUs, jobs and nodes (controller/fleetmetrics), apart
	// from this process's own metrics on /metrics, so that scraping every
	// controller's /metrics does not multiply the fleet's series and a
	// fleet scrape's cost and interval are the operator's to choose.
	Fleet prometheus.Collector
	// Blobs stores code archives (PUT /v1/blobs); nil refuses them.
	Blobs Blobs
	// Extra lets the embedding server mount more handlers (the dashboard).
	Extra func(mux *http.ServeMux)

	// NodeID names this controller in forwarded requests.
	NodeID string
	// Leader returns the leader's HTTP address, "" when this node leads
	// (nil: single node, never forward).
	Leader func(ctx context.Context) (string, error)
	// VerifyLeader confirms leadership with a quorum (consistent reads).
	VerifyLeader func() error
	// Peers maps Raft server ids to HTTP addresses (cluster status).
	Peers func() map[string]string
	// LastContact is when this node last heard from the leader.
	LastContact func() time.Time
	// CanRequeue says why a spec with the requeue health policy cannot be
	// taken now (nil error: it can; nil func: always).
	CanRequeue func() error
}

// API is the HTTP handler.
type API struct {
	opts     Options
	mux      *http.ServeMux
	watchers atomic.Int64
	reg      *prometheus.Registry

	pongWait, pingPeriod time.Duration // WebSocket keep-alive
	liveMu               sync.Mutex
	liveViews            map[*watcher]struct{} // live views, for closing them on shutdown
	flushWork            chan *watcher         // to idle flusher goroutines (unbuffered)
}

// New builds the handler.
func New(opts Options) *API {
	a := &API{opts: opts, mux: http.NewServeMux(), reg: opts.Registry,
		pongWait: wsPongWait, pingPeriod: wsPingPeriod, liveViews: map[*watcher]struct{}{}, flushWork: make(chan *watcher)}
	if a.reg == nil {
		a.reg = prometheus.NewRegistry()
	}
	a.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gantry_store_open_read_txns",
			Help: "Read transactions open on the controller store right now."},
			func() float64 { return float64(opts.Store.OpenReadTxns()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gantry_ws_watchers",
			Help: "WebSocket watchers connected right now."},
			func() float64 { return float64(a.watchers.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gantry_hub_subscribers",
			Help: "In-memory hub subscriptions right now."},
			func() float64 { return float64(opts.Hub.Subscribers()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gantry_hub_dropped_total",
			Help: "Watchers dropped (closed with 1013) for falling too far behind."},
			func() float64 { return float64(opts.Hub.Dropped()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gantry_hub_coalesced_total",
			Help: "Frames merged into lagging watchers' backlogs instead of queued."},
			func() float64 { return float64(opts.Hub.Coalesced()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gantry_raft_applied_index",
			Help: "Last Raft index applied to this controller's store."},
			func() float64 { return float64(opts.Applied()) }),
	)

	m := a.mux
	m.HandleFunc("POST /v1/jobs", a.auth(a.jsonBody(a.forwardToLeader(a.submit))))
	m.HandleFunc("POST /v1/jobs/validate", a.auth(a.jsonBody(a.ready(a.validateSpec))))
	m.HandleFunc("GET /v1/jobs", a.auth(a.ready(a.consistent(a.listJobs))))
	m.HandleFunc("GET /v1/jobs/{id}", a.auth(a.ready(a.consistent(a.getJob))))
	m.HandleFunc("POST /v1/jobs/{id}/cancel", a.auth(a.jsonBody(a.forwardToLeader(a.cancel))))
	m.HandleFunc("GET /v1/jobs/{id}/metrics", a.auth(a.ready(a.consistent(a.metrics))))
	m.HandleFunc("GET /v1/jobs/{id}/events", a.auth(a.ready(a.events)))
	m.HandleFunc("GET /v1/jobs/{id}/logs", a.auth(a.ready(a.logs)))
	m.HandleFunc("GET /v1/jobs/{id}/live", a.auth(a.ready(a.live)))
	m.HandleFunc("GET /v1/jobs/{id}/playback", a.auth(a.ready(a.playback)))
	m.HandleFunc("GET /v1/nodes", a.auth(a.ready(a.consistent(a.listNodes))))
	m.HandleFunc("GET /v1/nodes/{id}/gpus", a.auth(a.ready(a.nodeGPUs)))
	m.HandleFunc("POST /v1/nodes/{id}/drain", a.auth(a.jsonBody(a.forwardToLeader(a.drainNode(false)))))
	m.HandleFunc("POST /v1/nodes/{id}/undrain", a.auth(a.jsonBody(a.forwardToLeader(a.drainNode(true)))))
	m.HandleFunc("PUT /v1/blobs/{digest}", a.auth(a.putBlob))
	m.HandleFunc("GET /v1/blobs/{digest}", a.auth(a.getBlob)) // and HEAD
	m.HandleFunc("GET /v1/cluster", a.clusterRoute())
	m.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	if opts.Fleet != nil {
		m.HandleFunc("GET "+fleetPath, a.auth(a.ready(a.fleetHandler(opts.Fleet))))
	}
	m.HandleFunc("/v1/", a.noRoute)
	if opts.Extra != nil {
		opts.Extra(m)
	}
	return a
}

// fleetPath serves the fleet's metrics. Job names and metric values are
// the users' data, so unlike /metrics it takes the API's token and, without
// one, answers only to allowed hosts, as /v1 does.
const fleetPath = "/metrics/fleet"

// Bounds of fleet scrapes: each reads the store once and builds every
// series, so concurrent ones beyond a couple (several Prometheus servers,
// a retry storm) are refused with 503 rather than pile up.
const (
	fleetScrapesInFlight = 2
	fleetScrapeTimeout   = 10 * time.Second
)

// fleetHandler serves c from a registry of its own.
func (a *API) fleetHandler(c prometheus.Collector) http.HandlerFunc {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		MaxRequestsInFlight: fleetScrapesInFlight,
		Timeout:             fleetScrapeTimeout,
		ErrorLog:            slog.NewLogLogger(a.opts.Log.Handler(), slog.LevelError),
	})
	return h.ServeHTTP
}

// ServeHTTP implements http.Handler. Without a token, /v1 and /metrics/fleet answer only to
// allowed Host names (see Options.AllowedHosts) before anything else runs.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.opts.Token == "" && (r.URL.Path == "/v1" || strings.HasPrefix(r.URL.Path, "/v1/") || r.URL.Path == fleetPath) && !a.hostAllowed(r.Host) {
		writeError(w, http.StatusForbidden, fmt.Errorf("host %q is not allowed: without an API token this controller answers only to "+
			"localhost, loopback addresses, its own address and the names in -http-allowed-hosts (or set a token)", r.Host))
		return
	}
	a.mux.ServeHTTP(w, r)
}

// noRoute answers /v1 requests no route takes: 405 with an Allow header
// when the path exists under other methods, else 404. The catch-all
// pattern "/v1/" would otherwise shadow ServeMux's own 405.
func (a *API) noRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := a.mux.Handler(probe); pattern != "" && pattern != "/v1/" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", ")))
		return
	}
	writeError(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s", r.Method, r.URL.Path))
}

// jsonBody refuses state-changing requests whose Content-Type is not
// application/json. A cross-site form or a fetch() without a CORS
// preflight can only send text/plain, form or multipart bodies, so this
// is what stops a web page from submitting jobs (CSRF).
func (a *API) jsonBody(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mt != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, fmt.Errorf("%s %s needs Content-Type: application/json (got %q)",
				r.Method, r.URL.Path, r.Header.Get("Content-Type")))
			return
		}
		h(w, r)
	}
}

func (a *API) auth(h http.HandlerFunc) http.HandlerFunc {
	if a.opts.Token == "" {
		return h
	}
	want := []byte("Bearer " + a.opts.Token)
	return func(w http.ResponseWriter, r *http.Request) {
		got := r.Header.Get("Authorization")
		if got == "" && r.URL.Query().Has("token") {
			if !websocket.IsWebSocketUpgrade(r) {
				writeError(w, http.StatusUnauthorized, errors.New("?token= is accepted only on WebSocket upgrades; send Authorization: Bearer TOKEN"))
				return
			}
			got = "Bearer " + r.URL.Query().Get("token")
		}
		if subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			writeError(w, http.StatusUnauthorized, errors.New("missing or wrong bearer token"))
			return
		}
		h(w, r)
	}
}

// writeJSON encodes v before it sends the status, so that a value that
// cannot be encoded answers 500 with the reason, not 200 with half a body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(apiv1.Error{Error: "encoding the response: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n')) // the client went away; nothing to tell it
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, apiv1.Error{Error: err.Error()})
}

// writeApplyError maps a Raft/FSM error to a status.
func (a *API) writeApplyError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, lifecycle.ErrJobNotFound), errors.Is(err, lifecycle.ErrNodeNotFound):
		writeError(w, http.StatusNotFound, err)
	case errors.Is(err, lifecycle.ErrTerminal), errors.Is(err, lifecycle.ErrJobExists):
		writeError(w, http.StatusConflict, err)
	case errors.Is(err, cluster.ErrNotLeader):
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("this controller is not the leader and cannot accept writes right now: %w", err))
	case errors.Is(err, cluster.ErrDiskFull):
		// The leader hands over to a peer with space; the client retries.
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusInsufficientStorage, err)
	default:
		a.opts.Log.Error("api: write failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, err)
	}
}

// badRequest is a read error that is the request's fault (400).
type badRequest struct{ error }

func (a *API) writeReadError(w http.ResponseWriter, r *http.Request, err error) {
	var bad badRequest
	if errors.As(err, &bad) {
		writeError(w, http.StatusBadRequest, bad.error)
		return
	}
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, err)
		return
	}
	a.opts.Log.Error("api: read failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, err)
}

// newJobID returns a 16-character id that sorts by creation time
// (48 bits of milliseconds, 32 random bits, base32).
func newJobID(now time.Time) (string, error) {
	var b [10]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	if _, err := rand.Read(b[6:]); err != nil {
		return "", err
	}
	return strings.ToLower(base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])), nil
}

func (a *API) submit(w http.ResponseWriter, r *http.Request) {
	spec, ok := a.admitSpec(w, r)
	if !ok {
		return
	}
	if status, err := a.checkCodeArchive(r.Context(), spec.CodeArchive); err != nil {
		writeError(w, status, err)
		return
	}
	now := time.Now()
	id, err := newJobID(now)
	if err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("job id: %w", err))
		return
	}
	if _, err := a.opts.Raft.Apply(&gantrypb.SubmitJobCmd{JobId: id, Spec: view.Spec(spec), AtMs: now.UnixMilli()}); err != nil {
		a.writeApplyError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, apiv1.SubmitResponse{ID: id})
}

// checkFit refuses a job no registered node could ever run (wrapping
// scheduler.ErrNeverFits), so that it is not queued forever in silence. It
// runs where the submit is applied: a follower forwards the whole request
// to the leader first, so the verdict comes from the leader's store, in one
// short read of the nodes. A node that registers between this read and the
// apply can only make a refused job fit, never the reverse, so the race
// refuses at worst a job that its user can resubmit at once.
func (a *API) checkFit(spec apiv1.JobSpec) error {
	var nodes []*gantrypb.Node
	if err := a.opts.Store.View(func(tx *store.Tx) error {
		var err error
		nodes, err = tx.Nodes()
		return err
	}); err != nil {
		return err
	}
	return scheduler.CheckFit(view.Spec(spec), nodes)
}

// fleet reads what queue reasons need (every node and every non-terminal
// job) inside the caller's read transaction.
func fleet(tx *store.Tx) (*scheduler.Fleet, error) {
	var live []*gantrypb.Job
	// Only jobs not ended are decoded: a long history costs a peek each.
	if err := tx.JobsWhere(func(state gantrypb.JobState, _ int64) bool { return !lifecycle.IsTerminal(state) },
		func(j *gantrypb.Job) bool {
			live = append(live, j)
			return true
		}); err != nil {
		return nil, err
	}
	nodes, err := tx.Nodes()
	if err != nil {
		return nil, err
	}
	return scheduler.NewFleetAt(nodes, live, time.Now().UnixMilli(), scheduler.DefaultReserveAfter), nil
}

// jobView maps a stored job for the API and, for a queued one, says why
// it waits. The reason is computed here, at read time, from the nodes and
// held GPUs in this controller's store, so every controller answers alike
// and nothing is written to the Raft log while a job waits.
func jobView(tx *store.Tx, j *gantrypb.Job) (apiv1.Job, error) {
	out := view.Job(j)
	if j.State != gantrypb.JobState_JOB_STATE_QUEUED {
		return out, nil
	}
	f, err := fleet(tx)
	if err != nil {
		return out, err
	}
	out.Reason = f.Reason(j.Id)
	return out, nil
}

// validateSpec answers POST /v1/jobs/validate: what a submit of the spec
// would answer, short of storing anything (its code archive aside,
// which is uploaded after this check). The CLI asks it before uploading
// code, so a job no node can run is refused before megabytes travel.
func (a *API) validateSpec(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admitSpec(w, r); ok {
		writeJSON(w, http.StatusOK, apiv1.Validation{OK: true})
	}
}

// admitSpec decodes a submitted spec and checks it as a submit does:
// its fields, and that some registered node could ever run it. On
// failure it has answered the request.
func (a *API) admitSpec(w http.ResponseWriter, r *http.Request) (apiv1.JobSpec, bool) {
	var spec apiv1.JobSpec
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxSpecBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("invalid job spec: %w", err))
		return spec, false
	}
	// Only the end of the body may follow the spec. dec.More() is not
	// enough: it reports false before a stray '}' or ']'.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, errors.New("invalid job spec: trailing data after the JSON object"))
		return spec, false
	}
	if err := spec.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("invalid job spec: %w", err))
		return spec, false
	}
	if h := spec.Health; h != nil && (h.OnStall == lifecycle.PolicyRequeue || h.OnIdle == lifecycle.PolicyRequeue) && a.opts.CanRequeue != nil {
		if err := a.opts.CanRequeue(); err != nil {
			writeError(w, http.StatusConflict, fmt.Errorf("health policy requeue: %w", err))
			return spec, false
		}
	}
	if err := a.checkFit(spec); err != nil {
		if errors.Is(err, scheduler.ErrNeverFits) {
			writeError(w, http.StatusBadRequest, err)
			return spec, false
		}
		a.writeReadError(w, r, err)
		return spec, false
	}
	return spec, true
}

// jobStates are the values ?state= may take.
var jobStates = lifecycle.StateNames

// maxJobsLimit caps ?limit= on GET /v1/jobs; a history longer than this
// is paged by state or name rather than read in one answer.
const maxJobsLimit = 10000

// jobFilter is GET /v1/jobs's query: every field set must match; limit
// keeps the newest matches (0: all).
type jobFilter struct {
	state, name, node string
	limit             int
}

// parseJobFilter reads ?state=&name=&node=&limit=. A bad value is an
// error (400), never an empty list: a typo must not look like "no jobs".
func parseJobFilter(r *http.Request) (jobFilter, error) {
	q := r.URL.Query()
	var f jobFilter
	for _, p := range []struct {
		name string
		dst  *string
	}{{"state", &f.state}, {"name", &f.name}, {"node", &f.node}} {
		if len(q[p.name]) > 1 {
			return jobFilter{}, fmt.Errorf("query parameter %s is given %d times; give it once", p.name, len(q[p.name]))
		}
		*p.dst = q.Get(p.name)
	}
	if f.state != "" && !slices.Contains(jobStates, f.state) {
		return jobFilter{}, fmt.Errorf("query parameter state=%q: want one of %s", f.state, strings.Join(jobStates, ", "))
	}
	if q.Has("limit") {
		n, err := queryLimit(r, maxJobsLimit, maxJobsLimit)
		if err != nil {
			return jobFilter{}, err
		}
		f.limit = n
	}
	return f, nil
}

func (f jobFilter) match(j *gantrypb.Job) bool {
	return (f.state == "" || view.State(j.State) == f.state) &&
		(f.name == "" || j.GetSpec().GetName() == f.name) &&
		// A multi-node job matches the node of any of its ranks.
		(f.node == "" || lifecycle.RunsOn(j, f.node))
}

// listJobs answers GET /v1/jobs: the jobs matching the query, in id
// (creation) order; with ?limit=N the N newest of them, still in id order.
func (a *API) listJobs(w http.ResponseWriter, r *http.Request) {
	f, err := parseJobFilter(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	// The read transaction only decodes and filters (and, when a queued
	// job is listed, reads the fleet its reason needs, once for the whole
	// list); the API view is made after it, so a long list holds the
	// store no longer than it must.
	var matched []*gantrypb.Job
	var fl *scheduler.Fleet
	err = a.opts.Store.View(func(tx *store.Tx) error {
		walk := tx.Jobs
		if f.limit > 0 {
			walk = tx.JobsNewestFirst // stop after the newest few
		}
		queued := false
		if err := walk(func(j *gantrypb.Job) bool {
			if f.match(j) {
				matched = append(matched, j)
				queued = queued || j.State == gantrypb.JobState_JOB_STATE_QUEUED
			}
			return f.limit == 0 || len(matched) < f.limit
		}); err != nil || !queued {
			return err
		}
		var err error
		fl, err = fleet(tx)
		return err
	})
	if err != nil {
		a.writeReadError(w, r, err)
		return
	}
	if f.limit > 0 {
		slices.Reverse(matched)
	}
	out := apiv1.JobList{Jobs: make([]apiv1.Job, 0, len(matched))}
	for _, j := range matched {
		v := view.Job(j)
		if fl != nil && j.State == gantrypb.JobState_JOB_STATE_QUEUED {
			v.Reason = fl.Reason(j.Id)
		}
		out.Jobs = append(out.Jobs, v)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) readJob(id string) (apiv1.Job, error) {
	var out apiv1.Job
	err := a.opts.Store.View(func(tx *store.Tx) error {
		j, err := tx.Job(id)
		if err != nil {
			return err
		}
		out, err = jobView(tx, j)
		return err
	})
	return out, err
}

func (a *API) getJob(w http.ResponseWriter, r *http.Request) {
	job, err := a.readJob(r.PathValue("id"))
	if err != nil {
		a.writeReadError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, job)
}

func (a *API) cancel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := a.opts.Raft.Apply(&gantrypb.CancelJobCmd{JobId: id, AtMs: time.Now().UnixMilli()}); err != nil {
		a.writeApplyError(w, r, err)
		return
	}
	job, err := a.readJob(id)
	if err != nil {
		a.writeReadError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, job)
}

// queryUint parses an optional unsigned query parameter. Values are capped
// at MaxInt64: the store iterates from after+1, and a cursor of 2^64-1
// must fail with a reason instead of wrapping to 0 and returning everything.
func queryUint(r *http.Request, name string, def uint64) (uint64, error) {
	q := r.URL.Query()
	if !q.Has(name) {
		return def, nil
	}
	if len(q[name]) > 1 {
		return 0, fmt.Errorf("query parameter %s is given %d times; give it once", name, len(q[name]))
	}
	s := q.Get(name)
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v > math.MaxInt64 {
		return 0, fmt.Errorf("query parameter %s=%q: want an integer from 0 to %d", name, s, int64(math.MaxInt64))
	}
	return v, nil
}

func queryLimit(r *http.Request, def, max int) (int, error) {
	v, err := queryUint(r, "limit", uint64(def))
	if err != nil {
		return 0, err
	}
	if v == 0 || v > uint64(max) {
		return 0, fmt.Errorf("query parameter limit=%d: want 1..%d", v, max)
	}
	return int(v), nil
}

func (a *API) metrics(w http.ResponseWriter, r *http.Request) {
	after, err := queryUint(r, "after", 0)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	limit, err := queryLimit(r, defaultPointLimit, maxPointLimit)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	id := r.PathValue("id")
	var keys []string
	if q := r.URL.Query(); q.Has("keys") {
		for _, k := range strings.Split(q.Get("keys"), ",") {
			if k = strings.TrimSpace(k); k != "" {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 || len(keys) > maxDownsampleKeys {
			writeError(w, http.StatusBadRequest, fmt.Errorf("query parameter keys: want 1..%d comma-separated metric names", maxDownsampleKeys))
			return
		}
	}
	sel, err := queryRank(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if r.URL.Query().Has("max_points") {
		a.downsampled(w, r, id, sel, keys)
		return
	}
	page, err := a.readRankPoints(id, sel, after, limit)
	if err != nil {
		a.writeReadError(w, r, err)
		return
	}
	if keys != nil {
		keep := map[string]bool{}
		for _, k := range keys {
			keep[k] = true
		}
		for _, p := range page.Points {
			for k := range p.Values {
				if !keep[k] {
					delete(p.Values, k)
				}
			}
		}
	}
	writeJSON(w, http.StatusOK, page)
}

// ready answers 503 with Retry-After while the controller's state is
// still catching up with its Raft log (Options.Ready), so that a client
// retries rather than take a job that exists for one that does not.
func (a *API) ready(h http.HandlerFunc) http.HandlerFunc {
	if a.opts.Ready == nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if err := a.opts.Ready(); err != nil {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, err)
			return
		}
		h(w, r)
	}
}

// Bounds of a downsampled read: buckets per key and keys (each store read
// is short whatever the run's length: downsample.ChunksPerRead).
const (
	maxDownsamplePoints  = 10000
	maxDownsampleKeys    = 64
	maxDownsampleBuckets = 200000
)

// downsampled answers ?max_points=N: at most N buckets per metric over the
// whole run, read in pages of short transactions.
func (a *API) downsampled(w http.ResponseWriter, r *http.Request, id string, sel rankSel, keys []string) {
	n, err := queryUint(r, "max_points", 0)
	if err == nil && (n == 0 || n > maxDownsamplePoints) {
		err = fmt.Errorf("query parameter max_points=%d: want 1..%d", n, maxDownsamplePoints)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	var last uint64
	var known int
	var key string
	if err := a.opts.Store.View(func(tx *store.Tx) error {
		s, err := jobStream(tx, id, sel)
		if err != nil {
			return err
		}
		key, last, known = s.key, s.job.LastSeq, len(s.job.LatestMetrics)
		if s.rank != nil {
			last, known = s.rank.LastSeq, len(s.rank.LatestMetrics)
		}
		return nil
	}); err != nil {
		a.writeReadError(w, r, err)
		return
	}
	if keys == nil && uint64(known)*n > maxDownsampleBuckets {
		writeError(w, http.StatusBadRequest, fmt.Errorf("the job has %d metrics: at %d points each that is over %d buckets; name the ones to chart with keys=a,b",
			known, n, maxDownsampleBuckets))
		return
	}
	series, err := downsample.Read(r.Context(), a.opts.Store, key, last, int(n), keys)
	if err != nil {
		if r.Context().Err() != nil {
			return // the client went away
		}
		a.writeReadError(w, r, err)
		return
	}
	out := apiv1.Downsampled{Series: map[string][]apiv1.Bucket{}, Points: series.Points(), LastSeq: last, BucketSeqs: series.Width()}
	for k, bs := range series.Result() {
		conv := make([]apiv1.Bucket, len(bs))
		for i, b := range bs {
			conv[i] = apiv1.Bucket{FirstSeq: b.FirstSeq, LastSeq: b.LastSeq, Step: b.Step, TS: b.TS,
				Min: b.Min, Max: b.Max, Last: b.Last, Count: b.N}
		}
		out.Series[k] = conv
	}
	writeJSON(w, http.StatusOK, out)
}

// rankSel picks whose streams a read is of: rank (0, the default, is the
// job's own, across all its attempts) and, for a rank k > 0 of a
// multi-node job, attempt (numbered from 1; 0, the default: the current).
type rankSel struct {
	rank    uint32
	attempt uint64
}

// queryRank reads ?rank= and ?attempt=.
func queryRank(r *http.Request) (rankSel, error) {
	rank, err := queryUint(r, "rank", 0)
	if err != nil {
		return rankSel{}, err
	}
	attempt, err := queryUint(r, "attempt", 0)
	if err != nil {
		return rankSel{}, err
	}
	return rankSel{rank: uint32(min(rank, math.MaxUint32)), attempt: attempt}, nil
}

// stream is the streams a read is of: the job, the stored key, and for
// a rank k > 0 the rank and whether it is of an earlier attempt.
type stream struct {
	job     *gantrypb.Job
	key     string
	rank    *gantrypb.Rank
	earlier bool
}

// jobStream reads job id and resolves sel on it; a 400 for a rank or
// attempt the job lacks.
func jobStream(tx *store.Tx, id string, sel rankSel) (stream, error) {
	j, err := tx.Job(id)
	if err != nil {
		return stream{}, err
	}
	s := stream{job: j, key: j.Id}
	if sel.rank == 0 {
		return s, nil
	}
	current := uint64(j.Attempt) + 1
	ranks, run := j.Ranks, lifecycle.JobRunID(j)
	switch {
	case sel.attempt > current:
		return stream{}, badRequest{fmt.Errorf("job %s has had %d attempts; there is no attempt %d", j.Id, current, sel.attempt)}
	case sel.attempt > 0 && sel.attempt < current:
		s.earlier, ranks, run = true, nil, lifecycle.RunID(j.Id, uint32(sel.attempt-1))
		if a := lifecycle.EarlierAttempt(j, uint32(sel.attempt-1)); a != nil {
			ranks = a.Ranks
		}
	}
	if int(sel.rank) >= len(ranks) {
		return stream{}, badRequest{fmt.Errorf("job %s has no rank %d (ranks: %d)", j.Id, sel.rank, max(len(ranks), 1))}
	}
	s.key, s.rank = store.RankKey(run, sel.rank), ranks[sel.rank]
	return s, nil
}

// readPoints reads one page of points in its own short transaction.
func (a *API) readPoints(id string, after uint64, limit int) (apiv1.PointPage, error) {
	return a.readRankPoints(id, rankSel{}, after, limit)
}

// readRankPoints reads one page of the points sel picks.
func (a *API) readRankPoints(id string, sel rankSel, after uint64, limit int) (apiv1.PointPage, error) {
	page := apiv1.PointPage{Points: []apiv1.Point{}, Next: after}
	err := a.opts.Store.View(func(tx *store.Tx) error {
		s, err := jobStream(tx, id, sel)
		if err != nil {
			return err
		}
		pts, err := tx.Points(s.key, after, limit)
		if err != nil {
			return err
		}
		page.Points = view.Points(pts)
		if len(pts) > 0 {
			page.Next = pts[len(pts)-1].Seq
		}
		return nil
	})
	return page, err
}

func (a *API) events(w http.ResponseWriter, r *http.Request) {
	after, err := queryUint(r, "after", 0)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	// rank (and attempt) pick one rank's events of a multi-node job
	// (default 0, the job's own).
	sel, err := queryRank(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	id := r.PathValue("id")
	out := apiv1.EventList{Events: []apiv1.Event{}}
	err = a.opts.Store.View(func(tx *store.Tx) error {
		s, err := jobStream(tx, id, sel)
		if err != nil {
			return err
		}
		evs, err := tx.Events(s.key, after, maxPointLimit)
		for _, e := range evs {
			out.Events = append(out.Events, view.Event(e))
		}
		return err
	})
	if err != nil {
		a.writeReadError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) logs(w http.ResponseWriter, r *http.Request) {
	offset, err := queryUint(r, "offset", 0)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	limit, err := queryLimit(r, defaultLogLimit, maxLogLimit)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	// rank (and attempt) pick one rank's log of a multi-node job
	// (default 0, the job's own).
	sel, err := queryRank(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	id := r.PathValue("id")
	var out apiv1.Logs
	err = a.opts.Store.View(func(tx *store.Tx) error {
		s, err := jobStream(tx, id, sel)
		if err != nil {
			return err
		}
		logBytes, ended := s.job.LogBytes, lifecycle.IsTerminal(s.job.State)
		if s.rank != nil {
			// An earlier attempt's rank has ended, whatever the job does.
			logBytes, ended = s.rank.LogBytes, ended || s.earlier && lifecycle.IsTerminal(s.rank.State)
		}
		data, next := tx.Logs(s.key, offset, limit)
		out = apiv1.Logs{Offset: offset, Next: next, Data: string(data),
			Complete: ended && next >= logBytes}
		return nil
	})
	if err != nil {
		a.writeReadError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) listNodes(w http.ResponseWriter, r *http.Request) {
	out := apiv1.NodeList{Nodes: []apiv1.Node{}}
	err := a.opts.Store.View(func(tx *store.Tx) error {
		holders := map[string]map[uint32]string{}
		// Only the jobs holding GPUs are decoded, not the whole history.
		holding := func(st gantrypb.JobState, _ int64) bool { return lifecycle.HoldsGPUs(st) }
		if err := tx.JobsWhere(holding, func(j *gantrypb.Job) bool {
			lifecycle.MarkHoldings(holders, j, j.Id)
			return true
		}); err != nil {
			return err
		}
		nodes, err := tx.Nodes()
		if err != nil {
			return err
		}
		now := time.Now()
		for _, n := range nodes {
			v := view.Node(n, holders[n.Id], a.opts.Agents.Connected(n.Id))
			// The latest sample only: which GPUs are throttled now.
			last, err := tx.GPUSamples(n.Id, 1)
			if err != nil {
				return err
			}
			if len(last) == 1 {
				view.NodeThrottle(&v, last[0], now)
			}
			out.Nodes = append(out.Nodes, v)
		}
		return nil
	})
	if err != nil {
		a.writeReadError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// drainNode stops (or with undrain resumes) placement on a node or on the
// GPUs the body names; it answers the node as it is then.
func (a *API) drainNode(undrain bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		var req apiv1.DrainRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
			writeError(w, http.StatusBadRequest, fmt.Errorf("invalid drain request: %w", err))
			return
		}
		if len(req.GPUs) > limits.MaxGPUsPerNode {
			writeError(w, http.StatusBadRequest, fmt.Errorf("drain names %d GPUs; a node has at most %d", len(req.GPUs), limits.MaxGPUsPerNode))
			return
		}
		cmd := &gantrypb.DrainCmd{NodeId: id, Undrain: undrain, AtMs: time.Now().UnixMilli()}
		for _, g := range req.GPUs {
			if g < 0 || g >= limits.MaxGPUsPerNode {
				writeError(w, http.StatusBadRequest, fmt.Errorf("GPU %d: want 0..%d", g, limits.MaxGPUsPerNode-1))
				return
			}
			cmd.Gpus = append(cmd.Gpus, uint32(g))
		}
		if err := admission.CheckID("node id", id); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		if _, err := a.opts.Raft.Apply(cmd); err != nil {
			a.writeApplyError(w, r, err)
			return
		}
		var out apiv1.Node
		err := a.opts.Store.View(func(tx *store.Tx) error {
			n, err := tx.Node(id)
			if err == nil {
				out = view.Node(n, nil, a.opts.Agents.Connected(id))
			}
			return err
		})
		if err != nil {
			a.writeReadError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func (a *API) nodeGPUs(w http.ResponseWriter, r *http.Request) {
	limit, err := queryLimit(r, defaultGPULimit, 3600)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	id := r.PathValue("id")
	out := apiv1.SampleList{Samples: []apiv1.GPUSample{}}
	err = a.opts.Store.View(func(tx *store.Tx) error {
		if _, err := tx.Node(id); err != nil {
			return err
		}
		samples, err := tx.GPUSamples(id, limit)
		for _, s := range samples {
			out.Samples = append(out.Samples, view.GPUSample(s))
		}
		return err
	})
	if err != nil {
		a.writeReadError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}
