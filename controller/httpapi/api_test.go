package httpapi_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/downsample"
	"github.com/gantry-ml/gantry/controller/server"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// env is a real single-node controller (Raft, store, hub, API) reached
// over HTTP.
type env struct {
	t     *testing.T
	srv   *server.Server
	base  string
	token string
}

func newEnv(t *testing.T, token string) *env {
	t.Helper()
	ctrl, _, err := tlsutil.EnsureDev(t.TempDir(), "agent1")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.Start(server.Config{
		NodeID: "c1", DataDir: t.TempDir(),
		HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		Bootstrap: true, Fast: true, TLS: ctrl, Token: token, LostGrace: time.Minute, Log: logging.Discard(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if err := srv.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, srv: srv, base: "http://" + srv.HTTPAddr(), token: token}
}

// do sends a request (with the env's token unless auth is false) and
// returns the status and body.
func (e *env) do(method, path string, body io.Reader, auth bool) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if auth && e.token != "" {
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	if method != http.MethodGet {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, b
}

// errorBody decodes an {"error": ...} body and fails unless it has a reason.
func errorBody(t *testing.T, b []byte) string {
	t.Helper()
	var e apiv1.Error
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || e.Error == "" {
		t.Fatalf("error body %q is not {\"error\": reason} (%v)", b, err)
	}
	return e.Error
}

func (e *env) raftApply(t *testing.T, msgs ...proto.Message) {
	t.Helper()
	for _, m := range msgs {
		if _, err := e.srv.Raft().Apply(m); err != nil {
			t.Fatalf("apply %T: %v", m, err)
		}
	}
}

// runningJob makes a job that is running on n1 with points 2..n+1 (seq 1
// is the started record).
func (e *env) runningJob(t *testing.T, id string, n int) {
	t.Helper()
	recs := []*gantrypb.Record{{JobId: id, Seq: 1, Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{Pid: 1, Ts: 1}}}}
	recs = append(recs, pointRecs(id, 2, n)...)
	e.raftApply(t,
		&gantrypb.SubmitJobCmd{JobId: id, Spec: &gantrypb.JobSpec{Name: id, Run: "x"}, AtMs: 1},
		&gantrypb.AssignJobCmd{JobId: id, NodeId: "n1", AtMs: 2},
		&gantrypb.IngestCmd{NodeId: "n1", Records: recs, AtMs: 3})
}

func pointRecs(id string, first uint64, n int) []*gantrypb.Record {
	var recs []*gantrypb.Record
	for i := 0; i < n; i++ {
		seq := first + uint64(i)
		step := int64(seq)
		recs = append(recs, &gantrypb.Record{JobId: id, Seq: seq, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{
			Step: &step, Ts: float64(seq), Values: map[string]float64{"v": float64(seq)}}}})
	}
	return recs
}

func TestSubmitValidation(t *testing.T) {
	e := newEnv(t, "")
	big := `{"run":"x","name":"` + strings.Repeat("a", 1<<20+10) + `"}`
	tests := []struct {
		name   string
		body   string
		reason string // a substring the error must contain
	}{
		{"missing run", `{"name":"x"}`, "run"},
		{"blank run", `{"run":"   "}`, "run"},
		{"unknown field", `{"run":"x","gpus":1}`, "unknown field"},
		{"negative gpus", `{"run":"x","resources":{"gpus":-1}}`, "gpus"},
		{"bad duration", `{"run":"x","max_duration":"abc"}`, "duration"},
		{"negative duration", `{"run":"x","kill_grace":"-5s"}`, "kill_grace"},
		{"reserved env", `{"run":"x","env":{"CUDA_VISIBLE_DEVICES":"0"}}`, "CUDA_VISIBLE_DEVICES"},
		{"trailing garbage", `{"run":"x"} garbage`, "trailing"},
		{"second object", `{"run":"x"}{"run":"y"}`, "trailing"},
		{"trailing brace", `{"run":"x"}}`, "trailing"},
		{"trailing bracket", `{"run":"x"}]`, "trailing"},
		{"not json", `run: x`, "invalid"},
		{"empty body", ``, "invalid"},
		{"wrong type", `{"run":5}`, "run"},
		{"body over 1 MiB", big, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := e.do("POST", "/v1/jobs", strings.NewReader(tt.body), true)
			if status != http.StatusBadRequest {
				t.Fatalf("status = %d (%s), want 400", status, trunc(body))
			}
			if reason := errorBody(t, body); !strings.Contains(reason, tt.reason) {
				t.Fatalf("reason %q does not mention %q", reason, tt.reason)
			}
		})
	}
	status, body := e.do("GET", "/v1/jobs", nil, true)
	var list apiv1.JobList
	if status != 200 || json.Unmarshal(body, &list) != nil || len(list.Jobs) != 0 {
		t.Fatalf("bad specs created jobs: %d %s", status, trunc(body))
	}
}

