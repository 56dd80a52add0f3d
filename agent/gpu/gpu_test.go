package gpu

import (
	"context"
	"errors"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

const testTimeout = 10 * time.Second

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, testTimeout, cond, what)
}

// fakeClock is a settable clock for the mock's time-driven readings.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// openMock opens a Source over lib and closes it at the end of the test.
func openMock(t *testing.T, lib nvml.Interface, now func() time.Time) *Source {
	t.Helper()
	src, err := open(lib, now)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		if err := src.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return src
}

// mockDevice returns the i-th mock device of lib for tweaking.
func mockDevice(t *testing.T, lib *mock.Interface, i int) *mock.Device {
	t.Helper()
	d, ret := lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		t.Fatalf("mock device %d: %v", i, ret)
	}
	return d.(quietDevice).Device
}

// checkInRange fails the test if any reading is outside a realistic range.
func checkInRange(t *testing.T, s *gantrypb.GPUSample) {
	t.Helper()
	for _, g := range s.GetGpus() {
		if g.GetUtilizationPct() < 0 || g.GetUtilizationPct() > 100 {
			t.Errorf("gpu %d utilization %v", g.GetIndex(), g.GetUtilizationPct())
		}
		if g.GetTemperatureC() < 30 || g.GetTemperatureC() > 85 {
			t.Errorf("gpu %d temperature %v", g.GetIndex(), g.GetTemperatureC())
		}
		if g.GetPowerW() < 50 || g.GetPowerW() > 400 {
			t.Errorf("gpu %d power %v", g.GetIndex(), g.GetPowerW())
		}
		if g.GetMemoryTotalBytes() != 40960<<20 {
			t.Errorf("gpu %d memory total %d", g.GetIndex(), g.GetMemoryTotalBytes())
		}
		if g.GetMemoryUsedBytes() == 0 || g.GetMemoryUsedBytes() > g.GetMemoryTotalBytes() {
			t.Errorf("gpu %d memory used %d of %d", g.GetIndex(), g.GetMemoryUsedBytes(), g.GetMemoryTotalBytes())
		}
		if g.GetSmClockMhz() < 1000 || g.GetSmClockMhz() > 1500 {
			t.Errorf("gpu %d sm clock %d", g.GetIndex(), g.GetSmClockMhz())
		}
	}
}

var uuidRE = regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func TestMockDevices(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 2, 8} {
		src, err := NewMock(n)
		if err != nil {
			t.Fatalf("NewMock(%d): %v", n, err)
		}
		infos, err := src.Devices()
		if err != nil {
			t.Fatalf("Devices: %v", err)
		}
		if len(infos) != n {
			t.Fatalf("NewMock(%d) has %d devices", n, len(infos))
		}
		uuids := map[string]bool{}
		for i, info := range infos {
			if info.GetIndex() != uint32(i) {
				t.Errorf("device %d has index %d", i, info.GetIndex())
			}
			if !uuidRE.MatchString(info.GetUuid()) {
				t.Errorf("device %d uuid %q is not GPU-<uuid>", i, info.GetUuid())
			}
			if uuids[info.GetUuid()] {
				t.Errorf("duplicate uuid %q", info.GetUuid())
			}
			uuids[info.GetUuid()] = true
			if !strings.Contains(info.GetName(), "A100") || info.GetMemoryTotalBytes() != 40960<<20 {
				t.Errorf("device %d = %v", i, info)
			}
		}
		if err := src.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}

	// UUIDs are stable across Sources so a restarted dev agent offers the
	// same GPUs.
	a, _ := NewMock(2)
	b, _ := NewMock(2)
	ia, _ := a.Devices()
	ib, _ := b.Devices()
	if ia[1].GetUuid() != ib[1].GetUuid() {
		t.Fatalf("uuid changed between sources: %q vs %q", ia[1].GetUuid(), ib[1].GetUuid())
	}
}

func TestNewMockRejectsBadCount(t *testing.T) {
	t.Parallel()
	for _, n := range []int{-1, 0, 9, 100} {
		if src, err := NewMock(n); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("NewMock(%d) = %v, %v; want ErrInvalidArgument", n, src, err)
		}
	}
}

