// Package ctxwait waits for a while or until a context ends, whichever
// comes first: the client's retries and the benchmark's pacing share it.
package ctxwait

import (
	"context"
	"time"
)

// Sleep waits d, or returns ctx's error as soon as ctx ends.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
