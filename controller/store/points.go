package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/gantry-ml/gantry/controller/chunk"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Metric points are stored as chunks (controller/chunk): per job, bucket
// chunks/JOB maps a chunk's first seq (big-endian) to the chunk, and
// metrickeys/JOB lists the job's metric names in id order, so a chunk
// names its columns by small ids.
//
// New points go to the job's head chunk, its last, which lives apart in
// heads/JOB and stays small (HeadBytes): a job that logs a line at a time
// rewrites a page or so per transaction, not a whole chunk. (Apart,
// because bbolt keeps at least two values per page node, so a head stored
// beside a large chunk would rewrite that chunk with it.) A full head is
// folded into the last chunk in chunks/JOB, the body, while that has room
// (chunk.TargetBytes), and otherwise becomes the next body; so stored
// chunks end up large, which is what long reads want, while each append
// stays cheap. When a head folds depends only on the chunks' contents, so
// every voter stores the same chunks however its applies were grouped.
// A write transaction keeps the head and body it touches in memory and
// writes each once when it ends, so a batch of a thousand points rewrites
// two values, not a thousand.

// HeadBytes is the size past which a job's head chunk is folded into the
// chunk before it.
const HeadBytes = 2 << 10

// ErrStalePoint means a point's seq is not above the job's last stored
// point: the stream went backwards (the high-water marks normally drop
// such a record before it gets here).
var ErrStalePoint = errors.New("store: point seq not above the job's last point")

// MaxMetricKeysStored bounds a job's interned metric names. Admission caps
// distinct keys per job lower (limits.MaxKeysPerJob); this is the store's
// own guard on the dictionary's size.
const MaxMetricKeysStored = chunk.MaxColumns

// writeState is what a write transaction keeps in memory until it ends.
type writeState struct {
	// ptKeys and ptVals are PutIDs' scratch.
	ptKeys []uint32
	ptVals []float64
	open   map[string]*jobChunks
	keys   map[string]*keyDict
	// order is the jobs with an open chunk, in first-touch order, so
	// flushing is deterministic.
	order []string
}

// jobChunks is a job's head and body chunks within one write transaction.
type jobChunks struct {
	head, body *chunkState
	// bodyLoaded tells whether body was looked up (it may be nil: the
	// head is the job's first chunk).
	bodyLoaded bool
}

type chunkState struct {
	c     *chunk.Chunk
	dirty bool
	// stored tells whether the chunk is in bbolt under its first seq.
	stored bool
}

// keyDict is one job's interned metric names.
type keyDict struct {
	names []string
	ids   map[string]uint32
	dirty bool
}

func (d *keyDict) encode() []byte {
	var b []byte
	for _, n := range d.names {
		b = binary.AppendUvarint(b, uint64(len(n)))
		b = append(b, n...)
	}
	return b
}

func decodeKeyDict(b []byte) (*keyDict, error) {
	d := &keyDict{ids: map[string]uint32{}}
	for len(b) > 0 {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) || len(d.names) >= MaxMetricKeysStored {
			return nil, fmt.Errorf("%w: metric key dictionary", ErrCorrupt)
		}
		name := string(b[n : n+int(l)])
		b = b[n+int(l):]
		d.ids[name] = uint32(len(d.names))
		d.names = append(d.names, name)
	}
	return d, nil
}

// keyDict returns the job's dictionary (nil, nil when it has none and
// create is false).
func (t *Tx) keyDict(jobID string, create bool) (*keyDict, error) {
	if t.w != nil {
		if d, ok := t.w.keys[jobID]; ok {
			return d, nil
		}
	}
	v := t.tx.Bucket(bucketMetricKeys).Get([]byte(jobID))
	if v == nil && !create {
		return nil, nil
	}
	d, err := decodeKeyDict(v)
	if err != nil {
		return nil, fmt.Errorf("job %q: %w", jobID, err)
	}
	if t.w != nil {
		t.w.keys[jobID] = d
	}
	return d, nil
}

