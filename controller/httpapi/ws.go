package httpapi

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
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
	wsPongWait       = 30 * time.Second
	wsPingPeriod     = wsPongWait * 9 / 10
	wsMaxClientBytes = 4096
	wsSocketBuffer   = 64 << 10
	snapshotPoints   = 500
	playbackPage     = 1000
	// CloseTryAgainLater (1013) tells a watcher it fell too far behind.
	closeTryAgainLater = 1013
)

// wsWriteBuffers is shared by every WebSocket connection.
var wsWriteBuffers sync.Pool

func (a *API) upgrader() *websocket.Upgrader {
	return &websocket.Upgrader{
		// Size 0 reuses the HTTP server's 4 KiB read buffer instead of
		// allocating another; write buffers come from a pool and are held
		// only while a frame is being written, so an idle watcher keeps
		// none (I1, and the memory-per-watcher budget).
		ReadBufferSize:  0,
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

// watcherConn is one WebSocket with its own reader goroutine. Only the
// handler goroutine writes.
type watcherConn struct {
	ws     *websocket.Conn
	closed chan struct{} // closed when the reader sees the peer go away
}

func (a *API) accept(w http.ResponseWriter, r *http.Request) (*watcherConn, bool) {
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
	// the read deadline (pongs) and each write's deadline are set below.
	c := &watcherConn{ws: ws, closed: make(chan struct{})}
	ws.SetReadLimit(wsMaxClientBytes)
	_ = ws.SetReadDeadline(time.Now().Add(wsPongWait))
	ws.SetPongHandler(func(string) error { return ws.SetReadDeadline(time.Now().Add(wsPongWait)) })
	go func() {
		defer close(c.closed)
		for {
			// Clients have nothing to say; reading processes pongs and
			// close frames, and an oversize message ends the connection.
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	return c, true
}

func (c *watcherConn) write(data []byte) error {
	_ = c.ws.SetWriteDeadline(time.Now().Add(wsWriteWait))
	return c.ws.WriteMessage(websocket.TextMessage, data)
}

func (c *watcherConn) writeFrame(f apiv1.Frame) error {
	data, err := f.Encode()
	if err != nil {
		return err
	}
	return c.write(data)
}

// close sends a close frame and waits briefly for the peer's close.
func (c *watcherConn) close(code int, reason string) {
	msg := websocket.FormatCloseMessage(code, reason)
	_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	select {
	case <-c.closed:
	case <-time.After(time.Second):
	}
	_ = c.ws.Close()
	<-c.closed
}

// live serves WS /v1/jobs/{id}/live: subscribe first, then a snapshot read
// in one short transaction, then live frames with nothing missed and nothing
// repeated (points are filtered by seq against the snapshot).
func (a *API) live(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	c, ok := a.accept(w, r)
	if !ok {
		return
	}
	a.watchers.Add(1)
	defer a.watchers.Add(-1)

	sub := a.opts.Hub.Subscribe(a.opts.WatchQueue, hub.JobTopic(id))
	defer sub.Close()

	snap, err := a.snapshot(id)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			_ = c.writeFrame(apiv1.Frame{Type: apiv1.FrameError, Error: err.Error()})
			c.close(apiv1.CloseUnknownJob, "unknown job")
			return
		}
		a.opts.Log.Error("live: snapshot", "job", id, "err", err)
		_ = c.writeFrame(apiv1.Frame{Type: apiv1.FrameError, Error: err.Error()})
		c.close(websocket.CloseInternalServerErr, "snapshot failed")
		return
	}
	if snap.Job.Node != "" {
		sub.Add(hub.NodeTopic(snap.Job.Node))
	}
	if err := c.writeFrame(snap.frame); err != nil {
		c.close(websocket.CloseGoingAway, "write failed")
		return
	}
	if lifecycle.IsTerminalName(snap.Job.State) {
		if err := c.writeFrame(apiv1.Frame{Type: apiv1.FrameFinal, Job: snap.Job}); err == nil {
			c.close(websocket.CloseNormalClosure, "job ended")
		}
		return
	}
	lastSeq := snap.lastSeq

	ping := time.NewTicker(wsPingPeriod)
	defer ping.Stop()
	for {
		select {
		case <-c.closed:
			_ = c.ws.Close()
			return
		case <-r.Context().Done():
			c.close(websocket.CloseGoingAway, "server shutting down")
			return
		case <-sub.Dropped():
			// Deliver what is queued would only delay the close; the
			// watcher reconnects and gets a fresh snapshot.
			c.close(closeTryAgainLater, "watcher too slow: reconnect for a fresh snapshot")
			return
		case <-ping.C:
			_ = c.ws.SetWriteDeadline(time.Now().Add(wsWriteWait))
			if err := c.ws.WriteMessage(websocket.PingMessage, nil); err != nil {
				_ = c.ws.Close()
				<-c.closed
				return
			}
		case <-sub.Ready():
			for {
				m, ok := sub.Next()
				if !ok {
					break
				}
				if m.Kind == apiv1.FrameMetrics {
					if m.MaxSeq <= lastSeq {
						continue // already in the snapshot
					}
					if len(m.Points) > 0 && m.Points[0].Seq <= lastSeq {
						// A coalesced frame straddling the snapshot: send
						// only what the snapshot did not have.
						m.Data = encodeNewPoints(m.Points, lastSeq)
					}
					lastSeq = m.MaxSeq
				}
				if m.Kind == apiv1.FrameState && m.Node != "" {
					sub.Add(hub.NodeTopic(m.Node))
				}
				if err := c.write(m.Data); err != nil {
					_ = c.ws.Close()
					<-c.closed
					return
				}
				if m.Terminal {
					c.close(websocket.CloseNormalClosure, "job ended")
					return
				}
			}
		}
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
func (a *API) playback(w http.ResponseWriter, r *http.Request) {
	after, err := queryUint(r, "after", 0)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	id := r.PathValue("id")
	c, ok := a.accept(w, r)
	if !ok {
		return
	}
	a.watchers.Add(1)
	defer a.watchers.Add(-1)
	for {
		page, err := a.readPoints(id, after, playbackPage)
		if err != nil {
			code := websocket.CloseInternalServerErr
			if errors.Is(err, store.ErrNotFound) {
				code = apiv1.CloseUnknownJob
			}
			_ = c.writeFrame(apiv1.Frame{Type: apiv1.FrameError, Error: err.Error()})
			c.close(code, "playback failed")
			return
		}
		if len(page.Points) == 0 {
			c.close(websocket.CloseNormalClosure, "end of stored points")
			return
		}
		if err := c.writeFrame(apiv1.Frame{Type: apiv1.FramePoints, Points: page.Points}); err != nil {
			_ = c.ws.Close()
			<-c.closed
			return
		}
		after = page.Next
		select {
		case <-c.closed:
			return
		default:
		}
	}
}
