package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// fakeCluster plays a controller holding several jobs, answering the job
// list with the real handler's filters and validation (state, name, node,
// limit: the newest matches, in id order), 404s for unknown jobs and 409
// for cancelling an ended one, so that the CLI's addressing, filtering and
// errors are tested against the API's behaviour.
type fakeCluster struct {
	srv *httptest.Server

	mu        sync.Mutex
	jobs      []apiv1.Job       // in id order
	logs      map[string]string // job id → its whole log
	cancelled []string
	listQuery []url.Values
	// endBeforeCancel, when set, ends a job in this state as its cancel
	// arrives, so that the cancel answers 409.
	endBeforeCancel string
}

func newFakeCluster(t *testing.T, jobs ...apiv1.Job) *fakeCluster {
	t.Helper()
	fc := &fakeCluster{jobs: slices.Clone(jobs), logs: map[string]string{}} // a copy: tests share job tables
	slices.SortFunc(fc.jobs, func(x, y apiv1.Job) int { return strings.Compare(x.ID, y.ID) })
	reply := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	find := func(id string) (apiv1.Job, bool) {
		for _, j := range fc.jobs {
			if j.ID == id {
				return j, true
			}
		}
		return apiv1.Job{}, false
	}
	notFound := func(w http.ResponseWriter, id string) {
		reply(w, 404, apiv1.Error{Error: fmt.Sprintf("job %q: not found", id)})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		fc.mu.Lock()
		defer fc.mu.Unlock()
		fc.listQuery = append(fc.listQuery, q)
		if s := q.Get("state"); s != "" && !slices.Contains([]string{"queued", "assigned", "running", "succeeded", "failed", "cancelled", "lost"}, s) {
			reply(w, 400, apiv1.Error{Error: fmt.Sprintf("query parameter state=%q: want one of queued, ...", s)})
			return
		}
		limit := 0
		if q.Has("limit") {
			n, err := strconv.Atoi(q.Get("limit"))
			if err != nil || n < 1 {
				reply(w, 400, apiv1.Error{Error: fmt.Sprintf("query parameter limit=%q: want 1..10000", q.Get("limit"))})
				return
			}
			limit = n
		}
		out := apiv1.JobList{Jobs: []apiv1.Job{}}
		for _, j := range fc.jobs {
			if (q.Get("state") == "" || j.State == q.Get("state")) && (q.Get("name") == "" || j.Name == q.Get("name")) &&
				(q.Get("node") == "" || j.Node == q.Get("node")) {
				out.Jobs = append(out.Jobs, j)
			}
		}
		if limit > 0 && len(out.Jobs) > limit {
			out.Jobs = out.Jobs[len(out.Jobs)-limit:]
		}
		reply(w, 200, out)
	})
	mux.HandleFunc("POST /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		var spec apiv1.JobSpec
		if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
			reply(w, 400, apiv1.Error{Error: err.Error()})
			return
		}
		fc.mu.Lock()
		defer fc.mu.Unlock()
		id := fmt.Sprintf("0z%06d", len(fc.jobs))
		fc.jobs = append(fc.jobs, apiv1.Job{ID: id, Name: spec.Name, State: apiv1.StateQueued, Spec: spec})
		reply(w, 201, apiv1.SubmitResponse{ID: id})
	})
	// The live stream of an ended job: its final frame, then close.
	// Following a job that runs is tested with fakeController.
	mux.HandleFunc("GET /v1/jobs/{id}/live", func(w http.ResponseWriter, r *http.Request) {
		fc.mu.Lock()
		j, ok := find(r.PathValue("id"))
		fc.mu.Unlock()
		if !ok || !terminalState(j.State) {
			notFound(w, r.PathValue("id"))
			return
		}
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		_ = conn.WriteJSON(apiv1.Frame{Type: apiv1.FrameFinal, Job: &j})
		closeConn(conn, websocket.CloseNormalClosure)
	})
	mux.HandleFunc("GET /v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if j, ok := find(r.PathValue("id")); ok {
			reply(w, 200, j)
			return
		}
		notFound(w, r.PathValue("id"))
	})
	mux.HandleFunc("GET /v1/jobs/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if _, ok := find(r.PathValue("id")); !ok {
			notFound(w, r.PathValue("id"))
			return
		}
		reply(w, 200, apiv1.EventList{Events: []apiv1.Event{{Seq: 1, TS: 1.7e9, Kind: "queued", Message: "submitted"}}})
	})
	mux.HandleFunc("GET /v1/jobs/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		j, ok := find(r.PathValue("id"))
		if !ok {
			notFound(w, r.PathValue("id"))
			return
		}
		off, _ := strconv.Atoi(r.URL.Query().Get("offset"))
		data := fc.logs[j.ID][min(off, len(fc.logs[j.ID])):]
		reply(w, 200, apiv1.Logs{Offset: uint64(off), Next: uint64(off + len(data)), Data: data,
			Complete: terminalState(j.State)})
	})
	mux.HandleFunc("POST /v1/jobs/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		j, ok := find(r.PathValue("id"))
		if ok && fc.endBeforeCancel != "" {
			for i := range fc.jobs {
				if fc.jobs[i].ID == j.ID {
					fc.jobs[i].State = fc.endBeforeCancel
				}
			}
			j.State = fc.endBeforeCancel
		}
		switch {
		case !ok:
			notFound(w, r.PathValue("id"))
		case terminalState(j.State):
			reply(w, 409, apiv1.Error{Error: "job is terminal"})
		default:
			fc.cancelled = append(fc.cancelled, j.ID)
			reply(w, 202, j)
		}
	})
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, apiv1.NodeList{Nodes: []apiv1.Node{{ID: "gpu-a", State: "up", GPUs: make([]apiv1.GPU, 8), FreeGPUs: 6, Connected: true}}})
	})
	for _, verb := range []string{"drain", "undrain"} {
		mux.HandleFunc("POST /v1/nodes/{id}/"+verb, func(w http.ResponseWriter, r *http.Request) {
			var req apiv1.DrainRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || r.PathValue("id") != "gpu-a" {
				reply(w, 404, apiv1.Error{Error: "node not found"})
				return
			}
			n := apiv1.Node{ID: "gpu-a", State: "up", GPUs: make([]apiv1.GPU, 8), FreeGPUs: 6, Connected: true, Drained: verb == "drain" && len(req.GPUs) == 0}
			for i := range n.GPUs {
				n.GPUs[i] = apiv1.GPU{Index: i, Healthy: true, Drained: verb == "drain" && slices.Contains(req.GPUs, i)}
			}
			reply(w, 200, n)
		})
	}
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, apiv1.Cluster{NodeID: "c1", State: "Leader", LeaderID: "c1", Leader: "127.0.0.1:7000", Term: 3})
	})
	fc.srv = httptest.NewServer(mux)
	t.Cleanup(fc.srv.Close)
	return fc
}
