// Package alert delivers the controller's alerts to webhooks.
//
// The FSM appends an alert to the replicated outbox (store: the alerts
// bucket) as it applies each change worth telling someone about: a job
// that ended, a health condition that began or ended, a node lost. Every
// voter holds the same outbox, with the same ids. Only the leader runs a
// Notifier: it reads the alerts after the delivered cursor, posts each in
// id order to every configured webhook, and commits the cursor past it
// through Raft (gantrypb.AlertsDeliveredCmd, command type 9).
//
// Semantics: at least once, in order, with an idempotency key. An alert
// posted and not yet covered by a committed cursor (the leader died
// between the POST and the commit, or the commit failed) is posted again
// by the next leader, with the same Idempotency-Key header and "id" field
// ("gantry-alert-<id>"), so a receiver that remembers keys sees each
// condition change exactly once. A webhook that keeps failing is retried
// with backoff up to MaxAttempts, then given up for that alert (logged at
// Error with the alert), so one dead receiver cannot hold back the others
// forever. A leader with no webhook configured delivers nothing and moves
// no cursor: the outbox keeps the newest store.MaxAlerts alerts for a
// leader that has them, and alerts older than MaxAge are skipped (logged)
// rather than sent late.
package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Raft is the leader's way to commit the delivered cursor.
type Raft interface {
	Apply(m proto.Message) (any, error)
}

// Options configure a Notifier. Zero durations take the defaults.
type Options struct {
	Store    *store.Store
	Raft     Raft
	Webhooks []string
	// Client posts the alerts; default: a 10 s timeout.
	Client *http.Client
	Log    *slog.Logger
	// Poll is how often the outbox is read when nothing woke the
	// notifier (default 1 s).
	Poll time.Duration
	// RetryMin and RetryMax bound the backoff between attempts to one
	// webhook (defaults 1 s and 1 min); MaxAttempts is how many it gets
	// per alert (default 8).
	RetryMin, RetryMax time.Duration
	MaxAttempts        int
	// MaxAge: older alerts are skipped, not sent (default 24 h).
	MaxAge time.Duration
	// Now is the clock (tests).
	Now func() time.Time
	// Wake, when set, wakes Run as Notifier.Wake does: the server
	// signals it when an apply appended alerts.
	Wake <-chan struct{}
}

// Notifier delivers the outbox while its Run runs (on the leader).
type Notifier struct {
	opts Options
	wake chan struct{}

	delivered, failed, skipped atomic.Uint64
}

