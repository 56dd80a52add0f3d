// Package flat turns metric points into the flat form the link and Raft
// entries carry: instead of a map of names to values, a point holds packed
// indexes into its batch's key table and packed values, so the metric
// names of a batch are sent, decoded and checked once, not once per point.
package flat

import (
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// Table is the key table of one batch (RecordBatch.keys, IngestCmd.keys)
// being built.
type Table struct {
	keys []string
	idx  map[string]uint32
}

// NewTable returns a table holding keys, as a received batch lists them.
func NewTable(keys []string) *Table {
	t := &Table{keys: append([]string(nil), keys...), idx: make(map[string]uint32, len(keys))}
	for i, k := range keys {
		t.idx[k] = uint32(i)
	}
	return t
}

// Keys is the table, in index order.
func (t *Table) Keys() []string { return t.keys }

// Len is the number of names in the table.
func (t *Table) Len() int { return len(t.keys) }

// room reports whether the table can take the names of names that it does
// not hold yet without going past limits.MaxBatchKeys.
func (t *Table) room(names func(yield func(string) bool)) bool {
	fresh := 0
	for k := range names {
		if _, ok := t.idx[k]; !ok {
			fresh++
		}
	}
	return len(t.keys)+fresh <= limits.MaxBatchKeys
}

// Intern returns the index of k, adding it. Unlike Flatten and Merge it
// does not stop at limits.MaxBatchKeys: it is for tables that never go on
// the wire.
func (t *Table) Intern(k string) uint32 {
	if i, ok := t.idx[k]; ok {
		return i
	}
	if t.idx == nil {
		t.idx = map[string]uint32{}
	}
	i := uint32(len(t.keys))
	t.keys = append(t.keys, k)
	t.idx[k] = i
	return i
}

// Flatten rewrites a point in the named form (names, vals) or the map
// form into the flat form indexing the table. It reports false, leaving
// the point as it was, when the table would go past limits.MaxBatchKeys
// (the caller starts a new batch). A point already flat is left alone: it
// belongs to another table (see Merge).
func (t *Table) Flatten(p *gantrypb.MetricPoint) bool {
	if len(p.KeyIdx) > 0 {
		return true
	}
	if len(p.Names) > 0 {
		if !t.room(func(yield func(string) bool) {
			for _, k := range p.Names {
				if !yield(k) {
					return
				}
			}
		}) {
			return false
		}
		p.KeyIdx = make([]uint32, len(p.Names))
		for i, k := range p.Names {
			p.KeyIdx[i] = t.Intern(k)
		}
		p.Names = nil
		return true
	}
	if len(p.Values) == 0 {
		return true
	}
	if !t.room(func(yield func(string) bool) {
		for k := range p.Values {
			if !yield(k) {
				return
			}
		}
	}) {
		return false
	}
	p.KeyIdx = make([]uint32, 0, len(p.Values))
	p.Vals = make([]float64, 0, len(p.Values))
	for k, v := range p.Values {
		p.KeyIdx = append(p.KeyIdx, t.Intern(k))
		p.Vals = append(p.Vals, v)
	}
	p.Values = nil
	return true
}

// Merge re-indexes the flat points of recs, which index keys (another
// batch's table), into this table, and reports false, changing nothing,
// when the union would go past limits.MaxBatchKeys. An index past keys is
// left as it is, out of range of this table too, for the checks that
// follow to refuse the point.
func (t *Table) Merge(keys []string, recs []*gantrypb.Record) bool {
	if !t.room(func(yield func(string) bool) {
		for _, k := range keys {
			if !yield(k) {
				return
			}
		}
	}) {
		return false
	}
	tr := make([]uint32, len(keys))
	for i, k := range keys {
		tr[i] = t.Intern(k)
	}
	for _, r := range recs {
		p := r.GetPoint()
		if p == nil {
			continue
		}
		for i, k := range p.KeyIdx {
			if int(k) < len(tr) {
				p.KeyIdx[i] = tr[k]
			} else {
				p.KeyIdx[i] = limits.MaxBatchKeys // stays out of range
			}
		}
	}
	return true
}

// Named returns a point in the named form: names[i] names vals[i]. It is
// what the agent spools.
func Named(names []string, vals []float64) *gantrypb.MetricPoint {
	return &gantrypb.MetricPoint{Names: names, Vals: vals}
}

// Values returns a point's metrics as a map: a flat point's names come
// from keys, a named point's from itself, a map point's map is its own.
// An index past keys is skipped.
func Values(p *gantrypb.MetricPoint, keys []string) map[string]float64 {
	if len(p.Names) > 0 {
		out := make(map[string]float64, len(p.Names))
		for i, k := range p.Names {
			if i < len(p.Vals) {
				out[k] = p.Vals[i]
			}
		}
		return out
	}
	if len(p.KeyIdx) == 0 {
		return p.Values
	}
	out := make(map[string]float64, len(p.KeyIdx))
	for i, k := range p.KeyIdx {
		if int(k) < len(keys) && i < len(p.Vals) {
			out[keys[k]] = p.Vals[i]
		}
	}
	return out
}
