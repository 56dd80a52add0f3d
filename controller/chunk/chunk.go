// Package chunk is the stored form of a run of one job's metric points: a
// chunk holds consecutive points column by column (seq, step, ts, and one
// column per metric key), with metric names interned as small integer ids
// by the caller.
//
// The layout is chosen for three jobs:
//
//   - Appending is cheap and never re-encodes what is there: every column
//     is a byte stream that only grows, and the header keeps the state an
//     append needs (each column's last row and value), so adding a point
//     appends a few bytes to some streams and rewrites the small header.
//     The bytes a chunk ends with depend only on the points appended, not
//     on how the appends were grouped, so every voter writes the same.
//   - Charts read summaries, not points: the header has, per column, the
//     count, minimum, maximum and last value with the seq, step and ts of
//     its first and last point, so a downsampled read folds a whole chunk
//     without decoding its streams.
//   - It is small: seqs and steps are varint deltas, timestamps are
//     varint deltas of their IEEE-754 bits (exact, and a few bytes for a
//     steady cadence), and values are XORed with the column's previous
//     value and stored without their zero bytes (Gorilla's idea, byte
//     aligned), so a constant costs one byte and a smooth series a few.
//
// Every float is stored bit for bit, so what is read back is exactly what
// was appended. Decode checks every length and count and returns an error
// on damage; nothing in this package panics on its input.
package chunk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// Cut policy: a chunk is closed when either limit is reached, so the open
// chunk that every append rewrites stays a few pages.
const (
	// MaxPoints is the most points one chunk holds.
	MaxPoints = 1024
	// TargetBytes is the encoded size past which a chunk takes no more
	// points.
	TargetBytes = 16 << 10
	// MaxColumns bounds the metric columns of a chunk (a job's distinct
	// keys are capped lower, at limits.MaxKeysPerJob).
	MaxColumns = 4096
)

const version = 1

// ErrCorrupt means bytes do not decode as a chunk.
var ErrCorrupt = errors.New("chunk: corrupt")

// Point is one metric point with its keys interned: Keys[i] is the id of
// the metric whose value is Vals[i]. Keys must be distinct.
type Point struct {
	Seq     uint64
	Step    int64
	HasStep bool
	Ts      float64
	Keys    []uint32
	Vals    []float64
}

// Summary describes one metric column of a chunk: how many points have
// the metric, its minimum, maximum and last value, and where its first and
// last point sit.
type Summary struct {
	Key               uint32
	Count             int
	FirstSeq, LastSeq uint64
	// LastStep and LastTs are those of the column's last point.
	LastStep    int64
	LastHasStep bool
	LastTs      float64
	Min, Max    float64
	Last        float64
}

type column struct {
	Summary
	lastRow  int
	lastBits uint64
	data     []byte
}

// Chunk is a chunk being read or appended to.
type Chunk struct {
	n           int
	firstSeq    uint64
	lastSeq     uint64
	lastStep    int64
	lastHasStep bool
	lastTsBits  uint64
	seqs        []byte
	steps       []byte
	tss         []byte
	cols        []column
	// colIdx finds a column by key id; nil until the first Append.
	colIdx map[uint32]int
	// lens is scratch for decoding the stream lengths.
	lens []uint64
}

// New returns an empty chunk.
func New() *Chunk { return &Chunk{} }

// Reset empties the chunk for reuse, keeping the memory of its streams so
// that the next points of a job with the same metrics allocate nothing.
func (c *Chunk) Reset() {
	cols := c.cols
	for i := range cols {
		cols[i] = column{data: cols[i].data[:0]}
	}
	*c = Chunk{seqs: c.seqs[:0], steps: c.steps[:0], tss: c.tss[:0], cols: cols[:0], lens: c.lens[:0], colIdx: c.colIdx}
	clear(c.colIdx)
}

// Len is the number of points.
func (c *Chunk) Len() int { return c.n }

// FirstSeq and LastSeq bound the chunk's seqs (0 when empty).
func (c *Chunk) FirstSeq() uint64 { return c.firstSeq }

// LastSeq is the seq of the last point appended.
func (c *Chunk) LastSeq() uint64 { return c.lastSeq }

// LastTs is the timestamp of the last point appended (0 when empty).
func (c *Chunk) LastTs() float64 { return math.Float64frombits(c.lastTsBits) }

