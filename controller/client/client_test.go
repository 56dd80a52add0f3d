package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// recorded is what the fake controller saw of one request.
type recorded struct {
	Method, Path, RawPath, Query, Auth, ContentType string
	Body                                            []byte
}

// fakeServer answers one route with a canned status and JSON body and
// records the request, so each test states both sides of the contract.
type fakeServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

func newFakeServer(t *testing.T, status int, body any) *fakeServer {
	t.Helper()
	fs := &fakeServer{}
	fs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("read request body: %v", err)
		}
		fs.mu.Lock()
		fs.reqs = append(fs.reqs, recorded{
			Method: r.Method, Path: r.URL.Path, RawPath: r.URL.EscapedPath(), Query: r.URL.RawQuery,
			Auth: r.Header.Get("Authorization"), ContentType: r.Header.Get("Content-Type"), Body: b,
		})
		fs.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if s, ok := body.(string); ok {
			_, _ = io.WriteString(w, s)
			return
		}
		if err := json.NewEncoder(w).Encode(body); err != nil {
			t.Errorf("encode answer: %v", err)
		}
	}))
	t.Cleanup(fs.Close)
	return fs
}

func (fs *fakeServer) last(t *testing.T) recorded {
	t.Helper()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if len(fs.reqs) != 1 {
		t.Fatalf("server saw %d requests, want 1", len(fs.reqs))
	}
	return fs.reqs[0]
}

func ptr[T any](v T) *T { return &v }

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var (
	t0      = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	someJob = apiv1.Job{
		ID: "j-1", Name: "bert", State: apiv1.StateSucceeded, Node: "gpu-a", GPUs: []int{0, 1},
		ExitCode: ptr(0), CreatedAt: &t0, StartedAt: &t0, FinishedAt: &t0,
		FinalMetrics: map[string]float64{"loss": 0.25, "step": 300},
		Spec:         apiv1.JobSpec{Name: "bert", Run: "python train.py", Resources: apiv1.Resources{GPUs: 2}},
		Points:       300, LastSeq: 300,
	}
)

