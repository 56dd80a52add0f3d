// Package downsample summarizes a job's metric points for charts: a run of
// millions of points becomes at most N buckets per metric that still
// cover the whole run. Each bucket keeps the minimum, the maximum and the
// last value of its points, so a spike survives however far the chart is
// zoomed out (a plain average or every k-th point would hide it).
//
// Buckets are fixed ranges of seqs: seqs are dense per job, so bucket i of
// a run whose last seq is L holds the seqs in (i·w, (i+1)·w], w = ⌈L/N⌉.
// The same run always gives the same buckets, whatever order or pages the
// points are read in.
package downsample

import (
	"math"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Bucket summarizes one metric over a range of seqs.
type Bucket struct {
	FirstSeq, LastSeq uint64
	// Step and TS are the last point's in the bucket (the x of a chart).
	Step *int64
	TS   float64
	Min  float64
	Max  float64
	Last float64
	N    int
}

// Series accumulates points into buckets.
type Series struct {
	lastSeq uint64
	width   uint64
	keys    map[string]bool // nil: every key
	out     map[string][]Bucket
	points  uint64
}

// New returns a Series for a run whose last seq is lastSeq, with at most
// maxBuckets buckets per key, for the given keys (every key when empty).
func New(lastSeq uint64, maxBuckets int, keys []string) *Series {
	if maxBuckets < 1 {
		maxBuckets = 1
	}
	w := lastSeq / uint64(maxBuckets)
	if lastSeq%uint64(maxBuckets) != 0 {
		w++
	}
	s := &Series{lastSeq: lastSeq, width: max(w, 1), out: map[string][]Bucket{}}
	if len(keys) > 0 {
		s.keys = map[string]bool{}
		for _, k := range keys {
			s.keys[k] = true
		}
	}
	return s
}

// Width is how many seqs one bucket spans.
func (s *Series) Width() uint64 { return s.width }

// Points is how many points were added.
func (s *Series) Points() uint64 { return s.points }

// Add folds in one point. Points past the last seq given to New (written
// while the series was being read) are ignored; points must come in seq
// order.
func (s *Series) Add(p *gantrypb.MetricPoint) {
	if p.Seq == 0 || p.Seq > s.lastSeq {
		return
	}
	s.points++
	idx := (p.Seq - 1) / s.width
	for k, v := range p.Values {
		if s.keys != nil && !s.keys[k] {
			continue
		}
		bs := s.out[k]
		if n := len(bs); n > 0 && (bs[n-1].FirstSeq-1)/s.width == idx {
			b := &bs[n-1]
			b.LastSeq, b.Step, b.TS, b.Last = p.Seq, p.Step, p.Ts, v
			b.Min, b.Max = math.Min(b.Min, v), math.Max(b.Max, v)
			b.N++
			continue
		}
		s.out[k] = append(bs, Bucket{FirstSeq: p.Seq, LastSeq: p.Seq, Step: p.Step, TS: p.Ts, Min: v, Max: v, Last: v, N: 1})
	}
}

// Result returns the buckets per key, in seq order.
func (s *Series) Result() map[string][]Bucket { return s.out }
