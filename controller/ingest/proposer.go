package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/proto/flat"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// Defaults of the proposer's budgets (Options.EntryBytes and
// Options.InflightBytes).
//
// What is in Raft and not yet applied is ahead of every batch that arrives
// now, whichever node sends it: a watcher's next line waits for all of it.
// So the proposer keeps little in flight (a few entries' worth, enough that
// the leader's log write and the followers' replication of one entry
// overlap the FSM's apply of the one before) and makes entries small
// enough that one of them is never a long wait. The FSM applies a run of
// committed entries in one store transaction, so smaller entries cost Raft
// a little bookkeeping, not the store an extra write.
const (
	DefaultEntryBytes    = 64 << 10
	DefaultInflightBytes = 256 << 10
)

// errSessionGone is what a batch offered by a session that has been
// replaced or has ended gets.
var errSessionGone = errors.New("ingest: session replaced or ended")

// proposer turns the screened batches of every agent session into Raft
// entries. It is where fairness between nodes lives:
//
//   - Bounded work in flight. Only what Raft applies in about
//     inflightTarget (at the rate measured, at least InflightBytes, and at
//     least one entry) is proposed and not yet applied, so a node's batch
//     never waits behind seconds of another node's entries.
//   - Fair choice. The next entry is cut from the node with the least in
//     flight, counting that entry: a node with a line to send and nothing
//     in Raft goes ahead of every node with a backlog, and flooding nodes
//     take turns. Ties go by virtual finish time (self-clocked fair
//     queueing weighted by encoded bytes).
//   - Express lane. With the budget spent, a node whose entries in flight
//     and queued records come to at most expressBytes (a trickle of lines,
//     not a backlog) still proposes now: its lines wait for what is in
//     flight, never for the budget to free up behind the floods.
//   - Group commit. An entry takes the head batch and as many of the same
//     session's following batches as fit in EntryBytes (one IngestCmd, one
//     node); a batch larger than that is cut into several entries, all in
//     order. Raft itself pipelines the entries of all nodes: concurrent
//     ApplyAsync calls become one AppendEntries, and the FSM applies the
//     run in one store transaction.
//
// Order and acks (invariants I2 and I3): the entries of one node are
// proposed in the order its agent sent the records, by one goroutine, and
// a node has one queue: a new session of a node drops what its old session
// had queued and not yet proposed (the agent replays it), so a record from
// before a reconnect can never be proposed after a replayed one. A batch is
// acked only once the entry holding its last record has been applied, and
// the entries of one node complete in order.
type proposer struct {
	raft          Applier
	entryBytes    int
	inflightBytes int
	// flatEntries says whether entries may carry flat points (nil: yes).
	flatEntries func() bool

	// now is the clock (tests set it).
	now func() time.Time

	mu       sync.Mutex
	queues   map[string]*queue // the current session's queue, by node
	rate     float64           // bytes applied per second, smoothed (see release)
	sampleAt time.Time         // start of the current rate sample
	sampled  int               // bytes applied in it
	vtime    uint64            // finish tag of the batch proposed last
	inflight int               // bytes proposed and not yet applied
	entries  int               // entries proposed and not yet applied
	kick     chan struct{}
	done     chan *entry // proposed entries, in proposal order, to the completer
}

// maxInflightEntries bounds the proposed entries whatever their size, so
// that the completer's channel never blocks the proposer.
const maxInflightEntries = 256

// expressBytes is the most a node may have in flight through the express
// lane, past a spent budget (see next): some 35 training lines.
const expressBytes = 16 << 10

func newProposer(raft Applier, entryBytes, inflightBytes int, flatEntries func() bool) *proposer {
	if entryBytes <= 0 {
		entryBytes = DefaultEntryBytes
	}
	if inflightBytes <= 0 {
		inflightBytes = DefaultInflightBytes
	}
	return &proposer{raft: raft, entryBytes: entryBytes, inflightBytes: inflightBytes, flatEntries: flatEntries, now: time.Now,
		queues: map[string]*queue{}, kick: make(chan struct{}, 1), done: make(chan *entry, maxInflightEntries)}
}

