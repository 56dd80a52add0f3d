package downsample

import (
	"testing"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func pt(seq uint64, vals map[string]float64) *gantrypb.MetricPoint {
	step := int64(seq * 10)
	return &gantrypb.MetricPoint{Seq: seq, Step: &step, Ts: float64(seq), Values: vals}
}

// A long run comes out as at most N buckets per key covering all of it,
// with each bucket's min, max and last exact, and a one-point spike kept.
func TestBucketsCoverTheRunAndKeepSpikes(t *testing.T) {
	const n = 100_003
	s := New(n, 1000, []string{"loss"})
	for seq := uint64(1); seq <= n; seq++ {
		v := 1 / float64(seq)
		if seq == 77_777 {
			v = 1e6 // the spike
		}
		s.Add(pt(seq, map[string]float64{"loss": v, "lr": 0.1}))
	}
	s.Add(pt(n+1, map[string]float64{"loss": -1})) // written while reading: ignored
	bs := s.Result()["loss"]
	w := s.Width()
	if want := int((n + w - 1) / w); len(bs) > 1000 || len(bs) != want {
		t.Fatalf("%d buckets of width %d, want %d and at most 1000", len(bs), w, want)
	}
	if _, ok := s.Result()["lr"]; ok {
		t.Fatal("a key that was not asked for came back")
	}
	if bs[0].FirstSeq != 1 || bs[len(bs)-1].LastSeq != n || s.Points() != n {
		t.Fatalf("buckets cover %d..%d of %d points, want 1..%d", bs[0].FirstSeq, bs[len(bs)-1].LastSeq, s.Points(), n)
	}
	var total int
	spike := false
	for i, b := range bs {
		total += b.N
		if i > 0 && b.FirstSeq != bs[i-1].LastSeq+1 {
			t.Fatalf("bucket %d starts at %d after one that ended at %d", i, b.FirstSeq, bs[i-1].LastSeq)
		}
		if b.Last != 1/float64(b.LastSeq) && b.LastSeq != 77_777 {
			t.Fatalf("bucket %d last = %v, want the value at seq %d", i, b.Last, b.LastSeq)
		}
		if b.Max == 1e6 {
			spike = true
		}
		if want := 1 / float64(b.LastSeq); b.Min != want && !(b.LastSeq == 77_777) {
			// loss falls with seq, so a bucket's min is its last point's.
			t.Fatalf("bucket %d min = %v, want %v", i, b.Min, want)
		}
		if *b.Step != int64(b.LastSeq*10) {
			t.Fatalf("bucket %d step = %d, want the last point's", i, *b.Step)
		}
	}
	if total != n || !spike {
		t.Fatalf("buckets hold %d points (want %d); spike kept: %v", total, n, spike)
	}
}

// Keys that appear only in some points get buckets only where they
// appear; a short run gets one bucket per point.
func TestSparseKeysAndShortRuns(t *testing.T) {
	s := New(5, 2000, nil)
	for seq := uint64(1); seq <= 5; seq++ {
		vals := map[string]float64{"loss": float64(seq)}
		if seq%2 == 0 {
			vals["eval"] = float64(seq * 100)
		}
		s.Add(pt(seq, vals))
	}
	if got := s.Result()["loss"]; len(got) != 5 || s.Width() != 1 {
		t.Fatalf("%d loss buckets of width %d, want 5 of 1", len(got), s.Width())
	}
	eval := s.Result()["eval"]
	if len(eval) != 2 || eval[0].LastSeq != 2 || eval[1].Last != 400 {
		t.Fatalf("eval buckets = %+v", eval)
	}
	empty := New(0, 10, nil)
	empty.Add(pt(1, map[string]float64{"x": 1}))
	if len(empty.Result()) != 0 || empty.Points() != 0 {
		t.Fatal("a run with no points has buckets")
	}
}
