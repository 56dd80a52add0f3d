package gpu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// maxDistinctErrors bounds the memory Run spends remembering which errors it
// has logged. Past it, new kinds of error are counted but not logged.
const maxDistinctErrors = 64

// Run samples src every interval, starting at once, and passes each sample
// to emit until ctx is done; then it returns nil. It returns an error only
// for bad arguments or when src is closed under it (ErrClosed).
//
// Sampling errors do not stop the loop, and a partial sample is still
// emitted. Each distinct error (per GPU and field, by message) is logged
// once, at Warn, to logger (slog.Default() when nil), so a GPU that never
// reports power costs one log line, not one a second.
//
// emit runs on Run's goroutine; if it is slow, ticks are dropped rather
// than queued, so samples never pile up behind a stuck consumer.
func Run(ctx context.Context, src *Source, interval time.Duration, logger *slog.Logger, emit func(*gantrypb.GPUSample)) error {
	if src == nil || emit == nil {
		return fmt.Errorf("%w: nil source or emit", ErrInvalidArgument)
	}
	if interval <= 0 {
		return fmt.Errorf("%w: sampling interval %s", ErrInvalidArgument, interval)
	}
	if logger == nil {
		logger = slog.Default()
	}
	seen := errorLog{logger: logger, seen: make(map[string]struct{})}

	sample := func() error {
		s, err := src.Sample()
		if errors.Is(err, ErrClosed) {
			return err
		}
		if err != nil {
			seen.log(err)
		}
		if s != nil {
			emit(s)
		}
		return nil
	}

	if err := sample(); err != nil {
		return err
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			if err := sample(); err != nil {
				return err
			}
		}
	}
}

// errorLog logs each distinct error once.
type errorLog struct {
	logger     *slog.Logger
	seen       map[string]struct{}
	suppressed bool
}

// log logs the parts of err not logged before. A joined error from Sample
// is split so that one GPU's recurring failure does not make every
// combination with another GPU's look new.
func (l *errorLog) log(err error) {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	for _, e := range errs {
		msg := e.Error()
		if _, ok := l.seen[msg]; ok {
			continue
		}
		if len(l.seen) >= maxDistinctErrors {
			if !l.suppressed {
				l.suppressed = true
				l.logger.Warn("gpu sampling: too many distinct errors, no longer logging new ones",
					"limit", maxDistinctErrors)
			}
			continue
		}
		l.seen[msg] = struct{}{}
		l.logger.Warn("gpu sampling failed (logged once per distinct error)", "err", e)
	}
}
