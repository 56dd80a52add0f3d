package etcdpeer

import (
	"context"
	"errors"
	"os/exec"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/bench/proc"
)

func TestProtoAppendLen(t *testing.T) {
	tests := []struct {
		n      int
		prefix []byte
	}{
		{0, []byte{0}},
		{127, []byte{127}},
		{128, []byte{0x80, 1}},
		{300, []byte{0xac, 2}},
	}
	for _, tc := range tests {
		got := protoAppendLen(nil, make([]byte, tc.n))
		if len(got) != len(tc.prefix)+tc.n || string(got[:len(tc.prefix)]) != string(tc.prefix) {
			t.Errorf("length prefix of %d bytes = %x, want %x", tc.n, got[:len(tc.prefix)], tc.prefix)
		}
	}
}

// TestLoadStoresOnEveryMember runs a one-member etcd when the binary is
// installed (bench/install-peers.sh); the benchmark uses three.
func TestLoadStoresOnEveryMember(t *testing.T) {
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("etcd not installed")
	}
	if testing.Short() {
		t.Skip("starts etcd")
	}
	g := proc.NewGroup(t.TempDir())
	defer g.Stop(5 * time.Second)
	ctx := context.Background()
	c, err := Start(ctx, g, t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	before, err := c.Revision(ctx, c.Members[0])
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Load(ctx, 10, 2, 2, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	after, err := c.Revision(ctx, c.Members[0])
	if err != nil {
		t.Fatal(err)
	}
	if res.Puts == 0 || after-before != res.Puts || res.Points != 10*res.Puts || res.PointsPerSecond() <= 0 {
		t.Fatalf("result %+v, revision %d → %d", res, before, after)
	}
}

func TestStartWithoutEtcd(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	g := proc.NewGroup(t.TempDir())
	defer g.Stop(time.Second)
	if _, err := Start(context.Background(), g, t.TempDir(), 1); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("Start without etcd: %v, want ErrNotInstalled", err)
	}
}
