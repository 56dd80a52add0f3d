package hub

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

func msg(i int) Message {
	return Message{Data: []byte(fmt.Sprint(i)), Kind: "metrics", MaxSeq: uint64(i),
		Points: []apiv1.Point{{Seq: uint64(i), Values: map[string]float64{"v": float64(i)}}}}
}

// drain reads everything waiting right now.
func drain(s *Sub) []Message {
	var out []Message
	for {
		m, ok := s.Next()
		if !ok {
			return out
		}
		out = append(out, m)
	}
}

// seqsOf lists the point seqs carried by metrics messages, in order.
func seqsOf(ms []Message) []uint64 {
	var out []uint64
	for _, m := range ms {
		for _, p := range m.Points {
			out = append(out, p.Seq)
		}
	}
	return out
}

func dropped(s *Sub) bool {
	select {
	case <-s.Dropped():
		return true
	default:
		return false
	}
}

func TestPublishReachesTopicSubscribersOnly(t *testing.T) {
	h := New()
	a := h.Subscribe(8, JobTopic("1"))
	b := h.Subscribe(8, JobTopic("1"))
	other := h.Subscribe(8, JobTopic("2"))
	defer a.Close()
	defer b.Close()
	defer other.Close()

	h.Publish(JobTopic("1"), msg(1))
	h.Publish(JobTopic("1"), msg(2))
	h.Publish("nobody", msg(3))
	for name, s := range map[string]*Sub{"a": a, "b": b} {
		got := drain(s)
		if len(got) != 2 || string(got[0].Data) != "1" || string(got[1].Data) != "2" || got[1].MaxSeq != 2 {
			t.Errorf("%s got %v, want messages 1 and 2 in order", name, got)
		}
	}
	if got := drain(other); len(got) != 0 {
		t.Errorf("subscriber of another topic got %v", got)
	}
}

// A subscriber whose queue overflows is not dropped at once: its backlog is
// coalesced (every point kept, merged into one metrics frame; only the
// latest GPU sample and state) and the fast subscriber is not affected.
func TestLaggingSubscriberCoalesced(t *testing.T) {
	h := New()
	slow := h.Subscribe(2, JobTopic("1"))
	defer slow.Close()
	fast := h.Subscribe(100, JobTopic("1"))
	defer fast.Close()
	var got []Message
	for i := 1; i <= 10; i++ {
		h.Publish(JobTopic("1"), msg(i))
		h.Publish(JobTopic("1"), Message{Kind: apiv1.FrameGPU, Data: []byte(fmt.Sprint("gpu", i))})
		got = append(got, drain(fast)...)
	}
	h.Publish(JobTopic("1"), Message{Kind: apiv1.FrameFinal, Data: []byte("final"), Terminal: true})
	got = append(got, drain(fast)...)
	if dropped(slow) {
		t.Fatal("a lagging subscriber within the backlog bound was dropped")
	}
	if len(got) != 21 {
		t.Fatalf("fast subscriber got %d of 21 messages", len(got))
	}
	q := drain(slow)
	// Queue: metrics 1, gpu1; then the backlog: merged metrics 2..10, the
	// latest GPU sample, the final frame last.
	if len(q) != 5 || string(q[0].Data) != "1" || string(q[1].Data) != "gpu1" {
		t.Fatalf("slow subscriber got %d messages %v", len(q), q)
	}
	merged := q[2]
	if merged.Kind != apiv1.FrameMetrics || merged.MaxSeq != 10 {
		t.Fatalf("merged frame = %+v", merged)
	}
	var f apiv1.Frame
	if err := json.Unmarshal(merged.Data, &f); err != nil || len(f.Points) != 9 || f.Points[0].Seq != 2 || f.Points[8].Seq != 10 {
		t.Fatalf("merged frame data %s (err %v): want points 2..10", merged.Data, err)
	}
	if string(q[3].Data) != "gpu10" || !q[4].Terminal {
		t.Fatalf("after the merged points: %s then %s, want the latest GPU sample then final", q[3].Data, q[4].Data)
	}
	if want := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}; fmt.Sprint(seqsOf(q)) != fmt.Sprint(want) {
		t.Fatalf("slow subscriber saw seqs %v, want every point once: %v", seqsOf(q), want)
	}
	if h.Coalesced() == 0 {
		t.Fatal("Coalesced counter did not move")
	}
}

