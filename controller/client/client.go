// Package client is the Go client of Gantry's HTTP/WebSocket API
// (docs/ARCHITECTURE.md "HTTP API"). The CLI and the system tests use it; it speaks
// only the JSON shapes of package apiv1.
//
// Every call takes its deadline from ctx: the client sets no timeouts of its
// own, so a caller that wants one passes context.WithTimeout.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/internal/ctxwait"
)

// Errors callers test for with errors.Is.
var (
	// ErrUnknownJob is returned by Watch when the controller does not know
	// the job (an "error" frame and close 4404, or a 404 on the handshake).
	ErrUnknownJob = errors.New("unknown job")
	// ErrNotFound matches any APIError with status 404.
	ErrNotFound = errors.New("not found")
)

// maxErrorBody caps how much of an error answer is read: an error body is a
// one-line JSON object, and a misbehaving proxy must not make us buffer an
// HTML page of arbitrary size.
const maxErrorBody = 64 << 10

// APIError is returned for every non-2xx answer. Message is the server's
// {"error": ...} text, or the raw body when the answer was not JSON.
type APIError struct {
	Status  int
	Message string
}

// Error implements error.
func (e *APIError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("controller answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("controller answered %d: %s", e.Status, e.Message)
}

// Is makes errors.Is(err, ErrNotFound) true for 404 answers.
func (e *APIError) Is(target error) bool {
	return target == ErrNotFound && e.Status == http.StatusNotFound
}

// EnvCA names the environment variable holding the path of a PEM CA
// bundle trusted, besides the system roots, for https:// controllers.
const EnvCA = "GANTRY_CA"

// Client talks to one controller. It is safe for concurrent use.
type Client struct {
	base        *url.URL
	http        *http.Client
	token       string
	idleTimeout time.Duration
	// setupErr is a configuration error (a bad $GANTRY_CA) reported by
	// every call, keeping New infallible.
	setupErr error
}

// CertPool returns the system roots plus the certificates in the PEM
// files named.
func CertPool(files ...string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, f := range files {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read CA bundle: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA bundle %s holds no PEM certificate", f)
		}
	}
	return pool, nil
}

// WithCA trusts the PEM CA bundle at path, besides the system roots, for
// https:// controllers. New applies it for $GANTRY_CA unless
// WithHTTPClient is given.
func WithCA(path string) Option {
	return func(c *Client) {
		pool, err := CertPool(path)
		if err != nil {
			c.setupErr = fmt.Errorf("%s=%s: %w", EnvCA, path, err)
			return
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		c.http = &http.Client{Transport: tr}
	}
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends "Authorization: Bearer token" on every request.
func WithToken(token string) Option {
	return func(c *Client) { c.token = token }
}

// WithHTTPClient replaces http.DefaultClient. Watch reuses its transport's
// TLS and proxy settings when the transport is an *http.Transport.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.http = hc
		}
	}
}

// WithWatchIdleTimeout makes Watch fail when nothing (no frame, no ping)
// arrives for d. Zero, the default, waits as long as ctx allows; a caller
// that can fall back to polling sets it so that a half-open connection to a
// dead controller is noticed.
func WithWatchIdleTimeout(d time.Duration) Option {
	return func(c *Client) { c.idleTimeout = d }
}

