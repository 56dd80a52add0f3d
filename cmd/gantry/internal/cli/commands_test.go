package cli

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

var (
	treeCreated = now.Add(-90 * time.Second)
	treeStarted = now.Add(-60 * time.Second)
	treeJobs    = []apiv1.Job{
		{ID: "0p000001", Name: "train", State: apiv1.StateRunning, Node: "gpu-a", GPUs: []int{0}, CreatedAt: &treeCreated, StartedAt: &treeStarted,
			Points: 40, LatestMetrics: map[string]float64{"step": 120, "loss": 0.5}, Spec: apiv1.JobSpec{Name: "train", Run: "python t.py"}},
		{ID: "0p000002", Name: "big", State: apiv1.StateQueued, CreatedAt: &treeCreated,
			Reason: "waiting for 8 free GPUs; most free now: 4 on gpu-a", Spec: apiv1.JobSpec{Name: "big", Run: "x", Resources: apiv1.Resources{GPUs: 8}}},
		{ID: "0p000003", Name: "early", State: apiv1.StateCancelled, CreatedAt: &treeCreated, FinalMetrics: map[string]float64{}},
	}
)

// closedAddr is an address nothing listens on: a port that was just free.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "http://" + l.Addr().String()
	l.Close()
	return addr
}

// commandCase is how the table test drives one command of the tree.
type commandCase struct {
	args []string // a valid invocation against treeJobs
	code int      // its exit status
	// data is whether -o json|yaml applies, and what the JSON must hold.
	data     bool
	dataHas  string
	takesJob bool // args ends with a job; "nope" must exit 3
	// usage is an invalid invocation (wrong argument count).
	usage []string
}

