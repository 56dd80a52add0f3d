package httpapi

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/hub"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/controller/view"
	"github.com/gantry-ml/gantry/lifecycle"
)

// WebSocket timings and limits.
const (
	wsWriteWait      = 10 * time.Second
	wsCloseWait      = time.Second // for the peer's answer to our close frame
	wsMaxClientBytes = 4096
	// wsReadBuffer is the read buffer of connections read through
	// gorilla (TLS watchers, playback). Clients send only pongs and close
	// frames (control payloads are at most 125 bytes); anything longer is
	// read through it in pieces and discarded.
	wsReadBuffer   = 256
	wsSocketBuffer = 64 << 10
	snapshotPoints = 500
	playbackPage   = 1000
	// CloseTryAgainLater (1013) tells a watcher it fell too far behind.
	closeTryAgainLater = 1013
)

// The keep-alive: a ping every wsPingPeriod, and a watcher that has
// answered none for wsPongWait is taken for dead at the next tick.
// Variables only so that tests can shorten them; New copies them.
var (
	wsPongWait   = 30 * time.Second
	wsPingPeriod = wsPongWait * 9 / 10
)

// wsWriteBuffers is shared by every WebSocket connection. A buffer is held
// only while one frame is written, so an idle watcher holds none.
var wsWriteBuffers sync.Pool

func (a *API) upgrader() *websocket.Upgrader {
	return &websocket.Upgrader{
		// A small read buffer of the watcher's own: the HTTP server's
		// 4 KiB reader and writer are released with the handler's
		// goroutine once the watcher is set up.
		ReadBufferSize:  wsReadBuffer,
		WriteBufferSize: 4096,
		WriteBufferPool: &wsWriteBuffers,
		CheckOrigin:     a.checkOrigin,
	}
}

// checkOrigin allows clients without an Origin (CLI, scripts), the
// controller's own pages, and configured origins.
func (a *API) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	return slices.Contains(a.opts.AllowedOrigins, origin)
}

// upgrade makes r a WebSocket with its limits, a small kernel send buffer
// and the first read deadline.
func (a *API) upgrade(w http.ResponseWriter, r *http.Request) (*websocket.Conn, bool) {
	ws, err := a.upgrader().Upgrade(w, r, nil)
	if err != nil {
		return nil, false // Upgrade already answered with an HTTP error
	}
	conn := ws.UnderlyingConn()
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn() // HTTPS: the socket under TLS
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		// A fixed, small kernel send buffer (no autotuning to megabytes):
		// ten thousand watchers must not pin gigabytes of socket memory,
		// and a stalled one must show up as a lagging subscriber soon.
		_ = tcp.SetWriteBuffer(wsSocketBuffer)
	}
	// The server's ReadTimeout and WriteTimeout do not end a watcher:
	// Upgrade clears the hijacked connection's deadlines, and from here on
	// the read deadline (pongs) and each write's deadline are set here.
	ws.SetReadLimit(wsMaxClientBytes)
	_ = ws.SetReadDeadline(time.Now().Add(a.pongWait))
	return ws, true
}

// writeData writes one text frame under its own deadline.
func writeData(ws *websocket.Conn, data []byte) error {
	_ = ws.SetWriteDeadline(time.Now().Add(wsWriteWait))
	if err := ws.WriteMessage(websocket.TextMessage, data); err != nil {
		return fmt.Errorf("websocket write: %w", err)
	}
	return nil
}

func writeFrame(ws *websocket.Conn, f apiv1.Frame) error {
	data, err := f.Encode()
	if err != nil {
		return fmt.Errorf("encode %s frame: %w", f.Type, err)
	}
	return writeData(ws, data)
}

