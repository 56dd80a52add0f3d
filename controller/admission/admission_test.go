package admission_test

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gantry-ml/gantry/controller/admission"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

func exit(x *gantrypb.JobExit) *gantrypb.Record {
	return &gantrypb.Record{JobId: "j", Seq: 9, Body: &gantrypb.Record_Exit{Exit: x}}
}

func TestCheckRecordRefusals(t *testing.T) {
	pt := func(ts float64, vals map[string]float64) *gantrypb.Record {
		return &gantrypb.Record{JobId: "j", Seq: 1, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Ts: ts, Values: vals}}}
	}
	for name, rec := range map[string]*gantrypb.Record{
		"seq 0":          {JobId: "j", Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{}}},
		"huge id":        pt(0, nil),
		"id with slash":  {JobId: "a/b", Seq: 1, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{}}},
		"empty key":      pt(0, map[string]float64{"": 1}),
		"tab in key":     pt(0, map[string]float64{"a\tb": 1}),
		"NaN value":      pt(0, map[string]float64{"a": math.NaN()}),
		"ts in 33658":    pt(1e15, nil),
		"negative ts":    pt(-1, nil),
		"no body":        {JobId: "j", Seq: 1},
		"node exit":      {Seq: 1, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{}}},
		"job GPU sample": {JobId: "j", Seq: 1, Body: &gantrypb.Record_Gpu{Gpu: &gantrypb.GPUSample{}}},
		"bad utf8 event": {JobId: "j", Seq: 1, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{Message: "\xff"}}},
	} {
		if name == "huge id" {
			rec.JobId = strings.Repeat("x", limits.MaxIDBytes+1)
		}
		if err := admission.CheckRecord(rec); !errors.Is(err, admission.ErrRejected) {
			t.Errorf("%s: CheckRecord = %v, want ErrRejected", name, err)
		}
	}
	ok := pt(1.7e9, map[string]float64{"loss": 0.5, "ünïcode/ key": 1})
	if err := admission.CheckRecord(ok); err != nil {
		t.Fatalf("a good point refused: %v", err)
	}
}

// An exit that breaks limits is repaired into one that passes, keeping
// what is good: the job's end must never be refused.
func TestRepairExit(t *testing.T) {
	finals := map[string]float64{"": 1, "a\tb": 2, "nan": math.NaN(), "loss": 0.25}
	for i := range limits.MaxKeysPerJob + 10 {
		finals[fmt.Sprintf("k%05d", i)] = float64(i)
	}
	tail := strings.Repeat("é", limits.MaxLogTailBytes) + "THE END"
	rec := exit(&gantrypb.JobExit{Ts: 1e15, FinalMetrics: finals, LogTail: tail,
		Error: strings.Repeat("e", limits.MaxExitErrorBytes+5), Signal: "SIGKILL-and-some-more-text-here-to-overflow"})
	if admission.CheckRecord(rec) == nil {
		t.Fatal("the broken exit passed the check")
	}
	if !admission.Repair(rec) {
		t.Fatal("Repair changed nothing")
	}
	if err := admission.CheckRecord(rec); err != nil {
		t.Fatalf("repaired exit still refused: %v", err)
	}
	x := rec.GetExit()
	if x.Ts != 0 || len(x.FinalMetrics) != limits.MaxKeysPerJob || x.FinalMetrics["k00000"] != 0 {
		t.Fatalf("ts %v, %d final metrics", x.Ts, len(x.FinalMetrics))
	}
	if _, ok := x.FinalMetrics["loss"]; ok {
		// "loss" sorts after every k… key, so the cap drops it: the rule is
		// sorted order, the same on every voter.
		t.Fatal("the cap kept a key past the sorted limit")
	}
	if !strings.HasSuffix(x.LogTail, "THE END") || !utf8.ValidString(x.LogTail) || len(x.LogTail) > limits.MaxLogTailBytes {
		t.Fatalf("log tail: %d bytes, valid=%v", len(x.LogTail), utf8.ValidString(x.LogTail))
	}
	if admission.Repair(rec) {
		t.Fatal("Repair changed an exit that passes")
	}
	// Only started and exit records are repaired.
	pt := &gantrypb.Record{JobId: "j", Seq: 1, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Ts: 1e15}}}
	if admission.Repair(pt) {
		t.Fatal("Repair changed a metric point")
	}
}

func TestCheckHello(t *testing.T) {
	if err := admission.CheckHello(&gantrypb.Hello{NodeId: "gpu-1", Gpus: []*gantrypb.GPUInfo{{Name: "A100"}}}); err != nil {
		t.Fatal(err)
	}
	for name, h := range map[string]*gantrypb.Hello{
		"nil":       nil,
		"no id":     {},
		"many gpus": {NodeId: "n", Gpus: make([]*gantrypb.GPUInfo, limits.MaxGPUsPerNode+1)},
		"long host": {NodeId: "n", Hostname: strings.Repeat("h", 300)},
		"bad job":   {NodeId: "n", ActiveJobs: []string{"a b"}},
	} {
		if err := admission.CheckHello(h); !errors.Is(err, admission.ErrRejected) {
			t.Errorf("%s: CheckHello = %v, want ErrRejected", name, err)
		}
	}
}
