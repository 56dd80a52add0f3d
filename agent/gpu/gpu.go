// Package gpu reads the host's GPU inventory and utilisation through NVML
// (github.com/NVIDIA/go-nvml), or through simulated devices on machines
// without GPUs, and turns them into gantrypb messages.
//
// NVML has one sharp edge: once Init has failed, any other NVML call may kill
// the process (the library's symbols are bound lazily, and if the shared
// library was never loaded the dynamic linker aborts). OpenNVML therefore
// makes no NVML call at all after a failed Init, not even Shutdown.
package gpu

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Errors returned by this package.
var (
	// ErrNoNVML means NVML cannot be used on this host: libnvidia-ml is
	// missing, the driver is not loaded, or Init failed for another reason.
	ErrNoNVML = errors.New("gpu: NVML not available")
	// ErrClosed is returned by a Source's methods after Close.
	ErrClosed = errors.New("gpu: source closed")
	// ErrInvalidArgument reports a bad argument such as a mock device count
	// out of range or a non-positive sampling interval.
	ErrInvalidArgument = errors.New("gpu: invalid argument")
)

// device is one GPU as enumerated when the Source was opened. The static
// fields are read once: they do not change while the driver is loaded.
type device struct {
	index    uint32
	uuid     string
	name     string
	memTotal uint64
	handle   nvml.Device
}

// Source reads the GPUs of one host. Its methods are safe for concurrent
// use; Close waits for reads in progress, since calling NVML after Shutdown
// would touch an unloaded library.
type Source struct {
	now func() time.Time

	mu      sync.RWMutex
	lib     nvml.Interface
	devices []device
	// enumErr records devices that could not be enumerated at open; they
	// are left out and Devices reports it.
	enumErr error
	closed  bool
	// samples counts Sample calls, to space the polled health checks.
	samples atomic.Uint64

	// faultMu guards faults: the first fault seen on each GPU (health.go).
	faultMu sync.Mutex
	faults  map[uint32]string
}

// OpenNVML initialises the host's NVML library and enumerates its GPUs.
// When NVML cannot be initialised it returns an error wrapping ErrNoNVML and
// has made no NVML call besides Init. Loading a missing libnvidia-ml makes
// go-nvml's Init return ERROR_LIBRARY_NOT_FOUND (dlopen fails with an
// error, it does not panic), which takes the same path.
func OpenNVML() (*Source, error) {
	return open(nvml.New(), time.Now)
}

// open initialises lib and enumerates its devices. It is shared by the real
// library and the mock, so tests exercise the production path.
func open(lib nvml.Interface, now func() time.Time) (*Source, error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		// Nothing else may be called now, not even ret.Error(): with the
		// library loaded it resolves to nvmlErrorString in the library.
		return nil, fmt.Errorf("%w: nvml init: %s", ErrNoNVML, initErrorText(ret))
	}
	devices, enumErr, err := enumerate(lib)
	if err != nil {
		if ret := lib.Shutdown(); ret != nvml.SUCCESS {
			err = errors.Join(err, fmt.Errorf("gpu: nvml shutdown: %w", ret))
		}
		return nil, err
	}
	return &Source{now: now, lib: lib, devices: devices, enumErr: enumErr}, nil
}

// enumerate lists the devices of an initialised library. A device that
// cannot be read is left out and reported in enumErr rather than failing
// the whole host: seven good GPUs are still worth scheduling on. err is set
// only when the device count itself cannot be read.
func enumerate(lib nvml.Interface) (devices []device, enumErr error, err error) {
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, nil, fmt.Errorf("gpu: nvml device count: %w", ret)
	}
	var errs []error
	for i := range n {
		d, err := readDevice(lib, i)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		devices = append(devices, d)
	}
	return devices, errors.Join(errs...), nil
}

// readDevice reads the static description of device i.
func readDevice(lib nvml.Interface, i int) (device, error) {
	h, ret := lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return device{}, fmt.Errorf("gpu %d: handle: %w", i, ret)
	}
	uuid, ret := h.GetUUID()
	if ret != nvml.SUCCESS {
		return device{}, fmt.Errorf("gpu %d: uuid: %w", i, ret)
	}
	name, ret := h.GetName()
	if ret != nvml.SUCCESS {
		return device{}, fmt.Errorf("gpu %d (%s): name: %w", i, uuid, ret)
	}
	mem, ret := h.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return device{}, fmt.Errorf("gpu %d (%s): memory info: %w", i, uuid, ret)
	}
	return device{index: uint32(i), uuid: uuid, name: name, memTotal: mem.Total, handle: h}, nil
}

// Devices describes the GPUs found when the Source was opened. If some
// could not be read, they are missing from the list and err says why; the
// list is still valid.
func (s *Source) Devices() ([]*gantrypb.GPUInfo, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	infos := make([]*gantrypb.GPUInfo, len(s.devices))
	for i, d := range s.devices {
		infos[i] = &gantrypb.GPUInfo{
			Index:            d.index,
			Uuid:             d.uuid,
			Name:             d.name,
			MemoryTotalBytes: d.memTotal,
		}
	}
	return infos, s.enumErr
}