// queue is one session's batches waiting to be proposed, and the results
// of its proposed entries waiting to be acked.
type queue struct {
	node       string
	batches    []*queuedBatch
	lastFinish uint64 // finish tag of this queue's last batch
	closed     bool   // guarded by proposer.mu
	queued     int    // bytes of records queued, guarded by proposer.mu
	inflight   int    // bytes proposed and not yet applied, guarded by proposer.mu

	resMu   sync.Mutex
	results []result
	ready   chan struct{} // a result was added

	// tab is the queue's key table: every batch's flat points are
	// re-indexed into it at offer, so the records of several batches
	// concatenate into one entry, whose IngestCmd.keys is the table as
	// it stood when the entry was cut. It only grows (an entry's indexes
	// stay valid in any later table) and starts again, within bounds,
	// when nothing is queued. Only offer, on the session's goroutine,
	// touches tab; keys is its current slice, read under proposer.mu.
	tab  flat.Table
	keys []string
	// keysBytes is keys' encoded size, counted in every entry's bytes.
	keysBytes int
}

// tableReset is the key table size past which a queue's table starts
// again once nothing refers to it, so that it stays a small part of each
// entry.
const tableReset = 1024

// queuedBatch holds its records encoded, each as the IngestCmd field that
// carries it (tag, length, record), one after the other in raw: waiting
// records are bytes, not trees of pointers for the garbage collector to
// walk, and an entry is assembled by copying them, not by marshalling.
type queuedBatch struct {
	id     uint64
	raw    []byte
	ends   []int // where each record's field ends in raw
	finish uint64
}

// entry is one proposed IngestCmd.
type entry struct {
	q       *queue
	bytes   int
	raw     []byte   // the records field of the IngestCmd, encoded
	keys    []string // the key table the records' flat points index
	n       int      // records in raw
	ids     []uint64 // batches whose last record is in this entry
	pending *cluster.Pending
	err     error // the proposal itself failed
}

// result is what the session's acker learns of one entry.
type result struct {
	ids []uint64
	err error
}

// register makes q the queue of its node, dropping the previous session's
// queue and whatever it still held unproposed.
func (p *proposer) register(node string) *queue {
	q := &queue{node: node, ready: make(chan struct{}, 1)}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old := p.queues[node]; old != nil {
		old.closed = true
		old.batches, old.queued = nil, 0
	}
	p.queues[node] = q
	return q
}

// unregister ends q: its unproposed batches are dropped (the agent
// replays them) and it takes no more.
func (p *proposer) unregister(q *queue) {
	p.mu.Lock()
	defer p.mu.Unlock()
	q.closed = true
	q.batches, q.queued = nil, 0
	if p.queues[q.node] == q {
		delete(p.queues, q.node)
	}
}

// recordsField is the IngestCmd field that holds its records.
var recordsField = (&gantrypb.IngestCmd{}).ProtoReflect().Descriptor().Fields().ByName("records").Number()

