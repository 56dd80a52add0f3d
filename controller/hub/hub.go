// Package hub is the controller's in-memory fan-out from FSM applies to
// watchers. A message is encoded once and the same bytes are handed to
// every subscriber of its topic. Publishing never blocks: each subscriber
// has a bounded queue, and one that cannot keep up is dropped (its Dropped
// channel closes) rather than slowing the apply loop or other watchers.
// Subscribers hold no store transaction, file or handle (invariant I1).
package hub

import (
	"sync"
	"sync/atomic"
)

// DefaultQueue is a subscriber's queue length when none is given.
const DefaultQueue = 256

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
}

// Hub routes messages by topic.
type Hub struct {
	mu     sync.RWMutex
	topics map[string]map[*Sub]struct{}
	subs   atomic.Int64
}

// New returns an empty hub.
func New() *Hub {
	return &Hub{topics: map[string]map[*Sub]struct{}{}}
}

// JobTopic is the topic of a job's frames.
func JobTopic(id string) string { return "job/" + id }

// NodeTopic is the topic of a node's GPU frames.
func NodeTopic(id string) string { return "node/" + id }

// Sub is one subscription. Its methods are safe for concurrent use.
type Sub struct {
	hub     *Hub
	ch      chan Message
	dropped chan struct{}
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	topics  []string
}

// Subscribe returns a subscription to topics with a queue of queueLen
// messages (DefaultQueue when <= 0).
func (h *Hub) Subscribe(queueLen int, topics ...string) *Sub {
	if queueLen <= 0 {
		queueLen = DefaultQueue
	}
	s := &Sub{
		hub:     h,
		ch:      make(chan Message, queueLen),
		dropped: make(chan struct{}),
		done:    make(chan struct{}),
	}
	h.subs.Add(1)
	for _, t := range topics {
		s.Add(t)
	}
	return s
}

// Subscribers is the number of live subscriptions.
func (h *Hub) Subscribers() int64 { return h.subs.Load() }

// C delivers the subscription's messages in publish order.
func (s *Sub) C() <-chan Message { return s.ch }

// Dropped is closed when the hub dropped this subscriber because its queue
// was full. Messages already queued are still readable.
func (s *Sub) Dropped() <-chan struct{} { return s.dropped }

// Add subscribes to one more topic. Adding a topic twice is harmless.
func (s *Sub) Add(topic string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return
	default:
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
		close(s.done)
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
	var slow []*Sub
	h.mu.RLock()
	for s := range h.topics[topic] {
		select {
		case s.ch <- m:
		default:
			slow = append(slow, s)
		}
	}
	h.mu.RUnlock()
	for _, s := range slow {
		s.drop()
	}
}

func (s *Sub) drop() {
	s.mu.Lock()
	select {
	case <-s.dropped:
	default:
		close(s.dropped)
	}
	s.mu.Unlock()
	s.Close()
}
