// Package link is the agent's end of the QUIC link to the controller. It
// keeps one connection up (reconnecting with jittered backoff), says Hello,
// streams the spool and deletes records only once the controller has acked
// them after Raft commit. After a reconnect it replays everything unacked;
// the controller drops what it already has (invariant I3).
//
// Batches take the spool's streams (one per job, and the node's own)
// round-robin, not in spool order: a job that floods cannot put its backlog
// ahead of another job's next line. Order within a stream is kept, which is
// all the controller needs (seqs are dense per stream, and an exit record
// stays after its job's points, invariant I2).
package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/agent/spool"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
	"github.com/gantry-ml/gantry/proto/wire"
)

// Limits of one batch and of the window of unacked batches. A batch's
// limits are the shared ones the controller enforces (proto/limits), so the
// agent never builds a batch it would refuse and resend forever.
const (
	MaxBatchRecords = limits.MaxRecordsPerBatch
	MaxBatchBytes   = limits.MaxBatchBytes
	MaxInflight     = 8
)

// What the sender keeps in flight and in hand. Everything sent and not yet
// acked is ahead, at the leader, of the next batch, which carries the next
// line of every job: so batches are small (SendBatchBytes) and few are out
// at once (InflightBytes), enough to keep the leader busy but never seconds
// of work. The lookahead is how much of the spool the sender reads ahead to
// find every stream's next records.
const (
	SendBatchBytes   = 256 << 10
	InflightBytes    = 1 << 20
	lookaheadRecords = 24576
	lookaheadBytes   = 16 << 20
)

var errRejected = errors.New("controller rejected hello")

// errNoLeader is a controller's answer while no leader is known.
var errNoLeader = errors.New("no controller leads yet")

// redirectError is a follower's answer naming the leader to dial instead.
type redirectError struct{ leader string }

func (e redirectError) Error() string { return "not the leader; leader is " + e.leader }

// Handler receives what the controller asks of the agent.
type Handler interface {
	// Hello returns this agent's hello (its GPUs and active jobs) at each
	// (re)connect.
	Hello() *gantrypb.Hello
	// Start and Cancel run on the link's goroutine and must not block.
	Start(*gantrypb.StartJob)
	Cancel(*gantrypb.CancelJob)
	// Acked is told the spool index up to which everything is committed.
	Acked(upTo uint64)
}

// Options configures the link.
type Options struct {
	// Addrs are controller QUIC addresses, tried in turn.
	Addrs []string
	// Discover, when set, returns the controllers' QUIC addresses as
	// currently known (serf); they are tried before Addrs.
	Discover func() []string
	TLS      *tls.Config
	Spool    *spool.Spool
	Handler  Handler
	Log      *slog.Logger
	// MinBackoff and MaxBackoff bound reconnect delays.
	MinBackoff, MaxBackoff time.Duration
	// BatchBytes and InflightBytes override SendBatchBytes and
	// InflightBytes when positive (tests make a flood of a few lines).
	BatchBytes, InflightBytes int
}

// Link is the running link.
type Link struct {
	opts Options
	// tlsErr is why opts.TLS cannot be made to require a controller; Run
	// returns it.
	tlsErr    error
	connected atomic.Bool
	connects  atomic.Int64
	// batchID numbers batches; unique across sessions, so a stray ack of
	// an older session can never match.
	batchID atomic.Uint64
	// maxAcked is the highest spool index acked so far.
	maxAcked atomic.Uint64
	// cur is the live session's connection, nil between sessions.
	cur atomic.Pointer[current]
}