// Past the backlog bound the subscriber is dropped; what it had queued is
// still readable, others keep receiving, and the count goes down.
func TestSlowSubscriberDroppedPastBacklog(t *testing.T) {
	h := New()
	slow := h.Subscribe(2, JobTopic("1"))
	fast := h.Subscribe(2, JobTopic("1"))
	defer fast.Close()
	big := make([]apiv1.Point, 1000)
	n := 0
	for i := 1; !dropped(slow); i++ {
		if i > MaxBacklogPoints/len(big)+5 {
			t.Fatal("never dropped past the backlog bound")
		}
		h.Publish(JobTopic("1"), Message{Kind: apiv1.FrameMetrics, MaxSeq: uint64(i), Data: []byte("x"), Points: big})
		n += len(drain(fast))
	}
	if q := drain(slow); len(q) != 2 {
		t.Fatalf("dropped subscriber's queue = %d messages, want the 2 queued", len(q))
	}
	if n == 0 || dropped(fast) {
		t.Fatalf("fast subscriber got %d messages, dropped %v", n, dropped(fast))
	}
	if h.Subscribers() != 1 || h.Dropped() != 1 {
		t.Fatalf("subscribers %d dropped %d, want 1 and 1", h.Subscribers(), h.Dropped())
	}
	h.Publish(JobTopic("1"), msg(1))
	if q := drain(slow); len(q) != 0 {
		t.Fatalf("dropped subscriber still receives: %v", q)
	}
	slow.Close()
	if n := h.Subscribers(); n != 1 {
		t.Fatalf("Close after drop changed the count to %d", n)
	}
}

// An idle subscriber holds no queue buffer once drained.
func TestIdleSubscriberHoldsNoQueue(t *testing.T) {
	h := New()
	s := h.Subscribe(256, "t")
	defer s.Close()
	h.Publish("t", msg(1))
	drain(s)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.queue != nil || s.backlog != nil {
		t.Fatalf("drained subscriber still holds queue %v backlog %v", s.queue, s.backlog)
	}
}

func TestCloseIdempotent(t *testing.T) {
	h := New()
	s1 := h.Subscribe(0, JobTopic("1"), NodeTopic("n"))
	s2 := h.Subscribe(0, JobTopic("1"))
	if n := h.Subscribers(); n != 2 {
		t.Fatalf("Subscribers = %d, want 2", n)
	}
	s1.Close()
	s1.Close()
	if n := h.Subscribers(); n != 1 {
		t.Fatalf("Subscribers after closing one twice = %d, want 1", n)
	}
	if h.Has(NodeTopic("n")) {
		t.Fatal("topic still has a subscriber after its only one closed")
	}
	if !h.Has(JobTopic("1")) {
		t.Fatal("closing one subscriber removed the other")
	}
	s2.Close()
	if n := h.Subscribers(); n != 0 {
		t.Fatalf("Subscribers after closing all = %d", n)
	}
	h.mu.RLock()
	left := len(h.topics)
	h.mu.RUnlock()
	if left != 0 {
		t.Fatalf("%d empty topics left in the hub", left)
	}
	// Add after Close does nothing.
	s2.Add(JobTopic("3"))
	if h.Has(JobTopic("3")) {
		t.Fatal("Add after Close subscribed")
	}
}