// New returns a client for the controller at addr ("http://127.0.0.1:7480";
// a bare "host:port" is taken as http).
func New(addr string, opts ...Option) *Client {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(strings.TrimRight(addr, "/"))
	if err != nil {
		// Keep the constructor infallible: the bad address surfaces, with
		// the parse error, on the first call.
		u = &url.URL{Scheme: "invalid", Opaque: addr}
	}
	c := &Client{base: u, http: http.DefaultClient}
	if ca := os.Getenv(EnvCA); ca != "" {
		// Options follow, so WithHTTPClient still wins.
		WithCA(ca)(c)
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Addr returns the controller address the client was made for.
func (c *Client) Addr() string { return c.base.String() }

// endpoint joins escaped path segments onto the base URL.
func (c *Client) endpoint(query url.Values, segments ...string) string {
	u := *c.base
	var b strings.Builder
	b.WriteString(strings.TrimRight(u.Path, "/"))
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	// RawPath keeps escaped slashes in job ids escaped on the wire.
	u.RawPath = b.String()
	p, err := url.PathUnescape(u.RawPath)
	if err != nil {
		p = u.RawPath
	}
	u.Path = p
	u.RawQuery = query.Encode()
	return u.String()
}

// do sends one request and decodes a 2xx JSON answer into out (when out is
// not nil). Non-2xx answers become *APIError.
func (c *Client) do(ctx context.Context, method, endpoint string, body, out any) error {
	if c.setupErr != nil {
		return c.setupErr
	}
	if c.base.Scheme != "http" && c.base.Scheme != "https" {
		return fmt.Errorf("controller address %q: want http:// or https://", c.base.String())
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode %s %s body: %w", method, endpoint, err)
		}
		rd = bytes.NewReader(b)
	}
	var resp *http.Response
	start := time.Now()
	for {
		req, err := http.NewRequestWithContext(ctx, method, endpoint, rd)
		if err != nil {
			return fmt.Errorf("build %s %s: %w", method, endpoint, err)
		}
		if body != nil || method != http.MethodGet {
			// The API refuses state-changing requests without it (CSRF
			// defence), bodyless ones such as cancel included.
			req.Header.Set("Content-Type", "application/json")
		}
		req.Header.Set("Accept", "application/json")
		c.authorize(req.Header)
		resp, err = c.http.Do(req)
		if err != nil {
			// *url.Error already names the method and URL.
			return err
		}
		// A read answered "unavailable, retry after" (a controller that has
		// just started and is catching up) is asked again, within
		// unavailableRetryFor: a job that exists must not look gone.
		wait, retry := retryAfter(resp)
		if method != http.MethodGet || !retry || time.Since(start) > unavailableRetryFor {
			break
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err := ctxwait.Sleep(ctx, wait); err != nil {
			return err
		}
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return readAPIError(resp)
	}
	if out == nil {
		// Drain so the connection can be reused.
		_, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return fmt.Errorf("read %s %s answer: %w", method, endpoint, err)
		}
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s answer: %w", method, endpoint, err)
	}
	return nil
}

func (c *Client) authorize(h http.Header) {
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
}

// unavailableRetryFor bounds how long a read keeps asking a controller
// that answers 503 with Retry-After.
const unavailableRetryFor = time.Minute

// retryAfter reports whether resp is a 503 that says when to ask again,
// and how long to wait (at most 2 s).
func retryAfter(resp *http.Response) (time.Duration, bool) {
	if resp.StatusCode != http.StatusServiceUnavailable {
		return 0, false
	}
	secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || secs < 0 {
		return 0, false
	}
	return min(time.Duration(secs)*time.Second, 2*time.Second), true
}

// readAPIError turns a non-2xx answer into *APIError, preferring the
// server's {"error": ...} message and falling back to the raw body.
func readAPIError(resp *http.Response) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	apiErr := &APIError{Status: resp.StatusCode}
	if err != nil {
		apiErr.Message = fmt.Sprintf("(reading error body: %v)", err)
		return apiErr
	}
	var e apiv1.Error
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		apiErr.Message = e.Error
	} else {
		apiErr.Message = strings.TrimSpace(string(b))
	}
	return apiErr
}

// Submit posts a job spec and returns the new job's id.
func (c *Client) Submit(ctx context.Context, spec apiv1.JobSpec) (string, error) {
	var r apiv1.SubmitResponse
	if err := c.do(ctx, http.MethodPost, c.endpoint(nil, "v1", "jobs"), spec, &r); err != nil {
		return "", fmt.Errorf("submit job: %w", err)
	}
	if r.ID == "" {
		return "", errors.New("submit job: controller answered without a job id")
	}
	return r.ID, nil
}

// Jobs lists every job.
func (c *Client) Jobs(ctx context.Context) ([]apiv1.Job, error) { return c.JobsIn(ctx, "") }

