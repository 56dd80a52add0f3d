package server_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/testutil"
)

// TestAlertsSurviveFailover: alerts are posted by the leader only, once
// each while nothing fails; an alert the leader could not deliver before
// it died is delivered by the next leader, with the same idempotency key,
// and nothing already delivered is posted again.
func TestAlertsSurviveFailover(t *testing.T) {
	var (
		mu    sync.Mutex
		got   = map[string]int{} // idempotency key → posts
		kinds = map[string]string{}
		down  atomic.Bool
	)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var p struct {
			ID    string `json:"id"`
			Kind  string `json:"kind"`
			JobID string `json:"job_id"`
		}
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		got[r.Header.Get("Idempotency-Key")]++
		kinds[p.ID] = p.Kind + "/" + p.JobID
		mu.Unlock()
	}))
	defer hook.Close()
	c := newTestClusterWith(t, 3, []string{hook.URL})
	leader := c.waitLeader()
	ctx := t.Context()

	// A job cancelled while queued: one alert, posted once.
	a := submit(t, leader, apiv1.JobSpec{Name: "a", Run: "true"})
	if err := apiOf(leader).Cancel(ctx, a); err != nil {
		t.Fatal(err)
	}
	delivered := func(s interface{ Store() *store.Store }) uint64 {
		var d uint64
		_ = s.Store().View(func(tx *store.Tx) error { d = tx.AlertsDelivered(); return nil })
		return d
	}
	testutil.WaitFor(t, 10*time.Second, func() bool {
		for _, s := range c.nodes {
			if delivered(s) != 1 {
				return false
			}
		}
		return true
	}, "alert 1 delivered and its cursor on every controller")
	mu.Lock()
	if got["gantry-alert-1"] != 1 || kinds["gantry-alert-1"] != "job_cancelled/"+a {
		t.Errorf("alert 1 posted %d times as %q, want once as job_cancelled/%s", got["gantry-alert-1"], kinds["gantry-alert-1"], a)
	}
	mu.Unlock()

	// The receiver fails; a second alert waits; the leader dies.
	down.Store(true)
	b := submit(t, leader, apiv1.JobSpec{Name: "b", Run: "true"})
	if err := apiOf(leader).Cancel(ctx, b); err != nil {
		t.Fatal(err)
	}
	for i, s := range c.nodes {
		if s == leader {
			s.Close()
			c.nodes[i] = nil
		}
	}
	down.Store(false)
	next := c.waitLeader()
	testutil.WaitFor(t, 20*time.Second, func() bool { return delivered(next) == 2 }, "the new leader delivered alert 2")
	mu.Lock()
	defer mu.Unlock()
	if got["gantry-alert-2"] < 1 || kinds["gantry-alert-2"] != "job_cancelled/"+b {
		t.Errorf("alert 2 posted %d times as %q", got["gantry-alert-2"], kinds["gantry-alert-2"])
	}
	if got["gantry-alert-1"] != 1 {
		t.Errorf("alert 1 posted %d times after the failover, want still once", got["gantry-alert-1"])
	}
}