// TestEveryCommand drives every command of the tree: a valid call, -o
// json and yaml on every read command, a job that does not exist (3), a
// controller that is not there (4) and a bad command line (2). A command
// added to the tree without a row here fails the test.
func TestEveryCommand(t *testing.T) {
	// Code shipping has its own test (TestRunShipsCode).
	spec := writeSpec(t, goodSpec+"code: none\n")
	cases := map[string]commandCase{
		"run":            {args: []string{"run", "-d", spec}, usage: []string{"run"}},
		"watch":          {args: []string{"watch", "early"}, code: 1, takesJob: true, usage: []string{"watch"}},
		"ps":             {args: []string{"ps"}, data: true, dataHas: `"id": "0p000002"`, usage: []string{"ps", "extra"}},
		"status":         {args: []string{"status", "train"}, data: true, dataHas: `"id": "0p000001"`, takesJob: true, usage: []string{"status"}},
		"events":         {args: []string{"events", "train"}, data: true, dataHas: `"events": [`, takesJob: true, usage: []string{"events"}},
		"logs":           {args: []string{"logs", "train"}, data: true, dataHas: `"data": "epoch 1\n"`, takesJob: true, usage: []string{"logs", "a", "b"}},
		"cancel":         {args: []string{"cancel", "train"}, takesJob: true, usage: []string{"cancel"}},
		"nodes drain":    {args: []string{"nodes", "drain", "gpu-a", "--gpu", "3"}, usage: []string{"nodes", "drain"}},
		"nodes undrain":  {args: []string{"nodes", "undrain", "gpu-a"}, usage: []string{"nodes", "undrain", "a", "b"}},
		"nodes":          {args: []string{"nodes"}, data: true, dataHas: `"free_gpus": 6`, usage: []string{"nodes", "x"}},
		"cluster status": {args: []string{"cluster", "status"}, data: true, dataHas: `"leader_id": "c1"`, usage: []string{"cluster", "status", "x"}},
		"completion":     {args: []string{"completion", "bash"}, usage: []string{"completion", "bash", "extra"}},
	}
	// Every runnable command of the tree has a case.
	var walk func(prefix string, c *cobra.Command)
	walk = func(prefix string, c *cobra.Command) {
		for _, sub := range c.Commands() {
			name := strings.TrimSpace(prefix + " " + sub.Name())
			if sub.Hidden || sub.Name() == "help" {
				continue
			}
			if sub.Runnable() {
				if _, ok := cases[name]; !ok && !strings.HasPrefix(name, "completion ") {
					t.Errorf("command %q has no case in TestEveryCommand", name)
				}
			}
			walk(name, sub)
		}
	}
	root := (&app{env: Env{}.withDefaults()}).rootCmd()
	root.InitDefaultCompletionCmd()
	walk("", root)

	for name, cc := range cases {
		t.Run(name, func(t *testing.T) {
			fc := newFakeCluster(t, treeJobs...)
			fc.logs["0p000001"] = "epoch 1\n"
			env := map[string]string{EnvAddr: fc.srv.URL}
			if r := runCLI(t, t.Context(), env, cc.args...); r.code != cc.code || r.stdout == "" {
				t.Errorf("%v: code %d stdout %q stderr %q", cc.args, r.code, r.stdout, r.stderr)
			}
			if cc.data {
				r := runCLI(t, t.Context(), env, append(cc.args, "-o", "json")...)
				var v map[string]any
				if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil || !strings.Contains(r.stdout, cc.dataHas) {
					t.Errorf("%v -o json: code %d stdout %s stderr %q; want JSON holding %s", cc.args, r.code, r.stdout, r.stderr, cc.dataHas)
				}
				y := runCLI(t, t.Context(), env, append(cc.args, "-o", "yaml")...)
				var fromYAML map[string]any
				if y.code != 0 || yaml.Unmarshal([]byte(y.stdout), &fromYAML) != nil || strings.HasPrefix(y.stdout, "{") {
					t.Errorf("%v -o yaml: code %d stdout %s stderr %q; want block YAML", cc.args, y.code, y.stdout, y.stderr)
				}
				// The same object either way: YAML is made from the JSON.
				jb, _ := json.Marshal(v)
				yb, _ := json.Marshal(fromYAML)
				if string(jb) != string(yb) {
					t.Errorf("%v: -o yaml holds\n%s\nbut -o json\n%s", cc.args, yb, jb)
				}
				if r := runCLI(t, t.Context(), env, append(cc.args, "-o", "xml")...); r.code != exitUsage || !strings.Contains(r.stderr, `--output "xml"`) {
					t.Errorf("%v -o xml: code %d stderr %q, want 2", cc.args, r.code, r.stderr)
				}
			} else if cc.args[0] != "completion" {
				if r := runCLI(t, t.Context(), env, append(cc.args, "-o", "json")...); r.code != exitUsage {
					t.Errorf("%v -o json on a command without data output: code %d, want 2", cc.args, r.code)
				}
			}
			if cc.takesJob {
				args := append(slices.Clone(cc.args[:len(cc.args)-1]), "nope")
				if r := runCLI(t, t.Context(), env, args...); r.code != exitNotFound ||
					!strings.Contains(r.stderr, `no job with id, id prefix or name "nope"`) {
					t.Errorf("%v: code %d stderr %q, want %d and the not-found line", args, r.code, r.stderr, exitNotFound)
				}
			}
			if r := runCLI(t, t.Context(), env, cc.usage...); r.code != exitUsage {
				t.Errorf("%v: code %d stderr %q, want %d", cc.usage, r.code, r.stderr, exitUsage)
			}
			if r := runCLI(t, t.Context(), env, append(cc.args, "--no-such-flag")...); r.code != exitUsage {
				t.Errorf("%v --no-such-flag: code %d, want %d", cc.args, r.code, exitUsage)
			}
			if cc.args[0] != "completion" {
				down := map[string]string{EnvAddr: closedAddr(t)}
				if r := runCLI(t, t.Context(), down, cc.args...); r.code != exitUnavailable || !strings.Contains(r.stderr, "cannot reach the controller") {
					t.Errorf("%v with no controller: code %d stderr %q, want %d", cc.args, r.code, r.stderr, exitUnavailable)
				}
			}
		})
	}
}

