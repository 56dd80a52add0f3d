package gpu

import (
	"fmt"
	"math"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
)

// MaxMockDevices is the most devices NewMock simulates: one DGX A100.
const MaxMockDevices = 8

// Shape of the simulated load. Periods are short enough that a dashboard
// sampling every second sees movement, and differ so GPUs drift apart.
const (
	loadPeriod   = 40 * time.Second // main swing of utilisation
	jitterPeriod = 7300 * time.Millisecond
	memPeriod    = 5 * time.Minute // memory fills and frees slowly
	phaseStep    = 0.9             // radians between consecutive GPUs
)

// Realistic A100 ranges for the simulated readings.
const (
	idleTempC, maxTempC     = 35.0, 80.0
	mockPowerLimitW         = 400
	idlePowerW, maxPowerW   = 60.0, 390.0
	baseSMMHz, boostSMMHz   = 1095.0, 1410.0
	memClockMHz             = 1215
	minMemFrac, maxMemFrac  = 0.15, 0.90
	mockUUIDPrefix          = "GPU-6d6f636b-0000-4000-8000-" // "mock" in hex
	mockUUIDSuffixHexDigits = 12
)

// NewMock returns a Source backed by n (1..MaxMockDevices) simulated A100s
// built from go-nvml's mock package. Their utilisation, memory use,
// temperature, power and SM clock follow smooth functions of wall-clock time,
// each GPU with its own phase, so GPU stats flow on machines without GPUs.
// UUIDs are fixed per index (GPU-6d6f636b-0000-4000-8000-00000000000N), so
// a restarted dev agent offers the same GPUs again.
func NewMock(n int) (*Source, error) {
	return newMock(n, time.Now)
}

// newMock is NewMock with an injectable clock.
func newMock(n int, now func() time.Time) (*Source, error) {
	lib, err := newMockLib(n, now)
	if err != nil {
		return nil, err
	}
	return open(lib, now)
}

// newMockLib builds the mock NVML library. Tests may adjust the returned
// devices' function fields before opening it.
//
// go-nvml's dgxa100 package would give the same eight A100s, but it pulls in
// github.com/google/uuid, which is not in this module's go.sum; building on
// mock.Interface and mock.Device with the gpus.A100_SXM4_40GB description is
// equivalent and lets us fix the UUIDs.
func newMockLib(n int, now func() time.Time) (*mock.Interface, error) {
	if n < 1 || n > MaxMockDevices {
		return nil, fmt.Errorf("%w: mock device count %d, want 1..%d", ErrInvalidArgument, n, MaxMockDevices)
	}
	devices := make([]nvml.Device, n)
	for i := range devices {
		devices[i] = quietDevice{newMockDevice(i, gpus.A100_SXM4_40GB, now)}
	}
	events := newMockEvents(devices)
	lib := &mock.Interface{
		EventSetCreateFunc: func() (nvml.EventSet, nvml.Return) { return events.set(), nvml.SUCCESS },
		InitFunc:           func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:       func() nvml.Return { return nvml.SUCCESS },
		DeviceGetCountFunc: func() (int, nvml.Return) {
			return len(devices), nvml.SUCCESS
		},
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(devices) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devices[i], nvml.SUCCESS
		},
	}
	return lib, nil
}

