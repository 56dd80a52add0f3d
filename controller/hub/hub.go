// Package hub is the controller's in-memory fan-out from FSM applies to
// watchers. A message is encoded once and the same bytes are handed to
// every subscriber of its topic. Publishing never blocks and never waits
// for a watcher: each subscriber has a bounded queue; one that falls
// behind gets its backlog coalesced (all its points merged into one
// metrics frame, only the latest GPU sample and state), and one that is
// still too far behind is dropped (Dropped closes) without slowing the
// apply loop or anyone else. Subscribers hold no store transaction, file
// or handle (invariant I1), and an idle one holds no queue memory.
package hub

import (
	"sync"
	"sync/atomic"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// Defaults for a subscription.
const (
	// DefaultQueue is a subscriber's queue length when none is given.
	DefaultQueue = 256
	// MaxQueuedPoints bounds the points in a subscriber's queue: frames
	// carry whole apply batches, so a frame count alone lets a stalled
	// watcher pile up hundreds of thousands of points.
	MaxQueuedPoints = 5000
	// MaxBacklogPoints bounds the points a lagging subscriber may have
	// coalesced; past it the subscriber is dropped.
	MaxBacklogPoints = 20000
	// maxBacklogEvents bounds the job events kept for a lagging subscriber.
	maxBacklogEvents = 100
)

// Message is one encoded frame with the little metadata watchers route on.
type Message struct {
	// Data is the encoded frame, shared by all subscribers: never modify it.
	Data []byte
	// Kind is the frame type ("metrics", "state", "final", "gpu", …).
	Kind string
	// MaxSeq is the highest point seq in a metrics frame (0 otherwise), so a
	// watcher can skip what its snapshot already held.
	MaxSeq uint64
	// Node is the job's node in state frames, so a watcher can follow the
	// node's GPU topic once the job is placed.
	Node string
	// Terminal is set on the frame that ends a job.
	Terminal bool
	// Points are a metrics frame's points (read-only), kept so that a
	// lagging subscriber's backlog can be merged into one frame.
	Points []apiv1.Point
}

// Hub routes messages by topic.
type Hub struct {
	mu      sync.RWMutex
	topics  map[string]map[*Sub]struct{}
	subs    atomic.Int64
	dropped atomic.Int64
	merged  atomic.Int64
}

// New returns an empty hub.
func New() *Hub {
	return &Hub{topics: map[string]map[*Sub]struct{}{}}
}

// JobTopic is the topic of a job's frames.
func JobTopic(id string) string { return "job/" + id }

// NodeTopic is the topic of a node's GPU frames.
func NodeTopic(id string) string { return "node/" + id }

// Subscribers is the number of live subscriptions.
func (h *Hub) Subscribers() int64 { return h.subs.Load() }

// Dropped counts subscribers dropped for falling too far behind.
func (h *Hub) Dropped() int64 { return h.dropped.Load() }

// Coalesced counts messages merged into lagging subscribers' backlogs.
func (h *Hub) Coalesced() int64 { return h.merged.Load() }

// Sub is one subscription. Its methods are safe for concurrent use.
type Sub struct {
	hub     *Hub
	ready   chan struct{} // capacity 1: "there may be something to read"; nil with notify
	notify  func()        // called instead of signalling ready (SubscribeFunc)
	dropped chan struct{}
	once    sync.Once

	mu      sync.Mutex
	queue   []Message // FIFO; allocated on demand so idle subscribers cost nothing
	limit   int
	points  int      // points in queue
	backlog *backlog // set once the queue overflowed: merged frames after the queue
	closed  bool
	topics  []string
}

// backlog is what a lagging subscriber will get after its queue: every
// point (merged), the events, and only the latest GPU sample and state.
type backlog struct {
	points []apiv1.Point
	maxSeq uint64
	events []Message
	gpu    *Message
	state  *Message
	final  *Message
}

// Subscribe returns a subscription to topics with a queue of queueLen
// messages (DefaultQueue when <= 0).
func (h *Hub) Subscribe(queueLen int, topics ...string) *Sub {
	return h.subscribe(&Sub{ready: make(chan struct{}, 1)}, queueLen, topics)
}

// SubscribeFunc is Subscribe for a subscriber that has no goroutine waiting
// on it: instead of signalling Ready, the hub calls notify whenever
// messages may be waiting or the subscriber was dropped. notify runs on
// the publisher's goroutine with no lock held, so it must return at once
// (start or wake a writer, never write); it may be called again before the
// messages of an earlier call were read. Ready is nil for such a Sub.
func (h *Hub) SubscribeFunc(queueLen int, notify func(), topics ...string) *Sub {
	return h.subscribe(&Sub{notify: notify}, queueLen, topics)
}

func (h *Hub) subscribe(s *Sub, queueLen int, topics []string) *Sub {
	if queueLen <= 0 {
		queueLen = DefaultQueue
	}
	s.hub, s.dropped, s.limit = h, make(chan struct{}), queueLen
	h.subs.Add(1)
	for _, t := range topics {
		s.Add(t)
	}
	return s
}

// Ready receives when messages may be waiting; read them with Next until
// it reports none. It is nil for a Sub made by SubscribeFunc.
func (s *Sub) Ready() <-chan struct{} { return s.ready }

// signal tells the subscriber that something changed.
func (s *Sub) signal() {
	if s.notify != nil {
		s.notify()
		return
	}
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Dropped is closed when the hub dropped this subscriber because it fell
// too far behind. Messages already queued are still readable.
func (s *Sub) Dropped() <-chan struct{} { return s.dropped }

// Next returns the oldest waiting message. After an overflow, the queue is
// followed by the coalesced backlog, encoded here on the watcher's own
// goroutine so the publisher never pays for a slow watcher.
func (s *Sub) Next() (Message, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 && s.backlog != nil {
		s.queue = s.backlog.flush(s.queue)
		s.backlog = nil
	}
	if len(s.queue) == 0 {
		s.queue = nil // let an idle subscriber's buffer go
		return Message{}, false
	}
	m := s.queue[0]
	s.queue[0] = Message{}
	s.queue = s.queue[1:]
	s.points = max(0, s.points-len(m.Points))
	return m, true
}

// Add subscribes to one more topic. Adding a topic twice is harmless.
func (s *Sub) Add(topic string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for _, t := range s.topics {
		if t == topic {
			return
		}
	}
	s.topics = append(s.topics, topic)
	h := s.hub
	h.mu.Lock()
	set := h.topics[topic]
	if set == nil {
		set = map[*Sub]struct{}{}
		h.topics[topic] = set
	}
	set[s] = struct{}{}
	h.mu.Unlock()
}

// Close ends the subscription and releases everything it holds. Safe to
// call more than once.
func (s *Sub) Close() {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		topics := s.topics
		s.topics = nil
		s.mu.Unlock()
		h := s.hub
		h.mu.Lock()
		for _, t := range topics {
			if set := h.topics[t]; set != nil {
				delete(set, s)
				if len(set) == 0 {
					delete(h.topics, t)
				}
			}
		}
		h.mu.Unlock()
		h.subs.Add(-1)
	})
}