// Point is a metric point to store: Names[i] is the name of Vals[i], and
// no name comes twice.
type Point struct {
	Seq   uint64
	Step  *int64
	Ts    float64
	Names []string
	Vals  []float64
	// Bulk marks one of many points of the job arriving together (the
	// FSM sets it for a job with many points in one Raft entry): while
	// the head is empty, bulk points go straight into the job's last
	// chunk, so a flood is written once rather than into the head and
	// then folded. It must depend only on the entries, so that every
	// voter stores the same chunks.
	Bulk bool
}

// PutPoint appends a metric point in the map form to the job's open chunk
// (PutNamed).
func (t *Tx) PutPoint(jobID string, p *gantrypb.MetricPoint) error {
	np := Point{Seq: p.Seq, Step: p.Step, Ts: p.Ts, Names: make([]string, 0, len(p.Values)), Vals: make([]float64, 0, len(p.Values))}
	for k, v := range p.Values {
		np.Names = append(np.Names, k)
		np.Vals = append(np.Vals, v)
	}
	return t.PutNamed(jobID, np)
}

// PutNamed appends a metric point to the job's head chunk. Its seq must be
// above every stored point of the job (ErrStalePoint otherwise).
func (t *Tx) PutNamed(jobID string, p Point) error {
	if t.w == nil {
		return errors.New("store: PutPoint outside a write transaction")
	}
	if len(p.Names) != len(p.Vals) {
		return fmt.Errorf("store: point %d of %q has %d names for %d values", p.Seq, jobID, len(p.Names), len(p.Vals))
	}
	jc, err := t.jobChunks(jobID)
	if err != nil {
		return err
	}
	// Checked before the names are interned: a refused point must not
	// grow the job's dictionary.
	if last := jc.lastSeq(); last > 0 && p.Seq <= last {
		return fmt.Errorf("%w: job %q seq %d, last %d", ErrStalePoint, jobID, p.Seq, last)
	}
	ids, err := t.MetricIDs(jobID, p.Names, nil)
	if err != nil {
		return err
	}
	return t.PutIDs(jobID, p.Seq, p.Step, p.Ts, ids, p.Vals, p.Bulk)
}

// MetricIDs returns the ids of names in the job's dictionary, appended to
// ids, adding the names it does not hold yet. New names get ids in sorted
// order, never in the order a map gave them, so every voter numbers them
// alike.
func (t *Tx) MetricIDs(jobID string, names []string, ids []uint32) ([]uint32, error) {
	if t.w == nil {
		return nil, errors.New("store: MetricIDs outside a write transaction")
	}
	d, err := t.keyDict(jobID, true)
	if err != nil {
		return nil, err
	}
	var fresh []string
	for _, k := range names {
		if _, ok := d.ids[k]; !ok && !slices.Contains(fresh, k) {
			fresh = append(fresh, k)
		}
	}
	if len(fresh) > 0 {
		if len(d.names)+len(fresh) > MaxMetricKeysStored {
			return nil, fmt.Errorf("store: job %q would have more than %d metric names", jobID, MaxMetricKeysStored)
		}
		slices.Sort(fresh)
		for _, k := range fresh {
			d.ids[k] = uint32(len(d.names))
			d.names = append(d.names, k)
		}
		d.dirty = true
	}
	for _, k := range names {
		ids = append(ids, d.ids[k])
	}
	return ids, nil
}