// Full reports whether the chunk takes no more points.
func (c *Chunk) Full() bool { return c.n >= MaxPoints || c.Size() >= TargetBytes }

// Size is the encoded size in bytes.
func (c *Chunk) Size() int {
	s := 64 + len(c.seqs) + len(c.steps) + len(c.tss)
	for i := range c.cols {
		s += 48 + len(c.cols[i].data)
	}
	return s
}

// EachSummary calls fn with the summary of every column, in the order the
// columns first appeared, without copying them; fn must not keep s.
func (c *Chunk) EachSummary(fn func(s *Summary)) {
	for i := range c.cols {
		fn(&c.cols[i].Summary)
	}
}

// Summaries returns the summary of every column, in the order the columns
// first appeared.
func (c *Chunk) Summaries() []Summary {
	out := make([]Summary, len(c.cols))
	for i := range c.cols {
		out[i] = c.cols[i].Summary
	}
	return out
}

// Append adds a point. Its seq must be above the last one, and its keys
// distinct; a chunk that is Full takes no more.
func (c *Chunk) Append(p Point) error {
	switch {
	case c.n > 0 && p.Seq <= c.lastSeq:
		return fmt.Errorf("chunk: append seq %d after %d", p.Seq, c.lastSeq)
	case c.n >= MaxPoints:
		return fmt.Errorf("chunk: full (%d points)", c.n)
	case len(p.Keys) != len(p.Vals):
		return fmt.Errorf("chunk: %d keys for %d values", len(p.Keys), len(p.Vals))
	}
	if c.colIdx == nil {
		// Built on the first append: readers of a chunk never need it.
		c.colIdx = make(map[uint32]int, len(c.cols))
		for i := range c.cols {
			c.colIdx[c.cols[i].Key] = i
		}
	}
	for _, k := range p.Keys {
		if _, ok := c.colIdx[k]; !ok && len(c.cols) >= MaxColumns {
			return fmt.Errorf("chunk: more than %d columns", MaxColumns)
		}
	}
	row := c.n
	if row == 0 {
		c.firstSeq = p.Seq
		c.lastSeq = p.Seq
	}
	c.seqs = binary.AppendUvarint(c.seqs, p.Seq-c.lastSeq)
	c.lastSeq = p.Seq
	c.steps = appendStep(c.steps, p.HasStep, p.Step, c.lastStepValue())
	if p.HasStep {
		c.lastStep, c.lastHasStep = p.Step, true
	} else {
		c.lastHasStep = false
	}
	tsBits := math.Float64bits(p.Ts)
	c.tss = binary.AppendUvarint(c.tss, zigzag(int64(tsBits-c.lastTsBits)))
	c.lastTsBits = tsBits
	c.n++
	for i, k := range p.Keys {
		// A job logs the same metrics line after line, so column i is
		// most often metric i: try that before the map.
		ci, ok := i, i < len(c.cols) && c.cols[i].Key == k
		if !ok {
			ci, ok = c.colIdx[k]
		}
		if !ok {
			ci = len(c.cols)
			var data []byte
			if ci < cap(c.cols) {
				data = c.cols[:ci+1][ci].data[:0] // memory a Reset kept
			}
			c.cols = append(c.cols, column{Summary: Summary{Key: k, FirstSeq: p.Seq,
				Min: math.Inf(1), Max: math.Inf(-1)}, lastRow: -1, data: data})
			c.colIdx[k] = ci
		}
		col := &c.cols[ci]
		if col.lastRow == row {
			return fmt.Errorf("chunk: key %d twice in point %d", k, p.Seq)
		}
		v := p.Vals[i]
		vb := math.Float64bits(v)
		col.data = binary.AppendUvarint(col.data, uint64(row-col.lastRow-1))
		col.data = appendXOR(col.data, vb^col.lastBits)
		col.lastRow, col.lastBits = row, vb
		col.Count++
		col.LastSeq, col.LastStep, col.LastHasStep, col.LastTs, col.Last = p.Seq, p.Step, p.HasStep, p.Ts, v
		col.Min, col.Max = math.Min(col.Min, v), math.Max(col.Max, v)
	}
	return nil
}