func TestMockSampleInRangeAndChanging(t *testing.T) {
	t.Parallel()
	for _, n := range []int{2, 8} {
		clock := newFakeClock()
		src, err := newMock(n, clock.now)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = src.Close() })

		first, err := src.Sample()
		if err != nil {
			t.Fatalf("Sample: %v", err)
		}
		if len(first.GetGpus()) != n {
			t.Fatalf("sample has %d gpus, want %d", len(first.GetGpus()), n)
		}
		if want := float64(clock.now().UnixNano()) / 1e9; first.GetTs() != want {
			t.Fatalf("ts = %v, want %v", first.GetTs(), want)
		}
		checkInRange(t, first)

		// GPUs differ from each other at one instant (own phases) ...
		if first.Gpus[0].GetUtilizationPct() == first.Gpus[1].GetUtilizationPct() &&
			first.Gpus[0].GetPowerW() == first.Gpus[1].GetPowerW() {
			t.Errorf("gpus 0 and 1 read the same: %v / %v", first.Gpus[0], first.Gpus[1])
		}
		// ... and every field moves over time, within range throughout.
		changed := map[string]bool{}
		prev := first
		for range 120 {
			clock.advance(5 * time.Second)
			s, err := src.Sample()
			if err != nil {
				t.Fatalf("Sample: %v", err)
			}
			checkInRange(t, s)
			a, b := prev.Gpus[0], s.Gpus[0]
			changed["util"] = changed["util"] || a.GetUtilizationPct() != b.GetUtilizationPct()
			changed["mem"] = changed["mem"] || a.GetMemoryUsedBytes() != b.GetMemoryUsedBytes()
			changed["temp"] = changed["temp"] || a.GetTemperatureC() != b.GetTemperatureC()
			changed["power"] = changed["power"] || a.GetPowerW() != b.GetPowerW()
			changed["clock"] = changed["clock"] || a.GetSmClockMhz() != b.GetSmClockMhz()
			prev = s
		}
		for _, f := range []string{"util", "mem", "temp", "power", "clock"} {
			if !changed[f] {
				t.Errorf("n=%d: %s never changed over 10 minutes", n, f)
			}
		}
	}
}

