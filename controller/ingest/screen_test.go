package ingest

import (
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func point(job string, seq uint64, vals map[string]float64) *gantrypb.Record {
	return &gantrypb.Record{JobId: job, Seq: seq, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Values: vals}}}
}

// The screen keeps records of the node's own jobs (a bad one becomes a
// record_rejected event with its seq), drops records of another node's
// jobs and bad records it cannot vouch for, and leaves jobs it does not
// know yet to the FSM.
func TestScreen(t *testing.T) {
	huge := strings.Repeat("x", 40000)
	owners := map[string][]string{"mine": {"n1"}, "theirs": {"n2"}}
	out := screen("n1", []*gantrypb.Record{
		point("mine", 1, map[string]float64{"loss": 1}),
		point("mine", 2, map[string]float64{"": 1}),
		point("theirs", 1, map[string]float64{"loss": 666}),
		point("unknown-yet", 1, map[string]float64{"loss": 1}),
		point(huge, 1, map[string]float64{"loss": 1}),
		point("unknown-yet", 2, map[string]float64{"": 1}),
		nil,
		{JobId: "mine", Seq: 3, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{KeyIdx: []uint32{1}, Vals: []float64{1}}}},
		{JobId: "mine", Seq: 4, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{KeyIdx: []uint32{0}, Vals: []float64{1}}}},
	}, 1, owners)
	var got []string
	for _, r := range out.records {
		kind := "point"
		if e := r.GetEvent(); e != nil {
			kind = e.Kind
		}
		got = append(got, r.JobId+"/"+kind)
	}
	// Seq 3 indexes past the batch's one-name key table; seq 4 is a good
	// flat point.
	want := []string{"mine/point", "mine/" + string(lifecycle.EventRecordRejected), "unknown-yet/point",
		"mine/" + string(lifecycle.EventRecordRejected), "mine/point"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("kept %v, want %v", got, want)
	}
	if out.records[1].Seq != 2 {
		t.Fatalf("the rejection event has seq %d, want the refused record's 2", out.records[1].Seq)
	}
	if out.refused[reasonForeignJob] != 1 || out.refused[reasonLimit] != 5 {
		t.Fatalf("refused = %v, want 1 foreign_job and 5 limit", out.refused)
	}
}