// newMockDevice builds one simulated GPU. go-nvml's mock devices panic on
// any method whose function field is unset, so every method Source calls
// is set here.
func newMockDevice(index int, cfg gpus.Config, now func() time.Time) *mock.Device {
	uuid := fmt.Sprintf("%s%0*x", mockUUIDPrefix, mockUUIDSuffixHexDigits, index)
	total := cfg.MemoryMB * 1024 * 1024
	phase := float64(index) * phaseStep
	load := func() float64 { return mockLoad(now(), phase) }

	script := func() (Reading, bool) { return activeScript.reading(index) }
	// lost wraps a reading: a GPU the script says is lost answers nothing.
	lost := func() bool { r, ok := script(); return ok && r.Lost }
	return &mock.Device{
		GetRetiredPagesPendingStatusFunc: func() (nvml.EnableState, nvml.Return) { return nvml.FEATURE_DISABLED, nvml.SUCCESS },
		GetRemappedRowsFunc:              func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, nvml.SUCCESS },
		GetCurrentClocksEventReasonsFunc: func() (uint64, nvml.Return) {
			r, _ := script()
			return r.Throttle, nvml.SUCCESS
		},
		GetSupportedEventTypesFunc: func() (uint64, nvml.Return) {
			return nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError, nvml.SUCCESS
		},
		RegisterEventsFunc: func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS },
		GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
			r, _ := script()
			var ps []nvml.ProcessInfo
			for _, p := range r.Processes {
				ps = append(ps, nvml.ProcessInfo{Pid: p.PID, UsedGpuMemory: p.MemMiB << 20})
			}
			return ps, nvml.SUCCESS
		},
		GetEnforcedPowerLimitFunc: func() (uint32, nvml.Return) { return mockPowerLimitW * 1000, nvml.SUCCESS },
		GetIndexFunc:              func() (int, nvml.Return) { return index, nvml.SUCCESS },
		GetUUIDFunc:               func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
		GetNameFunc:               func() (string, nvml.Return) { return cfg.Name, nvml.SUCCESS },
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			used := uint64(float64(total) * mockMemFrac(now(), phase))
			if r, ok := script(); ok {
				used = min(r.MemUsedMiB<<20, total)
			}
			return nvml.Memory{Total: total, Used: used, Free: total - used}, nvml.SUCCESS
		},
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) {
			if lost() {
				return nvml.Utilization{}, nvml.ERROR_GPU_IS_LOST
			}
			l := load()
			if r, ok := script(); ok {
				return nvml.Utilization{Gpu: uint32(min(max(r.Util, 0), 100))}, nvml.SUCCESS
			}
			return nvml.Utilization{
				Gpu:    uint32(math.Round(100 * l)),
				Memory: uint32(math.Round(60 * l)),
			}, nvml.SUCCESS
		},
		GetTemperatureFunc: func(sensor nvml.TemperatureSensors) (uint32, nvml.Return) {
			if sensor != nvml.TEMPERATURE_GPU {
				return 0, nvml.ERROR_NOT_SUPPORTED
			}
			return uint32(math.Round(lerp(idleTempC, maxTempC, load()))), nvml.SUCCESS
		},
		GetPowerUsageFunc: func() (uint32, nvml.Return) {
			if r, ok := script(); ok {
				return uint32(min(max(r.PowerW, 0), 10*mockPowerLimitW) * 1000), nvml.SUCCESS
			}
			return uint32(math.Round(1000 * lerp(idlePowerW, maxPowerW, load()))), nvml.SUCCESS // milliwatts
		},
		GetClockInfoFunc: func(clock nvml.ClockType) (uint32, nvml.Return) {
			switch clock {
			case nvml.CLOCK_SM, nvml.CLOCK_GRAPHICS:
				if r, ok := script(); ok {
					return uint32(min(max(r.SMMHz, 0), 10*boostSMMHz)), nvml.SUCCESS
				}
				return uint32(math.Round(lerp(baseSMMHz, boostSMMHz, load()))), nvml.SUCCESS
			case nvml.CLOCK_MEM:
				return memClockMHz, nvml.SUCCESS
			default:
				return 0, nvml.ERROR_NOT_SUPPORTED
			}
		},
	}
}

// quietDevice bypasses the call log of go-nvml's generated mock for the
// methods sampled with an argument: the mock appends every call's arguments
// to a slice it never trims, which would grow without bound in a long-lived
// dev agent. Calls without arguments record zero-size values and cost no
// memory.
type quietDevice struct{ *mock.Device }

// GetTemperature calls the function field directly, without recording.
func (d quietDevice) GetTemperature(sensor nvml.TemperatureSensors) (uint32, nvml.Return) {
	return d.GetTemperatureFunc(sensor)
}

// GetClockInfo calls the function field directly, without recording.
func (d quietDevice) GetClockInfo(clock nvml.ClockType) (uint32, nvml.Return) {
	return d.GetClockInfoFunc(clock)
}

// mockLoad is the simulated load in [0, 1] at time t for a GPU with the
// given phase: a slow swing plus a faster ripple.
func mockLoad(t time.Time, phase float64) float64 {
	s := seconds(t)
	l := 0.5 +
		0.35*math.Sin(2*math.Pi*s/loadPeriod.Seconds()+phase) +
		0.12*math.Sin(2*math.Pi*s/jitterPeriod.Seconds()+2*phase)
	return math.Min(1, math.Max(0, l))
}

// mockMemFrac is the simulated fraction of memory in use.
func mockMemFrac(t time.Time, phase float64) float64 {
	x := 0.5 + 0.5*math.Sin(2*math.Pi*seconds(t)/memPeriod.Seconds()+phase)
	return lerp(minMemFrac, maxMemFrac, x)
}

func seconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func lerp(lo, hi, x float64) float64 { return lo + (hi-lo)*x }

// mockEvents is the mock library's event source: events a test pushes
// (push), and XIDs the test script (ScriptEnv) names, each delivered once.
type mockEvents struct {
	devices []nvml.Device
	ch      chan nvml.EventData
	sent    map[int]uint64 // GPU index → the scripted XID already delivered
}

func newMockEvents(devices []nvml.Device) *mockEvents {
	return &mockEvents{devices: devices, ch: make(chan nvml.EventData, 16), sent: map[int]uint64{}}
}

// set returns an event set whose Wait returns the next event, or
// ERROR_TIMEOUT after the timeout (at most 100 ms, so that scripted XIDs
// are seen soon).
func (m *mockEvents) set() nvml.EventSet {
	return &mock.EventSet{
		FreeFunc: func() nvml.Return { return nvml.SUCCESS },
		WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
			for i, d := range m.devices {
				if r, ok := activeScript.reading(i); ok && r.XID != 0 && m.sent[i] != r.XID {
					m.sent[i] = r.XID
					return nvml.EventData{Device: d, EventType: nvml.EventTypeXidCriticalError, EventData: r.XID}, nvml.SUCCESS
				}
			}
			select {
			case ev := <-m.ch:
				return ev, nvml.SUCCESS
			case <-time.After(min(time.Duration(ms)*time.Millisecond, 100*time.Millisecond)):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
	}
}
