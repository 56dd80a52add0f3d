package simagent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func TestRecords(t *testing.T) {
	p := Point("job", 7, 1700000000.5)
	if p.JobId != "job" || p.GetPoint().GetStep() != 7 || p.GetPoint().Ts != 1700000000.5 || len(p.GetPoint().Values) != len(MetricKeys) {
		t.Fatalf("Point = %v", p)
	}
	if len(MetricKeys) != 20 {
		t.Fatalf("%d metric keys, want 20 (a realistic line)", len(MetricKeys))
	}
	g := GPUSample(8, 1)
	if g.JobId != "" || len(g.GetGpu().Gpus) != 8 {
		t.Fatalf("GPUSample = %v", g)
	}
	x := Exit("job", 2)
	if x.GetExit().GetExitCode() != 0 || x.GetExit().ExitCode == nil {
		t.Fatalf("Exit = %v", x)
	}
}

// newBare is an Agent without a link, enough to test the handler.
func newBare() *Agent {
	return &Agent{ID: "a", gpus: 2, ackCh: make(chan struct{}), started: map[string]chan struct{}{}}
}

func TestAckBackPressure(t *testing.T) {
	a := newBare()
	a.appended.Store(100)
	if a.Pending() != 100 {
		t.Fatalf("Pending = %d", a.Pending())
	}
	done := make(chan error, 1)
	go func() { done <- a.WaitPendingBelow(context.Background(), 10) }()
	select {
	case err := <-done:
		t.Fatalf("WaitPendingBelow returned %v with 100 pending", err)
	case <-time.After(20 * time.Millisecond):
	}
	(*handler)(a).Acked(95)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an ack did not wake the waiter")
	}
	(*handler)(a).Acked(50) // a stale ack never moves the mark back
	if a.Acked() != 95 || a.Pending() != 5 {
		t.Fatalf("acked %d pending %d after a stale ack", a.Acked(), a.Pending())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.WaitAcked(ctx, 200); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitAcked on a cancelled context: %v", err)
	}
}

func TestStartAndHello(t *testing.T) {
	a := newBare()
	h := (*handler)(a)
	if hello := h.Hello(); hello.NodeId != "a" || len(hello.Gpus) != 2 {
		t.Fatalf("Hello = %v", hello)
	}
	if err := a.WaitStarted(context.Background(), "j1", 10*time.Millisecond); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("WaitStarted before Start: %v", err)
	}
	h.Start(startMsg("j1"))
	h.Start(startMsg("j1")) // the leader re-sends after a reconnect
	if err := a.WaitStarted(context.Background(), "j1", time.Second); err != nil {
		t.Fatal(err)
	}
}

func startMsg(id string) *gantrypb.StartJob { return &gantrypb.StartJob{JobId: id} }
