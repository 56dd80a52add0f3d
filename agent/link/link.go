// Package link is the agent's end of the QUIC link to the controller. It
// keeps one connection up (reconnecting with jittered backoff), says Hello,
// streams the spool in order and deletes records only once the controller
// has acked them after Raft commit. After a reconnect it replays everything
// unacked; the controller drops what it already has (invariant I3).
package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
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

// batchOverhead is what a batch's encoding adds to its records' own: per
// record a field tag and a length varint (under 4 MiB: at most 4 bytes),
// and the batch id. The spool is read within MaxBatchBytes less this, so
// the encoded batch stays within MaxBatchBytes.
const batchOverhead = MaxBatchRecords*5 + 16

var errRejected = errors.New("controller rejected hello")

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
}

// Link is the running link.
type Link struct {
	opts Options
	// tlsErr is why opts.TLS cannot be made to require a controller; Run
	// returns it.
	tlsErr    error
	connected atomic.Bool
	connects  atomic.Int64
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
		l.opts.Log.Warn("controller link down", "addr", addr, "err", err)
		if established {
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

	ctrl, err := l.hello(ctx, conn)
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
	defer l.connected.Store(false)
	l.opts.Log.Info("connected to controller", "addr", addr)

	g, gctx := errgroup.WithContext(ctx)
	window := make(chan struct{}, MaxInflight)
	g.Go(func() error { return l.readControl(ctrl) })
	g.Go(func() error { return l.readAcks(records, window) })
	g.Go(func() error { return l.send(gctx, records, window) })
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

func (l *Link) hello(ctx context.Context, conn *quic.Conn) (*wire.Stream, error) {
	qs, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("open control stream: %w", err)
	}
	ctrl, err := wire.Open(qs, wire.StreamControl)
	if err != nil {
		return nil, err
	}
	hello := l.opts.Handler.Hello()
	if err := ctrl.Write(&gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_Hello{Hello: hello}}); err != nil {
		return nil, err
	}
	var reply gantrypb.ControlMessage
	if err := ctrl.Read(&reply, 15*time.Second); err != nil {
		return nil, fmt.Errorf("waiting for hello reply: %w", err)
	}
	hr := reply.GetHelloReply()
	if hr == nil {
		return nil, fmt.Errorf("%w: unexpected %T", errRejected, reply.Msg)
	}
	if !hr.Ok {
		if hr.LeaderAddr != "" {
			return nil, redirectError{leader: hr.LeaderAddr}
		}
		return nil, fmt.Errorf("%w: %s", errRejected, hr.Error)
	}
	return ctrl, nil
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

func (l *Link) readAcks(records *wire.Stream, window chan struct{}) error {
	for {
		var ack gantrypb.BatchAck
		if err := records.Read(&ack, 0); err != nil {
			return fmt.Errorf("records stream: %w", err)
		}
		if ack.Error != "" {
			return fmt.Errorf("controller refused batch %d: %s", ack.BatchId, ack.Error)
		}
		if err := l.opts.Spool.Ack(ack.BatchId); err != nil {
			return fmt.Errorf("spool ack %d: %w", ack.BatchId, err)
		}
		l.opts.Handler.Acked(ack.BatchId)
		select {
		case <-window:
		default:
		}
	}
}

// send streams the spool from the oldest unacked record, in index order.
func (l *Link) send(ctx context.Context, records *wire.Stream, window chan struct{}) error {
	_, oldest, err := l.opts.Spool.Pending()
	if err != nil {
		return err
	}
	sent := uint64(0)
	if oldest > 0 {
		sent = oldest - 1
	}
	for {
		entries, err := l.opts.Spool.Read(sent, MaxBatchRecords, MaxBatchBytes-batchOverhead)
		if err != nil {
			return fmt.Errorf("spool read: %w", err)
		}
		if len(entries) == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-l.opts.Spool.Appended():
			case <-time.After(time.Second):
				// Appended is a hint; re-read now and then regardless.
			}
			continue
		}
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		batch := &gantrypb.RecordBatch{BatchId: entries[len(entries)-1].Index, Records: make([]*gantrypb.Record, len(entries))}
		for i, e := range entries {
			batch.Records[i] = e.Record
		}
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
		if err := records.Write(batch); err != nil {
			return err
		}
		sent = batch.BatchId
	}
}
