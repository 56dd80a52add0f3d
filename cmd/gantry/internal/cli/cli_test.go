package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// fakeController plays the controller's side of the API for one job, j-1.
type fakeController struct {
	t   *testing.T
	srv *httptest.Server

	// live plays the WebSocket; nil answers the error frame and close 4404.
	live func(conn *websocket.Conn)
	// rejectSpec, when set, makes POST /v1/jobs answer 400 with it.
	rejectSpec string
	// logs answers GET /logs, one page per call; the last repeats.
	logs []apiv1.Logs

	mu  sync.Mutex
	job apiv1.Job // GET /v1/jobs/j-1
	// endAfterGets, when set, replaces job with ended on that GET.
	endAfterGets int
	ended        apiv1.Job
	// gone makes GET /v1/jobs/j-1 answer 404, as for a job deleted.
	gone      bool
	submitted []apiv1.JobSpec
	// blobs are the code archives uploaded, by digest; maxBlob, when
	// set, makes larger uploads answer 413 as a controller does.
	blobs   map[string][]byte
	maxBlob int
	cancels int
	jobGets int
	auth    []string
	offsets []string
}

func newFakeController(t *testing.T) *fakeController {
	t.Helper()
	fc := &fakeController{t: t}
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if err := json.NewEncoder(w).Encode(v); err != nil {
			t.Errorf("encode: %v", err)
		}
	}
	record := func(r *http.Request) {
		fc.mu.Lock()
		fc.auth = append(fc.auth, r.Header.Get("Authorization"))
		fc.mu.Unlock()
	}
	mux.HandleFunc("PUT /v1/blobs/{digest}", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		body, err := io.ReadAll(r.Body)
		if err != nil {
			reply(w, 400, apiv1.Error{Error: err.Error()})
			return
		}
		sum := sha256.Sum256(body)
		if d := "sha256:" + hex.EncodeToString(sum[:]); d != r.PathValue("digest") || r.Header.Get("Content-Type") != "application/gzip" {
			reply(w, 400, apiv1.Error{Error: "digest or content type wrong"})
			return
		}
		if fc.maxBlob > 0 && len(body) > fc.maxBlob {
			reply(w, 413, apiv1.Error{Error: "code archive is too large; list what the job does not need in .gantryignore"})
			return
		}
		fc.mu.Lock()
		if fc.blobs == nil {
			fc.blobs = map[string][]byte{}
		}
		fc.blobs[r.PathValue("digest")] = body
		fc.mu.Unlock()
		reply(w, 201, apiv1.Blob{Digest: r.PathValue("digest"), Size: int64(len(body)), Replicas: 1})
	})
	mux.HandleFunc("POST /v1/jobs/validate", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		if fc.rejectSpec != "" {
			reply(w, 400, apiv1.Error{Error: fc.rejectSpec})
			return
		}
		reply(w, 200, apiv1.Validation{OK: true})
	})
	mux.HandleFunc("POST /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		var spec apiv1.JobSpec
		if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
			reply(w, 400, apiv1.Error{Error: err.Error()})
			return
		}
		if fc.rejectSpec != "" {
			reply(w, 400, apiv1.Error{Error: fc.rejectSpec})
			return
		}
		fc.mu.Lock()
		fc.submitted = append(fc.submitted, spec)
		fc.mu.Unlock()
		reply(w, 201, apiv1.SubmitResponse{ID: "j-1"})
	})
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		fc.mu.Lock()
		defer fc.mu.Unlock()
		reply(w, 200, apiv1.JobList{Jobs: []apiv1.Job{fc.job}})
	})
	mux.HandleFunc("GET /v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if r.PathValue("id") != "j-1" || fc.gone {
			reply(w, 404, apiv1.Error{Error: "job " + r.PathValue("id") + " not found"})
			return
		}
		fc.jobGets++
		if fc.endAfterGets > 0 && fc.jobGets >= fc.endAfterGets {
			fc.job = fc.ended
		}
		reply(w, 200, fc.job)
	})
	mux.HandleFunc("GET /v1/jobs/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, apiv1.EventList{Events: []apiv1.Event{{Seq: 1, TS: 1.7e9, Kind: "bad_lines", Message: "1 bad line", Count: 1}}})
	})
	mux.HandleFunc("GET /v1/jobs/{id}/metrics", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, apiv1.PointPage{Points: []apiv1.Point{pt(9, 9, "loss", 0.9)}, Next: 9})
	})
	mux.HandleFunc("GET /v1/jobs/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		fc.offsets = append(fc.offsets, r.URL.Query().Get("offset"))
		l := fc.logs[0]
		if len(fc.logs) > 1 {
			fc.logs = fc.logs[1:]
		}
		reply(w, 200, l)
	})
	mux.HandleFunc("POST /v1/jobs/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		fc.mu.Lock()
		fc.cancels++
		fc.mu.Unlock()
		reply(w, 202, map[string]string{"id": r.PathValue("id")})
	})
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, apiv1.NodeList{Nodes: []apiv1.Node{{ID: "gpu-a", State: "ready", GPUs: make([]apiv1.GPU, 8), FreeGPUs: 6}}})
	})
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, apiv1.Cluster{NodeID: "c1", State: "Leader", LeaderID: "c1", Leader: "127.0.0.1:7000", Term: 3})
	})
	// Hijacked connections outlive httptest's Close; wait for their
	// handlers so none reports to a finished test.
	var handlers sync.WaitGroup
	mux.HandleFunc("GET /v1/jobs/{id}/live", func(w http.ResponseWriter, r *http.Request) {
		handlers.Add(1)
		defer handlers.Done()
		record(r)
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			t.Errorf("upgrade: %v", err)
			return
		}
		defer conn.Close()
		if r.PathValue("id") != "j-1" || fc.live == nil {
			_ = conn.WriteJSON(apiv1.Frame{Type: apiv1.FrameError, Error: "job not found"})
			closeConn(conn, apiv1.CloseUnknownJob)
			return
		}
		fc.live(conn)
	})
	fc.srv = httptest.NewServer(mux)
	t.Cleanup(fc.srv.Close)
	t.Cleanup(handlers.Wait)
	return fc
}