func TestSubmitGetCancel(t *testing.T) {
	e := newEnv(t, "")
	status, body := e.do("POST", "/v1/jobs", strings.NewReader(`{"name":"n","run":"python t.py","resources":{"gpus":2,"gpu_type":"a100"},"max_duration":"1h","kill_grace":30}`+"\n"), true)
	if status != http.StatusCreated {
		t.Fatalf("submit: %d %s", status, body)
	}
	var sub apiv1.SubmitResponse
	if err := json.Unmarshal(body, &sub); err != nil || sub.ID == "" {
		t.Fatalf("submit body %s", body)
	}
	status, body = e.do("GET", "/v1/jobs/"+sub.ID, nil, true)
	var job apiv1.Job
	if status != 200 || json.Unmarshal(body, &job) != nil {
		t.Fatalf("get: %d %s", status, body)
	}
	if job.ID != sub.ID || job.State != apiv1.StateQueued || job.Spec.Resources.GPUs != 2 ||
		time.Duration(job.Spec.MaxDuration) != time.Hour || time.Duration(job.Spec.KillGrace) != 30*time.Second {
		t.Fatalf("job = %+v", job)
	}
	if job.FinalMetrics != nil {
		t.Fatalf("a queued job has final metrics %v", job.FinalMetrics)
	}

	status, body = e.do("GET", "/v1/jobs/nope", nil, true)
	if status != http.StatusNotFound {
		t.Fatalf("unknown job: %d", status)
	}
	errorBody(t, body)
	status, body = e.do("POST", "/v1/jobs/nope/cancel", nil, true)
	if status != http.StatusNotFound {
		t.Fatalf("cancel unknown: %d %s", status, body)
	}
	errorBody(t, body)

	status, body = e.do("POST", "/v1/jobs/"+sub.ID+"/cancel", nil, true)
	if status != http.StatusAccepted || json.Unmarshal(body, &job) != nil || job.State != apiv1.StateCancelled {
		t.Fatalf("cancel queued: %d %s", status, body)
	}
	if job.FinalMetrics == nil || !strings.Contains(string(body), `"final_metrics":{}`) {
		t.Fatalf("cancelled job's final_metrics is not {}: %s", body)
	}
	status, body = e.do("POST", "/v1/jobs/"+sub.ID+"/cancel", nil, true)
	if status != http.StatusConflict {
		t.Fatalf("cancel terminal: %d %s", status, body)
	}
	errorBody(t, body)

	status, body = e.do("GET", "/v1/nosuch", nil, true)
	if status != http.StatusNotFound {
		t.Fatalf("unknown endpoint: %d", status)
	}
	errorBody(t, body)
}

