package httpapi_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/httpapi"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// gauge reads one unlabelled metric from /metrics.
func (e *env) gauge(name string) float64 {
	e.t.Helper()
	status, body := e.do("GET", "/metrics", nil, false)
	if status != 200 {
		e.t.Fatalf("/metrics: %d", status)
	}
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		e.t.Fatalf("/metrics has no %s", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// waitGoroutines polls until at most max goroutines run, failing with the
// count it last saw.
func waitGoroutines(t *testing.T, max int, what string) {
	t.Helper()
	n := 0
	if !testutil.Eventually(20*time.Second, func() bool {
		n = runtime.NumGoroutine()
		return n <= max
	}) {
		t.Fatalf("%s: %d goroutines, want at most %d", what, n, max)
	}
}

// An idle watcher costs no goroutine once its handler has returned (one,
// its reader, where the shared read poller is not available): N idle
// watchers add at most N*perWatcher goroutines (plus a little slack for the
// controller's own), they still get live frames (flushers come and go), and
// after they leave the count is back at its baseline.
func TestIdleWatcherGoroutines(t *testing.T) {
	const n, slack = 200, 25
	perWatcher := 0
	if runtime.GOOS != "linux" {
		perWatcher = 1
	}
	e := newEnv(t, "")
	e.runningJob(t, "j", 1) // point 2
	base := runtime.NumGoroutine()

	conns := make([]*websocket.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		c, _, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live"), nil)
		if err != nil {
			t.Fatalf("watcher %d: %v", i, err)
		}
		conns = append(conns, c)
		if f := readFrame(t, c); f.Type != apiv1.FrameSnapshot {
			t.Fatalf("watcher %d: first frame %q", i, f.Type)
		}
	}
	if v := e.gauge("gantry_ws_watchers"); v != n {
		t.Fatalf("gantry_ws_watchers = %v, want %d", v, n)
	}
	waitGoroutines(t, base+n*perWatcher+slack, fmt.Sprintf("%d idle watchers", n))

	// Live frames still reach every watcher, and the flushers that wrote
	// them are gone afterwards.
	e.raftApply(t, &gantrypb.IngestCmd{NodeId: "n1", Records: pointRecs("j", 3, 1)})
	for i, c := range conns {
		f := readFrame(t, c)
		if f.Type != apiv1.FrameMetrics || len(f.Points) != 1 || f.Points[0].Seq != 3 {
			t.Fatalf("watcher %d: frame %+v, want metrics with point 3", i, f)
		}
	}
	waitGoroutines(t, base+n*perWatcher+slack, fmt.Sprintf("%d watchers after a frame", n))

	for _, c := range conns {
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		c.Close()
	}
	conns = nil
	testutil.WaitFor(t, 20*time.Second, func() bool { return e.gauge("gantry_ws_watchers") == 0 }, "watchers to go back to 0")
	testutil.WaitFor(t, 10*time.Second, func() bool { return e.gauge("gantry_hub_subscribers") == 0 }, "hub subscriptions to go back to 0")
	waitGoroutines(t, base+slack, "after every watcher left")
}

// Frames of different jobs and sizes are written to many watchers at once
// through the shared pool of write buffers: every watcher gets exactly its
// own job's points, each once and in order (run with -race).
func TestPooledWriteBuffersNotShared(t *testing.T) {
	const jobs, perJob, batches = 6, 4, 25
	e := newEnv(t, "")
	// value is what point seq of job j carries under each of its keys;
	// keysAt varies the frame size from batch to batch.
	value := func(j int, seq uint64) float64 { return float64(j)*1e6 + float64(seq) }
	keysAt := func(seq uint64) int { return 1 + int(seq*7%23) }
	points := func(j int, first uint64, n int) []*gantrypb.Record {
		id := fmt.Sprint("job", j)
		var recs []*gantrypb.Record
		for i := 0; i < n; i++ {
			seq := first + uint64(i)
			vals := map[string]float64{}
			for k := 0; k < keysAt(seq); k++ {
				vals[fmt.Sprint(id, "-k", k)] = value(j, seq)
			}
			step := int64(seq)
			recs = append(recs, &gantrypb.Record{JobId: id, Seq: seq, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{
				Step: &step, Ts: float64(seq), Values: vals}}})
		}
		return recs
	}
	last := make([]uint64, jobs) // the last seq each job will have
	for j := 0; j < jobs; j++ {
		e.runningJob(t, fmt.Sprint("job", j), 0) // seq 1: started
		last[j] = 1
		for b := 0; b < batches; b++ {
			last[j] += uint64(1 + (b+j)%9)
		}
	}

	type watch struct {
		job int
		c   *websocket.Conn
	}
	var watches []watch
	for j := 0; j < jobs; j++ {
		for i := 0; i < perJob; i++ {
			c, _, err := websocket.DefaultDialer.Dial(e.ws(fmt.Sprintf("/v1/jobs/job%d/live", j)), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if f := readFrame(t, c); f.Type != apiv1.FrameSnapshot {
				t.Fatalf("first frame %q", f.Type)
			}
			watches = append(watches, watch{j, c})
		}
	}

	errs := make(chan error, len(watches)+jobs)
	var wg sync.WaitGroup
	for _, w := range watches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := uint64(2)
			for next <= last[w.job] {
				_ = w.c.SetReadDeadline(time.Now().Add(20 * time.Second))
				_, b, err := w.c.ReadMessage()
				if err != nil {
					errs <- fmt.Errorf("job%d watcher at seq %d: %w", w.job, next, err)
					return
				}
				var f apiv1.Frame
				if err := json.Unmarshal(b, &f); err != nil {
					errs <- fmt.Errorf("job%d watcher: frame %q: %w", w.job, trunc(b), err)
					return
				}
				if f.Type != apiv1.FrameMetrics {
					continue
				}
				for _, p := range f.Points {
					if p.Seq != next || len(p.Values) != keysAt(p.Seq) {
						errs <- fmt.Errorf("job%d watcher: point seq %d with %d keys, want seq %d with %d", w.job, p.Seq, len(p.Values), next, keysAt(next))
						return
					}
					for k, v := range p.Values {
						if v != value(w.job, p.Seq) || !strings.HasPrefix(k, fmt.Sprint("job", w.job, "-k")) {
							errs <- fmt.Errorf("job%d watcher: point %d has %s=%v, another job's or a torn frame", w.job, p.Seq, k, v)
							return
						}
					}
					next++
				}
			}
		}()
	}
	// One writer per job, all at once: the watchers' flushers write
	// concurrently, each frame through a pooled buffer.
	for j := 0; j < jobs; j++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seq := uint64(2)
			for b := 0; b < batches; b++ {
				n := 1 + (b+j)%9
				if _, err := e.srv.Raft().Apply(&gantrypb.IngestCmd{NodeId: "n1", Records: points(j, seq, n)}); err != nil {
					errs <- fmt.Errorf("apply job%d batch %d: %w", j, b, err)
					return
				}
				seq += uint64(n)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// The keep-alive still works without a goroutine waiting per watcher: a
// client that answers pings stays connected well past the pong wait, and
// one that stops answering is taken for dead and freed.
func TestKeepAliveDetectsDeadPeer(t *testing.T) {
	const pongWait, pingPeriod = 2 * time.Second, 200 * time.Millisecond
	t.Cleanup(httpapi.SetKeepAlive(pongWait, pingPeriod))
	e := newEnv(t, "")
	e.runningJob(t, "j", 1)
	c, _, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var pings atomic.Int64
	var answer atomic.Bool
	answer.Store(true)
	c.SetPingHandler(func(data string) error {
		pings.Add(1)
		if !answer.Load() {
			return nil // a peer gone silent
		}
		return c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	ended := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				ended <- err
				return
			}
		}
	}()
	// Pings over more than two pong waits, all answered: still connected.
	want := int64(2*pongWait/pingPeriod) + 2
	testutil.WaitFor(t, 30*time.Second, func() bool { return pings.Load() >= want }, fmt.Sprintf("%d pings", want))
	select {
	case err := <-ended:
		t.Fatalf("a watcher that answers pings was closed: %v", err)
	default:
	}
	if v := e.gauge("gantry_ws_watchers"); v != 1 {
		t.Fatalf("gantry_ws_watchers = %v while the watcher answers pings, want 1", v)
	}
	// Silence: the server gives up on it and frees it.
	answer.Store(false)
	select {
	case <-ended:
	case <-time.After(30 * time.Second):
		t.Fatal("a watcher that stopped answering pings was never closed")
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { return e.gauge("gantry_ws_watchers") == 0 }, "the dead watcher freed")
	testutil.WaitFor(t, 10*time.Second, func() bool { return e.gauge("gantry_hub_subscribers") == 0 }, "its subscription freed")
}

// Shutting the server down closes live watchers with 1001 (the HTTP
// server does not track hijacked connections, so the API must).
func TestShutdownClosesWatchers(t *testing.T) {
	e := newEnv(t, "")
	e.runningJob(t, "j", 1)
	c, _, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	readFrame(t, c)
	go func() { _ = e.srv.Close() }()
	if code := readClose(t, c); code != websocket.CloseGoingAway {
		t.Fatalf("close code %d at shutdown, want %d", code, websocket.CloseGoingAway)
	}
}

// What a client may say is answered: a ping gets a pong with its payload,
// a close gets a close with the client's code back, and the watcher is
// freed.
func TestClientPingAndClose(t *testing.T) {
	e := newEnv(t, "")
	e.runningJob(t, "j", 1)
	c, _, err := websocket.DefaultDialer.Dial(e.ws("/v1/jobs/j/live"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	readFrame(t, c)
	pongs := make(chan string, 1)
	c.SetPongHandler(func(data string) error {
		pongs <- data
		return nil
	})
	if err := c.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				ended <- err
				return
			}
		}
	}()
	select {
	case got := <-pongs:
		if got != "are you there" {
			t.Fatalf("pong %q, want the ping's payload", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no pong")
	}
	if err := c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "bye"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 4000 {
			t.Fatalf("after the client's close: %v, want its code 4000 back", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer to the client's close")
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { return e.gauge("gantry_ws_watchers") == 0 }, "the watcher freed")
}
