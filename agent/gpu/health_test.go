package gpu

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gantry-ml/gantry/internal/logging"
)

// scriptedEvents makes lib's event sets return evs in order, then time out.
func scriptedEvents(lib *mock.Interface, evs ...nvml.EventData) {
	var mu sync.Mutex
	lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
			WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
				mu.Lock()
				defer mu.Unlock()
				if len(evs) == 0 {
					time.Sleep(time.Millisecond)
					return nvml.EventData{}, nvml.ERROR_TIMEOUT
				}
				ev := evs[0]
				evs = evs[1:]
				return ev, nvml.SUCCESS
			},
		}, nvml.SUCCESS
	}
}

func TestXIDThroughTheEventSet(t *testing.T) {
	lib, err := newMockLib(3, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	dev := func(i int) nvml.Device { d, _ := lib.DeviceGetHandleByIndex(i); return d }
	scriptedEvents(lib,
		nvml.EventData{Device: dev(0), EventType: nvml.EventTypeXidCriticalError, EventData: 13}, // the job's fault
		nvml.EventData{Device: dev(1), EventType: nvml.EventTypeXidCriticalError, EventData: 79},
		nvml.EventData{Device: dev(1), EventType: nvml.EventTypeDoubleBitEccError}, // second fault: the first stays
		nvml.EventData{Device: dev(2), EventType: nvml.EventTypeDoubleBitEccError},
	)
	src := openMock(t, lib, time.Now)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	got := map[uint32]string{}
	done := make(chan error, 1)
	go func() {
		done <- src.WatchEvents(ctx, logging.Discard(), func(i uint32, f string) { mu.Lock(); got[i] = f; mu.Unlock() })
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("faults %v", got)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s, _ := src.Sample()
	if f := s.Gpus[0].Fault; f != "" {
		t.Errorf("application XID 13 made GPU 0 faulty: %q", f)
	}
	if f := s.Gpus[1].Fault; f != "XID 79 (GPU has fallen off the bus)" {
		t.Errorf("GPU 1 fault %q", f)
	}
	if f := s.Gpus[2].Fault; f != "double-bit ECC error" {
		t.Errorf("GPU 2 fault %q", f)
	}
}

func TestLostGPUAndPolledPages(t *testing.T) {
	lib, err := newMockLib(3, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	mockDevice(t, lib, 0).GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		return nvml.Utilization{}, nvml.ERROR_GPU_IS_LOST
	}
	mockDevice(t, lib, 1).GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) {
		return nvml.FEATURE_ENABLED, nvml.SUCCESS
	}
	mockDevice(t, lib, 2).GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, true, nvml.SUCCESS }
	src := openMock(t, lib, time.Now)
	s, _ := src.Sample()
	for i, want := range []string{"GPU is lost", "retired memory pages are pending", "row remapping failed"} {
		if !strings.HasPrefix(s.Gpus[i].Fault, want) {
			t.Errorf("GPU %d fault %q, want %q", i, s.Gpus[i].Fault, want)
		}
	}
	// The fault stays although the GPU answers again.
	mockDevice(t, lib, 0).GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{Gpu: 5}, nvml.SUCCESS }
	if s, _ := src.Sample(); s.Gpus[0].Fault == "" {
		t.Error("a lost GPU's fault cleared by itself")
	}
}

func TestUnsupportedChecksAreNoFault(t *testing.T) {
	lib, err := newMockLib(1, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	d := mockDevice(t, lib, 0)
	d.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, nvml.ERROR_NOT_SUPPORTED }
	d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	src := openMock(t, lib, time.Now)
	if s, _ := src.Sample(); s.Gpus[0].Fault != "" {
		t.Errorf("fault %q", s.Gpus[0].Fault)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := src.WatchEvents(ctx, logging.Discard(), nil); err != nil {
		t.Errorf("WatchEvents without event support: %v", err)
	}
}

func TestProcesses(t *testing.T) {
	lib, err := newMockLib(2, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	mockDevice(t, lib, 0).GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		return []nvml.ProcessInfo{{Pid: 42, UsedGpuMemory: 1 << 30}}, nvml.SUCCESS
	}
	mockDevice(t, lib, 1).GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		return nil, nvml.ERROR_GPU_IS_LOST
	}
	src := openMock(t, lib, time.Now)
	ps, err := src.Processes()
	if len(ps) != 1 || ps[0] != (Process{GPU: 0, PID: 42, MemBytes: 1 << 30}) {
		t.Errorf("processes %v", ps)
	}
	if err == nil || !strings.Contains(err.Error(), "gpu 1") {
		t.Errorf("err %v, want GPU 1's failure", err)
	}
}