// offer queues a screened batch of q's session; keys is the batch's key
// table, which its flat points index (the screen has checked them).
func (p *proposer) offer(q *queue, id uint64, keys []string, records []*gantrypb.Record) error {
	p.mu.Lock()
	idle := len(q.batches) == 0
	p.mu.Unlock()
	reset := idle && q.tab.Len() > tableReset
	if reset {
		// Nothing queued refers to the table; entries in flight carry
		// their own copy.
		q.tab = flat.Table{}
	}
	if len(keys) > 0 && ((p.flatEntries != nil && !p.flatEntries()) || !q.tab.Merge(keys, records)) {
		// A voter of an older release (a rolling upgrade) or a full
		// table: this batch's points go in the map form, which every
		// release reads and which needs no table.
		for _, r := range records {
			if pt := r.GetPoint(); pt != nil && len(pt.KeyIdx) > 0 {
				pt.Values, pt.KeyIdx, pt.Vals = flat.Values(pt, keys), nil, nil
			}
		}
	}
	b := &queuedBatch{id: id, ends: make([]int, len(records))}
	var rec []byte
	for i, r := range records {
		var err error
		if rec, err = (proto.MarshalOptions{}).MarshalAppend(rec[:0], r); err != nil {
			return fmt.Errorf("ingest: encode record %d of batch %d: %w", i, id, err)
		}
		b.raw = protowire.AppendTag(b.raw, recordsField, protowire.BytesType)
		b.raw = protowire.AppendBytes(b.raw, rec)
		b.ends[i] = len(b.raw)
	}
	cost := len(b.raw)
	p.mu.Lock()
	if q.closed {
		p.mu.Unlock()
		return errSessionGone
	}
	// An empty batch (every record refused by the screen) still costs one,
	// so it is ordered like any other and acked in its turn.
	b.finish = max(p.vtime, q.lastFinish) + uint64(max(cost, 1))
	q.lastFinish = b.finish
	q.batches = append(q.batches, b)
	if keys := q.tab.Keys(); reset || len(keys) != len(q.keys) {
		q.keysBytes = 0
		for _, k := range keys {
			q.keysBytes += protowire.SizeTag(4) + protowire.SizeBytes(len(k))
		}
		q.keys = keys
	}
	q.queued += cost
	p.mu.Unlock()
	p.wake()
	return nil
}

func (p *proposer) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run proposes entries until ctx ends; complete delivers their results.
// Both must run for sessions to get acks.
func (p *proposer) run(ctx context.Context) {
	for {
		e := p.next()
		if e == nil {
			select {
			case <-ctx.Done():
				return
			case <-p.kick:
			}
			continue
		}
		cmd := &gantrypb.IngestCmd{NodeId: e.q.node, AtMs: time.Now().UnixMilli(), Keys: e.keys}
		// The records go in as they were encoded at offer: unknown fields
		// are written out verbatim, and every voter decodes them as the
		// command's records field.
		cmd.ProtoReflect().SetUnknown(protoreflect.RawFields(e.raw))
		e.pending, e.err = p.raft.ApplyAsync(cmd)
		e.raw = nil // encoded now; let the records go
		p.done <- e // never blocks: at most maxInflightEntries are out
	}
}

// next cuts the next entry, or returns nil when there is nothing to
// propose or the budget is spent.
func (p *proposer) next() *entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.entries >= maxInflightEntries {
		return nil
	}
	// With the budget spent, only the express lane is open: a node with
	// little in flight and queued together (a trickle of lines, not a
	// backlog) proposes what it has now rather than after the floods'
	// entries. The lane holds at most expressBytes per node, so what it
	// adds to the work in flight is bounded too.
	express := p.entries > 0 && p.inflight >= p.budget()
	var q *queue
	for _, c := range p.queues {
		if len(c.batches) == 0 || (express && c.inflight+c.queued > expressBytes) {
			continue
		}
		if q == nil || p.before(c, q) {
			q = c
		}
	}
	if q == nil {
		return nil
	}
	// The key table travels in every entry: it counts against the budget.
	e := &entry{q: q, keys: q.keys, bytes: q.keysBytes}
	for len(q.batches) > 0 {
		b := q.batches[0]
		n := 0
		for n < len(b.ends) && e.n < limits.MaxRecordsPerBatch && (e.n == 0 || e.bytes+b.ends[n]-start(b, n) <= p.entryBytes) {
			e.bytes += b.ends[n] - start(b, n)
			e.n++
			n++
		}
		if n > 0 {
			cut := b.ends[n-1]
			e.raw = append(e.raw, b.raw[:cut]...)
			b.raw = b.raw[cut:]
			b.ends = b.ends[n:]
			for i := range b.ends {
				b.ends[i] -= cut
			}
		}
		if len(b.ends) > 0 {
			break // the entry is full; the rest of b goes in the next one
		}
		e.ids = append(e.ids, b.id)
		p.vtime = b.finish
		q.batches = q.batches[1:]
		if e.bytes >= p.entryBytes || e.n >= limits.MaxRecordsPerBatch {
			break
		}
	}
	p.inflight += e.bytes
	p.entries++
	q.queued -= e.bytes - q.keysBytes // queued counts records only
	q.inflight += e.bytes
	return e
}