// TestMethods checks every call's method, path, query and body against the
// API table, and that the answer is decoded.
func TestMethods(t *testing.T) {
	spec := apiv1.JobSpec{Name: "bert", Run: "python train.py", Resources: apiv1.Resources{GPUs: 2},
		MaxDuration: apiv1.Duration(time.Hour)}
	tests := []struct {
		name       string
		status     int
		answer     any
		call       func(context.Context, *Client) (any, error)
		wantMethod string
		wantPath   string
		wantQuery  string
		wantBody   string
		want       any
	}{
		{
			name: "submit", status: 201, answer: apiv1.SubmitResponse{ID: "j-1"},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.Submit(ctx, spec) },
			wantMethod: "POST", wantPath: "/v1/jobs",
			wantBody: `{"name":"bert","run":"python train.py","resources":{"gpus":2},"max_duration":"1h0m0s"}`,
			want:     "j-1",
		},
		{
			name: "jobs", status: 200, answer: apiv1.JobList{Jobs: []apiv1.Job{someJob}},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.Jobs(ctx) },
			wantMethod: "GET", wantPath: "/v1/jobs", want: []apiv1.Job{someJob},
		},
		{
			name: "list jobs filtered", status: 200, answer: apiv1.JobList{Jobs: []apiv1.Job{someJob}},
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.ListJobs(ctx, JobFilter{State: "running", Name: "bert run", Node: "gpu-a", Limit: 5})
			},
			wantMethod: "GET", wantPath: "/v1/jobs", wantQuery: "limit=5&name=bert+run&node=gpu-a&state=running",
			want: []apiv1.Job{someJob},
		},
		{
			name: "list jobs, a bad limit is sent for the server to refuse", status: 200, answer: apiv1.JobList{Jobs: []apiv1.Job{}},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.ListJobs(ctx, JobFilter{Limit: -1}) },
			wantMethod: "GET", wantPath: "/v1/jobs", wantQuery: "limit=-1", want: []apiv1.Job{},
		},
		{
			name: "job", status: 200, answer: someJob,
			call:       func(ctx context.Context, c *Client) (any, error) { return c.Job(ctx, "j-1") },
			wantMethod: "GET", wantPath: "/v1/jobs/j-1", want: someJob,
		},
		{
			name: "cancel", status: 202, answer: map[string]string{"id": "j-1"},
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.Cancel(ctx, "j-1")
			},
			wantMethod: "POST", wantPath: "/v1/jobs/j-1/cancel", want: nil,
		},
		{
			name: "metrics", status: 200,
			answer: apiv1.PointPage{Points: []apiv1.Point{{Seq: 11, Step: ptr(int64(5)), TS: 1.5, Values: map[string]float64{"loss": 1}}}, Next: 11},
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.Metrics(ctx, "j-1", 10, 100)
			},
			wantMethod: "GET", wantPath: "/v1/jobs/j-1/metrics", wantQuery: "after=10&limit=100",
			want: apiv1.PointPage{Points: []apiv1.Point{{Seq: 11, Step: ptr(int64(5)), TS: 1.5, Values: map[string]float64{"loss": 1}}}, Next: 11},
		},
		{
			name: "metrics without limit", status: 200, answer: apiv1.PointPage{Next: 0},
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.Metrics(ctx, "j-1", 0, 0)
			},
			wantMethod: "GET", wantPath: "/v1/jobs/j-1/metrics", wantQuery: "after=0",
			want: apiv1.PointPage{},
		},
		{
			name: "events", status: 200,
			answer:     apiv1.EventList{Events: []apiv1.Event{{Seq: 1, TS: 2, Kind: "bad_lines", Message: "3 bad lines", Count: 3}}},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.Events(ctx, "j-1") },
			wantMethod: "GET", wantPath: "/v1/jobs/j-1/events",
			want: []apiv1.Event{{Seq: 1, TS: 2, Kind: "bad_lines", Message: "3 bad lines", Count: 3}},
		},
		{
			name: "logs", status: 200, answer: apiv1.Logs{Offset: 5, Next: 11, Data: "hello\n"},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.Logs(ctx, "j-1", 5) },
			wantMethod: "GET", wantPath: "/v1/jobs/j-1/logs", wantQuery: "offset=5",
			want: apiv1.Logs{Offset: 5, Next: 11, Data: "hello\n"},
		},
		{
			name: "nodes", status: 200,
			answer: apiv1.NodeList{Nodes: []apiv1.Node{{ID: "gpu-a", Hostname: "a", State: "ready", FreeGPUs: 1,
				GPUs: []apiv1.GPU{{Index: 0, MemoryTotalBytes: 80 << 30, JobID: "j-1"}, {Index: 1}}, Connected: true}}},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.Nodes(ctx) },
			wantMethod: "GET", wantPath: "/v1/nodes",
			want: []apiv1.Node{{ID: "gpu-a", Hostname: "a", State: "ready", FreeGPUs: 1,
				GPUs: []apiv1.GPU{{Index: 0, MemoryTotalBytes: 80 << 30, JobID: "j-1"}, {Index: 1}}, Connected: true}},
		},
		{
			name: "gpus", status: 200,
			answer:     apiv1.SampleList{Samples: []apiv1.GPUSample{{Seq: 3, TS: 9, GPUs: []apiv1.GPUStat{{Index: 0, UtilizationPct: 97}}}}},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.GPUs(ctx, "gpu-a") },
			wantMethod: "GET", wantPath: "/v1/nodes/gpu-a/gpus",
			want: []apiv1.GPUSample{{Seq: 3, TS: 9, GPUs: []apiv1.GPUStat{{Index: 0, UtilizationPct: 97}}}},
		},
		{
			name: "cluster", status: 200,
			answer: apiv1.Cluster{NodeID: "c1", State: "Leader", Leader: "10.0.0.1:7000", LeaderID: "c1", Term: 4,
				CommitIndex: 10, AppliedIndex: 10, LastIndex: 11, Peers: []apiv1.Peer{{ID: "c1", Address: "10.0.0.1:7000", Suffrage: "Voter", Leader: true}}},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.Cluster(ctx) },
			wantMethod: "GET", wantPath: "/v1/cluster",
			want: apiv1.Cluster{NodeID: "c1", State: "Leader", Leader: "10.0.0.1:7000", LeaderID: "c1", Term: 4,
				CommitIndex: 10, AppliedIndex: 10, LastIndex: 11, Peers: []apiv1.Peer{{ID: "c1", Address: "10.0.0.1:7000", Suffrage: "Voter", Leader: true}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFakeServer(t, tt.status, tt.answer)
			got, err := tt.call(testCtx(t), New(fs.URL, WithToken("s3cret")))
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("answer = %#v\nwant %#v", got, tt.want)
			}
			r := fs.last(t)
			if r.Method != tt.wantMethod || r.Path != tt.wantPath || r.Query != tt.wantQuery {
				t.Errorf("request = %s %s?%s, want %s %s?%s", r.Method, r.Path, r.Query, tt.wantMethod, tt.wantPath, tt.wantQuery)
			}
			if r.Auth != "Bearer s3cret" {
				t.Errorf("Authorization = %q, want bearer token", r.Auth)
			}
			if tt.wantBody != "" && string(r.Body) != tt.wantBody {
				t.Errorf("body = %s\nwant %s", r.Body, tt.wantBody)
			}
			// The API refuses writes without it (CSRF defence), bodyless
			// cancel included.
			if tt.wantMethod != "GET" && r.ContentType != "application/json" {
				t.Errorf("Content-Type = %q on %s, want application/json", r.ContentType, tt.wantMethod)
			}
		})
	}
}

