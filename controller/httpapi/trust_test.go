package httpapi_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
	"github.com/gantry-ml/gantry/controller/httpapi"
	"github.com/gantry-ml/gantry/controller/server"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// startWith starts a single-node controller with cfg's HTTP settings on
// top of the usual test configuration.
func startWith(t *testing.T, mod func(*server.Config)) (*server.Server, error) {
	t.Helper()
	ctrl, _, err := tlsutil.EnsureDev(t.TempDir(), "agent1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{
		NodeID: "c1", DataDir: t.TempDir(),
		HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		Bootstrap: true, Fast: true, TLS: ctrl, LostGrace: time.Minute, Log: logging.Discard(),
	}
	mod(&cfg)
	srv, err := server.Start(cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = srv.Close() })
	if err := srv.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	return srv, nil
}

// raw sends one request with explicit headers (Host included) and returns
// the status, the Allow header and the body.
func raw(t *testing.T, method, url, host string, hdr map[string]string, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

var jsonCT = map[string]string{"Content-Type": "application/json"}

// A page on another site can POST text/plain without a CORS preflight:
// that must not submit or cancel a job.
func TestStateChangesNeedJSONContentType(t *testing.T) {
	e := newEnv(t, "")
	for _, ct := range []string{"", "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonp"} {
		status, _, body := raw(t, "POST", e.base+"/v1/jobs", "", map[string]string{"Content-Type": ct}, `{"run":"id"}`)
		if status != http.StatusUnsupportedMediaType {
			t.Fatalf("POST /v1/jobs with Content-Type %q: %d %s, want 415", ct, status, body)
		}
		errorBody(t, body)
	}
	if status, body := e.do("GET", "/v1/jobs", nil, true); status != 200 || strings.Contains(string(body), `"id"`) {
		t.Fatalf("a refused submit left a job: %d %s", status, body)
	}
	e.runningJob(t, "j", 1)
	status, _, body := raw(t, "POST", e.base+"/v1/jobs/j/cancel", "", map[string]string{"Content-Type": "text/plain"}, "")
	if status != http.StatusUnsupportedMediaType {
		t.Fatalf("text/plain cancel: %d %s, want 415", status, body)
	}
	if job := getJob(t, e, "j"); job.State != apiv1.StateRunning {
		t.Fatalf("a refused cancel changed the job: %s", job.State)
	}
	// Parameters are fine.
	status, _, body = raw(t, "POST", e.base+"/v1/jobs", "", map[string]string{"Content-Type": "application/json; charset=utf-8"}, `{"run":"id"}`)
	if status != http.StatusCreated {
		t.Fatalf("application/json; charset=utf-8: %d %s, want 201", status, body)
	}
}

func getJob(t *testing.T, e *env, id string) apiv1.Job {
	t.Helper()
	j, err := client.New(e.base).Job(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// DNS rebinding: a hostile name resolving to the controller reaches it
// with its own Host header. Without a token only known names are served.
func TestForeignHostRefusedWithoutToken(t *testing.T) {
	srv, err := startWith(t, func(c *server.Config) { c.HTTPAllowedHosts = []string{"gantry.internal"} })
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + srv.HTTPAddr()
	_, port, _ := net.SplitHostPort(srv.HTTPAddr())
	for _, host := range []string{"evil.example", "evil.example:" + port, "localhost.evil.example", "127.0.0.1.nip.io:" + port, "10.1.2.3:" + port} {
		for _, req := range []struct{ method, path, body string }{{"GET", "/v1/jobs", ""}, {"POST", "/v1/jobs", `{"run":"id"}`}} {
			status, _, body := raw(t, req.method, base+req.path, host, jsonCT, req.body)
			if status != http.StatusForbidden || !strings.Contains(errorBody(t, body), "-http-allowed-hosts") {
				t.Fatalf("%s %s with Host %q: %d %s, want 403 naming -http-allowed-hosts", req.method, req.path, host, status, body)
			}
		}
	}
	for _, host := range []string{"localhost:" + port, "LOCALHOST", "127.0.0.1:" + port, "127.9.9.9", "[::1]:" + port, "gantry.internal", "Gantry.Internal:" + port} {
		if status, _, body := raw(t, "GET", base+"/v1/jobs", host, nil, ""); status != http.StatusOK {
			t.Fatalf("GET /v1/jobs with Host %q: %d %s, want 200", host, status, body)
		}
	}
	// With a token the Host is not what keeps strangers out.
	tok, err := startWith(t, func(c *server.Config) { c.Token = "s3cret" })
	if err != nil {
		t.Fatal(err)
	}
	status, _, body := raw(t, "GET", "http://"+tok.HTTPAddr()+"/v1/jobs", "controller.example", map[string]string{"Authorization": "Bearer s3cret"}, "")
	if status != http.StatusOK {
		t.Fatalf("foreign Host with the token: %d %s, want 200", status, body)
	}
}

func TestWebSocketOriginMustMatchHost(t *testing.T) {
	e := newEnv(t, "")
	e.runningJob(t, "j", 1)
	dial := func(host, origin string) (*websocket.Conn, *http.Response, error) {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
		if host != "" {
			h.Set("Host", host)
		}
		return d.Dial(e.ws("/v1/jobs/j/live"), h)
	}
	addr := e.srv.HTTPAddr()
	for _, tc := range []struct{ host, origin string }{
		{"", "http://evil.example"},
		{"", "null"},
		{"", "http://" + addr + ".evil.example"},
		// Rebinding: the page's own name as Host and Origin.
		{"evil.example", "http://evil.example"},
	} {
		c, resp, err := dial(tc.host, tc.origin)
		if err == nil {
			c.Close()
			t.Fatalf("Host %q Origin %q: upgraded, want refused", tc.host, tc.origin)
		}
		if resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("Host %q Origin %q: %v, want 403", tc.host, tc.origin, err)
		}
	}
	for _, origin := range []string{"", "http://" + addr} {
		c, _, err := dial("", origin)
		if err != nil {
			t.Fatalf("Origin %q: %v, want upgraded", origin, err)
		}
		if f := readFrame(t, c); f.Type != apiv1.FrameSnapshot {
			t.Fatalf("first frame %q", f.Type)
		}
		c.Close()
	}
}

func TestWrongMethodIs405(t *testing.T) {
	e := newEnv(t, "")
	for _, tc := range []struct{ method, path, allow string }{
		{"DELETE", "/v1/jobs", "GET, HEAD, POST"},
		{"PUT", "/v1/jobs", "GET, HEAD, POST"},
		{"GET", "/v1/jobs/x/cancel", "POST"},
		{"DELETE", "/v1/jobs/x", "GET, HEAD"},
		{"POST", "/v1/nodes", "GET, HEAD"},
	} {
		status, hdr, body := raw(t, tc.method, e.base+tc.path, "", jsonCT, "")
		if status != http.StatusMethodNotAllowed || hdr.Get("Allow") != tc.allow {
			t.Fatalf("%s %s: %d Allow=%q %s, want 405 Allow=%q", tc.method, tc.path, status, hdr.Get("Allow"), body, tc.allow)
		}
		errorBody(t, body)
	}
	if status, _, body := raw(t, "GET", e.base+"/v1/nothing", "", nil, ""); status != http.StatusNotFound {
		t.Fatalf("GET /v1/nothing: %d %s, want 404", status, body)
	}
}

func TestBadQueryNumbersAre400(t *testing.T) {
	e := newEnv(t, "")
	e.runningJob(t, "j", 3)
	for _, q := range []string{
		"/v1/jobs/j/metrics?after=18446744073709551615",
		"/v1/jobs/j/metrics?after=9223372036854775808",
		"/v1/jobs/j/metrics?after=18446744073709551616",
		"/v1/jobs/j/metrics?after=-1",
		"/v1/jobs/j/metrics?after=1e3",
		"/v1/jobs/j/metrics?after=0x10",
		"/v1/jobs/j/metrics?after=",
		"/v1/jobs/j/metrics?after=1&after=2",
		"/v1/jobs/j/metrics?limit=99999999999999999999",
		"/v1/jobs/j/metrics?limit=-5",
		"/v1/jobs/j/events?after=18446744073709551615",
		"/v1/jobs/j/logs?offset=18446744073709551615",
		"/v1/jobs?state=bogus",
		"/v1/jobs?state=RUNNING",
	} {
		status, body := e.do("GET", q, nil, true)
		if status != http.StatusBadRequest {
			t.Fatalf("GET %s: %d %s, want 400", q, status, body)
		}
		errorBody(t, body)
	}
	if status, body := e.do("GET", "/v1/jobs/j/metrics?after=9223372036854775807", nil, true); status != 200 || strings.Contains(string(body), `"seq"`) {
		t.Fatalf("after=MaxInt64: %d %s, want 200 and no points", status, body)
	}
	if status, body := e.do("GET", "/v1/jobs?state=running", nil, true); status != 200 || !strings.Contains(string(body), `"j"`) {
		t.Fatalf("state=running: %d %s", status, body)
	}
}

func TestJobNameMustBePrintable(t *testing.T) {
	e := newEnv(t, "")
	for _, name := range []string{`a\u001b[2Jb`, `a\rb`, `a\u0007`, `a\tb`, `a\u009bb`, `a\u202eb`, `a\u007f`} {
		status, body := e.do("POST", "/v1/jobs", strings.NewReader(`{"run":"x","name":"`+name+`"}`), true)
		if status != http.StatusBadRequest || !strings.Contains(errorBody(t, body), "spec.name") {
			t.Fatalf("name %s: %d %s, want 400 about spec.name", name, status, body)
		}
	}
	if status, body := e.do("POST", "/v1/jobs", strings.NewReader(`{"run":"x","name":"résnet 50 – ü 日本"}`), true); status != http.StatusCreated {
		t.Fatalf("printable unicode name: %d %s", status, body)
	}
}

func TestNonLoopbackBindNeedsTokenOrFlag(t *testing.T) {
	_, err := startWith(t, func(c *server.Config) { c.HTTPAddr = "0.0.0.0:0" })
	if err == nil || !strings.Contains(err.Error(), "-insecure-no-token") {
		t.Fatalf("tokenless bind to 0.0.0.0: %v, want a refusal naming -insecure-no-token", err)
	}
	if _, err := startWith(t, func(c *server.Config) { c.HTTPAddr = "0.0.0.0:0"; c.Token = "s3cret" }); err != nil {
		t.Fatalf("with a token: %v", err)
	}
	if _, err := startWith(t, func(c *server.Config) { c.HTTPAddr = "0.0.0.0:0"; c.InsecureNoToken = true }); err != nil {
		t.Fatalf("with InsecureNoToken: %v", err)
	}
}

func TestHTTPSWithGantryCA(t *testing.T) {
	ca, cert, key := testutil.WriteServerPKI(t)
	srv, err := startWith(t, func(c *server.Config) { c.HTTPTLSCert, c.HTTPTLSKey = cert, key })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	base := "https://" + srv.HTTPAddr()

	// Without the CA the certificate is unknown; plain HTTP gets nothing.
	if _, err := client.New(base).Jobs(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without GANTRY_CA: %v, want a certificate error", err)
	}
	if _, err := client.New("http://" + srv.HTTPAddr()).Jobs(ctx); err == nil {
		t.Fatal("plain HTTP to the HTTPS API worked")
	}

	t.Setenv(client.EnvCA, ca)
	c := client.New(base)
	id, err := c.Submit(ctx, apiv1.JobSpec{Run: "true"})
	if err != nil {
		t.Fatalf("submit over HTTPS with GANTRY_CA: %v", err)
	}
	if err := c.Cancel(ctx, id); err != nil {
		t.Fatalf("cancel over HTTPS: %v", err)
	}
	// The live view over wss: the cancelled job ends right away.
	var final bool
	if err := c.Watch(ctx, id, func(f apiv1.Frame) error {
		final = final || f.Type == apiv1.FrameFinal
		return nil
	}); err != nil || !final {
		t.Fatalf("watch over wss: err=%v final=%v", err, final)
	}

	t.Setenv(client.EnvCA, filepath.Join(t.TempDir(), "missing.pem"))
	if _, err := client.New(base).Jobs(ctx); err == nil || !strings.Contains(err.Error(), client.EnvCA) {
		t.Fatalf("missing GANTRY_CA file: %v, want an error naming %s", err, client.EnvCA)
	}
}

// A client that sends headers and then trickles (or withholds) the body is
// cut off by ReadTimeout instead of holding a goroutine and a socket; a
// WebSocket watcher is not, since Upgrade clears the deadlines.
func TestSlowBodyCutOffButWatchersLive(t *testing.T) {
	const timeout = 300 * time.Millisecond
	srv, err := startWith(t, func(c *server.Config) {
		c.HTTPLimits = httpapi.Limits{ReadTimeout: timeout, WriteTimeout: timeout, IdleTimeout: timeout}
	})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, base: "http://" + srv.HTTPAddr()}
	e.runningJob(t, "j", 1)
	ws, _, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if f := readFrame(t, ws); f.Type != apiv1.FrameSnapshot {
		t.Fatalf("first frame %q", f.Type)
	}

	// The server's read deadline starts when it takes the connection,
	// which may be before Dial returns here: the time is taken first, so
	// that "cut off after" never reads shorter than the deadline was.
	start := time.Now()
	conn, err := net.Dial("tcp", srv.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"+
		"Content-Length: 100000\r\n\r\n{\"run\":"); err != nil {
		t.Fatal(err)
	}
	// The server must close the connection (with or without a 400: the
	// write deadline may have passed too) within a bound far below the
	// 10 s this read waits; without ReadTimeout it waits forever.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(conn); err != nil {
		t.Fatalf("slow-body POST still connected: %v (read %q)", err, got)
	} else if len(got) > 0 && !strings.HasPrefix(string(got), "HTTP/1.1 400") {
		t.Fatalf("slow-body POST answered %q, want a 400 or nothing", got)
	}
	if waited := time.Since(start); waited < timeout {
		t.Fatalf("cut off after %s, before ReadTimeout %s", waited, timeout)
	}

	// By now both timeouts have passed for the watcher's connection too.
	step := int64(9)
	e.raftApply(t, &gantrypb.IngestCmd{NodeId: "n1", AtMs: 4, Records: []*gantrypb.Record{{JobId: "j", Seq: 3,
		Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Step: &step, Ts: 3, Values: map[string]float64{"v": 3}}}}}})
	if f := readFrame(t, ws); f.Type != apiv1.FrameMetrics || len(f.Points) != 1 {
		t.Fatalf("watcher after the timeouts: frame %+v, want the new point", f)
	}
}

// Headers are capped well below net/http's 1 MB default.
func TestHeaderLimit(t *testing.T) {
	e := newEnv(t, "")
	status, _, _ := raw(t, "GET", e.base+"/v1/jobs", "", map[string]string{"X-Big": strings.Repeat("a", 100<<10)}, "")
	if status != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("100 KiB header: %d, want 431", status)
	}
}