func TestListJobsFilters(t *testing.T) {
	e := newEnv(t, "")
	submit := func(id, name string) *gantrypb.SubmitJobCmd {
		return &gantrypb.SubmitJobCmd{JobId: id, Spec: &gantrypb.JobSpec{Name: name, Run: "x"}, AtMs: 1}
	}
	e.raftApply(t, submit("j1", "sweep"), submit("j2", "other"), submit("j3", "sweep"), submit("j4", "sweep"),
		&gantrypb.AssignJobCmd{JobId: "j1", NodeId: "n1", AtMs: 2},
		&gantrypb.AssignJobCmd{JobId: "j3", NodeId: "n2", AtMs: 2})
	list := func(query string) string {
		t.Helper()
		status, body := e.do("GET", "/v1/jobs"+query, nil, true)
		var l apiv1.JobList
		if status != http.StatusOK || json.Unmarshal(body, &l) != nil {
			t.Fatalf("GET /v1/jobs%s: %d %s", query, status, trunc(body))
		}
		ids := make([]string, len(l.Jobs))
		for i, j := range l.Jobs {
			ids[i] = j.ID
		}
		return strings.Join(ids, ",")
	}
	for _, tt := range []struct{ query, want string }{
		{"", "j1,j2,j3,j4"},
		{"?name=sweep", "j1,j3,j4"},
		{"?node=n2", "j3"},
		{"?state=queued", "j2,j4"},
		{"?state=queued&name=sweep", "j4"},
		{"?limit=2", "j3,j4"}, // the newest two, in id order
		{"?name=sweep&limit=2", "j3,j4"},
		{"?node=n1&limit=5", "j1"},
		{"?name=nobody", ""},
		{"?name=", "j1,j2,j3,j4"}, // empty: no filter, as for state
	} {
		if got := list(tt.query); got != tt.want {
			t.Errorf("GET /v1/jobs%s = [%s], want [%s]", tt.query, got, tt.want)
		}
	}
	for _, query := range []string{"?state=bogus", "?state=Queued", "?limit=0", "?limit=-1", "?limit=abc",
		"?limit=10001", "?limit=1&limit=2", "?name=a&name=b", "?node=a&node=b", "?state=queued&state=running"} {
		status, body := e.do("GET", "/v1/jobs"+query, nil, true)
		if status != http.StatusBadRequest {
			t.Errorf("GET /v1/jobs%s: %d %s, want 400", query, status, trunc(body))
			continue
		}
		errorBody(t, body)
	}
}

func TestMetricsPaging(t *testing.T) {
	e := newEnv(t, "")
	e.runningJob(t, "j", 25) // points are seqs 2..26
	page := func(q string) apiv1.PointPage {
		t.Helper()
		status, body := e.do("GET", "/v1/jobs/j/metrics"+q, nil, true)
		if status != 200 {
			t.Fatalf("metrics%s: %d %s", q, status, body)
		}
		var p apiv1.PointPage
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatal(err)
		}
		if p.Points == nil {
			t.Fatalf("metrics%s: points is null, want a list: %s", q, body)
		}
		return p
	}
	var all []uint64
	after := uint64(0)
	for i := 0; ; i++ {
		p := page(fmt.Sprintf("?after=%d&limit=10", after))
		if len(p.Points) == 0 {
			if p.Next != after {
				t.Fatalf("empty page next = %d, want %d", p.Next, after)
			}
			break
		}
		if len(p.Points) > 10 {
			t.Fatalf("page of %d points with limit 10", len(p.Points))
		}
		for _, pt := range p.Points {
			all = append(all, pt.Seq)
			if pt.Values["v"] != float64(pt.Seq) || pt.Step == nil || *pt.Step != int64(pt.Seq) {
				t.Fatalf("point %+v", pt)
			}
		}
		if p.Next != p.Points[len(p.Points)-1].Seq {
			t.Fatalf("next = %d, last seq %d", p.Next, p.Points[len(p.Points)-1].Seq)
		}
		after = p.Next
		if i > 10 {
			t.Fatal("paging does not end")
		}
	}
	if len(all) != 25 || all[0] != 2 || all[24] != 26 {
		t.Fatalf("paged seqs = %v", all)
	}
	if p := page(""); len(p.Points) != 25 {
		t.Fatalf("default page has %d points", len(p.Points))
	}
	if p := page("?after=20"); len(p.Points) != 6 || p.Points[0].Seq != 21 {
		t.Fatalf("after=20: %+v", p.Points)
	}

	for _, q := range []string{"?after=-1", "?after=abc", "?limit=0", "?limit=10001", "?limit=x", "?after=1.5"} {
		status, body := e.do("GET", "/v1/jobs/j/metrics"+q, nil, true)
		if status != http.StatusBadRequest {
			t.Fatalf("metrics%s: %d %s, want 400", q, status, body)
		}
		errorBody(t, body)
	}
	status, body := e.do("GET", "/v1/jobs/nope/metrics", nil, true)
	if status != http.StatusNotFound {
		t.Fatalf("metrics of unknown job: %d", status)
	}
	errorBody(t, body)
}