// Sample reads every GPU now. Ts is the sampling time in unix seconds; Seq
// is left 0 for the spool to assign.
//
// A field that cannot be read is left at zero and its error is joined into
// the returned error, and the rest of the sample (other fields, other GPUs)
// is still returned: a GPU that does not support power readings must not
// hide the utilisation of the whole host. The sample is nil only together
// with ErrClosed.
func (s *Source) Sample() (*gantrypb.GPUSample, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	sample := &gantrypb.GPUSample{
		Ts:   float64(s.now().UnixNano()) / 1e9,
		Gpus: make([]*gantrypb.GPUStat, 0, len(s.devices)),
	}
	var errs []error
	pages := s.samples.Add(1)%healthPollEvery == 1
	for _, d := range s.devices {
		stat, err := d.read()
		if errors.Is(err, nvml.ERROR_GPU_IS_LOST) {
			s.setFault(d.index, "GPU is lost (NVML_ERROR_GPU_IS_LOST): it fell off the bus or stopped answering")
		} else if pages {
			s.checkPages(d)
		}
		stat.Fault = s.fault(d.index)
		sample.Gpus = append(sample.Gpus, stat)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return sample, errors.Join(errs...)
}

// read takes one device's dynamic readings.
func (d device) read() (*gantrypb.GPUStat, error) {
	st := &gantrypb.GPUStat{
		Index:            d.index,
		Uuid:             d.uuid,
		Name:             d.name,
		MemoryTotalBytes: d.memTotal,
	}
	var errs []error
	fail := func(field string, ret nvml.Return) {
		errs = append(errs, fmt.Errorf("gpu %d (%s): %s: %w", d.index, d.uuid, field, ret))
	}
	if u, ret := d.handle.GetUtilizationRates(); ret == nvml.SUCCESS {
		st.UtilizationPct = float64(u.Gpu)
	} else {
		fail("utilization", ret)
	}
	if m, ret := d.handle.GetMemoryInfo(); ret == nvml.SUCCESS {
		st.MemoryUsedBytes = m.Used
	} else {
		fail("memory info", ret)
	}
	if t, ret := d.handle.GetTemperature(nvml.TEMPERATURE_GPU); ret == nvml.SUCCESS {
		st.TemperatureC = float64(t)
	} else {
		fail("temperature", ret)
	}
	if mw, ret := d.handle.GetPowerUsage(); ret == nvml.SUCCESS {
		st.PowerW = float64(mw) / 1000
	} else {
		fail("power", ret)
	}
	if mhz, ret := d.handle.GetClockInfo(nvml.CLOCK_SM); ret == nvml.SUCCESS {
		st.SmClockMhz = mhz
	} else {
		fail("sm clock", ret)
	}
	// The power limit is context for the health checks ("low power" is a
	// fraction of it); a GPU that does not report one is judged against
	// absolute thresholds, so its absence is not an error.
	if mw, ret := d.handle.GetEnforcedPowerLimit(); ret == nvml.SUCCESS {
		st.PowerLimitW = float64(mw) / 1000
	}
	// Information only, and not every GPU reports it.
	if r, ret := d.handle.GetCurrentClocksEventReasons(); ret == nvml.SUCCESS {
		st.ThrottleReasons = r
	}
	return st, errors.Join(errs...)
}

// Close shuts NVML down. It waits for reads in progress and is idempotent.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if ret := s.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("gpu: nvml shutdown: %w", ret)
	}
	return nil
}

// initErrorText describes a failed nvmlInit without calling into NVML:
// Return.Error would call nvmlErrorString once the library is loaded, and
// after a failed Init we call nothing.
func initErrorText(ret nvml.Return) string {
	switch ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "ERROR_LIBRARY_NOT_FOUND: libnvidia-ml.so.1 could not be loaded (no NVIDIA driver installed?)"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "ERROR_DRIVER_NOT_LOADED: the NVIDIA kernel driver is not running"
	case nvml.ERROR_NO_PERMISSION:
		return "ERROR_NO_PERMISSION: not allowed to talk to the NVIDIA driver"
	case nvml.ERROR_LIB_RM_VERSION_MISMATCH:
		return "ERROR_LIB_RM_VERSION_MISMATCH: NVML library and kernel driver versions differ (reload the driver or reboot)"
	case nvml.ERROR_FUNCTION_NOT_FOUND:
		return "ERROR_FUNCTION_NOT_FOUND: libnvidia-ml lacks nvmlInit (driver too old?)"
	case nvml.ERROR_INSUFFICIENT_RESOURCES:
		return "ERROR_INSUFFICIENT_RESOURCES"
	case nvml.ERROR_GPU_IS_LOST:
		return "ERROR_GPU_IS_LOST"
	case nvml.ERROR_UNKNOWN:
		return "ERROR_UNKNOWN"
	default:
		return fmt.Sprintf("NVML return code %d", int32(ret))
	}
}