func (fc *fakeController) setJob(j apiv1.Job) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.job = j
}

// closeConn sends a close frame and waits for the client's answer.
func closeConn(conn *websocket.Conn, code int) {
	msg := websocket.FormatCloseMessage(code, "")
	_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, _, err := conn.ReadMessage(); err != nil {
			return
		}
	}
}

// play sends frames, then, when final is set, the final frame and close 1000.
func play(frames []apiv1.Frame, final *apiv1.Job) func(*websocket.Conn) {
	return func(conn *websocket.Conn) {
		for _, f := range frames {
			if err := conn.WriteJSON(f); err != nil {
				return
			}
		}
		if final != nil {
			_ = conn.WriteJSON(apiv1.Frame{Type: apiv1.FrameFinal, Job: final})
			closeConn(conn, websocket.CloseNormalClosure)
		}
	}
}

var (
	runningJob = apiv1.Job{ID: "j-1", Name: "demo", State: apiv1.StateRunning, Node: "gpu-a", GPUs: []int{0}}
	liveFrames = []apiv1.Frame{
		{Type: apiv1.FrameSnapshot, Job: &runningJob, Points: []apiv1.Point{pt(1, 0, "total_steps", 300.0)}},
		{Type: apiv1.FrameMetrics, Points: []apiv1.Point{pt(2, 1, "loss", 2.5, "lr", 0.0001)}},
		{Type: apiv1.FrameGPU, GPU: sample},
		{Type: apiv1.FrameMetrics, Points: []apiv1.Point{pt(3, 2, "loss", 2.4)}},
	}
)

