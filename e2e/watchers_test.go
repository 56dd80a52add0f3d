package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// scrape reads the named gauges from the controller's /metrics.
func scrape(t *testing.T, addr string, names ...string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape /metrics: %v", err)
	}
	defer resp.Body.Close()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && want[fields[0]] {
			v, err := strconv.ParseFloat(fields[1], 64)
			if err != nil {
				t.Fatalf("metric %s: %v", fields[0], err)
			}
			out[fields[0]] = v
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			t.Fatalf("/metrics has no %s", n)
		}
	}
	return out
}

// TestWatchersHoldNothing is the regression test for the old platform's
// outage (invariant I1): hundreds of live watchers on a running job hold no
// store transaction, the rest of the API keeps answering while they are
// connected, and after they leave, goroutines, file descriptors and open
// read transactions are back at their baseline, round after round.
func TestWatchersHoldNothing(t *testing.T) {
	const watchers, rounds = 1000, 3
	d := startDev(t, "", 1)
	ctx := context.Background()
	run := `i=0; while :; do i=$((i+1)); echo "{\"step\": $i, \"loss\": 1}" >> "$GANTRY_METRICS_FILE"; sleep 0.02; done`
	id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "watched", Run: run, KillGrace: apiv1.Duration(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the watched job to stream points", func() bool {
		j, err := d.api.Job(ctx, id)
		return err == nil && j.Points > 5
	})
	gauges := []string{"go_goroutines", "process_open_fds", "gantry_store_open_read_txns", "gantry_ws_watchers"}
	base := scrape(t, d.addr, gauges...)
	t.Logf("baseline: %v", base)
	wsURL := "ws" + strings.TrimPrefix(d.addr, "http") + "/v1/jobs/" + id + "/live"

	for round := 1; round <= rounds; round++ {
		conns := make([]*websocket.Conn, 0, watchers)
		var frames sync.WaitGroup
		var mu sync.Mutex
		received := 0
		for i := 0; i < watchers; i++ {
			c, _, err := websocket.DefaultDialer.Dial(wsURL, nil)
			if err != nil {
				t.Fatalf("round %d: watcher %d: %v", round, i, err)
			}
			conns = append(conns, c)
			frames.Add(1)
			go func() {
				defer frames.Done()
				n := 0
				for {
					if _, _, err := c.ReadMessage(); err != nil {
						mu.Lock()
						received += n
						mu.Unlock()
						return
					}
					n++
				}
			}()
		}
		waitFor(t, 20*time.Second, fmt.Sprintf("%d watchers connected", watchers), func() bool {
			return scrape(t, d.addr, "gantry_ws_watchers")["gantry_ws_watchers"] == watchers
		})
		// Watchers wait and write holding no transaction.
		waitFor(t, 5*time.Second, "no open read transaction while watchers are connected", func() bool {
			return scrape(t, d.addr, "gantry_store_open_read_txns")["gantry_store_open_read_txns"] == 0
		})
		// The rest of the API answers promptly meanwhile.
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := d.api.Jobs(actx); err != nil {
			t.Fatalf("round %d: GET /v1/jobs with %d watchers: %v", round, watchers, err)
		}
		if _, err := d.api.Metrics(actx, id, 0, 100); err != nil {
			t.Fatalf("round %d: GET metrics with %d watchers: %v", round, watchers, err)
		}
		other, err := d.api.Submit(actx, apiv1.JobSpec{Name: "while-watched", Run: "true"})
		if err != nil {
			t.Fatalf("round %d: submit with %d watchers: %v", round, watchers, err)
		}
		cancel()
		waitTerminal(t, d.api, other, 15*time.Second)

		for _, c := range conns {
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
			c.Close()
		}
		frames.Wait()
		if received < watchers {
			t.Errorf("round %d: watchers received %d frames in all, want at least a snapshot each", round, received)
		}
		var now map[string]float64
		waitFor(t, 20*time.Second, "goroutines, fds and read txns back at baseline", func() bool {
			now = scrape(t, d.addr, gauges...)
			return now["gantry_ws_watchers"] == 0 && now["gantry_store_open_read_txns"] == 0 &&
				now["go_goroutines"] <= base["go_goroutines"]+5 && now["process_open_fds"] <= base["process_open_fds"]+3
		})
		t.Logf("after round %d: %v", round, now)
	}
	if err := d.api.Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	if j := waitTerminal(t, d.api, id, 15*time.Second); j.FinalMetrics["step"] == 0 {
		t.Errorf("watched job ended without final metrics: %+v", j)
	}
}