// TestMockDoesNotGrowCallLog guards quietDevice: go-nvml's mock records every
// call with arguments, which would leak in a long-running dev agent.
func TestMockDoesNotGrowCallLog(t *testing.T) {
	t.Parallel()
	lib, err := newMockLib(1, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	src := openMock(t, lib, time.Now)
	for range 10 {
		if _, err := src.Sample(); err != nil {
			t.Fatal(err)
		}
	}
	d := mockDevice(t, lib, 0)
	if n := len(d.GetTemperatureCalls()) + len(d.GetClockInfoCalls()); n != 0 {
		t.Fatalf("mock recorded %d calls with arguments", n)
	}
}

func TestSamplePartialOnFieldError(t *testing.T) {
	t.Parallel()
	lib, err := newMockLib(2, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	mockDevice(t, lib, 1).GetPowerUsageFunc = func() (uint32, nvml.Return) {
		return 0, nvml.ERROR_NOT_SUPPORTED
	}
	src := openMock(t, lib, time.Now)

	s, err := src.Sample()
	if !errors.Is(err, nvml.ERROR_NOT_SUPPORTED) {
		t.Fatalf("err = %v, want it to wrap ERROR_NOT_SUPPORTED", err)
	}
	if !strings.Contains(err.Error(), "gpu 1") || !strings.Contains(err.Error(), "power") {
		t.Fatalf("err %q does not say which gpu and field", err)
	}
	if s == nil || len(s.GetGpus()) != 2 {
		t.Fatalf("partial sample lost devices: %v", s)
	}
	if g := s.Gpus[1]; g.GetPowerW() != 0 || g.GetUtilizationPct() == 0 && g.GetTemperatureC() == 0 {
		t.Fatalf("gpu 1 = %v: want power skipped, other fields kept", g)
	}
	if s.Gpus[0].GetPowerW() == 0 {
		t.Fatalf("gpu 0 lost its power reading: %v", s.Gpus[0])
	}
}

func TestDevicesSkipsUnreadableDevice(t *testing.T) {
	t.Parallel()
	lib, err := newMockLib(3, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	mockDevice(t, lib, 1).GetUUIDFunc = func() (string, nvml.Return) {
		return "", nvml.ERROR_GPU_IS_LOST
	}
	src := openMock(t, lib, time.Now)
	infos, err := src.Devices()
	if !errors.Is(err, nvml.ERROR_GPU_IS_LOST) {
		t.Fatalf("err = %v, want ERROR_GPU_IS_LOST", err)
	}
	if len(infos) != 2 || infos[0].GetIndex() != 0 || infos[1].GetIndex() != 2 {
		t.Fatalf("devices = %v, want indices 0 and 2", infos)
	}
	s, err := src.Sample()
	if err != nil || len(s.GetGpus()) != 2 || s.Gpus[1].GetIndex() != 2 {
		t.Fatalf("sample = %v, %v", s, err)
	}
}

// TestOpenAfterFailedInitCallsNothing uses a mock whose every method but
// Init is unset: go-nvml's mock panics on any unset method, so a single
// further NVML call after the failed Init fails this test.
func TestOpenAfterFailedInitCallsNothing(t *testing.T) {
	t.Parallel()
	for _, ret := range []nvml.Return{nvml.ERROR_LIBRARY_NOT_FOUND, nvml.ERROR_DRIVER_NOT_LOADED, nvml.ERROR_UNKNOWN, nvml.Return(999)} {
		lib := &mock.Interface{InitFunc: func() nvml.Return { return ret }}
		src, err := open(lib, time.Now)
		if src != nil || !errors.Is(err, ErrNoNVML) {
			t.Fatalf("Init %d: open = %v, %v; want ErrNoNVML", int32(ret), src, err)
		}
		if len(lib.InitCalls()) != 1 {
			t.Fatalf("Init called %d times", len(lib.InitCalls()))
		}
	}
}

func TestOpenShutsDownWhenCountFails(t *testing.T) {
	t.Parallel()
	lib := &mock.Interface{
		InitFunc:           func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:       func() nvml.Return { return nvml.SUCCESS },
		DeviceGetCountFunc: func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN },
	}
	if _, err := open(lib, time.Now); !errors.Is(err, nvml.ERROR_UNKNOWN) {
		t.Fatalf("open = %v, want ERROR_UNKNOWN", err)
	}
	if n := len(lib.ShutdownCalls()); n != 1 {
		t.Fatalf("Shutdown called %d times after a successful Init, want 1", n)
	}
}

// TestOpenNVMLWithoutDriver runs the real library loader. On this machine
// there is no libnvidia-ml; the test passing at all (the process still
// running) shows no NVML call followed the failed Init.
func TestOpenNVMLWithoutDriver(t *testing.T) {
	src, err := OpenNVML()
	if err == nil {
		infos, derr := src.Devices()
		t.Logf("NVML present: %d devices (%v)", len(infos), derr)
		if cerr := src.Close(); cerr != nil {
			t.Fatalf("Close: %v", cerr)
		}
		t.Skip("host has a working NVML; the no-driver path is covered by the mock test")
	}
	if !errors.Is(err, ErrNoNVML) {
		t.Fatalf("OpenNVML = %v, want ErrNoNVML", err)
	}
	t.Logf("OpenNVML: %v", err)
	// A second attempt must behave the same, not crash on leftover state.
	if _, err := OpenNVML(); !errors.Is(err, ErrNoNVML) {
		t.Fatalf("second OpenNVML = %v", err)
	}
}

func TestClose(t *testing.T) {
	t.Parallel()
	lib, err := newMockLib(1, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	src, err := open(lib, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := len(lib.ShutdownCalls()); n != 1 {
		t.Fatalf("Shutdown called %d times", n)
	}
	if s, err := src.Sample(); s != nil || !errors.Is(err, ErrClosed) {
		t.Fatalf("Sample after Close = %v, %v", s, err)
	}
	if _, err := src.Devices(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Devices after Close = %v", err)
	}
}

func TestRunEmitsAtIntervalAndStops(t *testing.T) {
	t.Parallel()
	src, err := NewMock(2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })

	const interval = 20 * time.Millisecond
	var (
		mu    sync.Mutex
		times []time.Duration
	)
	began := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, src, interval, slog.New(slog.DiscardHandler), func(s *gantrypb.GPUSample) {
			if len(s.GetGpus()) != 2 {
				t.Errorf("sample with %d gpus", len(s.GetGpus()))
			}
			mu.Lock()
			times = append(times, time.Since(began))
			mu.Unlock()
		})
	}()
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(times)
	}
	waitFor(t, "6 samples", func() bool { return count() >= 6 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil on cancel", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Run did not stop on cancel")
	}
	stopped := count()

	mu.Lock()
	defer mu.Unlock()
	// The first sample is immediate; tick k comes no earlier than k
	// intervals after the start.
	if times[0] >= interval {
		t.Errorf("first sample after %s, want immediate", times[0])
	}
	for k := 1; k < 6; k++ {
		if times[k] < time.Duration(k)*interval {
			t.Errorf("sample %d at %s, before %d intervals", k, times[k], k)
		}
	}
	time.Sleep(3 * interval) // prove a negative: nothing after Run returned
	if len(times) != stopped {
		t.Fatalf("%d samples emitted after Run returned", len(times)-stopped)
	}
}

