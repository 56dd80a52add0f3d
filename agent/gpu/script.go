package gpu

import (
	"encoding/json"
	"os"
	"strconv"
	"sync"
	"time"
)

// ScriptEnv names the environment variable that, for tests only, scripts
// the readings of the mock GPUs (NewMock; never real ones): it names a
// JSON file such as
//
//	{"gpus": {"0": {"util": 100, "power_w": 80, "sm_mhz": 1410, "mem_used_mib": 30000},
//	          "1": {"xid": 79}, "2": {"lost": true},
//	          "3": {"util": 90, "power_w": 300, "processes": [{"pid": 4242, "mem_mib": 2048}]},
//	          "4": {"util": 97, "power_w": 395, "throttle": 68}}}
//
// A GPU listed there reports exactly those readings; the others keep
// their simulated load. The file is read again whenever its modification
// time or size changes, so an end-to-end test changes what the GPUs of a
// running dev agent show by rewriting it (write a temporary file and
// rename it over, so that no half-written file is read). A file that is
// missing or not valid JSON scripts nothing.
const ScriptEnv = "GANTRY_TEST_GPU_SCRIPT"

// Reading is one scripted GPU's readings.
type Reading struct {
	Util       float64 `json:"util"`
	PowerW     float64 `json:"power_w"`
	SMMHz      float64 `json:"sm_mhz"`
	MemUsedMiB uint64  `json:"mem_used_mib"`
	// XID, when set, is delivered once as an XID critical error event.
	XID uint64 `json:"xid"`
	// Lost makes the GPU answer NVML_ERROR_GPU_IS_LOST.
	Lost bool `json:"lost"`
	// Throttle is the clocks event reasons mask the GPU reports
	// (nvmlDeviceGetCurrentClocksEventReasons; internal/clockevents names
	// the bits: 68 is sw_power_cap and hw_thermal_slowdown).
	Throttle uint64 `json:"throttle"`
	// Processes are the compute processes the GPU reports.
	Processes []ScriptProcess `json:"processes"`
}

// ScriptProcess is a scripted compute process on a GPU.
type ScriptProcess struct {
	PID    uint32 `json:"pid"`
	MemMiB uint64 `json:"mem_mib"`
}

// scriptFile is the GPU script named by ScriptEnv, re-read on change.
type scriptFile struct {
	path string

	mu      sync.Mutex
	checked time.Time
	mtime   time.Time
	size    int64
	gpus    map[int]Reading
}

// maxScriptBytes bounds the file read; a script is a few lines.
const maxScriptBytes = 1 << 20

// activeScript is set from ScriptEnv when the package is loaded: mock
// devices only, so production NVML never sees it.
var activeScript = newScriptFile(os.Getenv(ScriptEnv))

func newScriptFile(path string) *scriptFile {
	if path == "" {
		return nil
	}
	return &scriptFile{path: path}
}

// reading returns the scripted reading of GPU index, if any.
func (s *scriptFile) reading(index int) (Reading, bool) {
	if s == nil {
		return Reading{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// One stat per 100 ms at most: a sample reads five fields of each GPU.
	if now := time.Now(); now.Sub(s.checked) >= 100*time.Millisecond {
		s.checked = now
		s.reload()
	}
	r, ok := s.gpus[index]
	return r, ok
}

func (s *scriptFile) reload() {
	fi, err := os.Stat(s.path)
	if err != nil {
		s.gpus = nil
		return
	}
	if fi.ModTime().Equal(s.mtime) && fi.Size() == s.size {
		return
	}
	s.mtime, s.size = fi.ModTime(), fi.Size()
	if fi.Size() > maxScriptBytes {
		s.gpus = nil
		return
	}
	data, err := os.ReadFile(s.path)
	if err != nil {
		s.gpus = nil
		return
	}
	var doc struct {
		GPUs map[string]Reading `json:"gpus"`
	}
	if json.Unmarshal(data, &doc) != nil {
		s.gpus = nil
		return
	}
	s.gpus = map[int]Reading{}
	for k, r := range doc.GPUs {
		if i, err := strconv.Atoi(k); err == nil {
			s.gpus[i] = r
		}
	}
}