// lastStepValue is the step the next present step is a delta from: the
// last present one in the chunk (0 at first).
func (c *Chunk) lastStepValue() int64 {
	// Steps are deltas from the last present step, so a point without a
	// step does not break the chain; lastStep keeps that value even while
	// lastHasStep is false.
	return c.lastStep
}

// Points decodes the chunk's points in seq order and calls fn with each;
// Keys and Vals are reused between calls. fn returning false stops.
func (c *Chunk) Points(fn func(Point) bool) error { return c.PointsOf(nil, fn) }

// PointsOf is Points with only the metrics keep accepts (every one when
// keep is nil): the other columns are not decoded at all.
func (c *Chunk) PointsOf(keep func(key uint32) bool, fn func(Point) bool) error {
	type cursor struct {
		data    []byte
		row     int
		bits    uint64
		key     uint32
		pending bool
		val     float64
	}
	curs := make([]cursor, 0, len(c.cols))
	for i := range c.cols {
		if keep == nil || keep(c.cols[i].Key) {
			curs = append(curs, cursor{data: c.cols[i].data, row: -1, key: c.cols[i].Key})
		}
	}
	next := func(cu *cursor) error {
		if len(cu.data) == 0 {
			cu.pending = false
			return nil
		}
		gap, n := binary.Uvarint(cu.data)
		if n <= 0 || gap > uint64(c.n) {
			return fmt.Errorf("%w: column %d row gap", ErrCorrupt, cu.key)
		}
		cu.data = cu.data[n:]
		x, rest, err := readXOR(cu.data)
		if err != nil {
			return fmt.Errorf("%w: column %d: %v", ErrCorrupt, cu.key, err)
		}
		cu.data = rest
		cu.row += int(gap) + 1
		cu.bits ^= x
		cu.val = math.Float64frombits(cu.bits)
		cu.pending = true
		return nil
	}
	for i := range curs {
		if err := next(&curs[i]); err != nil {
			return err
		}
	}
	seqs, steps, tss := c.seqs, c.steps, c.tss
	seq, step, tsBits := c.firstSeq, int64(0), uint64(0)
	p := Point{}
	for row := 0; row < c.n; row++ {
		d, n := binary.Uvarint(seqs)
		if n <= 0 {
			return fmt.Errorf("%w: seq stream ends at row %d", ErrCorrupt, row)
		}
		seqs = seqs[n:]
		seq += d
		has, st, rest, err := readStep(steps, step)
		if err != nil {
			return fmt.Errorf("%w: step stream at row %d: %v", ErrCorrupt, row, err)
		}
		steps = rest
		if has {
			step = st
		}
		z, n := binary.Uvarint(tss)
		if n <= 0 {
			return fmt.Errorf("%w: ts stream ends at row %d", ErrCorrupt, row)
		}
		tss = tss[n:]
		tsBits += uint64(unzigzag(z))
		p.Seq, p.Step, p.HasStep, p.Ts = seq, st, has, math.Float64frombits(tsBits)
		if !has {
			p.Step = 0
		}
		p.Keys, p.Vals = p.Keys[:0], p.Vals[:0]
		for i := range curs {
			cu := &curs[i]
			if !cu.pending || cu.row != row {
				if cu.pending && cu.row < row {
					return fmt.Errorf("%w: column %d out of step", ErrCorrupt, cu.key)
				}
				continue
			}
			p.Keys = append(p.Keys, cu.key)
			p.Vals = append(p.Vals, cu.val)
			if err := next(cu); err != nil {
				return err
			}
		}
		if !fn(p) {
			return nil
		}
	}
	for i := range curs {
		if curs[i].pending {
			return fmt.Errorf("%w: column %d has values past the last row", ErrCorrupt, curs[i].key)
		}
	}
	return nil
}