func TestNoTokenNoHeader(t *testing.T) {
	fs := newFakeServer(t, 200, apiv1.JobList{})
	if _, err := New(fs.URL).Jobs(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got := fs.last(t).Auth; got != "" {
		t.Errorf("Authorization = %q without a token", got)
	}
}

func TestPathSegmentsEscaped(t *testing.T) {
	fs := newFakeServer(t, 200, someJob)
	if _, err := New(fs.URL+"/").Job(testCtx(t), "a/b c?"); err != nil {
		t.Fatal(err)
	}
	r := fs.last(t)
	if r.RawPath != "/v1/jobs/a%2Fb%20c%3F" || r.Query != "" {
		t.Errorf("escaped path = %q query %q", r.RawPath, r.Query)
	}
}

func TestAPIErrors(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		body     any
		wantMsg  string
		notFound bool
	}{
		{"bad spec", 400, apiv1.Error{Error: "spec.run is required"}, "spec.run is required", false},
		{"unknown job", 404, apiv1.Error{Error: `job "x" not found`}, `job "x" not found`, true},
		{"not json", 502, "<html>bad gateway</html>\n", "<html>bad gateway</html>", false},
		{"empty", 503, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFakeServer(t, tt.status, tt.body)
			_, err := New(fs.URL).Job(testCtx(t), "x")
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v (%T), want *APIError", err, err)
			}
			if apiErr.Status != tt.status || apiErr.Message != tt.wantMsg {
				t.Errorf("APIError = %+v, want status %d message %q", apiErr, tt.status, tt.wantMsg)
			}
			if errors.Is(err, ErrNotFound) != tt.notFound {
				t.Errorf("errors.Is(err, ErrNotFound) = %v, want %v", !tt.notFound, tt.notFound)
			}
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error text %q lacks the server's message", err)
			}
		})
	}
}