// New returns a Notifier.
func New(o Options) *Notifier {
	if o.Client == nil {
		o.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	if o.RetryMin <= 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = time.Minute
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 8
	}
	if o.MaxAge <= 0 {
		o.MaxAge = 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Notifier{opts: o, wake: make(chan struct{}, 1)}
}

// Wake makes a running notifier read the outbox now.
func (n *Notifier) Wake() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// Stats returns how many (alert, webhook) deliveries succeeded and were
// given up, and how many alerts were skipped as too old. A nil Notifier
// has done nothing.
func (n *Notifier) Stats() (delivered, failed, skipped uint64) {
	if n == nil {
		return 0, 0, 0
	}
	return n.delivered.Load(), n.failed.Load(), n.skipped.Load()
}

// batch is how many alerts one read of the outbox takes.
const batch = 64

// Run delivers alerts until ctx ends (leadership lost, shutdown).
func (n *Notifier) Run(ctx context.Context) {
	if len(n.opts.Webhooks) == 0 {
		return
	}
	tick := time.NewTicker(n.opts.Poll)
	defer tick.Stop()
	for {
		n.drain(ctx)
		select {
		case <-ctx.Done():
			return
		case <-n.wake:
		case <-n.opts.Wake:
		case <-tick.C:
		}
	}
}

// drain delivers what the outbox holds now.
func (n *Notifier) drain(ctx context.Context) {
	for ctx.Err() == nil {
		var alerts []*gantrypb.Alert
		err := n.opts.Store.View(func(tx *store.Tx) (err error) {
			alerts, err = tx.Alerts(0, batch)
			return err
		})
		if err != nil {
			n.opts.Log.Error("alerts: read the outbox", "err", err)
			return
		}
		if len(alerts) == 0 {
			return
		}
		for _, a := range alerts {
			if age := n.opts.Now().Sub(time.UnixMilli(a.AtMs)); age > n.opts.MaxAge {
				n.skipped.Add(1)
				n.opts.Log.Warn("alerts: skipping an alert too old to send", "id", a.Id, "kind", a.Kind, "age", age.Round(time.Second))
			} else {
				for _, url := range n.opts.Webhooks {
					if err := n.post(ctx, url, a); err != nil {
						if ctx.Err() != nil {
							return // not delivered: the next leader sends it
						}
						n.failed.Add(1)
						n.opts.Log.Error("alerts: giving up on a webhook for this alert", "webhook", redact(url), "id", a.Id,
							"kind", a.Kind, "text", a.Text, "err", err)
					} else {
						n.delivered.Add(1)
					}
				}
			}
			if _, err := n.opts.Raft.Apply(&gantrypb.AlertsDeliveredCmd{UpTo: a.Id, AtMs: n.opts.Now().UnixMilli()}); err != nil {
				// Not leader any more, or Raft is failing: the alert
				// stays in the outbox and is sent again (same key).
				n.opts.Log.Warn("alerts: commit delivered cursor", "id", a.Id, "err", err)
				return
			}
		}
	}
}

// Payload is the JSON body posted for an alert. Text is what Slack (and
// Slack-compatible receivers: Mattermost, Discord's /slack endpoint) show.
type Payload struct {
	// ID is the idempotency key, also sent as the Idempotency-Key header.
	ID       string   `json:"id"`
	AlertID  uint64   `json:"alert_id"`
	Kind     string   `json:"kind"`
	Text     string   `json:"text"`
	JobID    string   `json:"job_id,omitempty"`
	JobName  string   `json:"job_name,omitempty"`
	Node     string   `json:"node,omitempty"`
	Evidence string   `json:"evidence,omitempty"`
	GPUs     []uint32 `json:"gpus,omitempty"`
	At       string   `json:"at"`
}

// Key is an alert's idempotency key.
func Key(id uint64) string { return "gantry-alert-" + strconv.FormatUint(id, 10) }

// errPermanent marks an answer that retrying will not change.
var errPermanent = errors.New("refused")

// post delivers a to url, retrying with backoff.
func (n *Notifier) post(ctx context.Context, url string, a *gantrypb.Alert) error {
	body, err := json.Marshal(Payload{ID: Key(a.Id), AlertID: a.Id, Kind: a.Kind, Text: slackEscape(a.Text), JobID: a.JobId,
		JobName: a.JobName, Node: a.Node, Evidence: a.Evidence, GPUs: a.Gpus,
		At: time.UnixMilli(a.AtMs).UTC().Format(time.RFC3339Nano)})
	if err != nil {
		return err
	}
	backoff := n.opts.RetryMin
	for attempt := 1; ; attempt++ {
		err = n.postOnce(ctx, url, a.Id, body)
		if err == nil || errors.Is(err, errPermanent) || attempt >= n.opts.MaxAttempts {
			return err
		}
		n.opts.Log.Warn("alerts: webhook failed; retrying", "webhook", redact(url), "id", a.Id, "attempt", attempt,
			"retry_in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, n.opts.RetryMax)
	}
}

func (n *Notifier) postOnce(ctx context.Context, url string, id uint64, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %v", errPermanent, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", Key(id))
	resp, err := n.opts.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("webhook answered %s", resp.Status)
	default:
		return fmt.Errorf("%w: webhook answered %s", errPermanent, resp.Status)
	}
}

// slackEscape escapes the three characters Slack's text formatting acts
// on, as Slack asks: a job's name is the job's to choose, and "<!channel>"
// in it must not page a whole channel.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// redact keeps a webhook URL's secret path (Slack's token) out of logs.
func redact(url string) string {
	const keep = 32
	if len(url) <= keep {
		return url
	}
	return url[:keep] + "..."
}
