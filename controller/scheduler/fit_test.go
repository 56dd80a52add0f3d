package scheduler

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

const a100 = "NVIDIA A100-SXM4-40GB"

func node(id string, state gantrypb.NodeState, names ...string) *gantrypb.Node {
	return &gantrypb.Node{Id: id, State: state, Gpus: gpus(names...)}
}

func up(id string, names ...string) *gantrypb.Node {
	return node(id, gantrypb.NodeState_NODE_STATE_UP, names...)
}

func down(id string, names ...string) *gantrypb.Node {
	return node(id, gantrypb.NodeState_NODE_STATE_DOWN, names...)
}

func n(k int, name string) []string {
	out := make([]string, k)
	for i := range out {
		out[i] = name
	}
	return out
}

func TestCheckFit(t *testing.T) {
	fleet := []*gantrypb.Node{up("gpu-host-1", n(2, a100)...), up("gpu-host-2", n(4, a100)...)}
	tests := []struct {
		name  string
		spec  *gantrypb.JobSpec
		nodes []*gantrypb.Node
		want  string // "" fits; else the exact text after the sentinel
	}{
		{"fits the largest node", spec(4, "", ""), fleet, ""},
		{"type matches", spec(4, "a100", ""), fleet, ""},
		{"too many gpus", spec(8, "", ""), fleet,
			"no node has 8 GPUs: the largest fit is 4 (gpu-host-2, 4× NVIDIA A100-SXM4-40GB)"},
		{"too many of the type", spec(8, "A100", ""), fleet,
			"no node has 8 GPUs of type A100: the largest fit is 4 (gpu-host-2, 4× NVIDIA A100-SXM4-40GB)"},
		{"wrong type", spec(1, "H100", ""), fleet,
			"no node has GPUs of type H100; the GPUs registered are NVIDIA A100-SXM4-40GB"},
		{"wrong type counts within a mixed node", spec(2, "H100", ""),
			[]*gantrypb.Node{up("m", a100, "NVIDIA H100 80GB HBM3", a100)},
			"no node has 2 GPUs of type H100: the largest fit is 1 (m, 2× NVIDIA A100-SXM4-40GB, 1× NVIDIA H100 80GB HBM3)"},
		{"unknown node", spec(1, "", "nope"), fleet, `node "nope" is not registered; nodes: gpu-host-1, gpu-host-2`},
		{"pinned node too small", spec(4, "", "gpu-host-1"), fleet,
			"node gpu-host-1 has 2 GPUs, fewer than the 4 requested (2× NVIDIA A100-SXM4-40GB)"},
		{"pinned node fits", spec(2, "", "gpu-host-1"), fleet, ""},
		{"a down node still counts", spec(8, "", ""), append([]*gantrypb.Node{down("big", n(8, a100)...)}, fleet...), ""},
		{"a down pinned node still counts", spec(1, "", "gone"), []*gantrypb.Node{down("gone", a100)}, ""},
		{"no nodes: queue, do not refuse", spec(64, "B200", "later"), nil, ""},
		{"zero gpus fit a gpu-less node", spec(0, "", ""), []*gantrypb.Node{up("cpu")}, ""},
		{"a gpu-less fleet", spec(1, "", ""), []*gantrypb.Node{up("cpu")},
			"no node has 1 GPU: the largest fit is 0 (cpu, no GPUs)"},
		{"nil spec needs nothing", nil, fleet, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckFit(tt.spec, tt.nodes)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("CheckFit = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrNeverFits) {
				t.Fatalf("CheckFit = %v, want ErrNeverFits", err)
			}
			if got := strings.TrimPrefix(err.Error(), ErrNeverFits.Error()+": "); got != tt.want {
				t.Fatalf("CheckFit text\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestCheckFitListsAreCapped(t *testing.T) {
	var nodes []*gantrypb.Node
	for i := 0; i < 20; i++ {
		nodes = append(nodes, up(fmt.Sprintf("n%02d", i)))
	}
	err := CheckFit(spec(0, "", "nope"), nodes)
	if err == nil || !strings.HasSuffix(err.Error(), "n07 and 12 more") {
		t.Fatalf("CheckFit = %v, want the list cut after %d ids", err, listCap)
	}
}

func queuedJob(id string, s *gantrypb.JobSpec) *gantrypb.Job {
	return &gantrypb.Job{Id: id, Spec: s, State: gantrypb.JobState_JOB_STATE_QUEUED}
}

func runningJob(id, node string, g ...uint32) *gantrypb.Job {
	return &gantrypb.Job{Id: id, State: gantrypb.JobState_JOB_STATE_RUNNING, Node: node, Gpus: g}
}

func TestFleetReasons(t *testing.T) {
	two := []*gantrypb.Node{up("gpu-host-1", n(2, a100)...), up("gpu-host-2", n(4, a100)...)}
	tests := []struct {
		name  string
		nodes []*gantrypb.Node
		jobs  []*gantrypb.Job // non-terminal, creation order; the last one is asked about
		want  string
	}{
		{"no nodes", nil, []*gantrypb.Job{queuedJob("j", spec(1, "", ""))},
			"no agent connected yet: waiting for a node to register"},
		// "Most free" counts only nodes big enough for the job: gpu-host-1
		// has more free GPUs, but never 4.
		{"fits later: busy gpus", two, []*gantrypb.Job{
			runningJob("r1", "gpu-host-2", 0, 1, 2), queuedJob("j", spec(4, "", ""))},
			"waiting for 4 free GPUs; most free now: 1 on gpu-host-2"},
		{"fits later: busy gpus of the type", []*gantrypb.Node{up("a", n(4, a100)...), up("b", n(4, a100)...)},
			[]*gantrypb.Job{runningJob("r1", "a", 0, 1, 2), runningJob("r2", "b", 3), queuedJob("j", spec(4, "A100", ""))},
			"waiting for 4 free GPUs of type A100; most free now: 3 on b"},
		{"fits later on the pinned node", two, []*gantrypb.Job{
			runningJob("r1", "gpu-host-1", 1), queuedJob("j", spec(2, "", "gpu-host-1"))},
			"waiting for 2 free GPUs on gpu-host-1; free there now: 1"},
		{"the only fitting node is down", []*gantrypb.Node{up("small", a100), down("gpu-host-3", n(8, a100)...)},
			[]*gantrypb.Job{queuedJob("j", spec(8, "", ""))}, "waiting for node gpu-host-3 (down)"},
		{"every fitting node is down", []*gantrypb.Node{down("b", n(8, a100)...), down("a", n(8, a100)...)},
			[]*gantrypb.Job{queuedJob("j", spec(8, "", ""))}, "waiting for a node that fits to come back; down: a, b"},
		{"never fits the nodes there are", two, []*gantrypb.Job{queuedJob("j", spec(8, "", ""))},
			"no node has 8 GPUs: the largest fit is 4 (gpu-host-2, 4× NVIDIA A100-SXM4-40GB); waiting for a node that fits to register"},
		{"pinned to an unregistered node", two, []*gantrypb.Job{queuedJob("j", spec(1, "", "later"))},
			`node "later" is not registered; nodes: gpu-host-1, gpu-host-2; waiting for a node that fits to register`},
		{"behind earlier jobs", two, []*gantrypb.Job{
			queuedJob("e1", spec(2, "", "")), queuedJob("e2", spec(4, "", "")), queuedJob("j", spec(2, "", ""))},
			"waiting behind 2 earlier jobs that take the free GPUs first"},
		{"behind counts only jobs on nodes it could use", two, []*gantrypb.Job{
			queuedJob("e1", spec(2, "", "gpu-host-1")), queuedJob("e2", spec(4, "", "")), queuedJob("j", spec(3, "", ""))},
			"waiting behind 1 earlier job that take the free GPUs first"},
		{"a later small job may pass a waiting big one", two, []*gantrypb.Job{
			runningJob("r", "gpu-host-2", 0), queuedJob("big", spec(4, "", "")), queuedJob("j", spec(2, "", ""))},
			"fits now on gpu-host-1; waiting for the scheduler to assign it"},
		{"fits now", two, []*gantrypb.Job{queuedJob("j", spec(1, "", ""))},
			"fits now on gpu-host-1; waiting for the scheduler to assign it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFleet(tt.nodes, tt.jobs)
			last := tt.jobs[len(tt.jobs)-1].Id
			if got := f.Reason(last); got != tt.want {
				t.Fatalf("Reason(%s)\n got %q\nwant %q", last, got, tt.want)
			}
		})
	}
}

// The reason must not depend on the order nodes come in, and must not
// write into the caller's state.
func TestFleetIsPure(t *testing.T) {
	nodes := []*gantrypb.Node{up("gpu-host-2", n(4, a100)...), up("gpu-host-1", n(2, a100)...)}
	jobs := []*gantrypb.Job{queuedJob("e", spec(2, "", "")), queuedJob("j", spec(2, "", ""))}
	f := NewFleet(nodes, jobs)
	if got, want := f.Reason("j"), "fits now on gpu-host-2; waiting for the scheduler to assign it"; got != want {
		t.Fatalf("Reason = %q, want %q", got, want)
	}
	if nodes[0].Id != "gpu-host-2" {
		t.Fatal("NewFleet reordered the caller's nodes")
	}
	if f.Reason("e") == "" || f.Reason("unknown") != "" || f.Reason("r") != "" {
		t.Fatalf("reasons: e=%q unknown=%q", f.Reason("e"), f.Reason("unknown"))
	}
}