func finished(state string, exit *int) *apiv1.Job {
	j := runningJob
	j.State = state
	j.ExitCode = exit
	j.FinalMetrics = map[string]float64{"step": 300, "loss": 0.0625, "eval_loss": 0.125, "lr": 1e-5}
	return &j
}

type result struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, ctx context.Context, env map[string]string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(ctx, args, Env{
		Stdout:       &out,
		Stderr:       &errOut,
		Getenv:       func(k string) string { return env[k] },
		Now:          func() time.Time { return now },
		PollInterval: 5 * time.Millisecond,
	})
	return result{code, out.String(), errOut.String()}
}

func writeSpec(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "demo.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodSpec = "name: demo\nrun: python train.py\nresources:\n  gpus: 1\nkill_grace: 10\n"

func TestRunAttachedExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		final    *apiv1.Job
		wantCode int
		wantLine string
	}{
		{"succeeded", finished(apiv1.StateSucceeded, ptr(0)), 0, "job j-1 succeeded (exit code 0)"},
		{"failed with code", finished(apiv1.StateFailed, ptr(3)), 3, "job j-1 failed (exit code 3)"},
		{"failed with huge code", finished(apiv1.StateFailed, ptr(300)), 125, "(exit code 300)"},
		{"cancelled", finished(apiv1.StateCancelled, nil), 1, "job j-1 cancelled"},
		{"lost", finished(apiv1.StateLost, nil), 1, "job j-1 lost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := newFakeController(t)
			fc.live = play(liveFrames, tt.final)
			r := runCLI(t, t.Context(), map[string]string{EnvAddr: fc.srv.URL, EnvToken: "tok"}, "run", writeSpec(t, goodSpec))
			if r.code != tt.wantCode {
				t.Errorf("exit code = %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tt.wantCode, r.stdout, r.stderr)
			}
			wantOut := []string{
				"submitted job j-1\n",
				"job j-1 running on gpu-a (GPUs 0)\n",
				tt.wantLine,
				"METRIC     VALUE\nstep       300\neval_loss  0.125\nloss       0.0625\nlr         1e-05\n",
			}
			for _, w := range wantOut {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
				}
			}
			fc.mu.Lock()
			defer fc.mu.Unlock()
			if len(fc.submitted) != 1 || fc.submitted[0].Run != "python train.py" ||
				fc.submitted[0].KillGrace != apiv1.Duration(10*time.Second) || fc.submitted[0].Resources.GPUs != 1 {
				t.Errorf("submitted = %+v", fc.submitted)
			}
			if fc.jobGets != 0 {
				t.Errorf("polled the job %d times although the live stream delivered the final frame", fc.jobGets)
			}
			for _, a := range fc.auth {
				if a != "Bearer tok" {
					t.Errorf("Authorization = %q, want the token from %s", a, EnvToken)
				}
			}
		})
	}
}