// before reports whether queue a's next entry goes before queue b's. First
// the one with less in flight, counting the next entry itself: a node with
// nothing in Raft and a line to send goes ahead of every node with a
// backlog, and each flooding node gets its turn before any gets a second
// entry in flight. Among equals, the smaller virtual finish time (fair
// queueing by bytes), then the node id, so the choice is deterministic.
func (p *proposer) before(a, b *queue) bool {
	ka := a.inflight + min(a.queued, p.entryBytes)
	kb := b.inflight + min(b.queued, p.entryBytes)
	if ka != kb {
		return ka < kb
	}
	if fa, fb := a.batches[0].finish, b.batches[0].finish; fa != fb {
		return fa < fb
	}
	return a.node < b.node
}

// start is where record n's field begins in b.raw.
func start(b *queuedBatch, n int) int {
	if n == 0 {
		return 0
	}
	return b.ends[n-1]
}

// complete waits for the proposed entries in proposal order (Raft applies
// them in that order), frees their budget and hands each result to its
// session, until ctx ends.
func (p *proposer) complete(ctx context.Context) {
	for {
		var e *entry
		select {
		case e = <-p.done:
		case <-ctx.Done():
			return
		}
		err := e.err
		if err == nil {
			_, err = e.pending.Wait()
		}
		p.release(e)
		e.q.deliver(result{ids: e.ids, err: err})
	}
}

// Budget in time. The budget is what Raft applies in inflightTarget at the
// rate measured, and never less than InflightBytes: a line that arrives
// waits about that long for what is ahead of it, however fast or slow the
// FSM is, and a faster FSM gets a deeper pipeline, not a byte cap. The
// rate is sampled over rateSample of completions and smoothed.
const (
	inflightTarget = 25 * time.Millisecond
	rateSample     = 100 * time.Millisecond
	maxBudgetBytes = 64 << 20
)

// budget is the bytes that may be in flight now. Call with mu held.
func (p *proposer) budget() int {
	b := int(p.rate * inflightTarget.Seconds())
	return min(max(b, p.inflightBytes), maxBudgetBytes)
}

// release returns an applied (or failed) entry's share of the budget and
// counts its bytes into the applied rate. A sample covers only time with
// work in flight, so idle spells do not read as a slow FSM.
func (p *proposer) release(e *entry) {
	now := p.now()
	p.mu.Lock()
	if p.sampleAt.IsZero() {
		p.sampleAt = now
	}
	p.sampled += e.bytes
	if dt := now.Sub(p.sampleAt); dt >= rateSample {
		inst := float64(p.sampled) / dt.Seconds()
		if p.rate == 0 {
			p.rate = inst
		} else {
			p.rate = 0.7*p.rate + 0.3*inst
		}
		p.sampleAt, p.sampled = now, 0
	}
	p.inflight -= e.bytes
	p.entries--
	e.q.inflight -= e.bytes
	if p.entries == 0 {
		// Idle from here: the next sample starts with the next entry.
		p.sampleAt, p.sampled = time.Time{}, 0
	}
	p.mu.Unlock()
	p.wake()
}

func (q *queue) deliver(r result) {
	q.resMu.Lock()
	q.results = append(q.results, r)
	q.resMu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take returns the results delivered so far, waiting for at least one.
func (q *queue) take(ctx context.Context) ([]result, error) {
	for {
		q.resMu.Lock()
		rs := q.results
		q.results = nil
		q.resMu.Unlock()
		if len(rs) > 0 {
			return rs, nil
		}
		select {
		case <-q.ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for commits: %w", ctx.Err())
		}
	}
}