// PutIDs appends a metric point whose metrics are named by the job's
// dictionary ids (MetricIDs): ids[i] names vals[i], each id once. bulk is
// Point.Bulk. Its seq must be above every stored point of the job.
func (t *Tx) PutIDs(jobID string, seq uint64, step *int64, ts float64, ids []uint32, vals []float64, bulk bool) error {
	if t.w == nil {
		return errors.New("store: PutIDs outside a write transaction")
	}
	if len(ids) != len(vals) {
		return fmt.Errorf("store: point %d of %q has %d ids for %d values", seq, jobID, len(ids), len(vals))
	}
	jc, err := t.jobChunks(jobID)
	if err != nil {
		return err
	}
	if last := jc.lastSeq(); last > 0 && seq <= last {
		return fmt.Errorf("%w: job %q seq %d, last %d", ErrStalePoint, jobID, seq, last)
	}
	d, err := t.keyDict(jobID, true)
	if err != nil {
		return err
	}
	// The chunk copies what it appends, so the point's slices are the
	// transaction's scratch, reused point after point.
	t.w.ptKeys = slices.Grow(t.w.ptKeys[:0], len(ids))[:len(ids)]
	t.w.ptVals = slices.Grow(t.w.ptVals[:0], len(vals))[:len(vals)]
	cp := chunk.Point{Seq: seq, Ts: ts, Keys: t.w.ptKeys, Vals: t.w.ptVals}
	if step != nil {
		cp.Step, cp.HasStep = *step, true
	}
	// Columns in id order: a chunk's bytes then depend only on the points,
	// whatever order their values came in.
	for i, id := range ids {
		if int(id) >= len(d.names) {
			return fmt.Errorf("store: point %d of %q: metric id %d is not in the job's dictionary", seq, jobID, id)
		}
		j := i
		for ; j > 0 && cp.Keys[j-1] > id; j-- {
			cp.Keys[j], cp.Vals[j] = cp.Keys[j-1], cp.Vals[j-1]
		}
		cp.Keys[j], cp.Vals[j] = id, vals[i]
	}
	head := jc.head
	if bulk && head.c.Len() == 0 {
		return t.appendBody(jobID, jc, cp)
	}
	if err := head.c.Append(cp); err != nil {
		return fmt.Errorf("store: job %q: %w", jobID, err)
	}
	head.dirty = true
	if head.c.Size() < HeadBytes && head.c.Len() < chunk.MaxPoints {
		return nil
	}
	return t.sealHead(jobID, jc)
}

// appendBody appends a bulk point to the job's last chunk, or to a new
// one when that is full.
func (t *Tx) appendBody(jobID string, jc *jobChunks, cp chunk.Point) error {
	if err := t.loadBody(jobID, jc); err != nil {
		return err
	}
	body := jc.body
	if body == nil || body.c.Full() {
		if body != nil {
			if err := t.writeBody(jobID, body); err != nil {
				return err
			}
		}
		body = &chunkState{c: chunk.New()}
		jc.body = body
	}
	if err := body.c.Append(cp); err != nil {
		return fmt.Errorf("store: job %q: %w", jobID, err)
	}
	body.dirty = true
	return nil
}

// lastSeq is the seq of the job's last stored point (0: none).
func (jc *jobChunks) lastSeq() uint64 {
	if jc.head.c.Len() > 0 {
		return jc.head.c.LastSeq()
	}
	if jc.body != nil {
		return jc.body.c.LastSeq()
	}
	return 0
}

// sealHead folds a full head into the body when the body has room, or
// else makes the head the next body; either way the job gets an empty
// head.
func (t *Tx) sealHead(jobID string, jc *jobChunks) error {
	if err := t.loadBody(jobID, jc); err != nil {
		return err
	}
	head, body := jc.head, jc.body
	if body != nil && body.c.Size() < chunk.TargetBytes && body.c.Len()+head.c.Len() <= chunk.MaxPoints {
		var err error
		if perr := head.c.Points(func(p chunk.Point) bool {
			err = body.c.Append(p)
			return err == nil
		}); perr != nil || err != nil {
			return fmt.Errorf("store: job %q: folding chunk %d into %d: %w", jobID, head.c.FirstSeq(), body.c.FirstSeq(), errors.Join(perr, err))
		}
		body.dirty = true
		stored := head.stored
		head.c.Reset() // its memory serves the next head
		jc.head = &chunkState{c: head.c}
		return t.dropStoredHead(jobID, stored)
	} else {
		if body != nil {
			if err := t.writeBody(jobID, body); err != nil {
				return err
			}
		}
		head.dirty = true
		jc.body = head
	}
	stored := head.stored
	head.stored = false
	jc.head = &chunkState{c: chunk.New()}
	return t.dropStoredHead(jobID, stored)
}