func TestRunFallsBackToPollingWhenLiveDrops(t *testing.T) {
	fc := newFakeController(t)
	running := runningJob
	running.LastSeq = 9
	fc.setJob(running)
	// The job ends while the CLI is polling: a few rounds see it running.
	fc.endAfterGets = 3
	fc.ended = *finished(apiv1.StateSucceeded, ptr(0))
	fc.live = func(conn *websocket.Conn) {
		play(liveFrames, nil)(conn)
		// The controller dies mid-run: no close frame.
		_ = conn.UnderlyingConn().Close()
	}
	r := runCLI(t, t.Context(), nil, "--addr", fc.srv.URL, "run", writeSpec(t, goodSpec))
	if r.code != 0 {
		t.Fatalf("exit code = %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "live stream lost") {
		t.Errorf("stderr does not say the stream was lost:\n%s", r.stderr)
	}
	for _, w := range []string{"job j-1 succeeded", "loss       0.0625"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
		}
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.jobGets != 3 {
		t.Errorf("polled the job %d times, want 3", fc.jobGets)
	}
}

// A job that disappears while the CLI polls it is "not found" (3), in
// the same words as everywhere, not a raw 404.
func TestPollingAJobThatIsGone(t *testing.T) {
	fc := newFakeController(t)
	fc.gone = true
	fc.live = func(conn *websocket.Conn) {
		play(liveFrames, nil)(conn)
		_ = conn.UnderlyingConn().Close() // the stream drops: polling takes over
	}
	r := runCLI(t, t.Context(), nil, "--addr", fc.srv.URL, "run", writeSpec(t, goodSpec))
	if r.code != exitNotFound || !strings.Contains(r.stderr, `no job with id, id prefix or name "j-1"`) {
		t.Errorf("code %d stderr %q", r.code, r.stderr)
	}
}

func TestRunSpecErrors(t *testing.T) {
	t.Run("controller rejects", func(t *testing.T) {
		fc := newFakeController(t)
		fc.rejectSpec = "spec.resources.gpu_type \"H900\" is unknown"
		r := runCLI(t, t.Context(), nil, "--addr", fc.srv.URL, "run", writeSpec(t, goodSpec))
		if r.code != 2 || !strings.Contains(r.stderr, `spec.resources.gpu_type "H900" is unknown`) {
			t.Errorf("code %d stderr %q, want 2 and the server's reason", r.code, r.stderr)
		}
	})
	t.Run("invalid locally", func(t *testing.T) {
		fc := newFakeController(t)
		r := runCLI(t, t.Context(), nil, "--addr", fc.srv.URL, "run", writeSpec(t, "name: x\n"))
		if r.code != 2 || !strings.Contains(r.stderr, "spec.run is required") {
			t.Errorf("code %d stderr %q", r.code, r.stderr)
		}
		if len(fc.submitted) != 0 {
			t.Error("an invalid spec was submitted")
		}
	})
	t.Run("unreadable yaml", func(t *testing.T) {
		r := runCLI(t, t.Context(), nil, "run", writeSpec(t, "run: x\nmax_duration: soon\n"))
		if r.code != 2 || !strings.Contains(r.stderr, "invalid duration") {
			t.Errorf("code %d stderr %q", r.code, r.stderr)
		}
	})
}

func TestRunDetachedFlag(t *testing.T) {
	fc := newFakeController(t)
	r := runCLI(t, t.Context(), map[string]string{EnvAddr: fc.srv.URL}, "run", "-d", writeSpec(t, goodSpec))
	if r.code != 0 || r.stdout != "j-1\n" {
		t.Errorf("code %d stdout %q, want 0 and the bare id", r.code, r.stdout)
	}
}

func TestCtrlCDetachesWithoutCancelling(t *testing.T) {
	fc := newFakeController(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	fc.live = func(conn *websocket.Conn) {
		play(liveFrames, nil)(conn)
		cancel() // the user presses Ctrl-C while the job runs
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}
	r := runCLI(t, ctx, map[string]string{EnvAddr: fc.srv.URL}, "run", writeSpec(t, goodSpec))
	if r.code != exitDetached {
		t.Errorf("exit code = %d, want %d", r.code, exitDetached)
	}
	for _, w := range []string{"detached from job j-1", "gantry watch j-1", "gantry cancel j-1"} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
		}
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.cancels != 0 {
		t.Error("detaching cancelled the job")
	}
}

func TestWatchCommand(t *testing.T) {
	fc := newFakeController(t)
	fc.live = play(liveFrames, finished(apiv1.StateFailed, ptr(7)))
	r := runCLI(t, t.Context(), nil, "--addr", fc.srv.URL, "watch", "j-1")
	if r.code != 7 || !strings.Contains(r.stdout, "loss       0.0625") {
		t.Errorf("code %d stdout:\n%s", r.code, r.stdout)
	}

	r = runCLI(t, t.Context(), nil, "--addr", fc.srv.URL, "watch", "nope")
	if r.code != exitNotFound || !strings.Contains(r.stderr, `no job with id, id prefix or name "nope"`) {
		t.Errorf("unknown job: code %d stderr %q", r.code, r.stderr)
	}
}

func TestUnreachableControllerNamesAddress(t *testing.T) {
	fc := newFakeController(t)
	addr := fc.srv.URL
	fc.srv.Close()
	for _, args := range [][]string{{"ps"}, {"run", "-d", writeSpec(t, goodSpec)}, {"cluster", "status"}} {
		r := runCLI(t, t.Context(), map[string]string{EnvAddr: addr}, args...)
		if r.code != exitUnavailable || !strings.Contains(r.stderr, "cannot reach the controller at "+addr) {
			t.Errorf("%v: code %d stderr %q", args, r.code, r.stderr)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"bogus"}, {"status"}, {"run"}, {"ps", "--nope"}} {
		r := runCLI(t, t.Context(), nil, args...)
		if r.code != 2 || !strings.Contains(r.stderr, "gantry --help") {
			t.Errorf("%v: code %d stderr %q, want 2 and a usage hint", args, r.code, r.stderr)
		}
	}
}

func TestInspectCommands(t *testing.T) {
	fc := newFakeController(t)
	fc.setJob(*finished(apiv1.StateSucceeded, ptr(0)))
	addr := map[string]string{EnvAddr: fc.srv.URL}
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"ps"}, []string{"ID   NAME  STATE      HEALTH  NODE   GPUS  STEP/POINTS  AGE", "j-1  demo  succeeded  -       gpu-a  0     300/0        -"}},
		{[]string{"status", "j-1"}, []string{"State:", "succeeded", "  loss       0.0625", "bad_lines", "1 bad line"}},
		{[]string{"cancel", "j-1"}, []string{"job j-1 already succeeded; nothing to cancel"}},
		{[]string{"nodes"}, []string{"gpu-a", "6/8"}},
		{[]string{"cluster", "status"}, []string{"Leader:", "c1 at 127.0.0.1:7000", "Term:", "3"}},
	}
	for _, tt := range tests {
		r := runCLI(t, t.Context(), addr, tt.args...)
		if r.code != 0 {
			t.Errorf("%v: code %d stderr %q", tt.args, r.code, r.stderr)
		}
		for _, w := range tt.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%v: stdout lacks %q:\n%s", tt.args, w, r.stdout)
			}
		}
	}
	r := runCLI(t, t.Context(), addr, "status", "nope")
	if r.code != exitNotFound || !strings.Contains(r.stderr, `no job with id, id prefix or name "nope"`) {
		t.Errorf("status of unknown job: code %d stderr %q", r.code, r.stderr)
	}
}

