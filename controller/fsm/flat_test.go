package fsm_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/view"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// flat makes a flat point record whose metrics index keys.
func flat(job string, seq uint64, idx []uint32, vals []float64) *gantrypb.Record {
	step := int64(seq)
	return &gantrypb.Record{JobId: job, Seq: seq, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{
		Step: &step, Ts: float64(seq), KeyIdx: idx, Vals: vals}}}
}

// TestFlatPointsStoredLikeMapPoints: points in the flat form (indexes into
// the entry's key table, packed values) are stored, counted, published
// and read back exactly as the same points in the map form, and the two
// forms mix in one job.
func TestFlatPointsStoredLikeMapPoints(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	h.obs.take()
	cmd := ingest("n1",
		flat("j", 2, []uint32{0, 1}, []float64{0.5, 3e-4}),
		flat("j", 3, []uint32{1, 2}, []float64{2e-4, 0.9}),
		point("j", 4, map[string]float64{"loss": 0.25}),
		flat("j", 5, nil, nil), // a line with a step and no metrics
	)
	cmd.Keys = []string{"loss", "lr", "acc"}
	if r := h.apply(cmd); r != (fsm.IngestResult{Stored: 4}) {
		t.Fatalf("ingest = %v", r)
	}
	pts := h.points("j")
	want := []map[string]float64{{"loss": 0.5, "lr": 3e-4}, {"lr": 2e-4, "acc": 0.9}, {"loss": 0.25}, {}}
	if len(pts) != len(want) {
		t.Fatalf("%d points", len(pts))
	}
	for i, p := range pts {
		if fmt.Sprint(p.Values) != fmt.Sprint(want[i]) || p.GetStep() != int64(i+2) || len(p.KeyIdx) != 0 {
			t.Errorf("point %d = %v, want values %v", i, p, want[i])
		}
	}
	j := h.job("j")
	if j.Points != 4 || j.LastSeq != 5 || j.LatestMetrics["loss"] != 0.25 || j.LatestMetrics["acc"] != 0.9 || j.LatestMetrics["lr"] != 2e-4 {
		t.Fatalf("job: points %d last %d latest %v", j.Points, j.LastSeq, j.LatestMetrics)
	}
	// Watchers get the same points, names resolved through the changes' table.
	var got []map[string]float64
	for _, c := range h.obs.take() {
		for _, p := range view.PointsIn(c.Points["j"], c.Keys) {
			got = append(got, p.Values)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint([]map[string]float64{{"loss": 0.5, "lr": 3e-4}, {"lr": 2e-4, "acc": 0.9}, {"loss": 0.25}, nil}) {
		t.Fatalf("published %v", got)
	}
}

// TestFlatPointsChecked: a flat point that indexes past the table, names
// a key twice, mixes forms, has mismatched lengths or comes in the spool's
// named form is rejected on its own; a key table that is itself bad makes the whole entry
// unappliable on every voter.
func TestFlatPointsChecked(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	cmd := ingest("n1",
		flat("j", 2, []uint32{3}, []float64{1}),
		flat("j", 3, []uint32{0, 0}, []float64{1, 2}),
		flat("j", 4, []uint32{0, 1}, []float64{1}),
		flat("j", 5, []uint32{0}, []float64{1}),
		flat("j", 6, nil, []float64{1}),
	)
	cmd.Records[3].GetPoint().Values = map[string]float64{"x": 1}
	cmd.Records[4].GetPoint().Names = []string{"a"} // the spool's form never goes on the wire
	cmd.Keys = []string{"a", "b"}
	if r := h.apply(cmd); r != (fsm.IngestResult{Rejected: 5}) {
		t.Fatalf("ingest = %v, want 5 rejected", r)
	}
	for _, keys := range [][]string{{"a", "a"}, {""}, {"bad\x00key"}, make([]string, limits.MaxBatchKeys+1)} {
		c := ingest("n1", flat("j", 6, []uint32{0}, []float64{1}))
		c.Keys = keys
		if err, ok := h.apply(c).(error); !ok || !errors.Is(err, fsm.ErrSkipped) {
			t.Errorf("key table %.40q: %v, want the entry skipped", keys, err)
		}
	}
	if n := len(h.points("j")); n != 0 {
		t.Fatalf("%d points stored", n)
	}
}

// TestFlatPointsCapKeysPerJob: the cap on a job's distinct keys drops the
// same keys from flat points as from map points.
func TestFlatPointsCapKeysPerJob(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	var keys []string
	for i := range limits.MaxKeysPerJob + 3 {
		keys = append(keys, fmt.Sprintf("k%04d", i))
	}
	seq := uint64(2)
	for from := 0; from < len(keys); from += limits.MaxKeysPerPoint {
		c := ingest("n1")
		var idx []uint32
		var vals []float64
		for i := from; i < min(from+limits.MaxKeysPerPoint, len(keys)); i++ {
			c.Keys = append(c.Keys, keys[i])
			idx = append(idx, uint32(len(c.Keys)-1))
			vals = append(vals, float64(i))
		}
		slices.Reverse(idx) // order in the point must not decide what is dropped
		slices.Reverse(vals)
		c.Records = append(c.Records, flat("j", seq, idx, vals))
		h.mustOK(c)
		seq++
	}
	j := h.job("j")
	// "step" is one of the job's keys too, so 1,023 metrics fit.
	if len(j.LatestMetrics) != limits.MaxKeysPerJob || j.DroppedMetricKeys != 4 {
		t.Fatalf("latest has %d keys, dropped %d; want %d and 4", len(j.LatestMetrics), j.DroppedMetricKeys, limits.MaxKeysPerJob)
	}
	for _, k := range keys[limits.MaxKeysPerJob-1:] {
		if _, ok := j.LatestMetrics[k]; ok {
			t.Fatalf("%s was kept; the last keys in sorted order go", k)
		}
	}
	stored := 0
	for _, p := range h.points("j") {
		stored += len(p.Values)
	}
	if stored != limits.MaxKeysPerJob-1 {
		t.Fatalf("%d values stored, want %d", stored, limits.MaxKeysPerJob-1)
	}
}