// watcher is one live view (WS /v1/jobs/{id}/live) once its handler has
// returned (I1: it holds no store handle, and the HTTP server's request,
// buffers and goroutine are gone). An idle watcher has no goroutine: on
// plain TCP the process's one readPoller reads its socket when the client
// sends something (pongs, close frames); over TLS, which the poller cannot
// read, a reader goroutine does. Frames are written by a flusher goroutine
// that exists only while something is waiting to be written: the hub's
// notify, the ping timer and the poller start it, and it ends when it
// finds nothing left. Only the flusher writes data frames, so writes never
// interleave, and each write has its own deadline.
//
// Every way out ends in teardown, which runs once and is the only place
// the socket is closed (after the poller has forgotten its descriptor):
// the client leaves or breaks the protocol, answers no ping for the pong
// wait, a write fails, or a close frame was sent and the client answered
// or the close wait passed.
type watcher struct {
	a   *API
	id  string
	ws  *websocket.Conn
	sub *hub.Sub

	// Polled reading (plain TCP): the raw socket, its descriptor in the
	// poller (-1 with a reader goroutine instead), and the parser, which
	// only the poller's goroutine touches.
	poller *readPoller
	rc     syscall.RawConn
	fd     int
	frames clientFrames

	lastSeq  uint64       // the highest point seq sent; flusher only
	lastPong atomic.Int64 // unix nanoseconds of the last pong (or the start)
	closing  atomic.Bool  // a close frame is out: pongs no longer extend the read deadline
	once     sync.Once    // teardown

	mu         sync.Mutex
	ping       *time.Timer
	closeTimer *time.Timer
	running    bool   // a flusher (or the handler) owns the writes
	again      bool   // something arrived while it ran
	pingDue    bool   // the ping timer fired
	pong       []byte // the client pinged: answer with this payload
	pongDue    bool
	closeCode  int    // the client earned a close (1002, 1009)
	peerClosed bool   // the client sent a close frame: answer it and end
	peerCode   []byte // its status code, if it gave one
	shutdown   bool   // the server is shutting down
	finished   bool   // no more writes: closing or closed
}

// live serves WS /v1/jobs/{id}/live: subscribe first, then a snapshot read
// in one short transaction, then live frames with nothing missed and nothing
// repeated (points are filtered by seq against the snapshot).
func (a *API) live(w http.ResponseWriter, r *http.Request) {
	ws, ok := a.upgrade(w, r)
	if !ok {
		return
	}
	// The handler owns the writes (running) until it has sent the
	// snapshot, so frames published meanwhile wait for it.
	wt := &watcher{a: a, id: r.PathValue("id"), ws: ws, fd: -1, running: true}
	wt.lastPong.Store(time.Now().UnixNano())
	ws.SetPongHandler(func(string) error {
		if wt.closing.Load() {
			return nil
		}
		wt.lastPong.Store(time.Now().UnixNano())
		return ws.SetReadDeadline(time.Now().Add(a.pongWait))
	})
	wt.sub = a.opts.Hub.SubscribeFunc(a.opts.WatchQueue, wt.kick, hub.JobTopic(wt.id))
	wt.mu.Lock()
	wt.ping = time.AfterFunc(a.pingPeriod, wt.pingTick)
	wt.mu.Unlock()
	a.addWatcher(wt)
	if err := wt.poll(); err != nil {
		a.opts.Log.Debug("live: reading with a goroutine", "job", wt.id, "why", err)
		go wt.read()
	}

	snap, err := a.snapshot(wt.id)
	if err != nil {
		code, reason := websocket.CloseInternalServerErr, "snapshot failed"
		if errors.Is(err, store.ErrNotFound) {
			code, reason = apiv1.CloseUnknownJob, "unknown job"
		} else {
			a.opts.Log.Error("live: snapshot", "job", wt.id, "err", err)
		}
		if err := writeFrame(ws, apiv1.Frame{Type: apiv1.FrameError, Error: err.Error()}); err != nil {
			wt.teardown(err)
			return
		}
		wt.close(code, reason)
		return
	}
	if snap.Job.Node != "" {
		wt.sub.Add(hub.NodeTopic(snap.Job.Node))
	}
	if err := writeFrame(ws, snap.frame); err != nil {
		wt.teardown(err)
		return
	}
	if lifecycle.IsTerminalName(snap.Job.State) {
		if err := writeFrame(ws, apiv1.Frame{Type: apiv1.FrameFinal, Job: snap.Job}); err != nil {
			wt.teardown(err)
			return
		}
		wt.close(websocket.CloseNormalClosure, "job ended")
		return
	}
	wt.lastSeq = snap.lastSeq
	// Send what came meanwhile, then hand the writes to future flushers
	// and let this goroutine and the HTTP server's state go.
	wt.flush()
}

// poll hands the watcher's socket to the shared poller; an error means it
// needs a reader goroutine (TLS, or no poller).
func (w *watcher) poll() error {
	tcp, ok := w.ws.UnderlyingConn().(*net.TCPConn)
	if !ok {
		return errors.New("not a plain TCP connection")
	}
	p, err := sharedPoller()
	if err != nil {
		return err
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		return fmt.Errorf("raw connection: %w", err)
	}
	fd := -1
	if err := rc.Control(func(s uintptr) { fd = int(s) }); err != nil {
		return fmt.Errorf("raw connection: %w", err)
	}
	// Nothing reads through the runtime's poller any more, and its read
	// deadline would fail the poller's raw reads: the keep-alive is
	// pingTick's.
	if err := tcp.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear read deadline: %w", err)
	}
	w.poller, w.rc, w.fd = p, rc, fd
	if err := p.add(fd, w); err != nil {
		w.poller, w.rc, w.fd = nil, nil, -1
		return err
	}
	return nil
}

