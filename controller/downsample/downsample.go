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

// bucket is a Bucket being folded; its step is a value, so folding
// allocates nothing.
type bucket struct {
	firstSeq, lastSeq uint64
	step              int64
	hasStep           bool
	ts                float64
	min, max, last    float64
	n                 int
}

// Series accumulates points into buckets.
type Series struct {
	lastSeq uint64
	width   uint64
	keys    map[string]bool // nil: every key
	out     map[string][]bucket
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
	s := &Series{lastSeq: lastSeq, width: max(w, 1), out: map[string][]bucket{}}
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

// Wants reports whether key is charted.
func (s *Series) Wants(key string) bool { return s.keys == nil || s.keys[key] }

// Add folds in one point. Points past the last seq given to New (written
// while the series was being read) are ignored; points must come in seq
// order.
func (s *Series) Add(p *gantrypb.MetricPoint) {
	if !s.AddPoint(p.Seq) {
		return
	}
	for k, v := range p.Values {
		s.AddValue(k, p.Seq, p.GetStep(), p.Step != nil, p.Ts, v)
	}
}

// AddPoint counts a point about to be folded value by value (AddValue),
// and reports whether it is in range (false: skip its values).
func (s *Series) AddPoint(seq uint64) bool {
	if seq == 0 || seq > s.lastSeq {
		return false
	}
	s.points++
	return true
}

// AddValue folds in one metric value of a point AddPoint accepted.
func (s *Series) AddValue(key string, seq uint64, step int64, hasStep bool, ts, v float64) {
	if s.keys != nil && !s.keys[key] {
		return
	}
	s.fold(key, bucket{firstSeq: seq, lastSeq: seq, step: step, hasStep: hasStep, ts: ts, min: v, max: v, last: v, n: 1})
}

// fold merges in into key's last bucket if they share a bucket, else
// starts a new one. in must come after everything folded so far.
func (s *Series) fold(key string, in bucket) {
	idx := (in.firstSeq - 1) / s.width
	bs := s.out[key]
	if k := len(bs); k > 0 && (bs[k-1].firstSeq-1)/s.width == idx {
		b := &bs[k-1]
		b.lastSeq, b.step, b.hasStep, b.ts, b.last = in.lastSeq, in.step, in.hasStep, in.ts, in.last
		b.min, b.max = math.Min(b.min, in.min), math.Max(b.max, in.max)
		b.n += in.n
		return
	}
	s.out[key] = append(bs, in)
}

// Fits reports whether the seqs first..last all fall in one bucket, so
// that a summary of them can be folded in whole (AddSummary).
func (s *Series) Fits(first, last uint64) bool {
	return first > 0 && first <= last && last <= s.lastSeq && (first-1)/s.width == (last-1)/s.width
}

// AddPoints counts n points whose values come as summaries (AddSummary).
func (s *Series) AddPoints(n int) { s.points += uint64(n) }

// AddSummary folds in one key's values over a range of seqs that Fits,
// already folded (a stored chunk's column summary): the same buckets as
// adding the values one by one, without decoding them. lastStep and
// lastTs are the range's last value's.
func (s *Series) AddSummary(key string, firstSeq, lastSeq uint64, n int, lastStep int64, hasStep bool, lastTs, min, max, last float64) {
	if s.keys != nil && !s.keys[key] {
		return
	}
	s.fold(key, bucket{firstSeq: firstSeq, lastSeq: lastSeq, step: lastStep, hasStep: hasStep, ts: lastTs,
		min: min, max: max, last: last, n: n})
}

// Result returns the buckets per key, in seq order.
func (s *Series) Result() map[string][]Bucket {
	out := make(map[string][]Bucket, len(s.out))
	for k, bs := range s.out {
		conv := make([]Bucket, len(bs))
		for i, b := range bs {
			conv[i] = Bucket{FirstSeq: b.firstSeq, LastSeq: b.lastSeq, TS: b.ts, Min: b.min, Max: b.max, Last: b.last, N: b.n}
			if b.hasStep {
				st := b.step
				conv[i].Step = &st
			}
		}
		out[k] = conv
	}
	return out
}
