// Package clockevents decodes NVML's clocks event reasons (formerly
// "throttle reasons"): the bitmask nvmlDeviceGetCurrentClocksEventReasons
// returns, which the agent stores as GPUStat.throttle_reasons. The agent's
// health checks, the HTTP API, the CLI and the fleet metrics all name the
// bits through this one table, so a reason is spelt the same everywhere.
//
// Names are stable snake_case forms of NVML's nvmlClocksEventReason*
// constants (checked against github.com/NVIDIA/go-nvml's nvml.h). A bit
// this table does not know, such as one a newer driver adds, is reported
// as "unknown_0x…" rather than dropped: a GPU slowed for a reason we
// cannot name is still slowed.
package clockevents

import (
	"math/bits"
	"strconv"
	"strings"
)

// Reason is one bit of the clocks event reasons mask.
type Reason struct {
	// Bit is the reason's value in the mask.
	Bit uint64
	// Name is its stable snake_case name.
	Name string
	// Costly says the reason takes throughput from the work on the GPU:
	// the clocks are held below what the work asks for because of heat,
	// power or a hardware protection. The other reasons are the GPU doing
	// what it was set up to do (idle, fixed clocks, a sync-boost group,
	// the display) and say nothing about the job's speed.
	Costly bool
}

// Reasons are the reasons NVML defines, in bit order.
var Reasons = []Reason{
	{0x1, "gpu_idle", false},
	{0x2, "applications_clocks_setting", false},
	{0x4, "sw_power_cap", true},
	{0x8, "hw_slowdown", true},
	{0x10, "sync_boost", false},
	{0x20, "sw_thermal_slowdown", true},
	{0x40, "hw_thermal_slowdown", true},
	{0x80, "hw_power_brake_slowdown", true},
	{0x100, "display_clock_setting", false},
	// Newer drivers (nvml.h of go-nvml 0.13) also define these two. They
	// are the board's configured operating policy rather than a reaction
	// to heat or power draw, so, like applications_clocks_setting, they
	// are named but not counted as throttling.
	{0x200, "board_limit", false},
	{0x400, "reliability", false},
}

// Known is the mask of every bit in Reasons.
const Known uint64 = 0x7ff

// CostlyMask is the mask of the reasons that cost throughput.
const CostlyMask uint64 = 0x4 | 0x8 | 0x20 | 0x40 | 0x80

// UnknownPrefix starts the name of a bit Reasons does not define.
const UnknownPrefix = "unknown_"

// Names returns the names of the bits set in mask, in bit order; nil for
// none. All unknown bits are reported together as one name
// ("unknown_0x1800"), so a mask yields at most len(Reasons)+1 names.
func Names(mask uint64) []string {
	if mask == 0 {
		return nil
	}
	out := make([]string, 0, bits.OnesCount64(mask&Known)+1)
	for _, r := range Reasons {
		if mask&r.Bit != 0 {
			out = append(out, r.Name)
		}
	}
	if u := mask &^ Known; u != 0 {
		out = append(out, UnknownName(u))
	}
	return out
}

// Costly returns the names of the throughput-costing reasons set in mask,
// in bit order; nil for none. Unknown bits are not counted: a GPU is only
// called throttled for a reason known to slow it.
func Costly(mask uint64) []string { return Names(mask & CostlyMask) }

// Throttled reports whether mask holds a throughput-costing reason.
func Throttled(mask uint64) bool { return mask&CostlyMask != 0 }

// UnknownName names bits outside Known.
func UnknownName(bits uint64) string {
	return UnknownPrefix + "0x" + strconv.FormatUint(bits, 16)
}

// Describe is a short human form of the costing reasons of mask
// ("hw_thermal_slowdown, sw_power_cap"), "" for none.
func Describe(mask uint64) string {
	return strings.Join(Costly(mask), ", ")
}