// pollRead is called on the poller's goroutine when the socket has bytes
// (or ended). It never blocks: one non-blocking read, then what it holds is
// handed to the flusher.
func (w *watcher) pollRead(buf []byte) {
	var n int
	var rerr error
	err := w.rc.Read(func(fd uintptr) bool {
		n, rerr = syscall.Read(int(fd), buf)
		return true // done: never wait in the runtime's poller
	})
	if err == nil {
		err = rerr
	}
	switch {
	case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR):
		return
	case err != nil:
		w.teardown(fmt.Errorf("read: %w", err))
		return
	case n == 0:
		w.teardown(io.EOF)
		return
	}
	code := w.frames.feed(buf[:n], wsMaxClientBytes, w.control)
	if code != 0 {
		w.mu.Lock()
		if w.closeCode == 0 {
			w.closeCode = code
		}
		w.mu.Unlock()
		w.kick()
	}
}

// control handles a client's control frame read by the poller.
func (w *watcher) control(op byte, payload []byte) {
	switch op {
	case opPong:
		if !w.closing.Load() {
			w.lastPong.Store(time.Now().UnixNano())
		}
		return
	case opPing:
		w.mu.Lock()
		w.pong, w.pongDue = append(w.pong[:0], payload...), true
		w.mu.Unlock()
	case opClose:
		if w.closing.Load() {
			w.teardown(nil) // the answer to ours
			return
		}
		w.mu.Lock()
		w.peerClosed = true
		if len(payload) >= 2 {
			w.peerCode = append([]byte(nil), payload[:2]...) // echoed, as RFC 6455 asks
		}
		w.mu.Unlock()
	}
	w.kick()
}

// read is the reader goroutine of a watcher the poller cannot read (TLS):
// it processes pongs and close frames (clients have nothing else to say;
// data is discarded, an oversize message ends the connection) until the
// connection ends.
func (w *watcher) read() {
	var err error
	for err == nil {
		err = discardMessage(w.ws)
	}
	w.teardown(err)
}

// discardMessage reads one client message to its end, processing the
// control frames before it. The message is read, not skipped: the read
// limit counts a fragmented message's frames only as they are read.
func discardMessage(ws *websocket.Conn) error {
	_, r, err := ws.NextReader()
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, r)
	return err
}

// teardown releases everything the watcher holds, once.
func (w *watcher) teardown(err error) {
	w.once.Do(func() {
		w.mu.Lock()
		w.finished = true
		w.ping.Stop()
		if w.closeTimer != nil {
			w.closeTimer.Stop()
		}
		w.mu.Unlock()
		if w.poller != nil {
			if perr := w.poller.remove(w.fd); perr != nil {
				w.a.opts.Log.Warn("live: poller", "job", w.id, "err", perr)
			}
		}
		w.sub.Close()
		_ = w.ws.Close()
		w.a.removeWatcher(w)
		w.a.opts.Log.Debug("live: watcher gone", "job", w.id, "err", err)
	})
}

// kick makes sure a flusher will look at the watcher: it starts one, or
// tells the running one to look again. It never blocks (the hub calls it
// on the publisher's goroutine, the poller on its own).
func (w *watcher) kick() {
	w.mu.Lock()
	if w.running || w.finished {
		w.again = w.running
		w.mu.Unlock()
		return
	}
	w.running = true
	w.mu.Unlock()
	w.a.startFlusher(w)
}

// flusherIdle is how long a flusher goroutine waits for another watcher
// to flush before it ends. Reusing warm flushers through a fan-out burst
// spares ten thousand goroutine starts and stack growths per frame; the
// wait is short so that idle watchers soon cost no goroutine again.
const flusherIdle = 500 * time.Millisecond

// startFlusher hands w to an idle flusher goroutine, or starts one. A
// flusher blocked on a slow watcher's write never delays another watcher:
// there is always a new goroutine when no idle one takes the work.
func (a *API) startFlusher(w *watcher) {
	select {
	case a.flushWork <- w:
	default:
		go a.runFlusher(w)
	}
}

func (a *API) runFlusher(w *watcher) {
	idle := time.NewTimer(flusherIdle)
	defer idle.Stop()
	for {
		if !w.flush() {
			// A watcher that ended (a close answered, a failed write)
			// announces no burst to come: watchers leaving together
			// leave no idle flushers behind.
			return
		}
		idle.Reset(flusherIdle)
		select {
		case w = <-a.flushWork:
		case <-idle.C:
			return
		}
	}
}

