package store

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// The alert outbox: alerts the FSM appended as it applied changes, in id
// order, from the one after the delivered cursor on. It is its own top
// bucket, created on first use so that a state image from a build without
// it (a snapshot restored from an older peer) still works.
var (
	// Alert keys are 8 bytes (id BE); the two meta keys are not 8 bytes
	// long and sort after every id a controller will ever assign.
	bucketAlerts      = []byte("alerts")    // id BE → gantrypb.Alert
	keyAlertNext      = []byte("next")      // in alerts: the next id to assign
	keyAlertDelivered = []byte("delivered") // in alerts: delivered up to this id
)

// MaxAlerts bounds the outbox: past it the oldest undelivered alerts are
// dropped (and counted) as new ones come, so a controller whose webhooks
// are down for days holds a bounded amount.
const MaxAlerts = 4096

func (t *Tx) alerts() (*bolt.Bucket, error) {
	if b := t.tx.Bucket(bucketAlerts); b != nil {
		return b, nil
	}
	if t.w == nil {
		return nil, nil // a read transaction on a state without alerts
	}
	return t.tx.CreateBucket(bucketAlerts)
}

func alertMeta(b *bolt.Bucket, k []byte) uint64 {
	if b == nil {
		return 0
	}
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// AppendAlert gives a the next alert id, stores it, and drops the oldest
// undelivered alerts past MaxAlerts. It returns the id and how many it
// dropped. Every voter assigns the same ids: they follow from the state.
func (t *Tx) AppendAlert(a *gantrypb.Alert) (id uint64, dropped int, err error) {
	b, err := t.alerts()
	if err != nil {
		return 0, 0, err
	}
	next := max(alertMeta(b, keyAlertNext), 1)
	a.Id = next
	data, err := proto.Marshal(a)
	if err != nil {
		return 0, 0, err
	}
	if err := b.Put(u64(next), data); err != nil {
		return 0, 0, err
	}
	if err := b.Put(keyAlertNext, u64(next+1)); err != nil {
		return 0, 0, err
	}
	delivered := alertMeta(b, keyAlertDelivered)
	if held := next - delivered; held > MaxAlerts {
		// Move the cursor past the oldest: they are lost, and said so.
		upTo := next - MaxAlerts
		n, err := t.deleteAlerts(b, delivered, upTo)
		if err != nil {
			return 0, 0, err
		}
		if err := b.Put(keyAlertDelivered, u64(upTo)); err != nil {
			return 0, 0, err
		}
		dropped = n
	}
	return next, dropped, nil
}

func (t *Tx) deleteAlerts(b *bolt.Bucket, after, upTo uint64) (int, error) {
	n := 0
	c := b.Cursor()
	for k, _ := c.Seek(u64(after + 1)); k != nil && len(k) == 8 && binary.BigEndian.Uint64(k) <= upTo; k, _ = c.Next() {
		if err := c.Delete(); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// AlertsDelivered returns the delivered-up-to cursor.
func (t *Tx) AlertsDelivered() uint64 {
	b, _ := t.alerts()
	return alertMeta(b, keyAlertDelivered)
}

// SetAlertsDelivered moves the cursor forward to upTo (never back, never
// past the last alert) and deletes the alerts it passed. It reports
// whether the cursor moved.
func (t *Tx) SetAlertsDelivered(upTo uint64) (bool, error) {
	b, err := t.alerts()
	if err != nil {
		return false, err
	}
	delivered := alertMeta(b, keyAlertDelivered)
	last := max(alertMeta(b, keyAlertNext), 1) - 1
	upTo = min(upTo, last)
	if upTo <= delivered {
		return false, nil
	}
	if _, err := t.deleteAlerts(b, delivered, upTo); err != nil {
		return false, err
	}
	return true, b.Put(keyAlertDelivered, u64(upTo))
}

// Alerts returns up to limit undelivered alerts with id > after, in order.
func (t *Tx) Alerts(after uint64, limit int) ([]*gantrypb.Alert, error) {
	b, err := t.alerts()
	if err != nil || b == nil {
		return nil, err
	}
	after = max(after, alertMeta(b, keyAlertDelivered))
	var out []*gantrypb.Alert
	c := b.Cursor()
	for k, v := c.Seek(u64(after + 1)); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Next() {
		if len(k) != 8 {
			continue
		}
		a := &gantrypb.Alert{}
		if err := proto.Unmarshal(v, a); err != nil {
			return nil, fmt.Errorf("store: alert %d: %w", binary.BigEndian.Uint64(k), err)
		}
		out = append(out, a)
	}
	return out, nil
}
