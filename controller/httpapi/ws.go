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
	// wsReadBuffer is a watcher's read buffer. Clients send only pongs and
	// close frames (control payloads are at most 125 bytes); anything
	// longer is read through it in pieces and discarded.
	wsReadBuffer   = 256
	wsSocketBuffer = 64 << 10
	snapshotPoints = 500
	playbackPage   = 1000
	// CloseTryAgainLater (1013) tells a watcher it fell too far behind.
	closeTryAgainLater = 1013
)

// The keep-alive: a watcher that answers no ping for wsPongWait is taken
// for dead. Variables only so that tests can shorten them; New copies them.
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
// returned. While idle it costs one goroutine, the reader, parked in the
// runtime's netpoller until a pong or close frame comes (I1: it holds no
// store handle, and the HTTP server's request, buffers and goroutine are
// gone). Frames are written by a flusher goroutine that exists only while
// something is waiting to be written: the hub's notify and the ping timer
// start it, and it ends when it finds nothing left. Only the flusher
// writes data frames, so writes never interleave.
//
// Teardown has one owner, the reader: every way out (the peer leaves or
// goes silent past the pong wait, a write fails and closes the socket, a
// close frame was sent and the peer answered or the close wait passed)
// ends its read, and then it releases the subscription, the timer and the
// socket.
type watcher struct {
	a    *API
	id   string
	ws   *websocket.Conn
	sub  *hub.Sub
	ping *time.Timer

	lastSeq uint64 // the highest point seq sent; flusher only

	closing atomic.Bool // a close frame is out: pongs no longer extend the read deadline

	mu       sync.Mutex
	running  bool // a flusher (or the handler) owns the writes
	again    bool // something arrived while it ran
	pingDue  bool
	shutdown bool // the server is shutting down
	finished bool // no more writes: closing or closed
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
	wt := &watcher{a: a, id: r.PathValue("id"), ws: ws, running: true}
	ws.SetPongHandler(func(string) error {
		if wt.closing.Load() {
			return nil
		}
		return ws.SetReadDeadline(time.Now().Add(a.pongWait))
	})
	wt.sub = a.opts.Hub.SubscribeFunc(a.opts.WatchQueue, wt.kick, hub.JobTopic(wt.id))
	wt.mu.Lock()
	wt.ping = time.AfterFunc(a.pingPeriod, wt.pingTick)
	wt.mu.Unlock()
	a.addWatcher(wt)
	go wt.read()

	snap, err := a.snapshot(wt.id)
	if err != nil {
		code, reason := websocket.CloseInternalServerErr, "snapshot failed"
		if errors.Is(err, store.ErrNotFound) {
			code, reason = apiv1.CloseUnknownJob, "unknown job"
		} else {
			a.opts.Log.Error("live: snapshot", "job", wt.id, "err", err)
		}
		if err := writeFrame(ws, apiv1.Frame{Type: apiv1.FrameError, Error: err.Error()}); err != nil {
			wt.abort(err)
			return
		}
		wt.close(code, reason)
		return
	}
	if snap.Job.Node != "" {
		wt.sub.Add(hub.NodeTopic(snap.Job.Node))
	}
	if err := writeFrame(ws, snap.frame); err != nil {
		wt.abort(err)
		return
	}
	if lifecycle.IsTerminalName(snap.Job.State) {
		if err := writeFrame(ws, apiv1.Frame{Type: apiv1.FrameFinal, Job: snap.Job}); err != nil {
			wt.abort(err)
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

// read is the watcher's one lasting goroutine: it processes pongs and
// close frames (clients have nothing else to say; data is discarded, an
// oversize message ends the connection) and tears the watcher down when
// the connection ends.
func (w *watcher) read() {
	var err error
	for err == nil {
		err = discardMessage(w.ws)
	}
	w.a.opts.Log.Debug("live: watcher gone", "job", w.id, "err", err)
	w.mu.Lock()
	w.finished = true
	w.ping.Stop()
	w.mu.Unlock()
	w.sub.Close()
	_ = w.ws.Close()
	w.a.removeWatcher(w)
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

// kick makes sure a flusher will look at the watcher: it starts one, or
// tells the running one to look again. It never blocks (the hub calls it
// on the publisher's goroutine).
func (w *watcher) kick() {
	w.mu.Lock()
	if w.running || w.finished {
		w.again = w.running
		w.mu.Unlock()
		return
	}
	w.running = true
	w.mu.Unlock()
	go w.flush()
}

func (w *watcher) pingTick() {
	w.mu.Lock()
	w.pingDue = true
	w.mu.Unlock()
	w.kick()
}

// flush writes until nothing is waiting, then gives up the writes.
func (w *watcher) flush() {
	for {
		if !w.writeWaiting() {
			return
		}
		w.mu.Lock()
		if !w.again {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.again = false
		w.mu.Unlock()
	}
}

// writeWaiting writes a due close, ping and the queued frames; false when
// the watcher is done with writing.
func (w *watcher) writeWaiting() bool {
	w.mu.Lock()
	ping, shutdown := w.pingDue, w.shutdown
	w.pingDue = false
	w.mu.Unlock()
	if shutdown {
		w.close(websocket.CloseGoingAway, "server shutting down")
		return false
	}
	if w.dropped() {
		return false
	}
	if ping {
		_ = w.ws.SetWriteDeadline(time.Now().Add(wsWriteWait))
		if err := w.ws.WriteMessage(websocket.PingMessage, nil); err != nil {
			w.abort(fmt.Errorf("websocket ping: %w", err))
			return false
		}
		w.mu.Lock()
		if !w.finished {
			w.ping.Reset(w.a.pingPeriod)
		}
		w.mu.Unlock()
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
			w.abort(err)
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

// abort ends a watcher whose write failed: closing the socket ends the
// reader, which releases the rest.
func (w *watcher) abort(err error) {
	w.mu.Lock()
	w.finished = true
	w.mu.Unlock()
	w.a.opts.Log.Debug("live: watcher write failed", "job", w.id, "err", err)
	_ = w.ws.Close()
}

// close sends a close frame and leaves the rest to the reader: it ends
// when the peer answers, or at the latest after wsCloseWait.
func (w *watcher) close(code int, reason string) {
	w.mu.Lock()
	w.finished = true
	w.mu.Unlock()
	w.closing.Store(true)
	msg := websocket.FormatCloseMessage(code, reason)
	if err := w.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wsCloseWait)); err != nil {
		w.abort(fmt.Errorf("websocket close: %w", err))
		return
	}
	_ = w.ws.SetReadDeadline(time.Now().Add(wsCloseWait))
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
		job := view.Job(j)
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