// pingTick runs every ping period: a client that answered no ping for the
// pong wait is taken for dead; else a ping is due.
func (w *watcher) pingTick() {
	if silent := time.Since(time.Unix(0, w.lastPong.Load())); silent > w.a.pongWait {
		w.teardown(fmt.Errorf("no pong for %s", silent.Round(time.Millisecond)))
		return
	}
	w.mu.Lock()
	if w.finished {
		w.mu.Unlock()
		return
	}
	w.pingDue = true
	w.ping.Reset(w.a.pingPeriod)
	w.mu.Unlock()
	w.kick()
}

// flush writes until nothing is waiting, then gives up the writes; false
// when the watcher is done with writing (closing or closed).
func (w *watcher) flush() bool {
	for {
		if !w.writeWaiting() {
			return false
		}
		w.mu.Lock()
		if !w.again {
			w.running = false
			w.mu.Unlock()
			return true
		}
		w.again = false
		w.mu.Unlock()
	}
}

// writeWaiting writes what is due: an answer to the client's close, a
// close it earned, the shutdown's, a pong, a ping and the queued frames.
// False when the watcher is done with writing.
func (w *watcher) writeWaiting() bool {
	w.mu.Lock()
	peerClosed, peerCode, code, shutdown := w.peerClosed, w.peerCode, w.closeCode, w.shutdown
	ping, pongDue := w.pingDue, w.pongDue
	pong := w.pong
	w.pingDue, w.pongDue, w.pong = false, false, nil
	w.mu.Unlock()
	switch {
	case peerClosed:
		w.closing.Store(true)
		err := w.ws.WriteControl(websocket.CloseMessage, peerCode, time.Now().Add(wsCloseWait))
		w.teardown(err)
		return false
	case code != 0:
		w.close(code, "")
		return false
	case shutdown:
		w.close(websocket.CloseGoingAway, "server shutting down")
		return false
	}
	if w.dropped() {
		return false
	}
	if pongDue {
		_ = w.ws.SetWriteDeadline(time.Now().Add(wsWriteWait))
		if err := w.ws.WriteMessage(websocket.PongMessage, pong); err != nil {
			w.teardown(fmt.Errorf("websocket pong: %w", err))
			return false
		}
	}
	if ping {
		_ = w.ws.SetWriteDeadline(time.Now().Add(wsWriteWait))
		if err := w.ws.WriteMessage(websocket.PingMessage, nil); err != nil {
			w.teardown(fmt.Errorf("websocket ping: %w", err))
			return false
		}
	}
	for !w.dropped() {
		m, ok := w.sub.Next()
		if !ok {
			return true
		}
		if m.Kind == apiv1.FrameMetrics {
			if m.MaxSeq <= w.lastSeq {
				continue // already in the snapshot
			}
			if len(m.Points) > 0 && m.Points[0].Seq <= w.lastSeq {
				// A coalesced frame straddling the snapshot: send
				// only what the snapshot did not have.
				m.Data = encodeNewPoints(m.Points, w.lastSeq)
			}
			w.lastSeq = m.MaxSeq
		}
		if m.Kind == apiv1.FrameState && m.Node != "" {
			w.sub.Add(hub.NodeTopic(m.Node))
		}
		if err := writeData(w.ws, m.Data); err != nil {
			w.teardown(err)
			return false
		}
		if m.Terminal {
			w.close(websocket.CloseNormalClosure, "job ended")
			return false
		}
	}
	return false // dropped, and closed
}

// dropped closes the watcher with 1013 if the hub dropped it for falling
// too far behind. Delivering what is still queued would only delay the
// close; the watcher reconnects and gets a fresh snapshot.
func (w *watcher) dropped() bool {
	select {
	case <-w.sub.Dropped():
		w.close(closeTryAgainLater, "watcher too slow: reconnect for a fresh snapshot")
		return true
	default:
		return false
	}
}

// close sends a close frame and leaves the end to the client's answer or,
// at the latest, the close wait.
func (w *watcher) close(code int, reason string) {
	w.mu.Lock()
	w.finished = true
	w.mu.Unlock()
	w.closing.Store(true)
	msg := websocket.FormatCloseMessage(code, reason)
	if err := w.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wsCloseWait)); err != nil {
		w.teardown(fmt.Errorf("websocket close: %w", err))
		return
	}
	w.mu.Lock()
	w.closeTimer = time.AfterFunc(wsCloseWait, func() { w.teardown(errors.New("no answer to the close frame")) })
	w.mu.Unlock()
}

