package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// hostile holds what a terminal would act on: clear screen, a carriage
// return that overwrites the line, a bell, a C1 CSI, DEL and a bidi
// override. (Invalid UTF-8 cannot arrive: JSON replaces it with U+FFFD.)
const hostile = "x\x1b[2J\ry\a\u009b31m\x7f\u202ez"

// wantEscaped is hostile as the CLI must print it.
const wantEscaped = `x\x1b[2J\ry\a\u009b31m\x7f\u202ez`

func TestTermSafe(t *testing.T) {
	for in, want := range map[string]string{
		"plain name 1":        "plain name 1",
		"résnet – 日本":         "résnet – 日本",
		"two\nlines\tand tab": "two\nlines\tand tab",
		"\ufffd kept":         "\ufffd kept",
		hostile:               wantEscaped,
	} {
		if got := termSafe(in); got != want {
			t.Errorf("termSafe(%q) = %q, want %q", in, got, want)
		}
		if got := termSafe(termSafe(in)); got != termSafe(in) {
			t.Errorf("termSafe is not idempotent on %q: %q", in, got)
		}
	}
}

// noControls fails if out holds a byte a terminal would act on.
func noControls(t *testing.T, what, out string) {
	t.Helper()
	for i := 0; i < len(out); i++ {
		if c := out[i]; (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f {
			t.Fatalf("%s: control byte %#x at %d in %q", what, c, i, out)
		}
	}
	if strings.Contains(out, "\u009b") || strings.Contains(out, "\u202e") || !strings.Contains(out, wantEscaped) {
		t.Fatalf("%s: output does not show the escaped form %s:\n%q", what, wantEscaped, out)
	}
}

// Every command's output escapes what the server sent: a job name, node
// id, error, event, metric key or peer address cannot drive the terminal.
func TestServerStringsAreEscaped(t *testing.T) {
	job := apiv1.Job{ID: "j-1", Name: hostile, State: apiv1.StateFailed, Node: hostile, Error: hostile,
		FinalMetrics: map[string]float64{hostile: 1}, LogTail: "boom\n"}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, apiv1.JobList{Jobs: []apiv1.Job{job}})
	})
	mux.HandleFunc("GET /v1/jobs/j-1", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, job) })
	mux.HandleFunc("GET /v1/jobs/j-1/events", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, apiv1.EventList{Events: []apiv1.Event{{Seq: 1, Kind: hostile, Message: hostile}}})
	})
	mux.HandleFunc("GET /v1/jobs/bad", func(w http.ResponseWriter, r *http.Request) {
		// A 404's text is not shown (the CLI words "not found" itself);
		// a server error's is.
		reply(w, 500, apiv1.Error{Error: "store broke on " + hostile})
	})
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, apiv1.NodeList{Nodes: []apiv1.Node{{ID: hostile, Hostname: hostile, State: hostile}}})
	})
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, apiv1.Cluster{NodeID: hostile, State: hostile, Peers: []apiv1.Peer{{ID: hostile, Address: hostile}}})
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	env := map[string]string{EnvAddr: srv.URL}
	for _, args := range [][]string{{"ps"}, {"status", "j-1"}, {"nodes"}, {"cluster", "status"}} {
		r := runCLI(t, t.Context(), env, args...)
		if r.code != 0 {
			t.Fatalf("%v: code %d stderr %q", args, r.code, r.stderr)
		}
		noControls(t, strings.Join(args, " "), r.stdout)
	}
	r := runCLI(t, t.Context(), env, "status", "bad")
	if r.code != exitUnavailable || !strings.Contains(r.stderr, "store broke on") {
		t.Fatalf("status of a job the server fails on: code %d stderr %q", r.code, r.stderr)
	}
	noControls(t, "error", r.stderr)

	var out strings.Builder
	if err := WriteResult(&out, job); err != nil {
		t.Fatal(err)
	}
	noControls(t, "result", out.String())
	var p Progress
	p.Apply(apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &job, Points: []apiv1.Point{{Seq: 1, Values: map[string]float64{hostile: 2}}}})
	noControls(t, "live line", ProgressLine(&p, 0, false))
	if job.Name != hostile {
		t.Fatal("rendering changed the caller's job")
	}
}
