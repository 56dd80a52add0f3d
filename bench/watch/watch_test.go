package watch

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// fakeLive serves /v1/jobs/{id}/live as the controller does: a snapshot,
// then one metrics frame with two points stamped 30 ms in the past, a
// frame repeating the second point (which the controller must never send,
// and the watchers must notice), then the final frame.
func fakeLive(t *testing.T) *httptest.Server {
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/jobs/{id}/live", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		ts := float64(time.Now().Add(-30*time.Millisecond).UnixNano()) / 1e9
		for _, f := range []string{
			`{"type":"snapshot","job":{"state":"running"}}`,
			fmt.Sprintf(`{"type":"metrics","points":[{"seq":1,"ts":%f},{"seq":2,"ts":%f}]}`, ts, ts),
			fmt.Sprintf(`{"type":"metrics","points":[{"seq":2,"ts":%f}]}`, ts), // a repeat
			`{"type":"final","job":{"state":"succeeded"}}`,
		} {
			if err := c.WriteMessage(websocket.TextMessage, []byte(f)); err != nil {
				return
			}
		}
		// Stay open until the watcher closes, as a live stream would.
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestSetMeasuresEveryPoint(t *testing.T) {
	srv := fakeLive(t)
	s := New(strings.TrimPrefix(srv.URL, "http://"), "job1")
	ctx := context.Background()
	if err := s.Add(ctx, 3, 2); err != nil {
		t.Fatal(err)
	}
	if got := s.WaitPoints(ctx, 6, 5*time.Second); got != 6 {
		t.Fatalf("received %d points, want 6", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Finals() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if s.Finals() != 3 || s.Len() != 3 || s.Open() != 3 {
		t.Fatalf("finals %d, len %d, open %d", s.Finals(), s.Len(), s.Open())
	}
	if s.Duplicates() != 3 || s.Points() != 6 {
		t.Fatalf("duplicates %d, points %d; want 3 repeats noticed and 6 distinct points", s.Duplicates(), s.Points())
	}
	samples := s.Take()
	if len(samples) != 6 {
		t.Fatalf("%d samples, want 6", len(samples))
	}
	for _, d := range samples {
		if d < 30*time.Millisecond || d > 10*time.Second {
			t.Errorf("delay %v, want at least the 30 ms the points were stamped in the past", d)
		}
	}
	if len(s.Take()) != 0 {
		t.Fatal("Take returned the same samples twice")
	}
	s.Close()
	if s.Open() != 0 {
		t.Fatalf("%d watchers open after Close", s.Open())
	}
}

func TestAddFailsOnUnknownEndpoint(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	s := New(strings.TrimPrefix(srv.URL, "http://"), "nope")
	if err := s.Add(context.Background(), 1, 1); err == nil {
		t.Fatal("Add succeeded against a server with no live endpoint")
	}
}
