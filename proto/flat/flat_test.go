package flat

import (
	"fmt"
	"maps"
	"testing"

	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

func pointRec(vals map[string]float64) *gantrypb.Record {
	return &gantrypb.Record{Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Values: maps.Clone(vals)}}}
}

func TestFlattenAndBack(t *testing.T) {
	var tab Table
	a := map[string]float64{"loss": 1, "lr": 2}
	b := map[string]float64{"lr": 3, "acc": 4}
	ra, rb := pointRec(a), pointRec(b)
	for _, r := range []*gantrypb.Record{ra, rb} {
		if !tab.Flatten(r.GetPoint()) {
			t.Fatal("refused")
		}
		if r.GetPoint().Values != nil {
			t.Fatal("map kept")
		}
	}
	if tab.Len() != 3 {
		t.Fatalf("table %v, want 3 names", tab.Keys())
	}
	if got := Values(ra.GetPoint(), tab.Keys()); !maps.Equal(got, a) {
		t.Fatalf("a back: %v", got)
	}
	if got := Values(rb.GetPoint(), tab.Keys()); !maps.Equal(got, b) {
		t.Fatalf("b back: %v", got)
	}
	// Merging another batch's table re-indexes its points.
	var other Table
	rc := pointRec(map[string]float64{"acc": 5, "new": 6})
	other.Flatten(rc.GetPoint())
	if !tab.Merge(other.Keys(), []*gantrypb.Record{rc}) {
		t.Fatal("merge refused")
	}
	if got := Values(rc.GetPoint(), tab.Keys()); !maps.Equal(got, map[string]float64{"acc": 5, "new": 6}) || tab.Len() != 4 {
		t.Fatalf("merged: %v, table %v", got, tab.Keys())
	}
}

func TestTableBounded(t *testing.T) {
	var tab Table
	for i := 0; tab.Len() < limits.MaxBatchKeys; i++ {
		vals := map[string]float64{}
		for j := range limits.MaxBatchKeys / 16 {
			vals[fmt.Sprintf("k%d-%d", i, j)] = 1
		}
		if !tab.Flatten(pointRec(vals).GetPoint()) {
			t.Fatalf("refused at %d names", tab.Len())
		}
	}
	if tab.Len() != limits.MaxBatchKeys {
		t.Fatalf("table has %d names", tab.Len())
	}
	// Known names still fit; one new one does not.
	if !tab.Flatten(pointRec(map[string]float64{"k0-0": 2}).GetPoint()) {
		t.Fatal("a point of known names was refused")
	}
	r := pointRec(map[string]float64{"one-more": 1, "k0-0": 2})
	if tab.Flatten(r.GetPoint()) {
		t.Fatal("a point past the key limit was flattened")
	}
	if r.GetPoint().Values == nil || len(r.GetPoint().KeyIdx) != 0 {
		t.Fatal("a refused point was changed")
	}
	if tab.Merge([]string{"x"}, nil) || tab.Len() != limits.MaxBatchKeys {
		t.Fatal("merge went past the limit")
	}
}

func TestMergeKeepsBadIndexesOutOfRange(t *testing.T) {
	tab := NewTable([]string{"a"})
	r := &gantrypb.Record{Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{KeyIdx: []uint32{0, 7}, Vals: []float64{1, 2}}}}
	if !tab.Merge([]string{"b"}, []*gantrypb.Record{r}) {
		t.Fatal("refused")
	}
	if idx := r.GetPoint().KeyIdx; idx[0] != 1 || int(idx[1]) < tab.Len() {
		t.Fatalf("indexes %v with table %v", idx, tab.Keys())
	}
}

func TestNamedFlattens(t *testing.T) {
	var tab Table
	tab.Flatten(pointRec(map[string]float64{"lr": 1}).GetPoint())
	p := Named([]string{"loss", "lr"}, []float64{0.5, 2})
	if got := Values(p, nil); !maps.Equal(got, map[string]float64{"loss": 0.5, "lr": 2}) {
		t.Fatalf("named values %v", got)
	}
	if !tab.Flatten(p) || p.Names != nil || len(p.KeyIdx) != 2 {
		t.Fatalf("flatten: %v", p)
	}
	if got := Values(p, tab.Keys()); !maps.Equal(got, map[string]float64{"loss": 0.5, "lr": 2}) || tab.Len() != 2 {
		t.Fatalf("flat values %v, table %v", got, tab.Keys())
	}
}