func TestBearerToken(t *testing.T) {
	e := newEnv(t, "s3cret")
	for _, h := range []string{"", "Bearer wrong", "s3cret", "Basic s3cret"} {
		req, _ := http.NewRequest("GET", e.base+"/v1/jobs", nil)
		if h != "" {
			req.Header.Set("Authorization", h)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("Authorization %q: %d, want 401", h, resp.StatusCode)
		}
		errorBody(t, b)
	}
	if status, body := e.do("GET", "/v1/jobs", nil, true); status != 200 {
		t.Fatalf("with token: %d %s", status, body)
	}
	if status, _ := e.do("POST", "/v1/jobs", strings.NewReader(`{"run":"x"}`), false); status != http.StatusUnauthorized {
		t.Fatalf("submit without token: %d", status)
	}
	// ?token= only works where headers cannot be set (WebSocket
	// upgrades): elsewhere it would leak into logs and browser history.
	status, body := e.do("GET", "/v1/jobs?token=s3cret", nil, false)
	if status != http.StatusUnauthorized || !strings.Contains(errorBody(t, body), "WebSocket") {
		t.Fatalf("?token= on a plain request: %d %s, want 401 naming WebSocket upgrades", status, body)
	}

	e.runningJob(t, "j", 1)
	// WebSockets: browsers cannot set headers, so ?token= works there.
	_, resp, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("live without token: err=%v resp=%v", err, resp)
	}
	_, resp, err = websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live?token=wrong"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("live with a wrong token: err=%v", err)
	}
	c, _, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live?token=s3cret"), nil)
	if err != nil {
		t.Fatalf("live with ?token=: %v", err)
	}
	defer c.Close()
	if f := readFrame(t, c); f.Type != apiv1.FrameSnapshot {
		t.Fatalf("first frame %q, want snapshot", f.Type)
	}
	// Prometheus scrapes carry no token.
	if status, _ := e.do("GET", "/metrics", nil, false); status != 200 {
		t.Fatalf("/metrics without token: %d", status)
	}
	// A node's own Raft status is what peers ask each other for, without
	// the token (their addresses come from gossip); the cluster view that
	// fans out to them needs it.
	if status, body := e.do("GET", "/v1/cluster?local=1", nil, false); status != 200 {
		t.Fatalf("/v1/cluster?local=1 without token: %d %s", status, body)
	}
	if status, _ := e.do("GET", "/v1/cluster", nil, false); status != http.StatusUnauthorized {
		t.Fatalf("/v1/cluster without token: %d, want 401", status)
	}
}

func (e *env) ws(path string) string { return "ws://" + e.srv.HTTPAddr() + path }

func readFrame(t *testing.T, c *websocket.Conn) apiv1.Frame {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, b, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	if typ != websocket.TextMessage {
		t.Fatalf("frame type %d", typ)
	}
	var f apiv1.Frame
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %s: %v", b, err)
	}
	return f
}

