package link

import (
	"fmt"
	"maps"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/agent/spool"
	"github.com/gantry-ml/gantry/proto/flat"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

func pointEntry(seq uint64, p *gantrypb.MetricPoint) spool.Entry {
	return spool.Entry{Index: seq, Record: &gantrypb.Record{JobId: "j", Seq: seq, Body: &gantrypb.Record_Point{Point: p}}}
}

// TestWireBatchFlat: spooled points (the named form this agent writes, the
// map form older ones wrote) go flat into one key table, other records
// as they are, and nothing spooled is changed.
func TestWireBatchFlat(t *testing.T) {
	named := flat.Named([]string{"loss", "lr"}, []float64{0.5, 3e-4})
	old := &gantrypb.MetricPoint{Values: map[string]float64{"lr": 1e-4, "acc": 0.9}}
	bad := &gantrypb.MetricPoint{Values: map[string]float64{"ok": 1, "bad\x00key": 2}}
	event := spool.Entry{Index: 4, Record: &gantrypb.Record{JobId: "j", Seq: 4, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{Kind: "x"}}}}
	entries := []spool.Entry{pointEntry(1, named), pointEntry(2, old), pointEntry(3, bad), event}
	before := make([]*gantrypb.Record, len(entries))
	for i, e := range entries {
		before[i] = proto.Clone(e.Record).(*gantrypb.Record)
	}

	b := wireBatch(7, entries, true)
	if b.BatchId != 7 || len(b.Records) != 4 || len(b.Keys) != 3 {
		t.Fatalf("batch %d with %d records, keys %v", b.BatchId, len(b.Records), b.Keys)
	}
	for i, want := range []map[string]float64{{"loss": 0.5, "lr": 3e-4}, {"lr": 1e-4, "acc": 0.9}} {
		p := b.Records[i].GetPoint()
		if len(p.KeyIdx) == 0 || p.Values != nil || p.Names != nil || !maps.Equal(flat.Values(p, b.Keys), want) {
			t.Fatalf("record %d: %v", i, p)
		}
	}
	if p := b.Records[2].GetPoint(); len(p.KeyIdx) != 0 || len(p.Values) != 2 {
		t.Fatalf("a point with a key the controller refuses went flat: %v", p)
	}
	if b.Records[3] != entries[3].Record {
		t.Fatal("an event was copied")
	}
	for i, e := range entries {
		if !proto.Equal(e.Record, before[i]) {
			t.Fatalf("spooled record %d changed: %v", i, e.Record)
		}
	}

	// An older controller gets the map form.
	b = wireBatch(8, entries, false)
	if len(b.Keys) != 0 {
		t.Fatalf("keys %v for a controller without flat points", b.Keys)
	}
	if p := b.Records[0].GetPoint(); len(p.KeyIdx) != 0 || p.Names != nil || !maps.Equal(p.Values, map[string]float64{"loss": 0.5, "lr": 3e-4}) {
		t.Fatalf("named point for an older controller: %v", p)
	}
}

// TestWireBatchTableFull: points whose names would take the batch's table
// past limits.MaxBatchKeys go in the map form.
func TestWireBatchTableFull(t *testing.T) {
	var entries []spool.Entry
	per := limits.MaxKeysPerPoint
	for i := range limits.MaxBatchKeys/per + 1 {
		names := make([]string, per)
		vals := make([]float64, per)
		for k := range names {
			names[k] = fmt.Sprintf("p%d-k%d", i, k)
		}
		entries = append(entries, pointEntry(uint64(i+1), flat.Named(names, vals)))
	}
	b := wireBatch(1, entries, true)
	if len(b.Keys) != limits.MaxBatchKeys {
		t.Fatalf("table has %d names", len(b.Keys))
	}
	last := b.Records[len(b.Records)-1].GetPoint()
	if len(last.KeyIdx) != 0 || len(last.Values) != per {
		t.Fatalf("the point past the table: %d flat, %d in a map", len(last.KeyIdx), len(last.Values))
	}
}
