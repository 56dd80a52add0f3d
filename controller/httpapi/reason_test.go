package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func a100s(k int) []*gantrypb.GPUInfo {
	out := make([]*gantrypb.GPUInfo, k)
	for i := range out {
		out[i] = &gantrypb.GPUInfo{Index: uint32(i), Uuid: "GPU-" + string(rune('a'+i)), Name: "NVIDIA A100-SXM4-40GB"}
	}
	return out
}

func (e *env) submitStatus(t *testing.T, body string) (int, []byte) {
	t.Helper()
	return e.do(http.MethodPost, "/v1/jobs", strings.NewReader(body), true)
}

func (e *env) getJob(t *testing.T, id string) apiv1.Job {
	t.Helper()
	code, b := e.do(http.MethodGet, "/v1/jobs/"+id, nil, true)
	if code != http.StatusOK {
		t.Fatalf("GET job %s: %d %s", id, code, b)
	}
	var j apiv1.Job
	if err := json.Unmarshal(b, &j); err != nil {
		t.Fatal(err)
	}
	return j
}

// A job no registered node could ever run is refused at submit with the
// largest fit named, instead of being queued forever in silence.
func TestSubmitRefusesAJobThatCanNeverFit(t *testing.T) {
	e := newEnv(t, "")
	// With no node registered yet, nothing is refused: agents join later.
	code, b := e.submitStatus(t, `{"run":"x","resources":{"gpus":8,"gpu_type":"H100"}}`)
	if code != http.StatusCreated {
		t.Fatalf("submit before any node registered: %d %s, want 201", code, b)
	}
	var early apiv1.SubmitResponse
	if err := json.Unmarshal(b, &early); err != nil {
		t.Fatal(err)
	}
	if j := e.getJob(t, early.ID); j.State != apiv1.StateQueued || j.Reason != "no agent connected yet: waiting for a node to register" {
		t.Fatalf("job before any node: state %s reason %q", j.State, j.Reason)
	}

	e.raftApply(t,
		&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "gpu-host-1", Hostname: "h1", Gpus: a100s(2)}, AtMs: 1},
		&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "gpu-host-2", Hostname: "h2", Gpus: a100s(4)}, AtMs: 1})
	for _, tt := range []struct{ body, want string }{
		{`{"run":"x","resources":{"gpus":8}}`,
			"no node has 8 GPUs: the largest fit is 4 (gpu-host-2, 4× NVIDIA A100-SXM4-40GB)"},
		{`{"run":"x","resources":{"gpus":1,"gpu_type":"H100"}}`,
			"no node has GPUs of type H100; the GPUs registered are NVIDIA A100-SXM4-40GB"},
		{`{"run":"x","node":"nope"}`, `node "nope" is not registered; nodes: gpu-host-1, gpu-host-2`},
		{`{"run":"x","node":"gpu-host-1","resources":{"gpus":3}}`,
			"node gpu-host-1 has 2 GPUs, fewer than the 3 requested (2× NVIDIA A100-SXM4-40GB)"},
	} {
		code, b := e.submitStatus(t, tt.body)
		if code != http.StatusBadRequest {
			t.Fatalf("submit %s: %d %s, want 400", tt.body, code, b)
		}
		if msg := errorBody(t, b); msg != "the job can never be placed: "+tt.want {
			t.Fatalf("submit %s: error %q, want %q", tt.body, msg, tt.want)
		}
	}
	// The early job now has nodes to compare with, and says so.
	if j := e.getJob(t, early.ID); !strings.HasPrefix(j.Reason, "no node has GPUs of type H100") {
		t.Fatalf("early job's reason %q", j.Reason)
	}
	if code, b := e.submitStatus(t, `{"run":"x","resources":{"gpus":4}}`); code != http.StatusCreated {
		t.Fatalf("a job that fits: %d %s", code, b)
	}
}

// A queued job that could fit later says why it waits, in GET, in the
// list and in the live snapshot, computed from nodes and held GPUs.
func TestQueuedJobReason(t *testing.T) {
	e := newEnv(t, "")
	e.raftApply(t,
		&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "gpu-host-2", Hostname: "h2", Gpus: a100s(4)}, AtMs: 1},
		&gantrypb.SubmitJobCmd{JobId: "busy", Spec: &gantrypb.JobSpec{Run: "x", Resources: &gantrypb.Resources{Gpus: 3}}, AtMs: 1},
		&gantrypb.AssignJobCmd{JobId: "busy", NodeId: "gpu-host-2", Gpus: []uint32{0, 1, 2}, AtMs: 2})
	code, b := e.submitStatus(t, `{"run":"x","resources":{"gpus":4}}`)
	if code != http.StatusCreated {
		t.Fatalf("submit: %d %s", code, b)
	}
	var sub apiv1.SubmitResponse
	if err := json.Unmarshal(b, &sub); err != nil {
		t.Fatal(err)
	}
	const want = "waiting for 4 free GPUs; most free now: 1 on gpu-host-2"
	j := e.getJob(t, sub.ID)
	if j.State != apiv1.StateQueued || j.Reason != want {
		t.Fatalf("GET: state %s reason %q, want queued, %q", j.State, j.Reason, want)
	}
	if busy := e.getJob(t, "busy"); busy.Reason != "" {
		t.Fatalf("an assigned job has reason %q", busy.Reason)
	}

	for _, path := range []string{"/v1/jobs", "/v1/jobs?state=queued"} {
		code, b = e.do(http.MethodGet, path, nil, true)
		var list apiv1.JobList
		if code != http.StatusOK || json.Unmarshal(b, &list) != nil {
			t.Fatalf("%s: %d %s", path, code, b)
		}
		found := false
		for _, l := range list.Jobs {
			if l.ID == sub.ID {
				found = l.Reason == want
			} else if l.Reason != "" {
				t.Fatalf("%s: job %s (%s) has reason %q", path, l.ID, l.State, l.Reason)
			}
		}
		if !found {
			t.Fatalf("%s: queued job missing or without its reason: %s", path, b)
		}
	}

	c, _, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/"+sub.ID+"/live"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if f := readFrame(t, c); f.Type != apiv1.FrameSnapshot || f.Job == nil || f.Job.Reason != want {
		t.Fatalf("live snapshot %+v, want the job with reason %q", f, want)
	}

	// The GPUs free up: the reason follows the store, with nothing written
	// for the waiting job itself.
	e.raftApply(t, &gantrypb.EndJobCmd{JobId: "busy", State: gantrypb.JobState_JOB_STATE_LOST, Error: "gone", AtMs: 3})
	if j := e.getJob(t, sub.ID); j.Reason != "fits now on gpu-host-2; waiting for the scheduler to assign it" {
		t.Fatalf("after the GPUs freed up: reason %q", j.Reason)
	}
}
