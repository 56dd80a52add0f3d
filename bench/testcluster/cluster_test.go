package testcluster

import (
	"errors"
	"strings"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	text := `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 42
process_resident_memory_bytes 3.3554432e+07
gantry_ws_watchers 10000
go_gc_duration_seconds{quantile="0.5"} 0.0001
`
	m, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		want float64
		err  error
	}{
		{"go_goroutines", 42, nil},
		{"process_resident_memory_bytes", 33554432, nil},
		{"gantry_ws_watchers", 10000, nil},
		{"go_gc_duration_seconds", 0, ErrNoMetric},
	}
	for _, tc := range tests {
		got, err := Metric(m, tc.name)
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("Metric(%s) = %v, %v; want %v, %v", tc.name, got, err, tc.want, tc.err)
		}
	}
}

func TestFreePorts(t *testing.T) {
	ports, err := FreePorts(10)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || seen[p] {
			t.Fatalf("bad or repeated port %d in %v", p, ports)
		}
		seen[p] = true
	}
}
