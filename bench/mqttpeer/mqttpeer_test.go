package mqttpeer

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/bench/proc"
)

// TestFanOut runs a real Mosquitto when it is installed
// (bench/install-peers.sh): every subscriber gets every publication.
func TestFanOut(t *testing.T) {
	if _, err := exec.LookPath("mosquitto"); err != nil {
		t.Skip("mosquitto not installed")
	}
	if testing.Short() {
		t.Skip("starts mosquitto")
	}
	g := proc.NewGroup(t.TempDir())
	defer g.Stop(5 * time.Second)
	ctx := context.Background()
	b, err := Start(ctx, g, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	subs := b.NewSubscribers("bench/fanout")
	defer subs.Close()
	if err := subs.Add(ctx, 20, 8); err != nil {
		t.Fatal(err)
	}
	pub, err := b.NewPublisher("bench/fanout")
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	const msgs = 3
	for i := 0; i < msgs; i++ {
		if err := pub.Publish(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for subs.Received() < 20*msgs && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	got := subs.Take()
	if len(got) != 20*msgs {
		t.Fatalf("got %d samples, want %d", len(got), 20*msgs)
	}
	for _, d := range got {
		if d < 0 || d > 10*time.Second {
			t.Fatalf("implausible latency %v", d)
		}
	}
	if rss, err := b.RSS(); err != nil || rss == 0 {
		t.Fatalf("RSS = %d, %v", rss, err)
	}
}