// Encode returns the chunk's bytes.
func (c *Chunk) Encode() []byte {
	b := make([]byte, 0, c.Size())
	b = append(b, version)
	b = binary.AppendUvarint(b, uint64(c.n))
	b = binary.AppendUvarint(b, c.firstSeq)
	b = binary.AppendUvarint(b, c.lastSeq-c.firstSeq)
	b = appendBool(b, c.lastHasStep)
	b = binary.AppendUvarint(b, zigzag(c.lastStep))
	b = binary.AppendUvarint(b, c.lastTsBits)
	b = binary.AppendUvarint(b, uint64(len(c.seqs)))
	b = binary.AppendUvarint(b, uint64(len(c.steps)))
	b = binary.AppendUvarint(b, uint64(len(c.tss)))
	b = binary.AppendUvarint(b, uint64(len(c.cols)))
	for i := range c.cols {
		col := &c.cols[i]
		b = binary.AppendUvarint(b, uint64(col.Key))
		b = binary.AppendUvarint(b, uint64(col.Count))
		b = binary.AppendUvarint(b, uint64(col.lastRow))
		b = binary.AppendUvarint(b, col.FirstSeq-c.firstSeq)
		b = binary.AppendUvarint(b, col.LastSeq-c.firstSeq)
		b = appendBool(b, col.LastHasStep)
		b = binary.AppendUvarint(b, zigzag(col.LastStep))
		b = binary.AppendUvarint(b, math.Float64bits(col.LastTs))
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(col.Min))
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(col.Max))
		b = binary.LittleEndian.AppendUint64(b, col.lastBits)
		b = binary.AppendUvarint(b, uint64(len(col.data)))
	}
	b = append(b, c.seqs...)
	b = append(b, c.steps...)
	b = append(b, c.tss...)
	for i := range c.cols {
		b = append(b, c.cols[i].data...)
	}
	return b
}

// Decode parses a chunk. The result shares no memory with b, so it may be
// kept after a store transaction ends and appended to. Only headers are
// needed for Summaries; Decode still checks every length.
func Decode(b []byte) (*Chunk, error) {
	c := &Chunk{}
	if err := c.decode(b, true); err != nil {
		return nil, err
	}
	if err := c.checkRows(); err != nil {
		return nil, err
	}
	if err := c.checkColumns(); err != nil {
		return nil, err
	}
	return c, nil
}

// Header parses a chunk for reading, checking its header but not walking
// its streams, and keeps references into b: the chunk must not outlive b
// (a store transaction), and Points reports damage in the streams.
func Header(b []byte) (*Chunk, error) {
	c := &Chunk{}
	if err := c.decode(b, false); err != nil {
		return nil, err
	}
	return c, nil
}

// Reader parses chunk after chunk into the same memory, for walks over
// many chunks. The chunk it returns is valid until the next call.
type Reader struct{ c Chunk }

// Header is Header(b) into the Reader's chunk.
func (r *Reader) Header(b []byte) (*Chunk, error) {
	if err := r.c.decode(b, false); err != nil {
		return nil, err
	}
	return &r.c, nil
}

