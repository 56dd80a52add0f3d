package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

func TestRanksInPsAndStatus(t *testing.T) {
	three := 3
	j := apiv1.Job{ID: "j1", Name: "ddp", State: apiv1.StateFailed, Node: "a1", GPUs: []int{0, 1},
		Error: "rank 1 (node a2) failed: exited with code 3", MasterAddr: "10.0.0.1", MasterPort: 29511,
		Spec: apiv1.JobSpec{Run: "torchrun", Resources: apiv1.Resources{Nodes: 2, GPUs: 2}},
		Ranks: []apiv1.Rank{
			{Rank: 0, Node: "a1", GPUs: []int{0, 1}, State: apiv1.StateCancelled, Signal: "SIGTERM", Error: "cancelled: killed by SIGTERM"},
			{Rank: 1, Node: "a2", GPUs: []int{0, 1}, State: apiv1.StateFailed, ExitCode: &three, Error: "exited with code 3"},
		}}
	var ps strings.Builder
	if err := WriteJobsTable(&ps, []apiv1.Job{j}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ps.String(), "a1 +1") || !strings.Contains(ps.String(), "2×2") {
		t.Fatalf("ps:\n%s", ps.String())
	}
	var st strings.Builder
	if err := WriteJobStatus(&st, j, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Rendezvous:", "10.0.0.1:29511", "requested 2 nodes × 2", "RANK", "a2", "exited with code 3", "SIGTERM"} {
		if !strings.Contains(st.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, st.String())
		}
	}
}
