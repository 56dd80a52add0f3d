package chunk

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// genPoints makes n points with the shapes a training run has: a few
// dense keys, sparse ones, points without a step, seq gaps (events share
// the seq stream), constants, spikes and odd floats.
func genPoints(r *rand.Rand, n int) []Point {
	var out []Point
	seq := uint64(r.IntN(1000))
	step := int64(r.IntN(100)) - 50
	ts := 1.7e9 + r.Float64()
	for i := 0; i < n; i++ {
		seq += 1 + uint64(r.IntN(3)/2)*uint64(r.IntN(5))
		if r.IntN(9) != 0 {
			step += int64(r.IntN(3))
		}
		ts += 0.05 + r.Float64()*0.001
		p := Point{Seq: seq, Step: step, HasStep: r.IntN(7) != 0, Ts: ts}
		if !p.HasStep {
			p.Step = 0
		}
		if r.IntN(50) == 0 {
			p.Step, p.HasStep = math.MinInt64+int64(r.IntN(2)), true // far jumps stay exact
		}
		add := func(k uint32, v float64) { p.Keys, p.Vals = append(p.Keys, k), append(p.Vals, v) }
		add(0, 2.5*math.Exp(-float64(i)/300)+r.Float64()*0.01)
		add(1, 3e-4)
		if r.IntN(10) == 0 {
			add(7, r.NormFloat64()*1e300)
		}
		if r.IntN(3) == 0 {
			add(uint32(100+r.IntN(40)), float64(r.IntN(5)))
		}
		if r.IntN(100) == 0 {
			add(2, math.Copysign(0, -1))
			add(3, math.SmallestNonzeroFloat64)
		}
		r.Shuffle(len(p.Keys), func(a, b int) {
			p.Keys[a], p.Keys[b] = p.Keys[b], p.Keys[a]
			p.Vals[a], p.Vals[b] = p.Vals[b], p.Vals[a]
		})
		out = append(out, p)
	}
	return out
}

type kv struct {
	k uint32
	v uint64
}

func sorted(p Point) []kv {
	var out []kv
	for i := range p.Keys {
		out = append(out, kv{p.Keys[i], math.Float64bits(p.Vals[i])})
	}
	slices.SortFunc(out, func(a, b kv) int { return int(a.k) - int(b.k) })
	return out
}