// dropStoredHead deletes the job's head from heads/ once it has been
// folded or has become a body.
func (t *Tx) dropStoredHead(jobID string, stored bool) error {
	if !stored {
		return nil
	}
	if err := t.tx.Bucket(bucketHeads).Delete([]byte(jobID)); err != nil {
		return fmt.Errorf("store: job %q head: %w", jobID, err)
	}
	return nil
}

// jobChunks returns the job's head (and, once needed, body) chunks,
// loading the head the first time this transaction touches the job.
func (t *Tx) jobChunks(jobID string) (*jobChunks, error) {
	if jc, ok := t.w.open[jobID]; ok {
		return jc, nil
	}
	jc := &jobChunks{head: &chunkState{c: chunk.New()}}
	if v := t.tx.Bucket(bucketHeads).Get([]byte(jobID)); v != nil {
		c, err := chunk.Decode(v)
		if err != nil {
			return nil, fmt.Errorf("store: job %q head chunk: %w", jobID, err)
		}
		jc.head = &chunkState{c: c, stored: true}
	} else if err := t.loadBody(jobID, jc); err != nil {
		// Without a head the last point is the body's: needed for the
		// seq check.
		return nil, err
	}
	t.w.open[jobID] = jc
	t.w.order = append(t.w.order, jobID)
	return jc, nil
}

// loadBody reads the job's last chunk in chunks/JOB, once per
// transaction.
func (t *Tx) loadBody(jobID string, jc *jobChunks) error {
	if jc.bodyLoaded {
		return nil
	}
	jc.bodyLoaded = true
	b := t.tx.Bucket(bucketChunks).Bucket([]byte(jobID))
	if b == nil {
		return nil
	}
	k, v := b.Cursor().Last()
	if k == nil {
		return nil
	}
	body, err := chunk.Decode(v)
	if err != nil {
		return fmt.Errorf("store: job %q chunk %x: %w", jobID, k, err)
	}
	jc.body = &chunkState{c: body, stored: true}
	return nil
}

func (t *Tx) writeBody(jobID string, cs *chunkState) error {
	if !cs.dirty || cs.c.Len() == 0 {
		return nil
	}
	b, err := t.sub(bucketChunks, jobID)
	if err != nil {
		return err
	}
	if err := b.Put(u64(cs.c.FirstSeq()), cs.c.Encode()); err != nil {
		return fmt.Errorf("store: job %q chunk %d: %w", jobID, cs.c.FirstSeq(), err)
	}
	cs.dirty, cs.stored = false, true
	return nil
}

func (t *Tx) writeHead(jobID string, cs *chunkState) error {
	if !cs.dirty || cs.c.Len() == 0 {
		return nil
	}
	if err := t.tx.Bucket(bucketHeads).Put([]byte(jobID), cs.c.Encode()); err != nil {
		return fmt.Errorf("store: job %q head: %w", jobID, err)
	}
	cs.dirty, cs.stored = false, true
	return nil
}