func TestRunArguments(t *testing.T) {
	t.Parallel()
	src, err := NewMock(1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	emit := func(*gantrypb.GPUSample) {}
	ctx := context.Background()
	for name, err := range map[string]error{
		"zero interval":     Run(ctx, src, 0, nil, emit),
		"negative interval": Run(ctx, src, -time.Second, nil, emit),
		"nil source":        Run(ctx, nil, time.Second, nil, emit),
		"nil emit":          Run(ctx, src, time.Second, nil, nil),
	} {
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: Run = %v, want ErrInvalidArgument", name, err)
		}
	}
}

func TestRunReturnsWhenSourceClosed(t *testing.T) {
	t.Parallel()
	src, err := NewMock(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), src, time.Millisecond, nil, func(*gantrypb.GPUSample) {
		t.Error("emitted from a closed source")
	})
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Run = %v, want ErrClosed", err)
	}
}

func TestRunLogsEachDistinctErrorOnce(t *testing.T) {
	t.Parallel()
	lib, err := newMockLib(3, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	// GPU 1 never reports power; GPU 2's temperature fails every other read.
	mockDevice(t, lib, 1).GetPowerUsageFunc = func() (uint32, nvml.Return) {
		return 0, nvml.ERROR_NOT_SUPPORTED
	}
	var reads atomic.Int64
	mockDevice(t, lib, 2).GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) {
		if reads.Add(1)%2 == 0 {
			return 0, nvml.ERROR_UNKNOWN
		}
		return 50, nvml.SUCCESS
	}
	src := openMock(t, lib, time.Now)

	var logs testutil.SyncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	var emitted atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, src, time.Millisecond, logger, func(s *gantrypb.GPUSample) {
			if len(s.GetGpus()) == 3 {
				emitted.Add(1)
			}
		})
	}()
	waitFor(t, "20 partial samples emitted", func() bool { return emitted.Load() >= 20 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	out := logs.String()
	if n := strings.Count(out, "gpu 1 ("); n != 1 {
		t.Errorf("gpu 1 power error logged %d times, want once:\n%s", n, out)
	}
	if n := strings.Count(out, "gpu 2 ("); n != 1 {
		t.Errorf("gpu 2 temperature error logged %d times, want once:\n%s", n, out)
	}
	if n := strings.Count(out, "\n"); n != 2 {
		t.Errorf("%d log lines, want 2:\n%s", n, out)
	}
}

func TestErrorLogIsBounded(t *testing.T) {
	t.Parallel()
	var logs testutil.SyncBuffer
	l := errorLog{logger: slog.New(slog.NewTextHandler(&logs, nil)), seen: map[string]struct{}{}}
	for i := range 3 * maxDistinctErrors {
		l.log(errors.New(strings.Repeat("x", i+1)))
	}
	if len(l.seen) != maxDistinctErrors {
		t.Fatalf("remembered %d errors, want at most %d", len(l.seen), maxDistinctErrors)
	}
	if n := strings.Count(logs.String(), "\n"); n != maxDistinctErrors+1 {
		t.Fatalf("%d log lines, want %d", n, maxDistinctErrors+1)
	}
}