// JobsIn returns the jobs in state (every job when state is empty); an
// unknown state is a 400.
func (c *Client) JobsIn(ctx context.Context, state string) ([]apiv1.Job, error) {
	return c.ListJobs(ctx, JobFilter{State: state})
}

// JobFilter narrows a job list; the zero value lists every job.
type JobFilter struct {
	State string // a job state, e.g. "running"
	Name  string // the spec's name, exactly
	Node  string // the node the job was placed on
	// Limit keeps the newest Limit matching jobs; 0 keeps all.
	Limit int
}

// ListJobs returns the jobs f matches, in id (creation) order, filtered
// by the controller; a bad filter (an unknown state, say) is a 400.
func (c *Client) ListJobs(ctx context.Context, f JobFilter) ([]apiv1.Job, error) {
	q := url.Values{}
	for k, v := range map[string]string{"state": f.State, "name": f.Name, "node": f.Node} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.Limit != 0 {
		// Sent even when negative, so that the controller refuses it
		// instead of the client listing everything.
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var r apiv1.JobList
	if err := c.do(ctx, http.MethodGet, c.endpoint(q, "v1", "jobs"), nil, &r); err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	return r.Jobs, nil
}

// Job returns one job.
func (c *Client) Job(ctx context.Context, id string) (apiv1.Job, error) {
	var j apiv1.Job
	if err := c.do(ctx, http.MethodGet, c.endpoint(nil, "v1", "jobs", id), nil, &j); err != nil {
		return apiv1.Job{}, fmt.Errorf("get job %s: %w", id, err)
	}
	return j, nil
}

// Cancel asks for a graceful cancel of a job.
func (c *Client) Cancel(ctx context.Context, id string) error {
	if err := c.do(ctx, http.MethodPost, c.endpoint(nil, "v1", "jobs", id, "cancel"), nil, nil); err != nil {
		return fmt.Errorf("cancel job %s: %w", id, err)
	}
	return nil
}

// Drain stops (or with undrain resumes) placement on a node, or on the
// given GPUs of it, and returns the node as it is then.
func (c *Client) Drain(ctx context.Context, node string, gpus []int, undrain bool) (apiv1.Node, error) {
	verb := "drain"
	if undrain {
		verb = "undrain"
	}
	var n apiv1.Node
	if err := c.do(ctx, http.MethodPost, c.endpoint(nil, "v1", "nodes", node, verb), apiv1.DrainRequest{GPUs: gpus}, &n); err != nil {
		return apiv1.Node{}, fmt.Errorf("%s node %s: %w", verb, node, err)
	}
	return n, nil
}

// Metrics returns stored points with seq > after, at most limit of them
// (limit <= 0 lets the server choose). Pass the page's Next as the next after.
func (c *Client) Metrics(ctx context.Context, id string, after uint64, limit int) (apiv1.PointPage, error) {
	return c.pointPage(ctx, id, pageQuery(after, limit), "job "+id)
}

// pageQuery is the query of a page of points after seq after.
func pageQuery(after uint64, limit int) url.Values {
	q := url.Values{"after": {strconv.FormatUint(after, 10)}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return q
}

// pointPage reads a page of a job's points; what names whose in errors.
func (c *Client) pointPage(ctx context.Context, id string, q url.Values, what string) (apiv1.PointPage, error) {
	var p apiv1.PointPage
	if err := c.do(ctx, http.MethodGet, c.endpoint(q, "v1", "jobs", id, "metrics"), nil, &p); err != nil {
		return apiv1.PointPage{}, fmt.Errorf("get metrics of %s: %w", what, err)
	}
	return p, nil
}

// logPage reads a job's log bytes; what names whose in errors.
func (c *Client) logPage(ctx context.Context, id string, q url.Values, what string) (apiv1.Logs, error) {
	var l apiv1.Logs
	if err := c.do(ctx, http.MethodGet, c.endpoint(q, "v1", "jobs", id, "logs"), nil, &l); err != nil {
		return apiv1.Logs{}, fmt.Errorf("get logs of %s: %w", what, err)
	}
	return l, nil
}

// Downsampled returns at most maxPoints buckets per metric over the
// whole run (min, max and last of each), for the given keys (every metric
// when none).
func (c *Client) Downsampled(ctx context.Context, id string, maxPoints int, keys ...string) (apiv1.Downsampled, error) {
	q := url.Values{"max_points": {strconv.Itoa(maxPoints)}}
	if len(keys) > 0 {
		q.Set("keys", strings.Join(keys, ","))
	}
	var d apiv1.Downsampled
	if err := c.do(ctx, http.MethodGet, c.endpoint(q, "v1", "jobs", id, "metrics"), nil, &d); err != nil {
		return apiv1.Downsampled{}, fmt.Errorf("get downsampled metrics of job %s: %w", id, err)
	}
	return d, nil
}

// Events returns a job's events.
func (c *Client) Events(ctx context.Context, id string) ([]apiv1.Event, error) {
	var r apiv1.EventList
	if err := c.do(ctx, http.MethodGet, c.endpoint(nil, "v1", "jobs", id, "events"), nil, &r); err != nil {
		return nil, fmt.Errorf("get events of job %s: %w", id, err)
	}
	return r.Events, nil
}

// Logs returns a job's log bytes from offset on; pass the answer's Next as
// the following offset.
func (c *Client) Logs(ctx context.Context, id string, offset uint64) (apiv1.Logs, error) {
	return c.logPage(ctx, id, url.Values{"offset": {strconv.FormatUint(offset, 10)}}, "job "+id)
}

// RankMetrics returns a page of rank k's own points of a multi-node job
// (rank 0's are the job's, as Metrics returns them).
func (c *Client) RankMetrics(ctx context.Context, id string, rank int, after uint64, limit int) (apiv1.PointPage, error) {
	q := pageQuery(after, limit)
	q.Set("rank", strconv.Itoa(rank))
	return c.pointPage(ctx, id, q, fmt.Sprintf("rank %d of job %s", rank, id))
}

// RankLogs returns the log of one rank of a multi-node job (rank 0's is
// the job's own, as Logs returns it) from offset on.
func (c *Client) RankLogs(ctx context.Context, id string, rank int, offset uint64) (apiv1.Logs, error) {
	return c.AttemptRankLogs(ctx, id, rank, 0, offset)
}

// AttemptRankLogs is RankLogs of the job's attempt (numbered from 1; 0:
// the current one). Rank 0's log is the job's across its attempts.
func (c *Client) AttemptRankLogs(ctx context.Context, id string, rank, attempt int, offset uint64) (apiv1.Logs, error) {
	q := url.Values{"offset": {strconv.FormatUint(offset, 10)}, "rank": {strconv.Itoa(rank)}}
	if attempt > 0 {
		q.Set("attempt", strconv.Itoa(attempt))
	}
	return c.logPage(ctx, id, q, fmt.Sprintf("rank %d of job %s", rank, id))
}

// Nodes lists the agents.
func (c *Client) Nodes(ctx context.Context) ([]apiv1.Node, error) {
	var r apiv1.NodeList
	if err := c.do(ctx, http.MethodGet, c.endpoint(nil, "v1", "nodes"), nil, &r); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return r.Nodes, nil
}

// GPUs returns a node's recent GPU samples.
func (c *Client) GPUs(ctx context.Context, nodeID string) ([]apiv1.GPUSample, error) {
	var r apiv1.SampleList
	if err := c.do(ctx, http.MethodGet, c.endpoint(nil, "v1", "nodes", nodeID, "gpus"), nil, &r); err != nil {
		return nil, fmt.Errorf("get GPU samples of node %s: %w", nodeID, err)
	}
	return r.Samples, nil
}

// Cluster returns the Raft view of the controller answering.
func (c *Client) Cluster(ctx context.Context) (apiv1.Cluster, error) {
	var r apiv1.Cluster
	if err := c.do(ctx, http.MethodGet, c.endpoint(nil, "v1", "cluster"), nil, &r); err != nil {
		return apiv1.Cluster{}, fmt.Errorf("get cluster: %w", err)
	}
	return r, nil
}
