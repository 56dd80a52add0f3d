package gpu

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// MaxProcessesPerGPU bounds the processes read from one GPU per call.
const MaxProcessesPerGPU = 64

// Process is a compute process NVML sees on a GPU.
type Process struct {
	GPU      uint32
	PID      uint32
	MemBytes uint64
}

// Processes lists the compute processes running on every GPU now. A GPU
// that cannot list them (not supported, lost) is left out and its error
// joined into err; the others are still returned.
func (s *Source) Processes() ([]Process, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	var out []Process
	var errs []error
	for _, d := range s.devices {
		ps, ret := d.handle.GetComputeRunningProcesses()
		if ret != nvml.SUCCESS {
			if !errors.Is(ret, nvml.ERROR_NOT_SUPPORTED) {
				errs = append(errs, fmt.Errorf("gpu %d: compute processes: %w", d.index, ret))
			}
			continue
		}
		if len(ps) > MaxProcessesPerGPU {
			ps = ps[:MaxProcessesPerGPU]
		}
		for _, p := range ps {
			out = append(out, Process{GPU: d.index, PID: p.Pid, MemBytes: p.UsedGpuMemory})
		}
	}
	return out, errors.Join(errs...)
}
