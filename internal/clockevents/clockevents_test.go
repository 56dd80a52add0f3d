package clockevents

import (
	"slices"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// The table must agree with NVML's constants, bit for bit.
func TestReasonsMatchNVML(t *testing.T) {
	want := map[string]uint64{
		"gpu_idle":                    nvml.ClocksEventReasonGpuIdle,
		"applications_clocks_setting": nvml.ClocksEventReasonApplicationsClocksSetting,
		"sw_power_cap":                nvml.ClocksEventReasonSwPowerCap,
		"hw_slowdown":                 nvml.ClocksThrottleReasonHwSlowdown,
		"sync_boost":                  nvml.ClocksEventReasonSyncBoost,
		"sw_thermal_slowdown":         nvml.ClocksEventReasonSwThermalSlowdown,
		"hw_thermal_slowdown":         nvml.ClocksThrottleReasonHwThermalSlowdown,
		"hw_power_brake_slowdown":     nvml.ClocksThrottleReasonHwPowerBrakeSlowdown,
		"display_clock_setting":       nvml.ClocksEventReasonDisplayClockSetting,
		"board_limit":                 nvml.ClocksEventReasonBoardLimit,
		"reliability":                 nvml.ClocksEventReasonReliability,
	}
	if len(Reasons) != len(want) {
		t.Fatalf("%d reasons, want %d", len(Reasons), len(want))
	}
	var all, costly uint64
	for _, r := range Reasons {
		if w, ok := want[r.Name]; !ok || w != r.Bit {
			t.Errorf("%s = %#x, NVML says %#x (known %v)", r.Name, r.Bit, w, ok)
		}
		all |= r.Bit
		if r.Costly {
			costly |= r.Bit
		}
	}
	if all != Known || Known != nvml.ClocksEventReasonAll {
		t.Errorf("Known %#x, table %#x, NVML all %#x", Known, all, uint64(nvml.ClocksEventReasonAll))
	}
	if costly != CostlyMask {
		t.Errorf("CostlyMask %#x, table says %#x", CostlyMask, costly)
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		mask         uint64
		names, costs []string
	}{
		{0, nil, nil},
		{0x1, []string{"gpu_idle"}, nil},
		{0x1 | 0x10 | 0x100 | 0x2, []string{"gpu_idle", "applications_clocks_setting", "sync_boost", "display_clock_setting"}, nil},
		{0x40, []string{"hw_thermal_slowdown"}, []string{"hw_thermal_slowdown"}},
		{0x4 | 0x8 | 0x20 | 0x80, []string{"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_power_brake_slowdown"},
			[]string{"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_power_brake_slowdown"}},
		{0x1 | 0x800, []string{"gpu_idle", "unknown_0x800"}, nil},
		{0x40 | 0x8000_0000_0000_1000, []string{"hw_thermal_slowdown", "unknown_0x8000000000001000"}, []string{"hw_thermal_slowdown"}},
		{^uint64(0), append(namesOf(Reasons), "unknown_0xfffffffffffff800"), []string{"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}},
	} {
		if got := Names(tc.mask); !slices.Equal(got, tc.names) {
			t.Errorf("Names(%#x) = %q, want %q", tc.mask, got, tc.names)
		}
		if got := Costly(tc.mask); !slices.Equal(got, tc.costs) {
			t.Errorf("Costly(%#x) = %q, want %q", tc.mask, got, tc.costs)
		}
		if got := Throttled(tc.mask); got != (len(tc.costs) > 0) {
			t.Errorf("Throttled(%#x) = %v", tc.mask, got)
		}
	}
	if got := Describe(0x44 | 0x1); got != "sw_power_cap, hw_thermal_slowdown" {
		t.Errorf("Describe = %q", got)
	}
}

func namesOf(rs []Reason) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}