func (c *Chunk) decode(b []byte, copyStreams bool) error {
	cols, lens := c.cols[:0], c.lens[:0]
	*c = Chunk{}
	r := reader{b: b}
	if v := r.byte(); v != version {
		if r.err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, r.err)
		}
		return fmt.Errorf("%w: version %d", ErrCorrupt, v)
	}
	n := r.uvarint()
	if n == 0 || n > MaxPoints {
		return fmt.Errorf("%w: %d points", ErrCorrupt, n)
	}
	c.n = int(n)
	c.firstSeq = r.uvarint()
	c.lastSeq = c.firstSeq + r.uvarint()
	c.lastHasStep = r.bool()
	c.lastStep = unzigzag(r.uvarint())
	c.lastTsBits = r.uvarint()
	lseq, lstep, lts := r.uvarint(), r.uvarint(), r.uvarint()
	ncols := r.uvarint()
	if r.err != nil {
		return fmt.Errorf("%w: header: %v", ErrCorrupt, r.err)
	}
	if ncols > MaxColumns || c.lastSeq < c.firstSeq {
		return fmt.Errorf("%w: %d columns, seqs %d..%d", ErrCorrupt, ncols, c.firstSeq, c.lastSeq)
	}
	if uint64(cap(cols)) < ncols {
		cols = make([]column, ncols)
	}
	c.cols = cols[:ncols]
	if uint64(cap(lens)) < ncols {
		lens = make([]uint64, ncols)
	}
	c.lens = lens[:ncols]
	var seen [4]uint64 // a bitmap of the first 256 key ids, to refuse a column twice without a map
	for i := range c.cols {
		col := &c.cols[i]
		*col = column{}
		key := r.uvarint()
		col.Key = uint32(key)
		col.Count = int(min(r.uvarint(), MaxPoints+1))
		lastRow := r.uvarint()
		col.FirstSeq = c.firstSeq + r.uvarint()
		col.LastSeq = c.firstSeq + r.uvarint()
		col.LastHasStep = r.bool()
		col.LastStep = unzigzag(r.uvarint())
		col.LastTs = math.Float64frombits(r.uvarint())
		col.Min = math.Float64frombits(r.u64())
		col.Max = math.Float64frombits(r.u64())
		col.lastBits = r.u64()
		col.Last = math.Float64frombits(col.lastBits)
		dataLen := r.uvarint()
		if r.err != nil {
			return fmt.Errorf("%w: column %d: %v", ErrCorrupt, i, r.err)
		}
		if key > math.MaxUint32 || col.Count < 1 || col.Count > c.n || lastRow >= n ||
			col.FirstSeq > col.LastSeq || col.LastSeq > c.lastSeq || dataLen > uint64(len(b)) {
			return fmt.Errorf("%w: column %d header", ErrCorrupt, i)
		}
		if key < 256 {
			if seen[key/64]&(1<<(key%64)) != 0 {
				return fmt.Errorf("%w: column %d twice", ErrCorrupt, key)
			}
			seen[key/64] |= 1 << (key % 64)
		}
		col.lastRow = int(lastRow)
		c.lens[i] = dataLen
	}
	if ncols > 0 && c.colsBeyond256() {
		// Rare (a job with more than 256 metric names): check with a map.
		ids := make(map[uint32]bool, ncols)
		for i := range c.cols {
			if ids[c.cols[i].Key] {
				return fmt.Errorf("%w: column %d twice", ErrCorrupt, c.cols[i].Key)
			}
			ids[c.cols[i].Key] = true
		}
	}
	take := func(l uint64) []byte {
		s := r.take(l)
		if copyStreams && s != nil {
			// Room to grow: a decoded chunk is decoded to be appended to.
			s = append(make([]byte, 0, len(s)+len(s)/4+16), s...)
		}
		return s
	}
	c.seqs, c.steps, c.tss = take(lseq), take(lstep), take(lts)
	for i := range c.cols {
		c.cols[i].data = take(c.lens[i])
	}
	if r.err != nil {
		return fmt.Errorf("%w: streams: %v", ErrCorrupt, r.err)
	}
	if len(r.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(r.b))
	}
	return nil
}

func (c *Chunk) colsBeyond256() bool {
	for i := range c.cols {
		if c.cols[i].Key >= 256 {
			return true
		}
	}
	return false
}

// checkRows walks the seq, step and ts streams through every row and
// checks them against the header: each used up exactly, seqs rising from
// the first to the last, and the last step and ts the header's (the next
// append continues from them).
func (c *Chunk) checkRows() error {
	seqs, steps, tss := c.seqs, c.steps, c.tss
	seq, step, hasStep, tsBits := c.firstSeq, int64(0), false, uint64(0)
	for row := 0; row < c.n; row++ {
		d, n := binary.Uvarint(seqs)
		if n <= 0 || (row == 0) != (d == 0) || d > c.lastSeq-seq {
			return fmt.Errorf("%w: seq stream at row %d", ErrCorrupt, row)
		}
		seqs, seq = seqs[n:], seq+d
		has, st, rest, err := readStep(steps, step)
		if err != nil {
			return fmt.Errorf("%w: step stream at row %d: %v", ErrCorrupt, row, err)
		}
		steps, hasStep = rest, has
		if has {
			step = st
		}
		z, n := binary.Uvarint(tss)
		if n <= 0 {
			return fmt.Errorf("%w: ts stream at row %d", ErrCorrupt, row)
		}
		tss, tsBits = tss[n:], tsBits+uint64(unzigzag(z))
	}
	if len(seqs)+len(steps)+len(tss) != 0 || seq != c.lastSeq || hasStep != c.lastHasStep || step != c.lastStep || tsBits != c.lastTsBits {
		return fmt.Errorf("%w: seq, step and ts streams disagree with the header", ErrCorrupt)
	}
	return nil
}

