package cluster

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
)

// fakeDisk is a statfs the test controls.
type fakeDisk struct {
	free   atomic.Uint64
	fail   atomic.Bool
	failed atomic.Int64 // statfs calls that failed
}

func (d *fakeDisk) statfs(string) (uint64, error) {
	if d.fail.Load() {
		d.failed.Add(1)
		return 0, syscall.EIO
	}
	return d.free.Load(), nil
}

func TestDiskGuardRefusesBelowMinimumAndResumes(t *testing.T) {
	disk := &fakeDisk{}
	disk.free.Store(1 << 20)
	var mu sync.Mutex
	var calls []bool
	g := newDiskGuard("/data", DiskConfig{MinFree: 4096, Interval: 5 * time.Millisecond}, logging.Discard(),
		func(first bool) { mu.Lock(); calls = append(calls, first); mu.Unlock() }, disk.statfs)
	defer g.Stop()
	if err := g.Err(); err != nil || g.Full() {
		t.Fatalf("with 1 MiB free: Err = %v, Full = %v", err, g.Full())
	}
	disk.free.Store(1000)
	testutil.WaitFor(t, 5*time.Second, g.Full, "the guard to see the disk short")
	err := g.Err()
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Err = %v, want ErrDiskFull", err)
	}
	for _, want := range []string{"/data", "1000 B free", "needs 4.0 KiB", "writes refused until space is freed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not contain %q", err, want)
		}
	}
	if g.Free() != 1000 {
		t.Errorf("Free = %d, want 1000", g.Free())
	}
	// onFull runs at every short measurement (leadership transfer is
	// retried), and only the first of the episode says so.
	testutil.WaitFor(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(calls) >= 3 }, "onFull to be retried")
	mu.Lock()
	if !calls[0] || calls[1] || calls[2] {
		t.Errorf("onFull first flags = %v, want true then false", calls[:3])
	}
	mu.Unlock()

	// A failing statfs says nothing about space: the verdict stays.
	disk.fail.Store(true)
	testutil.WaitFor(t, 5*time.Second, func() bool { return disk.failed.Load() >= 2 }, "statfs to fail twice")
	if !g.Full() {
		t.Fatal("a failing statfs cleared the disk-full verdict")
	}
	disk.fail.Store(false)

	disk.free.Store(8192)
	testutil.WaitFor(t, 5*time.Second, func() bool { return g.Err() == nil }, "writes to resume once space is back")
}

func TestDiskGuardOff(t *testing.T) {
	disk := &fakeDisk{} // 0 bytes free
	g := newDiskGuard("/data", DiskConfig{MinFree: -1}, logging.Discard(), nil, disk.statfs)
	defer g.Stop()
	if g.Err() != nil || g.Full() {
		t.Fatal("a disabled guard refused writes")
	}
}

func TestDiskGuardDefaultMinimum(t *testing.T) {
	disk := &fakeDisk{}
	disk.free.Store(DefaultMinFreeDisk - 1)
	g := newDiskGuard("/data", DiskConfig{}, logging.Discard(), nil, disk.statfs)
	defer g.Stop()
	if !errors.Is(g.Err(), ErrDiskFull) {
		t.Fatalf("1 byte under the default minimum: Err = %v, want ErrDiskFull", g.Err())
	}
}

func TestBytesIEC(t *testing.T) {
	for in, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 64 << 20: "64.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := bytesIEC(in); got != want {
			t.Errorf("bytesIEC(%d) = %q, want %q", in, got, want)
		}
	}
}