func readAll(t *testing.T, c *Chunk) []Point {
	t.Helper()
	var out []Point
	err := c.Points(func(p Point) bool {
		p.Keys, p.Vals = slices.Clone(p.Keys), slices.Clone(p.Vals)
		out = append(out, p)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func samePoints(t *testing.T, got, want []Point) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d points, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Seq != w.Seq || g.HasStep != w.HasStep || g.Step != w.Step || math.Float64bits(g.Ts) != math.Float64bits(w.Ts) ||
			!slices.Equal(sorted(g), sorted(w)) {
			t.Fatalf("point %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
}

// fill appends points until the chunk is full, returning those taken.
func fill(t *testing.T, c *Chunk, pts []Point) []Point {
	t.Helper()
	var took []Point
	for _, p := range pts {
		if c.Full() {
			break
		}
		if err := c.Append(p); err != nil {
			t.Fatal(err)
		}
		took = append(took, p)
	}
	return took
}

func TestRoundTripExact(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))
		pts := genPoints(r, 2000)
		c := New()
		took := fill(t, c, pts)
		if len(took) == 0 {
			t.Fatal("nothing appended")
		}
		samePoints(t, readAll(t, c), took)
		b := c.Encode()
		d, err := Decode(b)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		samePoints(t, readAll(t, d), took)
		if !bytes.Equal(d.Encode(), b) {
			t.Fatalf("seed %d: re-encoding a decoded chunk changed its bytes", seed)
		}
		h, err := Header(b)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(h.Summaries(), c.Summaries()) || h.FirstSeq() != took[0].Seq || h.LastSeq() != took[len(took)-1].Seq {
			t.Fatalf("seed %d: header summaries differ", seed)
		}
	}
}

// TestAppendAfterDecodeIsDeterministic: a chunk reopened from its bytes
// and appended to ends with the same bytes as one built in one go, so
// voters that group their applies differently store the same chunks.
func TestAppendAfterDecodeIsDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	pts := genPoints(r, 3000)
	whole := New()
	took := fill(t, whole, pts)
	parts := New()
	for i, p := range took {
		if r.IntN(5) == 0 || i%17 == 0 {
			d, err := Decode(parts.Encode())
			if err != nil && parts.Len() > 0 {
				t.Fatal(err)
			}
			if d != nil {
				parts = d
			}
		}
		if err := parts.Append(p); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(parts.Encode(), whole.Encode()) {
		t.Fatal("appending across decodes gave different bytes")
	}
}

func TestSummaries(t *testing.T) {
	c := New()
	step := func(s int64) Point { return Point{Step: s, HasStep: true} }
	p1 := step(10)
	p1.Seq, p1.Ts, p1.Keys, p1.Vals = 5, 100, []uint32{1, 2}, []float64{3, -1}
	p2 := step(11)
	p2.Seq, p2.Ts, p2.Keys, p2.Vals = 7, 101, []uint32{1}, []float64{9}
	p3 := Point{Seq: 8, Ts: 102, Keys: []uint32{1, 2}, Vals: []float64{4, -5}}
	for _, p := range []Point{p1, p2, p3} {
		if err := c.Append(p); err != nil {
			t.Fatal(err)
		}
	}
	want := []Summary{
		{Key: 1, Count: 3, FirstSeq: 5, LastSeq: 8, LastTs: 102, Min: 3, Max: 9, Last: 4},
		{Key: 2, Count: 2, FirstSeq: 5, LastSeq: 8, LastTs: 102, Min: -5, Max: -1, Last: -5},
	}
	if got := c.Summaries(); !slices.Equal(got, want) {
		t.Fatalf("summaries\n got %+v\nwant %+v", got, want)
	}
}

func TestAppendRefusals(t *testing.T) {
	c := New()
	if err := c.Append(Point{Seq: 5, Keys: []uint32{1}, Vals: []float64{1}}); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]Point{
		"same seq":       {Seq: 5},
		"lower seq":      {Seq: 4},
		"key twice":      {Seq: 6, Keys: []uint32{2, 2}, Vals: []float64{1, 2}},
		"keys vs values": {Seq: 6, Keys: []uint32{2}},
	} {
		if err := c.Append(p); err == nil {
			t.Errorf("%s: appended", name)
		}
	}
}