// New returns a link; call Run. Whatever opts.TLS itself checks, the link
// accepts only a server holding a controller certificate: a process with an
// agent certificate, or one from before roles, never gets the hello and so
// can never send StartJob. A TLS config that verifies nothing is refused
// by Run.
func New(opts Options) *Link {
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.BatchBytes <= 0 {
		opts.BatchBytes = SendBatchBytes
	}
	if opts.InflightBytes <= 0 {
		opts.InflightBytes = InflightBytes
	}
	l := &Link{opts: opts}
	l.opts.TLS, l.tlsErr = tlsutil.RequirePeer(opts.TLS, tlsutil.Identity{Role: tlsutil.RoleController})
	if l.tlsErr != nil {
		l.tlsErr = fmt.Errorf("link: %w", l.tlsErr)
	}
	return l
}

// Connected reports whether a session is up now.
func (l *Link) Connected() bool { return l.connected.Load() }

// Connects counts successful handshakes since start.
func (l *Link) Connects() int64 { return l.connects.Load() }

// Run keeps the link up until ctx ends.
func (l *Link) Run(ctx context.Context) error {
	if l.tlsErr != nil {
		return l.tlsErr
	}
	backoff := l.opts.MinBackoff
	next := ""    // an address to try right away (a redirect)
	idx := 0      // round-robin position
	failures := 0 // consecutive attempts that never reached a session
	waitingLeader := false
	for {
		addrs := l.addrs()
		addr := next
		next = ""
		if addr == "" {
			if len(addrs) == 0 {
				l.opts.Log.Warn("no controller address known yet")
				if !sleepCtx(ctx, backoff) {
					return nil
				}
				backoff = min(backoff*2, l.opts.MaxBackoff)
				continue
			}
			addr = addrs[idx%len(addrs)]
			idx++
		}
		start := time.Now()
		established, err := l.session(ctx, addr)
		if ctx.Err() != nil {
			return nil
		}
		var redirect redirectError
		if errors.As(err, &redirect) && redirect.leader != addr && failures < 2*len(addrs)+2 {
			// A follower named the leader: go there now, no backoff.
			l.opts.Log.Info("controller redirected the agent to the leader", "from", addr, "leader", redirect.leader)
			next = redirect.leader
			failures++
			continue
		}
		if errors.Is(err, errNoLeader) {
			// An election or a cluster starting up: said once per wait.
			if !waitingLeader {
				l.opts.Log.Info("waiting for the controllers to elect a leader", "addr", addr)
			}
			waitingLeader = true
		} else {
			l.opts.Log.Warn("controller link down", "addr", addr, "err", err)
		}
		if established {
			waitingLeader = false
			failures = 0
			if time.Since(start) > 10*time.Second {
				backoff = l.opts.MinBackoff // it was a healthy session
			}
		} else {
			failures++
			if failures < len(addrs) {
				continue // a dead or non-leading controller: try the next one now
			}
		}
		failures = 0
		// Full jitter keeps a fleet of agents from reconnecting in lockstep.
		if !sleepCtx(ctx, time.Duration(rand.Int64N(int64(backoff)))+l.opts.MinBackoff/2) {
			return nil
		}
		backoff = min(backoff*2, l.opts.MaxBackoff)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// addrs lists the controllers to try: discovered ones first, then the
// configured ones, without duplicates.
func (l *Link) addrs() []string {
	var out []string
	seen := map[string]bool{}
	if l.opts.Discover != nil {
		for _, a := range l.opts.Discover() {
			if a != "" && !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	for _, a := range l.opts.Addrs {
		if a != "" && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// session runs one connection; established reports whether the hello was
// accepted (a session, not just a dial attempt).
func (l *Link) session(ctx context.Context, addr string) (established bool, err error) {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	conn, err := quic.DialAddr(dctx, addr, l.opts.TLS, wire.QUICConfig())
	cancel()
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.CloseWithError(wire.CodeOK, "agent closing")

	ctrl, flatOK, blobsOK, err := l.hello(ctx, conn)
	if err != nil {
		return false, err
	}
	qs, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return true, fmt.Errorf("open records stream: %w", err)
	}
	records, err := wire.Open(qs, wire.StreamRecords)
	if err != nil {
		return true, err
	}
	l.connected.Store(true)
	l.connects.Add(1)
	l.cur.Store(&current{conn: conn, blobs: blobsOK})
	defer l.cur.Store(nil)
	defer l.connected.Store(false)
	l.opts.Log.Info("connected to controller", "addr", addr)

	g, gctx := errgroup.WithContext(ctx)
	out := &outbox{freed: make(chan struct{}, 1), maxBytes: l.opts.InflightBytes}
	g.Go(func() error { return l.readControl(ctrl) })
	g.Go(func() error { return l.readAcks(records, out) })
	g.Go(func() error { return l.send(gctx, records, out, flatOK) })
	if l.opts.Discover != nil {
		g.Go(func() error { return l.watchController(gctx, addr) })
	}
	g.Go(func() error {
		// One failure closes all: closing the connection unblocks every
		// reader and writer of this session.
		<-gctx.Done()
		conn.CloseWithError(wire.CodeOK, "session ended")
		return nil
	})
	return true, g.Wait()
}

// watchController ends the session once serf stops listing the connected
// controller as alive: serf notices a dead host in about a second, QUIC's
// idle timeout only after several.
func (l *Link) watchController(ctx context.Context, addr string) error {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	seen := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		alive := slices.Contains(l.opts.Discover(), addr)
		switch {
		case alive:
			seen = true
		case seen:
			return fmt.Errorf("controller %s is no longer alive in the cluster", addr)
		}
	}
}

// hello runs the handshake and reports whether the controller reads points
// in the flat form and serves code archives.
func (l *Link) hello(ctx context.Context, conn *quic.Conn) (*wire.Stream, bool, bool, error) {
	qs, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, false, false, fmt.Errorf("open control stream: %w", err)
	}
	ctrl, err := wire.Open(qs, wire.StreamControl)
	if err != nil {
		return nil, false, false, err
	}
	hello := l.opts.Handler.Hello()
	if err := ctrl.Write(&gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_Hello{Hello: hello}}); err != nil {
		return nil, false, false, err
	}
	var reply gantrypb.ControlMessage
	if err := ctrl.Read(&reply, 15*time.Second); err != nil {
		return nil, false, false, fmt.Errorf("waiting for hello reply: %w", err)
	}
	hr := reply.GetHelloReply()
	if hr == nil {
		return nil, false, false, fmt.Errorf("%w: unexpected %T", errRejected, reply.Msg)
	}
	if !hr.Ok {
		if hr.LeaderAddr != "" {
			return nil, false, false, redirectError{leader: hr.LeaderAddr}
		}
		if hr.Error == wire.NotLeaderReason {
			return nil, false, false, errNoLeader
		}
		return nil, false, false, fmt.Errorf("%w: %s", errRejected, hr.Error)
	}
	return ctrl, hr.FlatPoints, hr.CodeArchives, nil
}

func (l *Link) readControl(ctrl *wire.Stream) error {
	for {
		var m gantrypb.ControlMessage
		if err := ctrl.Read(&m, 0); err != nil {
			return fmt.Errorf("control stream: %w", err)
		}
		switch msg := m.Msg.(type) {
		case *gantrypb.ControlMessage_Start:
			l.opts.Handler.Start(msg.Start)
		case *gantrypb.ControlMessage_Cancel:
			l.opts.Handler.Cancel(msg.Cancel)
		default:
			l.opts.Log.Warn("unexpected control message", "type", fmt.Sprintf("%T", m.Msg))
		}
	}
}

// readAcks deletes each batch from the spool once the controller acks it.
// Acks come in the order the batches were sent.
func (l *Link) readAcks(records *wire.Stream, out *outbox) error {
	for {
		var ack gantrypb.BatchAck
		if err := records.Read(&ack, 0); err != nil {
			return fmt.Errorf("records stream: %w", err)
		}
		if ack.Error != "" {
			return fmt.Errorf("controller refused batch %d: %s", ack.BatchId, ack.Error)
		}
		b, ok := out.oldest()
		if !ok || b.id != ack.BatchId {
			return fmt.Errorf("controller acked batch %d, which is not the oldest unacked one", ack.BatchId)
		}
		if err := l.opts.Spool.AckEntries(b.entries); err != nil {
			return fmt.Errorf("spool ack of batch %d: %w", ack.BatchId, err)
		}
		for _, e := range b.entries {
			if e.Index > l.maxAcked.Load() {
				l.maxAcked.Store(e.Index)
			}
		}
		out.pop()
		upTo, err := l.ackedUpTo()
		if err != nil {
			return err
		}
		l.opts.Handler.Acked(upTo)
	}
}

// ackedUpTo is the spool index up to which every record is acked: below
// the oldest one left, or, with none left, the highest acked.
func (l *Link) ackedUpTo() (uint64, error) {
	n, oldest, err := l.opts.Spool.Pending()
	if err != nil {
		return 0, err
	}
	if n == 0 || oldest == 0 {
		return l.maxAcked.Load(), nil
	}
	return min(oldest-1, l.maxAcked.Load()), nil
}

// outbox is one session's batches sent and not yet acked, oldest first.
type outbox struct {
	maxBytes int
	mu       sync.Mutex
	sent     []sentBatch
	bytes    int
	freed    chan struct{} // a batch was acked
}

type sentBatch struct {
	id      uint64
	entries []spool.Entry
	bytes   int
}

func (o *outbox) oldest() (sentBatch, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.sent) == 0 {
		return sentBatch{}, false
	}
	return o.sent[0], true
}

func (o *outbox) pop() {
	o.mu.Lock()
	o.bytes -= o.sent[0].bytes
	o.sent[0] = sentBatch{}
	o.sent = o.sent[1:]
	o.mu.Unlock()
	select {
	case o.freed <- struct{}{}:
	default:
	}
}

func (o *outbox) add(b sentBatch) {
	o.mu.Lock()
	o.sent = append(o.sent, b)
	o.bytes += b.bytes
	o.mu.Unlock()
}

// wait waits until another batch may go out: fewer than MaxInflight
// batches and maxBytes are unacked (one batch always may).
func (o *outbox) wait(ctx context.Context) error {
	for {
		o.mu.Lock()
		ok := len(o.sent) == 0 || (len(o.sent) < MaxInflight && o.bytes < o.maxBytes)
		o.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-o.freed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// send streams the spool from the oldest unacked record: it reads ahead
// into one queue per stream and cuts each batch from the streams
// round-robin.
func (l *Link) send(ctx context.Context, records *wire.Stream, out *outbox, flatOK bool) error {
	q := newStreams()
	read := uint64(0) // the highest index read into q
	refill := func() error {
		if q.n >= lookaheadRecords || q.bytes >= lookaheadBytes {
			return nil
		}
		entries, err := l.opts.Spool.Read(read, lookaheadRecords-q.n, lookaheadBytes-q.bytes)
		if err != nil {
			return fmt.Errorf("spool read: %w", err)
		}
		for _, e := range entries {
			q.push(e)
		}
		if len(entries) > 0 {
			read = entries[len(entries)-1].Index
		}
		return nil
	}
	for {
		if err := refill(); err != nil {
			return err
		}
		if q.n == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-l.opts.Spool.Appended():
			case <-time.After(time.Second):
				// Appended is a hint; re-read now and then regardless.
			}
			continue
		}
		if err := out.wait(ctx); err != nil {
			return err
		}
		// What arrived while the window was full goes in this batch.
		if err := refill(); err != nil {
			return err
		}
		entries, size := q.take(MaxBatchRecords, l.opts.BatchBytes)
		batch := wireBatch(l.batchID.Add(1), entries, flatOK)
		if len(batch.Records) == 1 && proto.Size(batch) > MaxBatchBytes {
			// The spool returns one record alone even when it is over
			// the budget. This agent's records are capped well below
			// it; one spooled by an older agent may not be. Trimmed, it
			// is delivered; as it was, it would be refused forever.
			if trimRecord(batch.Records[0]) {
				l.opts.Log.Warn("trimmed an oversize record spooled by an older agent", "job", batch.Records[0].JobId,
					"seq", batch.Records[0].Seq, "bytes", proto.Size(batch))
			}
		}
		l.opts.Log.Debug("sending batch", "batch", batch.BatchId, "records", len(batch.Records))
		out.add(sentBatch{id: batch.BatchId, entries: entries, bytes: size})
		if err := records.Write(batch); err != nil {
			return err
		}
	}
}

// streams is the sender's read-ahead: unsent spool entries, one queue per
// stream in spool order, and the streams that have any in round-robin
// order.
type streams struct {
	by   map[string]*streamQueue
	ring []*streamQueue
	next int // where the next batch starts in ring
	n    int // entries held
	// bytes is the entries' encoded size.
	bytes int
}

type streamQueue struct {
	id      string
	entries []spool.Entry
}

func newStreams() *streams { return &streams{by: map[string]*streamQueue{}} }

func (s *streams) push(e spool.Entry) {
	id := e.Record.GetJobId()
	sq := s.by[id]
	if sq == nil {
		sq = &streamQueue{id: id}
		s.by[id] = sq
		s.ring = append(s.ring, sq)
	}
	sq.entries = append(sq.entries, e)
	s.n++
	s.bytes += e.Size
}

// take cuts a batch of at most maxRecords entries and about maxBytes of
// encoded batch (one entry always, however big): round after round, each
// stream in turn gives up to an equal share of what room is left, in
// records and in bytes, and at least one record while the batch has room,
// starting one stream further than the last batch did. It returns the
// entries and the batch's encoded size.
func (s *streams) take(maxRecords, maxBytes int) ([]spool.Entry, int) {
	var out []spool.Entry
	size := 0
	encoded := func(extraRecs, extraBytes int) int {
		return size + extraBytes + (len(out)+extraRecs)*5 + 16
	}
	full := false
	for !full && len(s.ring) > 0 {
		shareRecs := max(1, (maxRecords-len(out))/len(s.ring))
		shareBytes := max(1, (maxBytes-encoded(0, 0))/len(s.ring))
		progressed := false
		for i := 0; i < len(s.ring) && !full; i++ {
			sq := s.ring[(s.next+i)%len(s.ring)]
			took, tookBytes := 0, 0
			for took < shareRecs && len(sq.entries) > 0 {
				e := sq.entries[0]
				if len(out) > 0 && (len(out) >= maxRecords || encoded(1, e.Size) > maxBytes) {
					full = true
					break
				}
				if took > 0 && tookBytes+e.Size > shareBytes {
					break
				}
				out = append(out, e)
				size += e.Size
				took++
				tookBytes += e.Size
				sq.entries[0] = spool.Entry{}
				sq.entries = sq.entries[1:]
				progressed = true
			}
		}
		s.compact()
		if !progressed {
			break
		}
	}
	if len(s.ring) > 0 {
		s.next = (s.next + 1) % len(s.ring)
	}
	s.n -= len(out)
	s.bytes -= size
	return out, encoded(0, 0)
}

// compact drops the streams that have nothing left from the ring, keeping
// the round-robin position on the same stream where it can.
func (s *streams) compact() {
	kept := s.ring[:0]
	next := 0
	for i, sq := range s.ring {
		if len(sq.entries) == 0 {
			delete(s.by, sq.id)
			continue
		}
		if i < s.next {
			next++
		}
		kept = append(kept, sq)
	}
	clear(s.ring[len(kept):])
	s.ring = kept
	s.next = 0
	if len(kept) > 0 {
		s.next = next % len(kept)
	}
}
