package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/internal/ctxwait"
)

const (
	// maxFrameBytes caps one WebSocket message. A snapshot carries a page of
	// recent points, which is the largest frame the server sends; anything
	// far beyond that is a broken or hostile peer.
	maxFrameBytes = 16 << 20
	// controlWait bounds writing a pong or close frame, so a stuck peer
	// cannot hold Watch past its context.
	controlWait = 5 * time.Second
)

// Watch streams the live frames of a job (WS /v1/jobs/{id}/live) to fn, in
// the order the server sent them, until:
//   - the server closes normally (1000, after the "final" frame): nil;
//   - ctx ends: ctx.Err();
//   - the job is unknown ("error" frame, close 4404 or a 404 handshake): an
//     error matching ErrUnknownJob;
//   - fn returns an error: that error, after closing the connection;
//   - anything else (connection lost, other close codes): that error.
//
// A clean return does not by itself mean a "final" frame was seen; callers
// that need the final state track it in fn.
func (c *Client) Watch(ctx context.Context, id string, fn func(apiv1.Frame) error) error {
	conn, err := c.dialLive(ctx, id)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetReadLimit(maxFrameBytes)
	if c.idleTimeout > 0 {
		// Any frame or ping proves the peer alive; see the ping handler.
		if err := conn.SetReadDeadline(time.Now().Add(c.idleTimeout)); err != nil {
			return fmt.Errorf("watch job %s: %w", id, err)
		}
		conn.SetPingHandler(func(data string) error {
			if err := conn.SetReadDeadline(time.Now().Add(c.idleTimeout)); err != nil {
				return err
			}
			return writePong(conn, data)
		})
	}

	// Unblock the read loop when ctx ends. Close and WriteControl are the
	// two gorilla methods safe to call concurrently with a reader.
	stop := make(chan struct{})
	stopped := make(chan struct{})
	defer func() { close(stop); <-stopped }()
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
			msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "client gone")
			_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(controlWait)) // best effort: we close the socket next anyway
			_ = conn.Close()
		case <-stop:
		}
	}()

	var serverErr string // message of an "error" frame, reported with the close that follows
	for {
		_, data, err := conn.ReadMessage()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return closeError(id, serverErr, err)
		}
		if c.idleTimeout > 0 {
			if err := conn.SetReadDeadline(time.Now().Add(c.idleTimeout)); err != nil {
				return fmt.Errorf("watch job %s: %w", id, err)
			}
		}
		var f apiv1.Frame
		if err := json.Unmarshal(data, &f); err != nil {
			return fmt.Errorf("watch job %s: bad frame: %w", id, err)
		}
		if f.Type == apiv1.FrameError {
			serverErr = f.Error
			if serverErr == "" {
				serverErr = "server sent an error frame"
			}
			continue
		}
		if err := fn(f); err != nil {
			msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
			_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(controlWait)) // best effort: fn's error is the one to report
			return err
		}
	}
}

// closeError maps the way a live stream ended to Watch's result.
func closeError(id, serverErr string, err error) error {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		switch ce.Code {
		case apiv1.CloseUnknownJob:
			return fmt.Errorf("watch job %s: %w", id, ErrUnknownJob)
		case websocket.CloseNormalClosure:
			if serverErr == "" {
				return nil
			}
		}
	}
	if serverErr != "" {
		return fmt.Errorf("watch job %s: server error: %s", id, serverErr)
	}
	return fmt.Errorf("watch job %s: live stream ended: %w", id, err)
}

// writePong answers a ping the way gorilla's default handler does: a
// closed or timed-out connection is not an error of the handler, the read
// loop reports it.
func writePong(conn *websocket.Conn, data string) error {
	err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(controlWait))
	if errors.Is(err, websocket.ErrCloseSent) {
		return nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}

// dialLive opens WS /v1/jobs/{id}/live with the client's token and, where
// possible, its HTTP transport's TLS and proxy settings.
func (c *Client) dialLive(ctx context.Context, id string) (*websocket.Conn, error) {
	if c.setupErr != nil {
		return nil, c.setupErr
	}
	u := *c.base
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	default:
		return nil, fmt.Errorf("controller address %q: want http:// or https://", c.base.String())
	}
	base := New(u.String())
	endpoint := base.endpoint(nil, "v1", "jobs", id, "live")

	d := websocket.Dialer{
		Proxy:           http.ProxyFromEnvironment,
		ReadBufferSize:  32 << 10,
		WriteBufferSize: 4 << 10,
	}
	if tr, ok := c.http.Transport.(*http.Transport); ok {
		d.Proxy = tr.Proxy
		d.TLSClientConfig = tr.TLSClientConfig
		d.NetDialContext = tr.DialContext
	}
	h := http.Header{}
	c.authorize(h)
	conn, resp, err := d.DialContext(ctx, endpoint, h)
	for start := time.Now(); err != nil && resp != nil && time.Since(start) < unavailableRetryFor; {
		// As for reads (Client.do): a controller catching up after a start
		// says when to ask again.
		wait, retry := retryAfter(resp)
		if !retry {
			break
		}
		resp.Body.Close()
		if err := ctxwait.Sleep(ctx, wait); err != nil {
			return nil, err
		}
		conn, resp, err = d.DialContext(ctx, endpoint, h)
	}
	if err != nil {
		if resp != nil {
			defer resp.Body.Close()
			apiErr := readAPIError(resp)
			if resp.StatusCode == http.StatusNotFound {
				return nil, fmt.Errorf("watch job %s: %w (%v)", id, ErrUnknownJob, apiErr)
			}
			return nil, fmt.Errorf("watch job %s: %w", id, apiErr)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("watch job %s: dial %s: %w", id, endpoint, err)
	}
	return conn, nil
}
