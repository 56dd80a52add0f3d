package gpu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// GPU faults. A Source remembers the first fault it sees on each GPU and
// reports it in every later sample (GPUStat.fault): a GPU that failed stays
// failed until it is reset, which restarts the agent's view of it anyway.

// applicationXIDs are XID errors caused by the application (an illegal
// address, a watchdog timeout of a kernel, a page fault): the job failed,
// not the GPU. The same list the Kubernetes device plugin and DCGM skip.
var applicationXIDs = map[uint64]bool{13: true, 31: true, 43: true, 45: true, 68: true, 109: true}

// xidText names the XIDs worth naming.
var xidText = map[uint64]string{
	48: "double-bit ECC error", 63: "ECC page retirement or row remap", 64: "ECC page retirement or row remap failure",
	74: "NVLink error", 79: "GPU has fallen off the bus", 92: "high single-bit ECC error rate",
	94: "contained ECC error", 95: "uncontained ECC error", 119: "GSP RPC timeout", 120: "GSP error",
}

// healthPollEvery is how many samples apart the page-retirement and
// row-remap state is read (it changes only on an ECC event).
const healthPollEvery = 30

// setFault records the first fault of GPU index and reports whether it
// was new.
func (s *Source) setFault(index uint32, fault string) bool {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	if s.faults == nil {
		s.faults = map[uint32]string{}
	}
	if _, ok := s.faults[index]; ok {
		return false
	}
	s.faults[index] = fault
	return true
}

// fault returns GPU index's fault, "" when healthy.
func (s *Source) fault(index uint32) string {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	return s.faults[index]
}

// checkPages reads the retired-pages and row-remap state of d: a pending
// retirement or remap, or a failed remap, is a fault (the GPU needs a
// reset, and until then it may corrupt what runs on it). Not supported
// (older GPUs, MIG) is not a fault.
func (s *Source) checkPages(d device) {
	if st, ret := d.handle.GetRetiredPagesPendingStatus(); ret == nvml.SUCCESS && st == nvml.FEATURE_ENABLED {
		s.setFault(d.index, "retired memory pages are pending (a double-bit ECC error); the GPU needs a reset")
	}
	if _, unc, pending, failed, ret := d.handle.GetRemappedRows(); ret == nvml.SUCCESS {
		switch {
		case failed:
			s.setFault(d.index, "row remapping failed: the GPU's memory cannot be repaired")
		case pending && unc > 0:
			s.setFault(d.index, fmt.Sprintf("%d uncorrectable memory rows remapped, pending a GPU reset", unc))
		}
	}
}

// WatchEvents subscribes to the GPUs' critical NVML events (XID critical
// errors, double-bit ECC errors) and records them as faults until ctx
// ends. onFault is called for each new fault. It returns at once with an
// error when NVML cannot create an event set; GPUs that do not support
// events are left to the polled checks.
func (s *Source) WatchEvents(ctx context.Context, log *slog.Logger, onFault func(index uint32, fault string)) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	set, ret := s.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		s.mu.RUnlock()
		return fmt.Errorf("gpu: nvml event set: %w", ret)
	}
	byUUID := map[string]uint32{}
	for _, d := range s.devices {
		byUUID[d.uuid] = d.index
		supported, ret := d.handle.GetSupportedEventTypes()
		if ret != nvml.SUCCESS {
			log.Warn("GPU events not supported; relying on polled checks", "gpu", d.index, "err", ret)
			continue
		}
		want := supported & (nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError)
		if want == 0 {
			continue
		}
		if ret := d.handle.RegisterEvents(want, set); ret != nvml.SUCCESS {
			log.Warn("GPU events could not be registered; relying on polled checks", "gpu", d.index, "err", ret)
		}
	}
	s.mu.RUnlock()
	defer func() {
		s.mu.RLock()
		defer s.mu.RUnlock()
		if !s.closed {
			set.Free()
		}
	}()
	for ctx.Err() == nil {
		s.mu.RLock()
		if s.closed {
			s.mu.RUnlock()
			return ErrClosed
		}
		// A short wait, so that Close (which takes the write lock) is
		// never held up for long.
		ev, ret := set.Wait(500)
		s.mu.RUnlock()
		switch {
		case ret == nvml.ERROR_TIMEOUT:
			continue
		case errors.Is(ret, nvml.ERROR_GPU_IS_LOST):
			// Which GPU is lost the next sample says.
			continue
		case ret != nvml.SUCCESS:
			log.Warn("GPU event wait failed; retrying", "err", ret)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		index, ok := eventGPU(ev, byUUID)
		if !ok {
			continue
		}
		var fault string
		switch {
		case ev.EventType&nvml.EventTypeXidCriticalError != 0:
			if applicationXIDs[ev.EventData] {
				log.Info("application XID on a GPU (the job's error, not the GPU's)", "gpu", index, "xid", ev.EventData)
				continue
			}
			fault = fmt.Sprintf("XID %d", ev.EventData)
			if t := xidText[ev.EventData]; t != "" {
				fault += " (" + t + ")"
			}
		case ev.EventType&nvml.EventTypeDoubleBitEccError != 0:
			fault = "double-bit ECC error"
		default:
			continue
		}
		if s.setFault(index, fault) {
			log.Error("GPU failing", "gpu", index, "fault", fault)
			if onFault != nil {
				onFault(index, fault)
			}
		}
	}
	return nil
}

// eventGPU finds the index of the GPU an event is about, by UUID (the
// event's device handle is not the one enumerated).
func eventGPU(ev nvml.EventData, byUUID map[string]uint32) (uint32, bool) {
	if ev.Device == nil {
		return 0, false
	}
	uuid, ret := ev.Device.GetUUID()
	if ret != nvml.SUCCESS {
		return 0, false
	}
	i, ok := byUUID[uuid]
	return i, ok
}