// A controller answering 5xx is unavailable (4), like one not there;
// 503 with Retry-After is retried by the client first (client tests).
func TestServerErrorIsUnavailable(t *testing.T) {
	r := runCLI(t, t.Context(), map[string]string{EnvAddr: newFailingServer(t, 500).URL}, "ps")
	if r.code != exitUnavailable || !strings.Contains(r.stderr, "is unavailable, try again later") {
		t.Errorf("ps against a 500: code %d stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, t.Context(), map[string]string{EnvAddr: newFailingServer(t, 403).URL}, "ps")
	if r.code != exitFailure {
		t.Errorf("ps against a 403: code %d stderr %q, want %d", r.code, r.stderr, exitFailure)
	}
}

func TestHelpDocumentsExitCodes(t *testing.T) {
	r := runCLI(t, t.Context(), nil, "--help")
	for _, w := range []string{"Exit status:", "  3    not found", "  4    the controller is unreachable", "  130  interrupted", "unique prefix of its id"} {
		if r.code != 0 || !strings.Contains(r.stdout, w) {
			t.Errorf("--help lacks %q (code %d):\n%s", w, r.code, r.stdout)
		}
	}
}

func TestPsFiltersAndColumns(t *testing.T) {
	fc := newFakeCluster(t, treeJobs...)
	env := map[string]string{EnvAddr: fc.srv.URL}
	r := runCLI(t, t.Context(), env, "ps")
	want := "" +
		"ID        NAME   STATE      HEALTH  NODE   GPUS  STEP/POINTS  AGE  REASON\n" +
		"0p000003  early  cancelled  -       -      -     -/0          1m\n" +
		"0p000002  big    queued     -       -      -     -/0          1m   waiting for 8 free GPUs; most free now: 4 on gpu-a\n" +
		"0p000001  train  running    ok      gpu-a  0     120/40       1m\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("ps: code %d\n%s\nwant\n%s", r.code, r.stdout, want)
	}

	r = runCLI(t, t.Context(), env, "ps", "--name", "train", "--node", "gpu-a", "--state", "running", "-n", "5")
	if r.code != 0 || !strings.Contains(r.stdout, "0p000001") || strings.Contains(r.stdout, "REASON") {
		t.Errorf("ps filtered: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	fc.mu.Lock()
	q := fc.listQuery[len(fc.listQuery)-1].Encode()
	fc.mu.Unlock()
	if q != "limit=5&name=train&node=gpu-a&state=running" {
		t.Errorf("ps asked for %s; the filters belong to the controller", q)
	}
	// Newest first in data too, and --limit keeps the newest.
	r = runCLI(t, t.Context(), env, "ps", "--limit", "2", "-o", "json")
	var list apiv1.JobList
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil || len(list.Jobs) != 2 ||
		list.Jobs[0].ID != "0p000003" || list.Jobs[1].ID != "0p000002" {
		t.Errorf("ps --limit 2 -o json: code %d stdout %s", r.code, r.stdout)
	}
	for _, args := range [][]string{{"ps", "--limit", "-1"}, {"ps", "--limit", "x"}, {"ps", "--state", "bogus"}} {
		if r := runCLI(t, t.Context(), env, args...); r.code != exitUsage {
			t.Errorf("%v: code %d stderr %q, want %d", args, r.code, r.stderr, exitUsage)
		}
	}
	if r := runCLI(t, t.Context(), env, "ps", "--state", "bogus"); !strings.Contains(r.stderr, `state="bogus"`) {
		t.Errorf("ps --state bogus does not pass the controller's reason on: %q", r.stderr)
	}
}

func TestStatusShowsReason(t *testing.T) {
	fc := newFakeCluster(t, treeJobs...)
	r := runCLI(t, t.Context(), map[string]string{EnvAddr: fc.srv.URL}, "status", "big")
	if r.code != 0 || !regexp.MustCompile(`(?m)^State: +queued\nReason: +waiting for 8 free GPUs; most free now: 4 on gpu-a$`).MatchString(r.stdout) {
		t.Errorf("status of a queued job: code %d\n%s", r.code, r.stdout)
	}
	r = runCLI(t, t.Context(), map[string]string{EnvAddr: fc.srv.URL}, "status", "train")
	if strings.Contains(r.stdout, "Reason:") {
		t.Errorf("status of a running job has a Reason row:\n%s", r.stdout)
	}
}

func TestLogsWithoutAny(t *testing.T) {
	fc := newFakeCluster(t, treeJobs...)
	env := map[string]string{EnvAddr: fc.srv.URL}
	// Cancelled while queued: it never will have logs.
	r := runCLI(t, t.Context(), env, "logs", "early")
	if r.code != exitFailure || r.stdout != "" || r.stderr != "job 0p000003 was cancelled before it started; it has no logs\n" {
		t.Errorf("logs of a job cancelled while queued: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, t.Context(), env, "logs", "-f", "early")
	if r.code != exitFailure || !strings.Contains(r.stderr, "cancelled before it started") {
		t.Errorf("logs -f of a job cancelled while queued: code %d stderr %q", r.code, r.stderr)
	}
	// Queued: it may yet have some.
	r = runCLI(t, t.Context(), env, "logs", "big")
	if r.code != 0 || !strings.Contains(r.stderr, "job 0p000002 is queued and has not started; it has no logs yet") {
		t.Errorf("logs of a queued job: code %d stderr %q", r.code, r.stderr)
	}
	// Running and silent so far: nothing to explain.
	r = runCLI(t, t.Context(), env, "logs", "train")
	if r.code != 0 || r.stderr != "" {
		t.Errorf("logs of a silent running job: code %d stderr %q", r.code, r.stderr)
	}
	if r := runCLI(t, t.Context(), env, "logs", "-f", "-o", "json", "train"); r.code != exitUsage || !strings.Contains(r.stderr, "cannot be followed") {
		t.Errorf("logs -f -o json: code %d stderr %q", r.code, r.stderr)
	}
}

func TestLogsAsData(t *testing.T) {
	fc := newFakeCluster(t, treeJobs...)
	fc.logs["0p000001"] = "epoch 1\nepoch 2 <ok>\n"
	r := runCLI(t, t.Context(), map[string]string{EnvAddr: fc.srv.URL}, "logs", "train", "-o", "yaml")
	want := "offset: 0\nnext: 21\ndata: |\n  epoch 1\n  epoch 2 <ok>\ncomplete: false\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("logs -o yaml: code %d\n%s\nwant\n%s", r.code, r.stdout, want)
	}
}

// The cancel that loses a race with the job's end (409 from the
// controller) says how the job ended, as for one that had already.
func TestCancelRacingTheEnd(t *testing.T) {
	fc := newFakeCluster(t, treeJobs...)
	fc.endBeforeCancel = apiv1.StateSucceeded
	r := runCLI(t, t.Context(), map[string]string{EnvAddr: fc.srv.URL}, "cancel", "train")
	if r.code != 0 || r.stdout != "job 0p000001 already succeeded; nothing to cancel\n" {
		t.Errorf("cancel racing the end: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

// newFailingServer answers every request with status.
func newFailingServer(t *testing.T, status int) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(apiv1.Error{Error: "boom"})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestNodesDrain(t *testing.T) {
	fc := newFakeCluster(t, treeJobs...)
	env := map[string]string{EnvAddr: fc.srv.URL}
	r := runCLI(t, t.Context(), env, "nodes", "drain", "gpu-a", "--gpu", "3,5")
	if r.code != 0 || !strings.Contains(r.stdout, "GPU 3 drained; GPU 5 drained") {
		t.Errorf("drain: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, t.Context(), env, "nodes", "drain", "gpu-a")
	if r.code != 0 || !strings.Contains(r.stdout, "HEALTH") || !strings.Contains(r.stdout, "drained") {
		t.Errorf("drain node: code %d stdout %q", r.code, r.stdout)
	}
	if r := runCLI(t, t.Context(), env, "nodes", "drain", "nope"); r.code == 0 || !strings.Contains(r.stderr, "node not found") {
		t.Errorf("drain unknown node: code %d stderr %q", r.code, r.stderr)
	}
}