func TestAddAndHas(t *testing.T) {
	h := New()
	if h.Has(JobTopic("1")) {
		t.Fatal("empty hub Has a topic")
	}
	s := h.Subscribe(8, JobTopic("1"))
	defer s.Close()
	if !h.Has(JobTopic("1")) || h.Has(NodeTopic("n")) {
		t.Fatal("Has is wrong after Subscribe")
	}
	s.Add(NodeTopic("n"))
	s.Add(NodeTopic("n")) // twice is harmless: one delivery per publish
	if !h.Has(NodeTopic("n")) {
		t.Fatal("Has(node) false after Add")
	}
	h.Publish(NodeTopic("n"), Message{Kind: "gpu"})
	h.Publish(JobTopic("1"), Message{Kind: "state"})
	got := drain(s)
	if len(got) != 2 || got[0].Kind != "gpu" || got[1].Kind != "state" {
		t.Fatalf("got %v, want gpu then state once each", got)
	}
	if h.Subscribers() != 1 {
		t.Fatal("Add counted as a new subscriber")
	}
}

func TestDefaultQueue(t *testing.T) {
	h := New()
	s := h.Subscribe(0, "t")
	defer s.Close()
	for i := 0; i < DefaultQueue; i++ {
		h.Publish("t", msg(i))
	}
	if h.Coalesced() != 0 {
		t.Fatal("coalesced before the default queue was full")
	}
	h.Publish("t", msg(DefaultQueue))
	if h.Coalesced() != 1 {
		t.Fatal("not coalescing once the default queue overflowed")
	}
}

// Run with -race: publishers, subscribers joining and leaving, Add and
// drops all at once must neither race nor leak subscriptions.
func TestConcurrent(t *testing.T) {
	h := New()
	stop := make(chan struct{})
	var pubs sync.WaitGroup
	for p := 0; p < 4; p++ {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				h.Publish(JobTopic(fmt.Sprint(i%3)), msg(i))
				h.Publish(NodeTopic("n"), msg(i))
				_ = h.Has(JobTopic("0"))
			}
		}()
	}
	var subs sync.WaitGroup
	for w := 0; w < 8; w++ {
		subs.Add(1)
		go func() {
			defer subs.Done()
			for i := 0; i < 200; i++ {
				s := h.Subscribe(1+i%4, JobTopic(fmt.Sprint(i%3)))
				if i%2 == 0 {
					s.Add(NodeTopic("n"))
				}
				for j := 0; j < 3; j++ {
					select {
					case <-s.Ready():
						s.Next()
					case <-s.Dropped():
					default:
					}
				}
				s.Close()
				if i%5 == 0 {
					s.Close()
				}
			}
		}()
	}
	subs.Wait()
	close(stop)
	pubs.Wait()
	if n := h.Subscribers(); n != 0 {
		t.Fatalf("Subscribers after everyone left = %d", n)
	}
	if h.Has(JobTopic("0")) || h.Has(NodeTopic("n")) {
		t.Fatal("topics still subscribed after every subscriber closed")
	}
}

// A SubscribeFunc subscriber is told through its notify function, on the
// publisher's goroutine, and when it is dropped the notify comes after
// Dropped is closed, so a writer woken by it always sees the drop.
func TestSubscribeFuncNotifies(t *testing.T) {
	h := New()
	var s *Sub
	calls, sawDrop := 0, false
	s = h.SubscribeFunc(2, func() {
		calls++
		sawDrop = dropped(s)
	}, JobTopic("1"))
	defer s.Close()
	if s.Ready() != nil {
		t.Fatal("a notify subscriber has a Ready channel")
	}
	h.Publish(JobTopic("1"), msg(1))
	if calls != 1 || sawDrop {
		t.Fatalf("after one publish: %d notifies, dropped %v; want 1, false", calls, sawDrop)
	}
	if got := drain(s); len(got) != 1 || got[0].MaxSeq != 1 {
		t.Fatalf("got %v, want message 1", got)
	}
	big := make([]apiv1.Point, 1000)
	for i := 2; !dropped(s); i++ {
		if i > MaxBacklogPoints/len(big)+5 {
			t.Fatal("never dropped past the backlog bound")
		}
		h.Publish(JobTopic("1"), Message{Kind: apiv1.FrameMetrics, MaxSeq: uint64(i), Data: []byte("x"), Points: big})
	}
	if !sawDrop {
		t.Fatal("the last notify came before Dropped was closed")
	}
	n := calls
	h.Publish(JobTopic("1"), msg(99))
	if calls != n {
		t.Fatal("a dropped subscriber is still notified")
	}
}
