package load

import (
	"strings"
	"testing"
	"time"
)

func TestBetween(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := Sample{At: t0, Stored: []uint64{100, 100, 90}, LeaderIndex: 10, LeaderCPU: time.Second, Term: 2,
		NodeCPU: []time.Duration{time.Second, 0, 0}}
	b := Sample{At: t0.Add(2 * time.Second), Stored: []uint64{2100, 1900, 2090}, LeaderIndex: 20, LeaderCPU: 3 * time.Second, Term: 4,
		NodeCPU: []time.Duration{3 * time.Second, time.Second, time.Second}, DriverCPU: time.Second}
	w := Between(a, b, 0)
	tests := []struct {
		name      string
		got, want float64
	}{
		{"seconds", w.Seconds, 2},
		{"min rate is the slowest node", w.MinRate, 900},
		{"points per entry", w.PointsPerEntry(), 200},
		{"cpu per million", w.CPUPerMillion(), 1000},
		{"elections", float64(w.Elections), 2},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if want := "controllers c0 2.0, c1 1.0, c2 1.0, driver (simulated agents) 1.0; 2 Raft elections"; !strings.Contains(w.CPUNote(), want) {
		t.Errorf("CPUNote = %q, want it to contain %q", w.CPUNote(), want)
	}
	if (Window{}).PointsPerEntry() != 0 || (Window{}).CPUPerMillion() != 0 {
		t.Error("empty window should give zeros, not NaN")
	}
}
