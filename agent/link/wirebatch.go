package link

import (
	"github.com/gantry-ml/gantry/agent/spool"
	"github.com/gantry-ml/gantry/proto/flat"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// wireBatch builds the batch sent for spooled entries. Metric points go in
// the flat form, indexing the batch's key table, to a controller that reads
// it (HelloReply.flat_points); to an older one, and for a point the table
// has no room for, in the map form. Points are copies, so the spooled
// records keep their form: a batch sent again after a reconnect is built
// again, maybe for another controller. (A map point's copy shares its map,
// which only trimRecord changes, for a record it trims anyway.)
func wireBatch(id uint64, entries []spool.Entry, flatOK bool) *gantrypb.RecordBatch {
	batch := &gantrypb.RecordBatch{BatchId: id, Records: make([]*gantrypb.Record, len(entries))}
	var tab flat.Table
	for i, e := range entries {
		rec := e.Record
		p := rec.GetPoint()
		if p == nil || (len(p.Names) == 0 && len(p.Values) == 0) {
			batch.Records[i] = rec
			continue
		}
		cp := &gantrypb.MetricPoint{Seq: p.Seq, Step: p.Step, Ts: p.Ts, Names: p.Names, Vals: p.Vals, Values: p.Values}
		// A map point spooled by an older agent may hold a key the
		// controller refuses: in the map form only that point is
		// refused, while in the table it would take the batch down.
		if !flatOK || (len(p.Values) > 0 && !validKeys(p.Values)) || !tab.Flatten(cp) {
			cp.Values, cp.Names, cp.Vals = flat.Values(cp, nil), nil, nil
		}
		batch.Records[i] = &gantrypb.Record{JobId: rec.JobId, Seq: rec.Seq, Body: &gantrypb.Record_Point{Point: cp}}
	}
	batch.Keys = tab.Keys()
	return batch
}

func validKeys(values map[string]float64) bool {
	for k := range values {
		if !limits.ValidMetricKey(k) {
			return false
		}
	}
	return true
}
