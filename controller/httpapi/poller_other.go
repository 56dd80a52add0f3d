//go:build !linux

package httpapi

import "errors"

// readPoller exists only on Linux; elsewhere every watcher has a reader
// goroutine.
type readPoller struct{}

func sharedPoller() (*readPoller, error) {
	return nil, errors.New("no read poller on this platform")
}

func (p *readPoller) add(fd int, w *watcher) error { return errors.New("no read poller") }

func (p *readPoller) remove(fd int) error { return nil }