// readClose reads until the server closes and returns the close code.
func readClose(t *testing.T, c *websocket.Conn) int {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, b, err := c.ReadMessage()
		if err == nil {
			t.Fatalf("frame %s where a close was expected", trunc(b))
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		t.Fatalf("connection ended without a close frame: %v", err)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	e := newEnv(t, "")
	e.runningJob(t, "j", 1)
	metric := func(name string) float64 {
		t.Helper()
		status, body := e.do("GET", "/metrics", nil, false)
		if status != 200 {
			t.Fatalf("/metrics: %d", status)
		}
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(body)
		if m == nil {
			t.Fatalf("/metrics has no %s", name)
		}
		v, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, name := range []string{"go_goroutines", "process_open_fds"} {
		if metric(name) <= 0 {
			t.Fatalf("%s is not positive", name)
		}
	}
	if v := metric("gantry_store_open_read_txns"); v != 0 {
		t.Fatalf("open read txns at rest = %v", v)
	}
	if v := metric("gantry_ws_watchers"); v != 0 {
		t.Fatalf("watchers at rest = %v", v)
	}
	var conns []*websocket.Conn
	for i := 0; i < 3; i++ {
		c, _, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live"), nil)
		if err != nil {
			t.Fatal(err)
		}
		readFrame(t, c) // snapshot: the watcher is set up
		conns = append(conns, c)
	}
	if v := metric("gantry_ws_watchers"); v != 3 {
		t.Fatalf("watchers = %v, want 3", v)
	}
	// Watchers waiting for frames hold no store transaction (I1).
	if v := metric("gantry_store_open_read_txns"); v != 0 {
		t.Fatalf("open read txns with 3 idle watchers = %v", v)
	}
	for _, c := range conns {
		c.Close()
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { return metric("gantry_ws_watchers") == 0 }, "watchers to go back to 0")
	testutil.WaitFor(t, 10*time.Second, func() bool { return metric("gantry_hub_subscribers") == 0 }, "hub subscriptions to go back to 0")
}

func TestLiveUnknownJob(t *testing.T) {
	e := newEnv(t, "")
	for _, path := range []string{"/v1/jobs/nope/live", "/v1/jobs/nope/playback"} {
		c, _, err := websocket.DefaultDialer.Dial(e.ws(path), nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		f := readFrame(t, c)
		if f.Type != apiv1.FrameError || f.Error == "" {
			t.Fatalf("%s: first frame %+v, want an error frame", path, f)
		}
		if code := readClose(t, c); code != apiv1.CloseUnknownJob {
			t.Fatalf("%s: close code %d, want %d", path, code, apiv1.CloseUnknownJob)
		}
		c.Close()
	}
}

func TestLiveFollowsJobToTheEnd(t *testing.T) {
	e := newEnv(t, "")
	e.runningJob(t, "j", 3) // points 2..4
	c, _, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	snap := readFrame(t, c)
	if snap.Type != apiv1.FrameSnapshot || snap.Job == nil || snap.Job.State != apiv1.StateRunning || len(snap.Points) != 3 {
		t.Fatalf("snapshot = %+v", snap)
	}
	code := int32(0)
	recs := pointRecs("j", 5, 2)
	recs = append(recs, &gantrypb.Record{JobId: "j", Seq: 7, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: &code}}})
	e.raftApply(t, &gantrypb.IngestCmd{NodeId: "n1", Records: recs})
	m := readFrame(t, c)
	if m.Type != apiv1.FrameMetrics || len(m.Points) != 2 || m.Points[0].Seq != 5 {
		t.Fatalf("frame after snapshot = %+v, want metrics 5,6", m)
	}
	st := readFrame(t, c)
	fin := readFrame(t, c)
	if st.Type != apiv1.FrameState || fin.Type != apiv1.FrameFinal || fin.Job.State != apiv1.StateSucceeded || fin.Job.FinalMetrics["v"] != 6 {
		t.Fatalf("frames %q %q, final job %+v", st.Type, fin.Type, fin.Job)
	}
	if code := readClose(t, c); code != websocket.CloseNormalClosure {
		t.Fatalf("close code %d, want 1000", code)
	}

	// Watching a job that already ended: snapshot, final, close 1000.
	c2, _, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if f := readFrame(t, c2); f.Type != apiv1.FrameSnapshot {
		t.Fatalf("first frame %q", f.Type)
	}
	if f := readFrame(t, c2); f.Type != apiv1.FrameFinal || f.Job.FinalMetrics["v"] != 6 {
		t.Fatalf("second frame %+v", f)
	}
	if code := readClose(t, c2); code != websocket.CloseNormalClosure {
		t.Fatalf("close code %d", code)
	}
}

func TestPlayback(t *testing.T) {
	e := newEnv(t, "")
	e.runningJob(t, "j", 2500) // points 2..2501: more than two playback pages
	read := func(after uint64) []uint64 {
		t.Helper()
		c, _, err := websocket.DefaultDialer.Dial(e.ws(fmt.Sprintf("/v1/jobs/j/playback?after=%d", after)), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var seqs []uint64
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
					t.Fatalf("playback ended with %v, want close 1000", err)
				}
				return seqs
			}
			var f apiv1.Frame
			if err := json.Unmarshal(b, &f); err != nil || f.Type != apiv1.FramePoints || len(f.Points) == 0 {
				t.Fatalf("playback frame %s (%v)", trunc(b), err)
			}
			for _, p := range f.Points {
				seqs = append(seqs, p.Seq)
			}
		}
	}
	check := func(seqs []uint64, first, last uint64) {
		t.Helper()
		if uint64(len(seqs)) != last-first+1 {
			t.Fatalf("playback delivered %d points, want %d", len(seqs), last-first+1)
		}
		for i, s := range seqs {
			if s != first+uint64(i) {
				t.Fatalf("playback point %d has seq %d, want %d", i, s, first+uint64(i))
			}
		}
	}
	check(read(0), 2, 2501)
	check(read(2000), 2001, 2501)
	if got := read(5000); len(got) != 0 {
		t.Fatalf("playback after the end delivered %d points", len(got))
	}
	_, resp, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/playback?after=x"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("playback with a bad after: %v", err)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { return e.srv.Store().OpenReadTxns() == 0 }, "read txns to close")
}

