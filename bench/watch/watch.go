// Package watch opens many WebSocket watchers on a job's live stream
// (WS /v1/jobs/{id}/live) and measures, for every point in every metrics
// frame, the delay from the point's own timestamp (the wall clock of
// whoever wrote it) to the frame's arrival at the watcher.
package watch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/sync/errgroup"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// ErrClosedEarly means a watcher's connection ended while it was expected
// to stay open.
var ErrClosedEarly = errors.New("watch: watcher closed early")

// frame is the part of apiv1.Frame the watchers read.
type frame struct {
	Type   string `json:"type"`
	Points []struct {
		Seq uint64  `json:"seq"`
		TS  float64 `json:"ts"`
	} `json:"points"`
	Job *struct {
		State string `json:"state"`
	} `json:"job"`
}

// Set is a group of watchers of one job.
type Set struct {
	url    string
	dialer *websocket.Dialer

	mu      sync.Mutex
	conns   []*websocket.Conn
	samples []time.Duration
	wg      sync.WaitGroup

	frames atomic.Int64
	points atomic.Int64
	dups   atomic.Int64
	final  atomic.Int64
	closed atomic.Int64
}

// New returns an empty set watching job on the controller at httpAddr.
func New(httpAddr, job string) *Set {
	return &Set{
		url:    fmt.Sprintf("ws://%s/v1/jobs/%s/live", httpAddr, job),
		dialer: &websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 2048, WriteBufferSize: 512},
	}
}

// Add opens n more watchers, concurrency at a time, each waiting for its
// snapshot frame before it counts as connected.
func (s *Set) Add(ctx context.Context, n, concurrency int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(concurrency)
	for i := 0; i < n; i++ {
		g.Go(func() error { return s.dial(ctx) })
	}
	return g.Wait()
}

func (s *Set) dial(ctx context.Context) error {
	conn, _, err := s.dialer.DialContext(ctx, s.url, nil)
	if err != nil {
		return fmt.Errorf("watch: dial %s: %w", s.url, err)
	}
	// The snapshot comes first; after it the watcher is live.
	_, data, err := conn.ReadMessage()
	if err != nil {
		conn.Close()
		return fmt.Errorf("watch: snapshot: %w", err)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil || f.Type != apiv1.FrameSnapshot {
		conn.Close()
		return fmt.Errorf("watch: first frame is %q, want a snapshot (%v)", f.Type, err)
	}
	s.mu.Lock()
	s.conns = append(s.conns, conn)
	s.mu.Unlock()
	last := uint64(0)
	for _, p := range f.Points {
		last = max(last, p.Seq)
	}
	s.wg.Add(1)
	go s.read(conn, last)
	return nil
}

// read records arrival times. The clock is read before anything else so
// that decoding cost is not counted as delivery delay. A point whose seq is
// not above the last one this watcher saw (snapshot included) is counted as
// a duplicate, not timed: the live stream promises each point once, in
// order.
func (s *Set) read(conn *websocket.Conn, last uint64) {
	defer s.wg.Done()
	defer s.closed.Add(1)
	for {
		_, data, err := conn.ReadMessage()
		now := time.Now()
		if err != nil {
			return
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			continue
		}
		s.frames.Add(1)
		switch f.Type {
		case apiv1.FrameMetrics:
			fresh := 0
			s.mu.Lock()
			for _, p := range f.Points {
				if p.Seq <= last {
					continue
				}
				last = p.Seq
				fresh++
				if p.TS > 0 {
					s.samples = append(s.samples, now.Sub(time.Unix(0, int64(p.TS*1e9))))
				}
			}
			s.mu.Unlock()
			s.points.Add(int64(fresh))
			s.dups.Add(int64(len(f.Points) - fresh))
		case apiv1.FrameFinal:
			s.final.Add(1)
		}
	}
}

// Len is the number of watchers opened.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Open is the number of watchers whose connection is still up.
func (s *Set) Open() int { return s.Len() - int(s.closed.Load()) }

// Points is how many points all watchers have received.
func (s *Set) Points() int64 { return s.points.Load() }

// Duplicates is how many points arrived again (or out of order) after the
// watcher had seen a later seq.
func (s *Set) Duplicates() int64 { return s.dups.Load() }

// Finals is how many watchers have received the final frame.
func (s *Set) Finals() int64 { return s.final.Load() }

// Take returns the latency samples gathered since the last Take.
func (s *Set) Take() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.samples
	s.samples = nil
	return out
}

// WaitPoints waits until the watchers have received want points in all,
// or timeout passes; it returns how many arrived.
func (s *Set) WaitPoints(ctx context.Context, want int64, timeout time.Duration) int64 {
	deadline := time.Now().Add(timeout)
	for s.Points() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	return s.Points()
}

// Close closes every watcher and waits for their readers.
func (s *Set) Close() {
	s.mu.Lock()
	conns := s.conns
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""),
			time.Now().Add(time.Second))
		c.Close()
	}
	s.wg.Wait()
}