// flush writes the open chunks and dictionaries this transaction changed.
// Store.Update calls it before committing, and reads within a write
// transaction call it first so they see every point put.
func (t *Tx) flush() error {
	if t.w == nil {
		return nil
	}
	for _, id := range t.w.order {
		jc := t.w.open[id]
		if jc.body != nil {
			if err := t.writeBody(id, jc.body); err != nil {
				return err
			}
		}
		if err := t.writeHead(id, jc.head); err != nil {
			return err
		}
	}
	ids := make([]string, 0, len(t.w.keys))
	for id, d := range t.w.keys {
		if d.dirty {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		d := t.w.keys[id]
		if err := t.tx.Bucket(bucketMetricKeys).Put([]byte(id), d.encode()); err != nil {
			return fmt.Errorf("store: metric keys of %q: %w", id, err)
		}
		d.dirty = false
	}
	return nil
}

// PointChunk is one stored chunk as a reader sees it, valid only inside
// the callback it is passed to.
type PointChunk struct {
	c     *chunk.Chunk
	names []string
}

// FirstSeq and LastSeq bound the chunk's seqs.
func (pc PointChunk) FirstSeq() uint64 { return pc.c.FirstSeq() }

// LastSeq is the seq of the chunk's last point.
func (pc PointChunk) LastSeq() uint64 { return pc.c.LastSeq() }

// Len is the number of points in the chunk.
func (pc PointChunk) Len() int { return pc.c.Len() }

// ColumnSummary is one metric over one chunk (chunk.Summary) with its
// name.
type ColumnSummary struct {
	Name string
	chunk.Summary
}

// EachSummary calls fn with the summary of each metric in the chunk for
// which want is true (every metric when want is nil), read from the
// chunk's header without decoding its points. fn must not keep c.
func (pc PointChunk) EachSummary(want func(key string) bool, fn func(c *ColumnSummary)) error {
	var bad error
	var cs ColumnSummary
	pc.c.EachSummary(func(s *chunk.Summary) {
		if bad != nil {
			return
		}
		if int(s.Key) >= len(pc.names) {
			bad = fmt.Errorf("%w: chunk column %d has no name", ErrCorrupt, s.Key)
			return
		}
		name := pc.names[s.Key]
		if want != nil && !want(name) {
			return
		}
		cs = ColumnSummary{Name: name, Summary: *s}
		fn(&cs)
	})
	return bad
}

// EachValue decodes the chunk's points with seq > after: point(seq) is
// called first for each, and when it returns true, value is called with
// every metric of the point that want accepts (want nil: every one).
// Nothing is allocated per point.
func (pc PointChunk) EachValue(after uint64, want func(key string) bool, point func(seq uint64) bool,
	value func(key string, seq uint64, step int64, hasStep bool, ts, v float64)) error {
	wanted := make([]bool, len(pc.names))
	for i, n := range pc.names {
		wanted[i] = want == nil || want(n)
	}
	var bad error
	keep := func(k uint32) bool {
		if int(k) >= len(wanted) {
			bad = fmt.Errorf("%w: chunk column %d has no name", ErrCorrupt, k)
			return false
		}
		return wanted[k]
	}
	err := pc.c.PointsOf(keep, func(p chunk.Point) bool {
		if p.Seq <= after || !point(p.Seq) {
			return true
		}
		for i, k := range p.Keys {
			value(pc.names[k], p.Seq, p.Step, p.HasStep, p.Ts, p.Vals[i])
		}
		return bad == nil
	})
	if err == nil {
		err = bad
	}
	return err
}

// Points decodes the chunk's points.
func (pc PointChunk) Points() ([]*gantrypb.MetricPoint, error) {
	var out []*gantrypb.MetricPoint
	err := pc.each(0, func(p *gantrypb.MetricPoint) bool { out = append(out, p); return true })
	return out, err
}

// each calls fn with every point of the chunk with seq > after.
func (pc PointChunk) each(after uint64, fn func(*gantrypb.MetricPoint) bool) error {
	var bad error
	err := pc.c.Points(func(p chunk.Point) bool {
		if p.Seq <= after {
			return true
		}
		m := &gantrypb.MetricPoint{Seq: p.Seq, Ts: p.Ts, Values: make(map[string]float64, len(p.Keys))}
		if p.HasStep {
			st := p.Step
			m.Step = &st
		}
		for i, k := range p.Keys {
			if int(k) >= len(pc.names) {
				bad = fmt.Errorf("%w: chunk column %d has no name", ErrCorrupt, k)
				return false
			}
			m.Values[pc.names[k]] = p.Vals[i]
		}
		return fn(m)
	})
	if err == nil {
		err = bad
	}
	return err
}

// PointChunks calls fn with the job's chunks in seq order, starting with
// the one that holds seq after+1, at most limit chunks (all when limit <=
// 0). The chunk handed to fn is valid only during the call.
func (t *Tx) PointChunks(jobID string, after uint64, limit int, fn func(PointChunk) error) error {
	if err := t.flush(); err != nil {
		return err
	}
	d, err := t.keyDict(jobID, true)
	if err != nil {
		return err
	}
	var rd chunk.Reader
	n := 0
	visit := func(k, v []byte) error {
		h, err := rd.Header(v)
		if err != nil {
			return fmt.Errorf("store: job %q chunk %x: %w", jobID, k, err)
		}
		if h.LastSeq() <= after {
			return nil
		}
		n++
		return fn(PointChunk{c: h, names: d.names})
	}
	if b := t.tx.Bucket(bucketChunks).Bucket([]byte(jobID)); b != nil {
		c := b.Cursor()
		k, v := c.Seek(u64(after + 1))
		if k == nil || binary.BigEndian.Uint64(k) > after+1 {
			// The chunk holding after+1 starts before it.
			if pk, pv := c.Prev(); pk != nil {
				k, v = pk, pv
			} else {
				k, v = c.First()
			}
		}
		for ; k != nil && (limit <= 0 || n < limit); k, v = c.Next() {
			if err := visit(k, v); err != nil {
				return err
			}
		}
	}
	if v := t.tx.Bucket(bucketHeads).Get([]byte(jobID)); v != nil && (limit <= 0 || n < limit) {
		return visit([]byte("head"), v)
	}
	return nil
}

// Points returns up to limit points of a job with seq > after, in seq order
// (every one when limit <= 0).
func (t *Tx) Points(jobID string, after uint64, limit int) ([]*gantrypb.MetricPoint, error) {
	var out []*gantrypb.MetricPoint
	errFull := errors.New("full")
	err := t.PointChunks(jobID, after, 0, func(pc PointChunk) error {
		err := pc.each(after, func(p *gantrypb.MetricPoint) bool {
			out = append(out, p)
			return limit <= 0 || len(out) < limit
		})
		if err != nil {
			return fmt.Errorf("store: points of %q: %w", jobID, err)
		}
		if limit > 0 && len(out) >= limit {
			return errFull
		}
		return nil
	})
	if errors.Is(err, errFull) {
		err = nil
	}
	return out, err
}

// LastPointTs returns the timestamp of the job's newest stored point,
// from one chunk header (its head, or else its last chunk); ok is false
// when the job has no points.
func (t *Tx) LastPointTs(jobID string) (ts float64, ok bool, err error) {
	if err := t.flush(); err != nil {
		return 0, false, err
	}
	v := t.tx.Bucket(bucketHeads).Get([]byte(jobID))
	if v == nil {
		if b := t.tx.Bucket(bucketChunks).Bucket([]byte(jobID)); b != nil {
			_, v = b.Cursor().Last()
		}
	}
	if v == nil {
		return 0, false, nil
	}
	h, err := chunk.Header(v)
	if err != nil {
		return 0, false, fmt.Errorf("store: job %q newest chunk: %w", jobID, err)
	}
	return h.LastTs(), true, nil
}

// LastPoints returns the last n points of a job, in seq order.
func (t *Tx) LastPoints(jobID string, n int) ([]*gantrypb.MetricPoint, error) {
	if err := t.flush(); err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, nil
	}
	d, err := t.keyDict(jobID, true)
	if err != nil {
		return nil, err
	}
	var chunks [][]*gantrypb.MetricPoint
	have := 0
	take := func(k, v []byte) error {
		h, err := chunk.Header(v)
		if err != nil {
			return fmt.Errorf("store: job %q chunk %x: %w", jobID, k, err)
		}
		pts, err := PointChunk{c: h, names: d.names}.Points()
		if err != nil {
			return fmt.Errorf("store: points of %q: %w", jobID, err)
		}
		chunks = append(chunks, pts)
		have += len(pts)
		return nil
	}
	if v := t.tx.Bucket(bucketHeads).Get([]byte(jobID)); v != nil {
		if err := take([]byte("head"), v); err != nil {
			return nil, err
		}
	}
	if b := t.tx.Bucket(bucketChunks).Bucket([]byte(jobID)); b != nil {
		c := b.Cursor()
		for k, v := c.Last(); k != nil && have < n; k, v = c.Prev() {
			if err := take(k, v); err != nil {
				return nil, err
			}
		}
	}
	if have == 0 {
		return nil, nil
	}
	out := make([]*gantrypb.MetricPoint, 0, min(have, n))
	for i := len(chunks) - 1; i >= 0; i-- {
		out = append(out, chunks[i]...)
	}
	return out[len(out)-min(len(out), n):], nil
}

