package httpapi

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// readPoller waits for client bytes on every plain-TCP watcher's socket
// with one goroutine and one epoll instance, so that an idle watcher needs
// no goroutine of its own (the Go runtime parks a goroutine per blocked
// Read; ten thousand of them are ten thousand stacks). Level-triggered:
// each event reads at most one buffer from one socket, so a client that
// floods cannot hold the loop, and what it left is reported again.
type readPoller struct {
	epfd  int
	mu    sync.Mutex
	conns map[int]*watcher // by file descriptor
	dead  error            // set when the loop ended; no more adds
	buf   []byte           // the loop's read buffer
}

var (
	pollerOnce sync.Once
	thePoller  *readPoller
	pollerErr  error
)

// sharedPoller returns the process's poller, starting it on first use.
func sharedPoller() (*readPoller, error) {
	pollerOnce.Do(func() {
		fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			pollerErr = fmt.Errorf("epoll_create1: %w", err)
			return
		}
		thePoller = &readPoller{epfd: fd, conns: map[int]*watcher{}, buf: make([]byte, 4096)}
		go thePoller.run()
	})
	return thePoller, pollerErr
}

// add starts reporting fd's bytes to w.
func (p *readPoller) add(fd int, w *watcher) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dead != nil {
		return p.dead
	}
	p.conns[fd] = w
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		delete(p.conns, fd)
		return fmt.Errorf("epoll add fd %d: %w", fd, err)
	}
	return nil
}

// remove stops reporting fd. It must come before the socket is closed:
// the number may be reused by the next connection at once.
func (p *readPoller) remove(fd int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, fd)
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return fmt.Errorf("epoll remove fd %d: %w", fd, err)
	}
	return nil
}

func (p *readPoller) run() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// Cannot happen with a valid epoll descriptor. Watchers
			// already added stop hearing their clients and end by
			// the keep-alive; new ones get reader goroutines.
			p.mu.Lock()
			p.dead = fmt.Errorf("epoll_wait: %w", err)
			p.mu.Unlock()
			return
		}
		for _, ev := range events[:n] {
			p.mu.Lock()
			w := p.conns[int(ev.Fd)]
			p.mu.Unlock()
			if w != nil {
				w.pollRead(p.buf)
			}
		}
	}
}