// firehoseScript writes bursts of 1000 metric lines every 20 ms until the
// file named by its argument exists.
const firehoseScript = `import os, sys, time
f = open(os.environ["GANTRY_METRICS_FILE"], "a")
step = 0
while not os.path.exists(sys.argv[1]):
    for _ in range(1000):
        step += 1
        f.write('{"step": %d, "loss": %d}\n' % (step, step % 997))
    f.flush()
    time.sleep(0.02)
`

// TestSlowWatcherIsCoalescedThenClosed: a watcher that stops reading while
// points flow fast does not delay a fast watcher (which gets every point,
// no gap, no duplicate); the slow one is closed with 1013 once it falls too
// far behind, and sees that close code when it reads again.
func TestSlowWatcherIsCoalescedThenClosed(t *testing.T) {
	d := startDev(t, "", 1)
	ctx := context.Background()
	// Bursts of 1000 lines every 20 ms until told to stop: fast enough to
	// outrun a stalled watcher.
	dir := t.TempDir()
	stop := filepath.Join(dir, "stop")
	script := filepath.Join(dir, "firehose.py")
	if err := os.WriteFile(script, []byte(firehoseScript), 0o644); err != nil {
		t.Fatal(err)
	}
	run := "python3 " + script + " " + stop
	id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "firehose", Run: run})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the firehose to stream", func() bool {
		j, err := d.api.Job(ctx, id)
		return err == nil && j.Points > 2000
	})
	wsURL := "ws" + strings.TrimPrefix(d.addr, "http") + "/v1/jobs/" + id + "/live"
	// A small receive buffer stands for a client that has stopped reading.
	dialer := websocket.Dialer{NetDial: func(network, addr string) (net.Conn, error) {
		c, err := net.Dial(network, addr)
		if tcp, ok := c.(*net.TCPConn); ok {
			_ = tcp.SetReadBuffer(32 << 10)
		}
		return c, err
	}}
	slow, _, err := dialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()

	// The fast watcher reads everything and checks seqs are gap-free.
	type result struct {
		seqs  []uint64
		final bool
		err   error
	}
	fastDone := make(chan result, 1)
	go func() {
		var r result
		r.err = d.api.Watch(ctx, id, func(f apiv1.Frame) error {
			for _, p := range f.Points {
				r.seqs = append(r.seqs, p.Seq)
			}
			r.final = r.final || f.Type == apiv1.FrameFinal
			return nil
		})
		fastDone <- r
	}()

	waitFor(t, 60*time.Second, "the stalled watcher to be dropped", func() bool {
		return scrape(t, d.addr, "gantry_hub_dropped_total")["gantry_hub_dropped_total"] >= 1
	})
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if m := scrape(t, d.addr, "gantry_hub_coalesced_total"); m["gantry_hub_coalesced_total"] == 0 {
		t.Error("the stalled watcher was dropped without its backlog being coalesced first")
	}
	// Reading again, the slow watcher gets what was buffered, then 1013.
	_ = slow.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		_, _, err := slow.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 1013 {
			t.Fatalf("slow watcher ended with %v, want close 1013", err)
		}
		break
	}

	var r result
	select {
	case r = <-fastDone:
	case <-time.After(90 * time.Second):
		t.Fatal("the fast watcher never saw the job end")
	}
	if r.err != nil || !r.final {
		t.Fatalf("fast watcher: err %v, final %v", r.err, r.final)
	}
	stored := allPoints(t, d.api, id)
	// Snapshot + live: contiguous from the first seq received to the last
	// stored, each exactly once.
	if len(r.seqs) == 0 {
		t.Fatal("fast watcher received no points")
	}
	first := r.seqs[0]
	var want []uint64
	for _, p := range stored {
		if p.Seq >= first {
			want = append(want, p.Seq)
		}
	}
	if len(r.seqs) != len(want) {
		t.Fatalf("fast watcher got %d points from seq %d on, %d stored: gap or duplicate", len(r.seqs), first, len(want))
	}
	for i := range want {
		if r.seqs[i] != want[i] {
			t.Fatalf("point %d: got seq %d, stored %d", i, r.seqs[i], want[i])
		}
	}
}