// Has reports whether topic has any subscriber, so publishers can skip
// encoding frames nobody will read.
func (h *Hub) Has(topic string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.topics[topic]) > 0
}

// Publish hands m to every subscriber of topic without blocking.
func (h *Hub) Publish(topic string, m Message) {
	// Copy the subscriber set, then offer outside the hub lock: a Sub's
	// lock is taken before the hub's in Add, so holding both here in the
	// other order would deadlock.
	h.mu.RLock()
	set := h.topics[topic]
	subs := make([]*Sub, 0, len(set))
	for s := range set {
		subs = append(subs, s)
	}
	h.mu.RUnlock()
	var drop []*Sub
	for _, s := range subs {
		if !s.offer(m) {
			drop = append(drop, s)
		}
	}
	for _, s := range drop {
		h.dropped.Add(1)
		close(s.dropped)
		s.Close()
		// Only now, with Dropped closed: a subscriber woken earlier could
		// find its queue empty, not see the drop yet, and never be told.
		s.signal()
	}
}

// offer queues or coalesces m; false means the subscriber must be dropped.
func (s *Sub) offer(m Message) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return true
	}
	ok := true
	if s.backlog == nil && len(s.queue) < s.limit && (s.points+len(m.Points) <= MaxQueuedPoints || len(s.queue) == 0) {
		s.queue = append(s.queue, m)
		s.points += len(m.Points)
	} else {
		if s.backlog == nil {
			s.backlog = &backlog{}
		}
		s.hub.merged.Add(1)
		ok = s.backlog.add(m)
		if !ok {
			s.closed = true // the publisher closes it after unlocking
			s.backlog = nil
		}
	}
	s.mu.Unlock()
	if ok {
		s.signal() // a dropped subscriber is signalled by Publish
	}
	return ok
}

// add merges m into the backlog; false when it grew past its bound.
func (b *backlog) add(m Message) bool {
	switch m.Kind {
	case apiv1.FrameMetrics:
		b.points = append(b.points, m.Points...)
		b.maxSeq = max(b.maxSeq, m.MaxSeq)
		return len(b.points) <= MaxBacklogPoints
	case apiv1.FrameGPU:
		b.gpu = &m
	case apiv1.FrameState:
		b.state = &m
	case apiv1.FrameFinal:
		b.final = &m
	default:
		b.events = append(b.events, m)
		if len(b.events) > maxBacklogEvents {
			b.events = b.events[1:]
		}
	}
	return true
}

// flush appends the backlog as messages in delivery order: the merged
// points first, then events, the latest GPU sample and state, and the
// final frame last.
func (b *backlog) flush(q []Message) []Message {
	if len(b.points) > 0 {
		data, err := apiv1.Frame{Type: apiv1.FrameMetrics, Points: b.points}.Encode()
		if err == nil { // points were encoded once already; this cannot fail
			q = append(q, Message{Data: data, Kind: apiv1.FrameMetrics, MaxSeq: b.maxSeq, Points: b.points})
		}
	}
	q = append(q, b.events...)
	for _, m := range []*Message{b.gpu, b.state, b.final} {
		if m != nil {
			q = append(q, *m)
		}
	}
	return q
}