func trunc(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}

// A client message over the read limit closes the watcher (1009) and frees
// it; clients have nothing to say beyond pongs and close frames.
func TestLiveOversizeClientMessageCloses(t *testing.T) {
	e := newEnv(t, "")
	e.runningJob(t, "j", 1)
	c, _, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if f := readFrame(t, c); f.Type != apiv1.FrameSnapshot {
		t.Fatalf("first frame %q", f.Type)
	}
	// Just over the 4 KiB limit, so the write completes before the server
	// reacts.
	if err := c.WriteMessage(websocket.TextMessage, bytes.Repeat([]byte("x"), 5000)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("after an oversize message: %v, want close 1009", err)
	}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		_, body := e.do("GET", "/metrics", nil, false)
		return regexp.MustCompile(`(?m)^gantry_ws_watchers 0$`).Match(body)
	}, "the watcher freed")
}

// A leader short of disk space refuses writes with 507 and Retry-After,
// saying why, instead of a bare 500.
func TestSubmitOnFullDiskIs507(t *testing.T) {
	ctrl, _, err := tlsutil.EnsureDev(t.TempDir(), "agent1")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.Start(server.Config{
		NodeID: "c1", DataDir: t.TempDir(),
		HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		Bootstrap: true, Fast: true, TLS: ctrl, LostGrace: time.Minute, Log: logging.Discard(),
		// More free space than any disk has: the guard always refuses.
		Disk: cluster.DiskConfig{MinFree: 1 << 62, Interval: 10 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if err := srv.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, base: "http://" + srv.HTTPAddr()}
	var status int
	var body []byte
	testutil.WaitFor(t, 10*time.Second, func() bool {
		status, body = e.do("POST", "/v1/jobs", strings.NewReader(`{"run":"true"}`), false)
		return status != http.StatusServiceUnavailable // an election may still settle
	}, "an answer from a leader")
	if status != http.StatusInsufficientStorage || !strings.Contains(errorBody(t, body), "disk space") {
		t.Fatalf("submit on a full disk: %d %s, want 507 naming disk space", status, body)
	}
}

// ?max_points=N returns at most N buckets per metric covering the whole
// run (min, max and last per bucket), read in short pages; ?keys= picks
// metrics, also on plain pages; bad values are 400s.
func TestMetricsDownsampled(t *testing.T) {
	e := newEnv(t, "")
	const n = 12000 // more than one downsampling page
	e.runningJob(t, "j", n)
	var ds apiv1.Downsampled
	status, body := e.do("GET", "/v1/jobs/j/metrics?max_points=100&keys=v", nil, false)
	if status != 200 {
		t.Fatalf("downsampled read: %d %s", status, body)
	}
	if err := json.Unmarshal(body, &ds); err != nil {
		t.Fatal(err)
	}
	bs := ds.Series["v"]
	if len(bs) == 0 || len(bs) > 100 || ds.Points != n || ds.LastSeq != n+1 {
		t.Fatalf("%d buckets over %d points (last seq %d), want 1..100 over %d", len(bs), ds.Points, ds.LastSeq, n)
	}
	total := 0
	for i, b := range bs {
		total += b.Count
		if b.Min != float64(b.FirstSeq) || b.Max != float64(b.LastSeq) || b.Last != float64(b.LastSeq) || *b.Step != int64(b.LastSeq) {
			t.Fatalf("bucket %d = %+v: min/max/last/step do not match its seqs", i, b)
		}
		if i > 0 && b.FirstSeq != bs[i-1].LastSeq+1 {
			t.Fatalf("bucket %d starts at %d, the one before ended at %d", i, b.FirstSeq, bs[i-1].LastSeq)
		}
	}
	if total != n || bs[0].FirstSeq != 2 || bs[len(bs)-1].LastSeq != n+1 {
		t.Fatalf("buckets hold %d points from %d to %d, want %d from 2 to %d", total, bs[0].FirstSeq, bs[len(bs)-1].LastSeq, n, n+1)
	}

	status, body = e.do("GET", "/v1/jobs/j/metrics?max_points=100&keys=nope", nil, false)
	if status != 200 || !strings.Contains(string(body), `"series":{}`) {
		t.Fatalf("a key the job does not have: %d %s", status, body)
	}
	var page apiv1.PointPage
	status, body = e.do("GET", "/v1/jobs/j/metrics?limit=3&keys=nope", nil, false)
	if status != 200 || json.Unmarshal(body, &page) != nil || len(page.Points) != 3 || len(page.Points[0].Values) != 0 {
		t.Fatalf("paged read with keys=nope: %d %s", status, body)
	}
	for _, q := range []string{"max_points=0", "max_points=10001", "max_points=x", "max_points=10&keys=", "max_points=10&keys=,,"} {
		if status, body := e.do("GET", "/v1/jobs/j/metrics?"+q, nil, false); status != http.StatusBadRequest {
			t.Errorf("?%s: %d %s, want 400", q, status, body)
		}
	}
	if status, _ := e.do("GET", "/v1/jobs/nope/metrics?max_points=10", nil, false); status != http.StatusNotFound {
		t.Errorf("unknown job: %d, want 404", status)
	}
}

// TestDownsampledMatchesPointByPoint: the downsampled read folds whole
// chunks from their headers and decodes only those across a bucket edge;
// its buckets must equal folding every point one by one, for sparse keys,
// points without a step, spikes, and every bucket width.
func TestDownsampledMatchesPointByPoint(t *testing.T) {
	e := newEnv(t, "")
	const n = 9000
	recs := []*gantrypb.Record{{JobId: "d", Seq: 1, Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{Pid: 1, Ts: 1}}}}
	for i := 0; i < n; i++ {
		seq := uint64(i + 2)
		if i%50 == 0 { // events share the seq stream, leaving gaps
			recs = append(recs, &gantrypb.Record{JobId: "d", Seq: seq, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{Kind: "note", Message: "x"}}})
			continue
		}
		vals := map[string]float64{"loss": math.Exp(-float64(i)/2000) + math.Sin(float64(i))/50, "noise": math.Mod(float64(i)*0.618, 1)}
		if i%13 == 0 {
			vals["eval"] = float64(i) / 100
		}
		if i == 4321 {
			vals["loss"] = 1e9
		}
		p := &gantrypb.MetricPoint{Ts: 1.7e9 + float64(i)/20, Values: vals}
		if i%9 != 4 {
			st := int64(i / 2)
			p.Step = &st
		}
		recs = append(recs, &gantrypb.Record{JobId: "d", Seq: seq, Body: &gantrypb.Record_Point{Point: p}})
	}
	e.raftApply(t, &gantrypb.SubmitJobCmd{JobId: "d", Spec: &gantrypb.JobSpec{Name: "d", Run: "x"}, AtMs: 1},
		&gantrypb.AssignJobCmd{JobId: "d", NodeId: "n1", AtMs: 2})
	for len(recs) > 0 { // several entries, so chunks are reopened across transactions
		k := min(len(recs), 1700)
		e.raftApply(t, &gantrypb.IngestCmd{NodeId: "n1", Records: recs[:k], AtMs: 3})
		recs = recs[k:]
	}
	// Every point, read through the plain paged API.
	var all []*gantrypb.MetricPoint
	var last uint64
	for after := uint64(0); ; {
		status, body := e.do("GET", fmt.Sprintf("/v1/jobs/d/metrics?after=%d&limit=1000", after), nil, false)
		var page apiv1.PointPage
		if status != 200 || json.Unmarshal(body, &page) != nil {
			t.Fatalf("page after %d: %d %s", after, status, body)
		}
		if len(page.Points) == 0 {
			break
		}
		for _, p := range page.Points {
			all = append(all, &gantrypb.MetricPoint{Seq: p.Seq, Step: p.Step, Ts: p.TS, Values: p.Values})
			last = p.Seq
		}
		after = page.Next
	}
	if len(all) != n-n/50 {
		t.Fatalf("read %d points, want %d", len(all), n-n/50)
	}
	for _, q := range []struct {
		max  int
		keys []string
	}{{1, nil}, {7, nil}, {100, nil}, {333, []string{"eval"}}, {2000, []string{"loss", "eval"}}, {10000, nil}} {
		naive := downsample.New(last, q.max, q.keys)
		for _, p := range all {
			naive.Add(p)
		}
		url := fmt.Sprintf("/v1/jobs/d/metrics?max_points=%d", q.max)
		if q.keys != nil {
			url += "&keys=" + strings.Join(q.keys, ",")
		}
		status, body := e.do("GET", url, nil, false)
		var ds apiv1.Downsampled
		if status != 200 || json.Unmarshal(body, &ds) != nil {
			t.Fatalf("%s: %d %s", url, status, body)
		}
		if ds.Points != naive.Points() || len(ds.Series) != len(naive.Result()) {
			t.Fatalf("%s: %d points in %d series, want %d in %d", url, ds.Points, len(ds.Series), naive.Points(), len(naive.Result()))
		}
		for k, want := range naive.Result() {
			got := ds.Series[k]
			if len(got) != len(want) {
				t.Fatalf("%s key %s: %d buckets, want %d", url, k, len(got), len(want))
			}
			for i, w := range want {
				g := got[i]
				if g.FirstSeq != w.FirstSeq || g.LastSeq != w.LastSeq || g.Min != w.Min || g.Max != w.Max || g.Last != w.Last ||
					g.Count != w.N || g.TS != w.TS || (g.Step == nil) != (w.Step == nil) || (g.Step != nil && *g.Step != *w.Step) {
					t.Fatalf("%s key %s bucket %d:\n got %+v\nwant %+v", url, k, i, g, w)
				}
			}
		}
	}
}