// checkColumns walks every column stream to its end and checks it against
// the header: the count, the last row and the last value.
func (c *Chunk) checkColumns() error {
	for i := range c.cols {
		col := &c.cols[i]
		data, row, bits, count := col.data, -1, uint64(0), 0
		for len(data) > 0 {
			gap, n := binary.Uvarint(data)
			if n <= 0 || gap >= uint64(c.n) {
				return fmt.Errorf("%w: column %d row gap", ErrCorrupt, col.Key)
			}
			data = data[n:]
			x, rest, err := readXOR(data)
			if err != nil {
				return fmt.Errorf("%w: column %d: %v", ErrCorrupt, col.Key, err)
			}
			data = rest
			row += int(gap) + 1
			bits ^= x
			count++
		}
		if count != col.Count || row != col.lastRow || bits != col.lastBits {
			return fmt.Errorf("%w: column %d has %d values to row %d, header says %d to row %d",
				ErrCorrupt, col.Key, count, row, col.Count, col.lastRow)
		}
	}
	return nil
}

// appendXOR stores x (a value XOR the previous one) without its leading
// and trailing zero bytes: a header byte, then the bytes between. Zero
// (an unchanged value) is the single byte 0.
func appendXOR(b []byte, x uint64) []byte {
	if x == 0 {
		return append(b, 0)
	}
	lead := min(bits.LeadingZeros64(x)/8, 7)
	trail := bits.TrailingZeros64(x) / 8
	if lead+trail > 7 {
		trail = 7 - lead
	}
	b = append(b, byte(0x80|lead<<3|trail))
	for i := 7 - lead; i >= trail; i-- {
		b = append(b, byte(x>>(8*i)))
	}
	return b
}

func readXOR(b []byte) (uint64, []byte, error) {
	if len(b) == 0 {
		return 0, nil, errors.New("value missing")
	}
	h := b[0]
	if h == 0 {
		return 0, b[1:], nil
	}
	if h&0x80 == 0 || h&0x40 != 0 {
		return 0, nil, fmt.Errorf("bad value header %#x", h)
	}
	lead, trail := int(h>>3&7), int(h&7)
	if lead+trail > 7 {
		return 0, nil, fmt.Errorf("bad value header %#x", h)
	}
	n := 8 - lead - trail
	if len(b) < 1+n {
		return 0, nil, errors.New("value truncated")
	}
	var x uint64
	for i := 0; i < n; i++ {
		x = x<<8 | uint64(b[1+i])
	}
	return x << (8 * trail), b[1+n:], nil
}

// appendStep stores a step as a delta from prev: 0 means no step; 1 is
// followed by the full zigzagged delta (never needed in practice, but it
// keeps every int64 exact); otherwise the zigzagged delta plus 2.
func appendStep(b []byte, has bool, step, prev int64) []byte {
	if !has {
		return append(b, 0)
	}
	z := zigzag(step - prev)
	if z > math.MaxUint64-2 {
		b = append(b, 1)
		return binary.AppendUvarint(b, z)
	}
	return binary.AppendUvarint(b, z+2)
}

func readStep(b []byte, prev int64) (has bool, step int64, rest []byte, err error) {
	v, n := binary.Uvarint(b)
	if n <= 0 {
		return false, 0, nil, errors.New("stream ends")
	}
	b = b[n:]
	switch v {
	case 0:
		return false, 0, b, nil
	case 1:
		z, n := binary.Uvarint(b)
		if n <= 0 {
			return false, 0, nil, errors.New("stream ends")
		}
		return true, prev + unzigzag(z), b[n:], nil
	}
	return true, prev + unzigzag(v-2), b, nil
}

func zigzag(v int64) uint64   { return uint64(v<<1) ^ uint64(v>>63) }
func unzigzag(u uint64) int64 { return int64(u>>1) ^ -int64(u&1) }

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// reader reads a chunk's header; the first error sticks and every later
// read returns zero.
type reader struct {
	b   []byte
	err error
}

func (r *reader) byte() byte {
	if r.err != nil || len(r.b) < 1 {
		r.fail("truncated")
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) bool() bool {
	switch r.byte() {
	case 0:
		return false
	case 1:
		return true
	}
	r.fail("bad flag")
	return false
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) u64() uint64 {
	if r.err != nil || len(r.b) < 8 {
		r.fail("truncated")
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) take(n uint64) []byte {
	if r.err != nil || uint64(len(r.b)) < n {
		r.fail("truncated")
		return nil
	}
	s := r.b[:n:n]
	r.b = r.b[n:]
	return s
}

func (r *reader) fail(why string) {
	if r.err == nil {
		r.err = errors.New(why)
	}
}