func (a *API) addWatcher(w *watcher) {
	a.watchers.Add(1)
	a.liveMu.Lock()
	a.liveViews[w] = struct{}{}
	a.liveMu.Unlock()
}

func (a *API) removeWatcher(w *watcher) {
	a.liveMu.Lock()
	delete(a.liveViews, w)
	a.liveMu.Unlock()
	a.watchers.Add(-1)
}

// closeWatchers tells every live watcher that the server is going away
// (close 1001). The HTTP server no longer tracks hijacked connections, so
// its Shutdown calls this (RegisterOnShutdown).
func (a *API) closeWatchers() {
	a.liveMu.Lock()
	ws := make([]*watcher, 0, len(a.liveViews))
	for w := range a.liveViews {
		ws = append(ws, w)
	}
	a.liveMu.Unlock()
	for _, w := range ws {
		w.mu.Lock()
		w.shutdown = true
		w.mu.Unlock()
		w.kick()
	}
}

// encodeNewPoints encodes a metrics frame of the points after seq.
func encodeNewPoints(points []apiv1.Point, after uint64) []byte {
	i := sort.Search(len(points), func(i int) bool { return points[i].Seq > after })
	data, _ := apiv1.Frame{Type: apiv1.FrameMetrics, Points: points[i:]}.Encode() // points encoded fine once already
	return data
}

type liveSnapshot struct {
	Job     *apiv1.Job
	frame   apiv1.Frame
	lastSeq uint64
}

// snapshot reads the job, its recent points and its node's latest GPU
// sample in one read transaction, closed before anything is written.
func (a *API) snapshot(id string) (liveSnapshot, error) {
	var s liveSnapshot
	err := a.opts.Store.View(func(tx *store.Tx) error {
		j, err := tx.Job(id)
		if err != nil {
			return err
		}
		job, err := jobView(tx, j)
		if err != nil {
			return err
		}
		s.Job = &job
		pts, err := tx.LastPoints(id, snapshotPoints)
		if err != nil {
			return err
		}
		s.frame = apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &job, Points: view.Points(pts)}
		if len(pts) > 0 {
			s.lastSeq = pts[len(pts)-1].Seq
		}
		if j.Node != "" {
			samples, err := tx.GPUSamples(j.Node, 1)
			if err != nil {
				return err
			}
			if len(samples) == 1 {
				g := view.GPUSample(samples[0])
				s.frame.GPU = &g
			}
		}
		return nil
	})
	return s, err
}

// playback serves WS /v1/jobs/{id}/playback?after=SEQ: every stored point
// after SEQ in pages, each read in its own short transaction, then close.
// It is short-lived, so it keeps its handler goroutine (which writes) and
// a reader goroutine for pongs and the peer going away.
func (a *API) playback(w http.ResponseWriter, r *http.Request) {
	after, err := queryUint(r, "after", 0)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	id := r.PathValue("id")
	ws, ok := a.upgrade(w, r)
	if !ok {
		return
	}
	a.watchers.Add(1)
	defer a.watchers.Add(-1)
	ws.SetPongHandler(func(string) error { return ws.SetReadDeadline(time.Now().Add(a.pongWait)) })
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		var err error
		for err == nil {
			err = discardMessage(ws)
		}
	}()
	defer func() {
		_ = ws.Close()
		<-gone
	}()
	closeWith := func(code int, reason string) {
		msg := websocket.FormatCloseMessage(code, reason)
		if err := ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wsCloseWait)); err != nil {
			return // the deferred Close ends it
		}
		select {
		case <-gone:
		case <-time.After(wsCloseWait):
		}
	}
	for {
		page, err := a.readPoints(id, after, playbackPage)
		if err != nil {
			code := websocket.CloseInternalServerErr
			if errors.Is(err, store.ErrNotFound) {
				code = apiv1.CloseUnknownJob
			}
			if err := writeFrame(ws, apiv1.Frame{Type: apiv1.FrameError, Error: err.Error()}); err != nil {
				return
			}
			closeWith(code, "playback failed")
			return
		}
		if len(page.Points) == 0 {
			closeWith(websocket.CloseNormalClosure, "end of stored points")
			return
		}
		if err := writeFrame(ws, apiv1.Frame{Type: apiv1.FramePoints, Points: page.Points}); err != nil {
			a.opts.Log.Debug("playback: write failed", "job", id, "err", err)
			return
		}
		after = page.Next
		select {
		case <-gone:
			return
		default:
		}
	}
}