// migratePoints moves schema 1's points (one value per point in
// points/JOB) into chunks, in transactions of at most batch points, and
// drops the old bucket. It is restartable: a job's points already in
// chunks are skipped.
func migratePoints(db *bolt.DB, batch int) error {
	var jobs []string
	if err := db.View(func(tx *bolt.Tx) error {
		old := tx.Bucket(bucketPointsV1)
		if old == nil {
			return nil
		}
		return old.ForEachBucket(func(k []byte) error {
			jobs = append(jobs, string(k))
			return nil
		})
	}); err != nil {
		return err
	}
	for _, job := range jobs {
		for done := false; !done; {
			err := db.Update(func(btx *bolt.Tx) error {
				t := &Tx{tx: btx, w: newWriteState()}
				jc, err := t.jobChunks(job)
				if err != nil {
					return err
				}
				after := jc.lastSeq()
				old := btx.Bucket(bucketPointsV1).Bucket([]byte(job))
				c := old.Cursor()
				n := 0
				for k, v := c.Seek(u64(after + 1)); k != nil; k, v = c.Next() {
					if n == batch {
						return t.flush()
					}
					if len(k) != 8 || binary.BigEndian.Uint64(k) <= after {
						return fmt.Errorf("%w: points/%s key %x", ErrCorrupt, job, k)
					}
					p := &gantrypb.MetricPoint{}
					if err := unmarshal(v, p); err != nil {
						return fmt.Errorf("%w: points/%s/%x: %v", ErrCorrupt, job, k, err)
					}
					p.Seq = binary.BigEndian.Uint64(k)
					if err := t.PutPoint(job, p); err != nil {
						return err
					}
					n++
				}
				done = true
				return t.flush()
			})
			if err != nil {
				return fmt.Errorf("store: migrating the points of job %q to chunks: %w", job, err)
			}
		}
	}
	return db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketPointsV1) != nil {
			if err := tx.DeleteBucket(bucketPointsV1); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keySchema, u64(SchemaVersion))
	})
}

func newWriteState() *writeState {
	return &writeState{open: map[string]*jobChunks{}, keys: map[string]*keyDict{}}
}

// PointBytes is how many bytes the job's chunks take in their values
// (without bbolt's page overhead): what a point costs on disk.
func (t *Tx) PointBytes(jobID string) (int64, error) {
	var n int64
	if v := t.tx.Bucket(bucketHeads).Get([]byte(jobID)); v != nil {
		n += int64(len(jobID) + len(v))
	}
	b := t.tx.Bucket(bucketChunks).Bucket([]byte(jobID))
	if b == nil {
		return n, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		n += int64(len(k) + len(v))
		return nil
	})
	return n, err
}
