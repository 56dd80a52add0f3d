package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// liveServer serves WS /v1/jobs/{id}/live with play, which drives the
// server side of one connection. It records the Authorization header.
func liveServer(t *testing.T, play func(t *testing.T, conn *websocket.Conn)) (*httptest.Server, *atomic.Value) {
	t.Helper()
	var auth atomic.Value
	auth.Store("")
	up := websocket.Upgrader{}
	// Hijacked connections outlive httptest's Close; wait for their
	// handlers so none reports to a finished test.
	var handlers sync.WaitGroup
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/jobs/{id}/live", func(w http.ResponseWriter, r *http.Request) {
		handlers.Add(1)
		defer handlers.Done()
		auth.Store(r.Header.Get("Authorization"))
		if r.PathValue("id") == "starting" && starting.Add(-1) >= 0 {
			// A controller catching up after a start, twice.
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.PathValue("id") == "missing-404" {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"job missing-404 not found"}`))
			return
		}
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			t.Errorf("upgrade: %v", err)
			return
		}
		defer conn.Close()
		play(t, conn)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(handlers.Wait)
	return srv, &auth
}

// starting is how many more times the "starting" job's live stream
// answers 503 with Retry-After.
var starting atomic.Int32

// TestWatchRetriesAStartingController: a live stream answered 503 with
// Retry-After is dialled again, so `gantry watch` waits for a controller
// catching up after a start instead of leaving the job unwatched.
func TestWatchRetriesAStartingController(t *testing.T) {
	starting.Store(2)
	srv, _ := liveServer(t, func(t *testing.T, conn *websocket.Conn) {
		send(t, conn, played[0])
		closeWith(t, conn, websocket.CloseNormalClosure, "final")
	})
	var got int
	if err := New(srv.URL).Watch(testCtx(t), "starting", func(apiv1.Frame) error { got++; return nil }); err != nil || got != 1 {
		t.Fatalf("Watch = %v with %d frames, want nil with 1", err, got)
	}
	if n := starting.Load(); n >= 0 {
		t.Fatalf("the stream was dialled %d times too few", n+1)
	}
}

func send(t *testing.T, conn *websocket.Conn, f apiv1.Frame) {
	t.Helper()
	if err := conn.WriteJSON(f); err != nil {
		t.Errorf("write frame %s: %v", f.Type, err)
	}
}

func closeWith(t *testing.T, conn *websocket.Conn, code int, text string) {
	t.Helper()
	msg := websocket.FormatCloseMessage(code, text)
	if err := conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second)); err != nil {
		t.Errorf("write close: %v", err)
	}
	// Wait for the client's close reply so the close frame is not lost to a reset.
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, _, err := conn.ReadMessage(); err != nil {
			return
		}
	}
}

// waitClosed blocks until the client side goes away.
func waitClosed(conn *websocket.Conn) {
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, _, err := conn.ReadMessage(); err != nil {
			return
		}
	}
}

var played = []apiv1.Frame{
	{Type: apiv1.FrameSnapshot, Job: &apiv1.Job{ID: "j-1", State: apiv1.StateRunning},
		Points: []apiv1.Point{{Seq: 1, Step: ptr(int64(0)), Values: map[string]float64{"total_steps": 3}}}},
	{Type: apiv1.FrameMetrics, Points: []apiv1.Point{{Seq: 2, Step: ptr(int64(1)), Values: map[string]float64{"loss": 2}}}},
	{Type: apiv1.FrameGPU, GPU: &apiv1.GPUSample{Seq: 1, GPUs: []apiv1.GPUStat{{Index: 0, UtilizationPct: 90}}}},
	{Type: apiv1.FrameMetrics, Points: []apiv1.Point{{Seq: 3, Step: ptr(int64(2)), Values: map[string]float64{"loss": 1}}}},
	{Type: apiv1.FrameState, Job: &apiv1.Job{ID: "j-1", State: apiv1.StateSucceeded}},
	{Type: apiv1.FrameFinal, Job: &apiv1.Job{ID: "j-1", State: apiv1.StateSucceeded, FinalMetrics: map[string]float64{"loss": 1, "step": 2}}},
}

func TestWatchDeliversInOrderAndCleanClose(t *testing.T) {
	srv, auth := liveServer(t, func(t *testing.T, conn *websocket.Conn) {
		for _, f := range played {
			send(t, conn, f)
		}
		closeWith(t, conn, websocket.CloseNormalClosure, "final")
	})
	var got []apiv1.Frame
	err := New(srv.URL, WithToken("tok")).Watch(testCtx(t), "j-1", func(f apiv1.Frame) error {
		got = append(got, f)
		return nil
	})
	if err != nil {
		t.Fatalf("Watch = %v, want nil after close 1000", err)
	}
	if !reflect.DeepEqual(got, played) {
		t.Errorf("frames = %+v\nwant %+v", got, played)
	}
	if a := auth.Load().(string); a != "Bearer tok" {
		t.Errorf("handshake Authorization = %q", a)
	}
}

func TestWatchUnknownJob(t *testing.T) {
	srv, _ := liveServer(t, func(t *testing.T, conn *websocket.Conn) {
		send(t, conn, apiv1.Frame{Type: apiv1.FrameError, Error: "job nope not found"})
		closeWith(t, conn, apiv1.CloseUnknownJob, "unknown job")
	})
	tests := []struct{ name, id string }{
		{"error frame and close 4404", "nope"},
		{"404 handshake", "missing-404"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			err := New(srv.URL).Watch(testCtx(t), tt.id, func(apiv1.Frame) error { calls++; return nil })
			if !errors.Is(err, ErrUnknownJob) {
				t.Fatalf("Watch = %v, want ErrUnknownJob", err)
			}
			if calls != 0 {
				t.Errorf("fn called %d times for an unknown job", calls)
			}
		})
	}
}

func TestWatchErrorFrameOtherClose(t *testing.T) {
	srv, _ := liveServer(t, func(t *testing.T, conn *websocket.Conn) {
		send(t, conn, apiv1.Frame{Type: apiv1.FrameError, Error: "store unavailable"})
		closeWith(t, conn, websocket.CloseInternalServerErr, "")
	})
	err := New(srv.URL).Watch(testCtx(t), "j-1", func(apiv1.Frame) error { return nil })
	if err == nil || errors.Is(err, ErrUnknownJob) || !strings.Contains(err.Error(), "store unavailable") {
		t.Fatalf("Watch = %v, want the server's error message", err)
	}
}

func TestWatchContextCancel(t *testing.T) {
	serverSawClose := make(chan struct{})
	srv, _ := liveServer(t, func(t *testing.T, conn *websocket.Conn) {
		send(t, conn, played[0])
		waitClosed(conn)
		close(serverSawClose)
	})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- New(srv.URL).Watch(ctx, "j-1", func(f apiv1.Frame) error {
			if f.Type == apiv1.FrameSnapshot {
				cancel()
			}
			return nil
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Watch = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after cancel")
	}
	select {
	case <-serverSawClose:
	case <-time.After(5 * time.Second):
		t.Fatal("server connection still open after cancel")
	}
}

func TestWatchDropIsAnError(t *testing.T) {
	srv, _ := liveServer(t, func(t *testing.T, conn *websocket.Conn) {
		send(t, conn, played[0])
		// Abrupt: no close frame, as when a controller dies.
		_ = conn.UnderlyingConn().Close()
	})
	n := 0
	err := New(srv.URL).Watch(testCtx(t), "j-1", func(apiv1.Frame) error { n++; return nil })
	if err == nil || errors.Is(err, ErrUnknownJob) {
		t.Fatalf("Watch = %v, want a connection error", err)
	}
	if n != 1 {
		t.Errorf("fn called %d times, want 1", n)
	}
}

func TestWatchFnErrorStops(t *testing.T) {
	srv, _ := liveServer(t, func(t *testing.T, conn *websocket.Conn) {
		for _, f := range played {
			if conn.WriteJSON(f) != nil {
				break // the client hung up after the first frame, as it should
			}
		}
		waitClosed(conn)
	})
	stopErr := errors.New("enough")
	n := 0
	err := New(srv.URL).Watch(testCtx(t), "j-1", func(apiv1.Frame) error { n++; return stopErr })
	if !errors.Is(err, stopErr) || n != 1 {
		t.Fatalf("Watch = %v after %d frames, want fn's error after 1", err, n)
	}
}

func TestWatchIdleTimeout(t *testing.T) {
	t.Run("silence fails", func(t *testing.T) {
		srv, _ := liveServer(t, func(t *testing.T, conn *websocket.Conn) { waitClosed(conn) })
		start := time.Now()
		err := New(srv.URL, WithWatchIdleTimeout(100*time.Millisecond)).Watch(testCtx(t), "j-1", func(apiv1.Frame) error { return nil })
		if err == nil {
			t.Fatal("Watch = nil on a silent connection")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("idle timeout took %v", d)
		}
	})
	t.Run("pings keep it alive and get pongs", func(t *testing.T) {
		var pongs atomic.Int32
		srv, _ := liveServer(t, func(t *testing.T, conn *websocket.Conn) {
			conn.SetPongHandler(func(string) error { pongs.Add(1); return nil })
			// A reader is needed for the pong handler to run.
			readerDone := make(chan struct{})
			go func() {
				defer close(readerDone)
				for {
					if _, _, err := conn.ReadMessage(); err != nil {
						return
					}
				}
			}()
			for range 10 {
				if err := conn.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)); err != nil {
					t.Errorf("ping: %v", err)
					return
				}
				time.Sleep(30 * time.Millisecond) // the gap between pings is the point of the test
			}
			send(t, conn, played[len(played)-1])
			msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
			_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
			select { // the reader ends on the client's close reply
			case <-readerDone:
			case <-time.After(5 * time.Second):
				t.Error("client never answered the close")
			}
		})
		err := New(srv.URL, WithWatchIdleTimeout(150*time.Millisecond)).Watch(testCtx(t), "j-1", func(apiv1.Frame) error { return nil })
		if err != nil {
			t.Fatalf("Watch = %v; pings should have kept the connection alive", err)
		}
		if pongs.Load() == 0 {
			t.Error("server got no pongs")
		}
	})
}

func TestWatchReadLimit(t *testing.T) {
	srv, _ := liveServer(t, func(t *testing.T, conn *websocket.Conn) {
		big := apiv1.Frame{Type: apiv1.FrameError, Error: strings.Repeat("x", maxFrameBytes+1)}
		_ = conn.WriteJSON(big) // the client hangs up mid-write
		waitClosed(conn)
	})
	err := New(srv.URL).Watch(testCtx(t), "j-1", func(apiv1.Frame) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "read limit") {
		t.Fatalf("Watch = %v, want a read limit error", err)
	}
}