func TestFullCutsOnPointsAndBytes(t *testing.T) {
	c := New()
	for i := 1; !c.Full(); i++ {
		if err := c.Append(Point{Seq: uint64(i), Keys: []uint32{0}, Vals: []float64{1}}); err != nil {
			t.Fatal(err)
		}
	}
	if c.Len() != MaxPoints {
		t.Fatalf("a chunk of constants cut at %d points, want %d", c.Len(), MaxPoints)
	}
	if err := c.Append(Point{Seq: MaxPoints + 10}); err == nil {
		t.Fatal("a full chunk took a point")
	}
	r := rand.New(rand.NewPCG(1, 2))
	c = New()
	for i := 1; !c.Full(); i++ {
		p := Point{Seq: uint64(i)}
		for k := range uint32(20) {
			p.Keys, p.Vals = append(p.Keys, k), append(p.Vals, r.Float64())
		}
		if err := c.Append(p); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(c.Encode()); got < TargetBytes-1024 || got > TargetBytes+2048 {
		t.Fatalf("a chunk of random floats cut at %d bytes, want about %d", got, TargetBytes)
	}
}

func TestDecodeRefusesDamage(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	c := New()
	fill(t, c, genPoints(r, 300))
	good := c.Encode()
	cases := map[string][]byte{
		"empty":     nil,
		"version":   append([]byte{9}, good[1:]...),
		"truncated": good[:len(good)-1],
		"trailing":  append(slices.Clone(good), 0),
	}
	for name, b := range cases {
		if _, err := Decode(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
		}
	}
	// Flipping any single byte must never panic, and Decode plus Points
	// either fail or return something.
	for i := range good {
		b := slices.Clone(good)
		b[i] ^= 0x5a
		if d, err := Decode(b); err == nil {
			_ = d.Points(func(Point) bool { return true })
		}
		if h, err := Header(b); err == nil {
			_ = h.Points(func(Point) bool { return true })
		}
	}
}

func FuzzDecode(f *testing.F) {
	r := rand.New(rand.NewPCG(4, 4))
	c := New()
	fill(&testing.T{}, c, genPoints(r, 50))
	f.Add(c.Encode())
	f.Add([]byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, dec := range []func([]byte) (*Chunk, error){Decode, Header} {
			d, err := dec(b)
			if err != nil {
				continue
			}
			n := 0
			if err := d.Points(func(Point) bool { n++; return true }); err == nil && n != d.Len() {
				t.Fatalf("decoded %d points, header says %d", n, d.Len())
			}
		}
		d, err := Decode(b)
		if err != nil {
			return
		}
		// A chunk that decodes fully can be appended to and re-read.
		if !d.Full() {
			if err := d.Append(Point{Seq: d.LastSeq() + 1, Keys: []uint32{1}, Vals: []float64{2}}); err == nil {
				if _, err := Decode(d.Encode()); err != nil {
					t.Fatalf("append to a decoded chunk made bytes that do not decode: %v", err)
				}
			}
		}
	})
}

// TestResetReusesMemoryAndGivesTheSameBytes: a chunk emptied with Reset
// and filled again encodes exactly as a new one with the same points.
func TestResetReusesMemoryAndGivesTheSameBytes(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	c := New()
	fill(t, c, genPoints(r, 500))
	c.Reset()
	if c.Len() != 0 || len(c.Summaries()) != 0 {
		t.Fatalf("after Reset: %d points, %d columns", c.Len(), len(c.Summaries()))
	}
	pts := genPoints(r, 700)
	fresh := New()
	took := fill(t, fresh, pts)
	for _, p := range took {
		if err := c.Append(p); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(c.Encode(), fresh.Encode()) {
		t.Fatal("a reset chunk encodes differently from a new one")
	}
	samePoints(t, readAll(t, c), took)
}

// TestDecodeChecksRowStreams: a chunk whose seq, step or ts stream is
// damaged does not decode: Decode is what the store appends to, and Points
// would only find the damage later.
func TestDecodeChecksRowStreams(t *testing.T) {
	c := New()
	for s := uint64(1); s <= 3; s++ {
		if err := c.Append(Point{Seq: s, Step: int64(s), HasStep: true, Ts: float64(s), Keys: []uint32{0}, Vals: []float64{float64(s)}}); err != nil {
			t.Fatal(err)
		}
	}
	good := c.Encode()
	streams := len(good) - len(c.cols[0].data) - len(c.tss) - len(c.steps) - len(c.seqs)
	for name, at := range map[string]int{
		"seq":  streams + len(c.seqs) - 1,
		"step": streams + len(c.seqs) + len(c.steps) - 1,
		"ts":   streams + len(c.seqs) + len(c.steps) + len(c.tss) - 1,
	} {
		b := slices.Clone(good)
		b[at] ^= 0x01 // the last delta of the stream changes
		if _, err := Decode(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s stream damaged: Decode err = %v, want ErrCorrupt", name, err)
		}
		b = slices.Clone(good)
		b[at] |= 0x80 // the last varint runs on
		if _, err := Decode(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s stream cut: Decode err = %v, want ErrCorrupt", name, err)
		}
	}
}
