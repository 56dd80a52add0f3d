package metricsfile

import (
	"fmt"
	"maps"
	"testing"

	"github.com/gantry-ml/gantry/proto/limits"
)

func TestFinal(t *testing.T) {
	var f Final
	if m := f.Metrics(); m == nil || len(m) != 0 {
		t.Fatalf("zero Final Metrics = %v, want empty non-nil", m)
	}
	if _, ok := f.Step(); ok {
		t.Fatal("zero Final has a step")
	}

	for _, s := range []string{
		`{"step":1,"loss":3,"lr":0.1}`,
		`{"step":2,"loss":2,"eval":0.5}`,
		`{"loss":1.5}`,           // no step: step stays 2
		`{"step":1,"loss":1.25}`, // last, not largest: a restarted run counts down
	} {
		l, err := ParseLine([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		f.Observe(&l)
	}
	want := map[string]float64{"loss": 1.25, "lr": 0.1, "eval": 0.5, "step": 1}
	got := f.Metrics()
	if !maps.Equal(got, want) {
		t.Fatalf("Metrics = %v, want %v", got, want)
	}
	if step, ok := f.Step(); !ok || step != 1 {
		t.Fatalf("Step = %d, %v; want 1, true", step, ok)
	}

	got["loss"] = 99
	if f.Metrics()["loss"] != 1.25 {
		t.Fatal("Metrics returned the internal map, not a copy")
	}
}

// TestFinalKeysPerJob: the job's distinct keys stop at MaxKeysPerJob; new
// keys beyond are dropped from the line too, known keys keep updating.
func TestFinalKeysPerJob(t *testing.T) {
	var f Final
	dropped := 0
	for line := range 14 {
		step := int64(line)
		vals := map[string]float64{"loss": float64(line)}
		for i := range 200 {
			vals[fmt.Sprintf("l%02d_k%03d", line, i)] = 1
		}
		l := lineOf(&step, vals)
		dropped += f.Observe(&l)
		if _, ok := l.Values()["loss"]; !ok {
			t.Fatalf("line %d: a known key was dropped", line)
		}
	}
	m := f.Metrics()
	if len(m) != limits.MaxKeysPerJob || f.Keys() != MaxJobKeys {
		t.Fatalf("%d final keys (with step), want %d", len(m), limits.MaxKeysPerJob)
	}
	if want := 1 + 14*200 - MaxJobKeys; dropped != want { // "loss" is one key
		t.Fatalf("dropped %d, want %d", dropped, want)
	}
	if m["loss"] != 13 {
		t.Fatalf("loss = %v, want the last value 13", m["loss"])
	}
}

// lineOf is a parsed line with these values.
func lineOf(step *int64, vals map[string]float64) Line {
	l := Line{Step: step, Names: []string{}, Vals: []float64{}}
	for k, v := range vals {
		l.Names, l.Vals = append(l.Names, k), append(l.Vals, v)
	}
	return l
}
