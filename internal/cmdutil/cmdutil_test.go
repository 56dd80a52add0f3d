package cmdutil

import (
	"slices"
	"testing"
)

func TestSplitList(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{" , ,", nil},
		{"a", []string{"a"}},
		{"a, b,,c ", []string{"a", "b", "c"}},
		{"10.0.0.1:7000,host:7000", []string{"10.0.0.1:7000", "host:7000"}},
	} {
		if got := SplitList(tt.in); !slices.Equal(got, tt.want) || (tt.want == nil && got != nil) {
			t.Errorf("SplitList(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