func TestSubmitErrors(t *testing.T) {
	t.Run("400 carries the reason", func(t *testing.T) {
		fs := newFakeServer(t, 400, apiv1.Error{Error: "spec.resources.gpus = 99; want 0..64"})
		_, err := New(fs.URL).Submit(testCtx(t), apiv1.JobSpec{Run: "x"})
		var apiErr *APIError
		if !errors.As(err, &apiErr) || apiErr.Status != 400 || apiErr.Message != "spec.resources.gpus = 99; want 0..64" {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("answer without id", func(t *testing.T) {
		fs := newFakeServer(t, 201, map[string]string{})
		if _, err := New(fs.URL).Submit(testCtx(t), apiv1.JobSpec{Run: "x"}); err == nil {
			t.Fatal("want an error for a missing id")
		}
	})
	t.Run("garbage answer", func(t *testing.T) {
		fs := newFakeServer(t, 201, "{not json")
		if _, err := New(fs.URL).Submit(testCtx(t), apiv1.JobSpec{Run: "x"}); err == nil {
			t.Fatal("want a decode error")
		}
	})
}

func TestUnreachable(t *testing.T) {
	fs := newFakeServer(t, 200, apiv1.JobList{})
	addr := fs.URL
	fs.Close()
	_, err := New(addr).Jobs(testCtx(t))
	if err == nil {
		t.Fatal("want an error from a closed server")
	}
	if !strings.Contains(err.Error(), strings.TrimPrefix(addr, "http://")) {
		t.Errorf("error %q does not name the address", err)
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		t.Errorf("transport failure reported as APIError")
	}
}

func TestBareHostPort(t *testing.T) {
	fs := newFakeServer(t, 200, apiv1.JobList{Jobs: []apiv1.Job{someJob}})
	c := New(strings.TrimPrefix(fs.URL, "http://"))
	jobs, err := c.Jobs(testCtx(t))
	if err != nil || len(jobs) != 1 {
		t.Fatalf("Jobs = %v, %v", jobs, err)
	}
}

func TestContextDeadline(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := New(srv.URL).Jobs(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
}

func TestBadAddress(t *testing.T) {
	for _, addr := range []string{"http://[::1", "ftp://example.com"} {
		c := New(addr)
		if _, err := c.Jobs(testCtx(t)); err == nil {
			t.Errorf("%s: Jobs succeeded", addr)
		}
		if err := c.Watch(testCtx(t), "j", func(apiv1.Frame) error { return nil }); err == nil {
			t.Errorf("%s: Watch succeeded", addr)
		}
	}
}

// A read answered 503 with Retry-After (a controller catching up after a
// start) is asked again until it answers; a write is not, and a 503
// without Retry-After is an error at once.
func TestReadsRetryUnavailable(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		switch {
		case r.URL.Path == "/v1/jobs/nort":
			w.WriteHeader(http.StatusServiceUnavailable)
		case n <= 2 || r.Method != http.MethodGet:
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":"catching up"}`)
		default:
			fmt.Fprint(w, `{"id":"j1","state":"running"}`)
		}
	}))
	defer srv.Close()
	c := New(srv.URL)
	j, err := c.Job(context.Background(), "j1")
	if err != nil || j.ID != "j1" || calls.Load() != 3 {
		t.Fatalf("Job = %+v, %v after %d calls; want it after two 503s", j, err, calls.Load())
	}
	calls.Store(10)
	if _, err := c.Submit(context.Background(), apiv1.JobSpec{Run: "x"}); err == nil || calls.Load() != 11 {
		t.Fatalf("a write was retried or succeeded: %v after %d calls", err, calls.Load()-10)
	}
	calls.Store(10)
	if _, err := c.Job(context.Background(), "nort"); err == nil || calls.Load() != 11 {
		t.Fatalf("a 503 without Retry-After was retried: %v after %d calls", err, calls.Load()-10)
	}
}
