package hub

import (
	"fmt"
	"sync"
	"testing"
)

func msg(i int) Message {
	return Message{Data: []byte(fmt.Sprint(i)), Kind: "metrics", MaxSeq: uint64(i)}
}

// drain reads everything queued right now.
func drain(s *Sub) []Message {
	var out []Message
	for {
		select {
		case m := <-s.C():
			out = append(out, m)
		default:
			return out
		}
	}
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

func TestSlowSubscriberDropped(t *testing.T) {
	h := New()
	slow := h.Subscribe(2, JobTopic("1"))
	fast := h.Subscribe(100, JobTopic("1"))
	defer fast.Close()
	var got []Message
	for i := 1; i <= 10; i++ {
		h.Publish(JobTopic("1"), msg(i))
		got = append(got, drain(fast)...)
	}
	if !dropped(slow) {
		t.Fatal("a subscriber with a full queue was not dropped")
	}
	// What was queued before the drop is still readable.
	if q := drain(slow); len(q) != 2 || string(q[0].Data) != "1" || string(q[1].Data) != "2" {
		t.Fatalf("slow subscriber's queue = %v, want 1 and 2", q)
	}
	if len(got) != 10 {
		t.Fatalf("fast subscriber got %d of 10 messages", len(got))
	}
	for i, m := range got {
		if string(m.Data) != fmt.Sprint(i+1) {
			t.Fatalf("fast subscriber message %d = %s", i, m.Data)
		}
	}
	if dropped(fast) {
		t.Fatal("the fast subscriber was dropped too")
	}
	if n := h.Subscribers(); n != 1 {
		t.Fatalf("Subscribers after a drop = %d, want 1", n)
	}
	// A dropped subscriber gets nothing more and Close stays harmless.
	h.Publish(JobTopic("1"), msg(11))
	if q := drain(slow); len(q) != 0 {
		t.Fatalf("dropped subscriber still receives: %v", q)
	}
	slow.Close()
	if n := h.Subscribers(); n != 1 {
		t.Fatalf("Close after drop changed the count to %d", n)
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
	if dropped(s) {
		t.Fatal("dropped before the default queue was full")
	}
	h.Publish("t", msg(DefaultQueue))
	if !dropped(s) {
		t.Fatal("not dropped once the default queue overflowed")
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
					case <-s.C():
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
