package stats

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		name          string
		in            []time.Duration
		p50, p99, max time.Duration
	}{
		{"empty", nil, 0, 0, 0},
		{"one", ms(7), 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond},
		{"unsorted", ms(5, 1, 4, 2, 3), 3 * time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond},
		{"hundred", func() []time.Duration {
			v := make([]int, 100)
			for i := range v {
				v[i] = 100 - i
			}
			return ms(v...)
		}(), 50 * time.Millisecond, 99 * time.Millisecond, 100 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var first time.Duration
			if len(tc.in) > 0 {
				first = tc.in[0]
			}
			s := Summarize(tc.in)
			if s.P50 != tc.p50 || s.P99 != tc.p99 || s.Max != tc.max || s.N != len(tc.in) {
				t.Fatalf("Summarize = %+v, want p50 %v p99 %v max %v", s, tc.p50, tc.p99, tc.max)
			}
			if len(tc.in) > 0 && tc.in[0] != first {
				t.Fatal("Summarize sorted its input in place")
			}
		})
	}
}

func TestMs(t *testing.T) {
	if got := Ms(1500 * time.Microsecond); got != 1.5 {
		t.Fatalf("Ms = %v, want 1.5", got)
	}
}