func TestLogs(t *testing.T) {
	pages := []apiv1.Logs{
		{Offset: 0, Next: 6, Data: "hello\n"},
		{Offset: 6, Next: 6},
		{Offset: 6, Next: 12, Data: "world\n"},
		{Offset: 12, Next: 18, Data: "done!\n", Complete: true},
		{Offset: 18, Next: 18, Complete: true},
	}
	t.Run("once", func(t *testing.T) {
		fc := newFakeController(t)
		fc.logs = append([]apiv1.Logs(nil), pages...)
		r := runCLI(t, t.Context(), map[string]string{EnvAddr: fc.srv.URL}, "logs", "j-1")
		if r.code != 0 || r.stdout != "hello\n" {
			t.Errorf("code %d stdout %q", r.code, r.stdout)
		}
	})
	t.Run("follow", func(t *testing.T) {
		fc := newFakeController(t)
		fc.logs = append([]apiv1.Logs(nil), pages...)
		r := runCLI(t, t.Context(), map[string]string{EnvAddr: fc.srv.URL}, "logs", "-f", "j-1")
		if r.code != 0 || r.stdout != "hello\nworld\ndone!\n" {
			t.Errorf("code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if got := strings.Join(fc.offsets, ","); got != "0,6,6,12,18" {
			t.Errorf("offsets asked = %s", got)
		}
	})
}

// Jobs can be named instead of given by id, and ps filters and prints JSON.
func TestNamesAndPsFlags(t *testing.T) {
	jobs := []apiv1.Job{
		{ID: "a1", Name: "tiny-lm", State: apiv1.StateSucceeded},
		{ID: "a2", Name: "tiny-lm", State: apiv1.StateRunning},
		{ID: "b1", Name: "solo", State: apiv1.StateRunning},
		{ID: "c1", Name: "twin", State: apiv1.StateRunning},
		{ID: "c2", Name: "twin", State: apiv1.StateQueued},
	}
	var mu sync.Mutex
	var cancelled []string
	var states []string
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		state := r.URL.Query().Get("state")
		mu.Lock()
		states = append(states, state)
		mu.Unlock()
		if state == "bogus" {
			reply(w, 400, apiv1.Error{Error: `query parameter state="bogus": want one of queued, ...`})
			return
		}
		out := apiv1.JobList{Jobs: []apiv1.Job{}}
		for _, j := range jobs {
			if state == "" || j.State == state {
				out.Jobs = append(out.Jobs, j)
			}
		}
		reply(w, 200, out)
	})
	mux.HandleFunc("GET /v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		for _, j := range jobs {
			if j.ID == r.PathValue("id") {
				reply(w, 200, j)
				return
			}
		}
		reply(w, 404, apiv1.Error{Error: "job " + r.PathValue("id") + " not found"})
	})
	mux.HandleFunc("GET /v1/jobs/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, apiv1.EventList{Events: []apiv1.Event{}})
	})
	mux.HandleFunc("POST /v1/jobs/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		cancelled = append(cancelled, r.PathValue("id"))
		mu.Unlock()
		reply(w, 202, map[string]string{})
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	env := map[string]string{EnvAddr: srv.URL}

	r := runCLI(t, t.Context(), env, "ps", "--state", "running", "-o", "json")
	var list apiv1.JobList
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil || len(list.Jobs) != 3 || states[len(states)-1] != "running" {
		t.Fatalf("ps --state running -o json: code %d, %d jobs, stdout %s", r.code, len(list.Jobs), r.stdout)
	}
	if r := runCLI(t, t.Context(), env, "ps", "--state", "bogus"); r.code != exitUsage || !strings.Contains(r.stderr, "bogus") {
		t.Fatalf("ps --state bogus: code %d stderr %q", r.code, r.stderr)
	}
	if r := runCLI(t, t.Context(), env, "ps", "-o", "xml"); r.code != exitUsage || !strings.Contains(r.stderr, "want table, json or yaml") {
		t.Fatalf("ps -o xml: code %d stderr %q", r.code, r.stderr)
	}

	r = runCLI(t, t.Context(), env, "status", "tiny-lm")
	if r.code != 0 || !strings.Contains(r.stdout, "a2") || !strings.Contains(r.stderr, "2 jobs are named") {
		t.Fatalf("status by a shared name: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := runCLI(t, t.Context(), env, "status", "nope"); r.code != exitNotFound {
		t.Fatalf("status of nothing: code %d", r.code)
	}
	for _, c := range []struct{ name, want string }{{"solo", "b1"}, {"tiny-lm", "a2"}} { // tiny-lm: a1 has ended
		if r := runCLI(t, t.Context(), env, "cancel", c.name); r.code != 0 || !strings.Contains(r.stdout, c.want) {
			t.Fatalf("cancel %s: code %d stdout %q stderr %q", c.name, r.code, r.stdout, r.stderr)
		}
	}
	if r := runCLI(t, t.Context(), env, "cancel", "twin"); r.code != exitUsage || !strings.Contains(r.stderr, "give an id") {
		t.Fatalf("cancel of an ambiguous name: code %d stderr %q", r.code, r.stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(cancelled) != "[b1 a2]" {
		t.Fatalf("cancelled %v, want b1 then a2", cancelled)
	}
}
