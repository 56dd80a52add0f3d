package alert

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// fakeRaft applies the delivered cursor to the store, as the FSM does,
// or fails while fail is set (a leader that lost its leadership).
type fakeRaft struct {
	st   *store.Store
	mu   sync.Mutex
	fail bool
}

func (r *fakeRaft) Apply(m proto.Message) (any, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return nil, errors.New("not leader")
	}
	c := m.(*gantrypb.AlertsDeliveredCmd)
	return nil, r.st.Update(func(tx *store.Tx) error { _, err := tx.SetAlertsDelivered(c.UpTo); return err })
}

// receiver records the payloads posted to it, answering with the codes
// script gives for each (then 200).
type receiver struct {
	mu     sync.Mutex
	got    []Payload
	keys   []string
	script []int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.script) > 0 {
		code := rc.script[0]
		rc.script = rc.script[1:]
		if code != 200 {
			w.WriteHeader(code)
			return
		}
	}
	var p Payload
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
		w.WriteHeader(400)
		return
	}
	rc.got = append(rc.got, p)
	rc.keys = append(rc.keys, r.Header.Get("Idempotency-Key"))
}

func (rc *receiver) ids() []uint64 {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []uint64
	for _, p := range rc.got {
		out = append(out, p.AlertID)
	}
	return out
}

func setup(t *testing.T, n int) (*store.Store, *fakeRaft) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	err = st.Update(func(tx *store.Tx) error {
		for i := 0; i < n; i++ {
			if _, _, err := tx.AppendAlert(&gantrypb.Alert{AtMs: time.Now().UnixMilli(), Kind: "stalled", JobId: "j",
				Text: "Gantry: job j is stalled"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st, &fakeRaft{st: st}
}

func cursor(t *testing.T, st *store.Store) uint64 {
	var c uint64
	_ = st.View(func(tx *store.Tx) error { c = tx.AlertsDelivered(); return nil })
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDeliversInOrderWithRetriesAndKeys(t *testing.T) {
	st, r := setup(t, 3)
	rc := &receiver{script: []int{200, 503, 502}} // alert 2 fails twice, then goes through
	srv := httptest.NewServer(rc)
	defer srv.Close()
	n := New(Options{Store: st, Raft: r, Webhooks: []string{srv.URL}, RetryMin: time.Millisecond, Log: logging.Discard()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go n.Run(ctx)
	waitFor(t, "the cursor at 3", func() bool { return cursor(t, st) == 3 })
	if ids := rc.ids(); len(ids) != 3 || ids[0] != 1 || ids[1] != 2 || ids[2] != 3 {
		t.Errorf("delivered %v, want 1 2 3", ids)
	}
	if rc.keys[1] != "gantry-alert-2" || rc.got[1].ID != "gantry-alert-2" || rc.got[1].Text != "Gantry: job j is stalled" {
		t.Errorf("alert 2 posted with key %q payload %+v", rc.keys[1], rc.got[1])
	}
	// New alerts are delivered when the notifier is woken.
	_ = st.Update(func(tx *store.Tx) error {
		_, _, err := tx.AppendAlert(&gantrypb.Alert{AtMs: time.Now().UnixMilli(), Kind: "node_lost", Node: "n1"})
		return err
	})
	n.Wake()
	waitFor(t, "alert 4", func() bool { return cursor(t, st) == 4 })
	if d, f, _ := n.Stats(); d != 4 || f != 0 {
		t.Errorf("stats delivered %d failed %d", d, f)
	}
}

// TestRedeliveredAfterFailoverWithTheSameKey: the leader posts an alert
// but cannot commit the cursor (it lost leadership); the next leader posts
// it again with the same idempotency key. At least once, never lost.
func TestRedeliveredAfterFailoverWithTheSameKey(t *testing.T) {
	st, r := setup(t, 1)
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	r.fail = true
	first := New(Options{Store: st, Raft: r, Webhooks: []string{srv.URL}, Log: logging.Discard()})
	ctx, cancel := context.WithCancel(context.Background())
	first.drain(ctx)
	cancel()
	if cursor(t, st) != 0 || len(rc.ids()) != 1 {
		t.Fatalf("cursor %d, posted %v", cursor(t, st), rc.ids())
	}
	r.mu.Lock()
	r.fail = false
	r.mu.Unlock()
	second := New(Options{Store: st, Raft: r, Webhooks: []string{srv.URL}, Log: logging.Discard()})
	second.drain(context.Background())
	if cursor(t, st) != 1 || len(rc.keys) != 2 || rc.keys[0] != rc.keys[1] {
		t.Errorf("cursor %d keys %v: want the alert posted twice under one key", cursor(t, st), rc.keys)
	}
}

func TestGivesUpOnARefusingWebhookAndSkipsOldAlerts(t *testing.T) {
	st, r := setup(t, 2)
	rc := &receiver{script: []int{404}}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	n := New(Options{Store: st, Raft: r, Webhooks: []string{srv.URL}, Log: logging.Discard()})
	n.drain(context.Background())
	if d, f, _ := n.Stats(); cursor(t, st) != 2 || d != 1 || f != 1 {
		t.Errorf("cursor %d delivered %d failed %d; want 2 1 1 (a 404 is not retried)", cursor(t, st), d, f)
	}
	// An alert a day old is not sent.
	_ = st.Update(func(tx *store.Tx) error {
		_, _, err := tx.AppendAlert(&gantrypb.Alert{AtMs: time.Now().Add(-48 * time.Hour).UnixMilli(), Kind: "job_failed"})
		return err
	})
	n.drain(context.Background())
	if _, _, s := n.Stats(); s != 1 || cursor(t, st) != 3 || len(rc.ids()) != 1 {
		t.Errorf("skipped %d cursor %d posted %v", s, cursor(t, st), rc.ids())
	}
}

func TestNoWebhookDeliversNothing(t *testing.T) {
	st, r := setup(t, 1)
	n := New(Options{Store: st, Raft: r, Log: logging.Discard()})
	n.Run(context.Background()) // returns at once
	if cursor(t, st) != 0 {
		t.Error("a notifier without webhooks moved the cursor")
	}
}

// TestTextEscapedForSlack: a job named to ping a channel pings nobody.
func TestTextEscapedForSlack(t *testing.T) {
	st, r := setup(t, 0)
	_ = st.Update(func(tx *store.Tx) error {
		_, _, err := tx.AppendAlert(&gantrypb.Alert{AtMs: time.Now().UnixMilli(), Kind: "job_failed",
			Text: "Gantry: job <!channel> & <@U123> failed"})
		return err
	})
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	New(Options{Store: st, Raft: r, Webhooks: []string{srv.URL}, Log: logging.Discard()}).drain(context.Background())
	if len(rc.got) != 1 || rc.got[0].Text != "Gantry: job &lt;!channel&gt; &amp; &lt;@U123&gt; failed" {
		t.Errorf("posted %+v", rc.got)
	}
}
