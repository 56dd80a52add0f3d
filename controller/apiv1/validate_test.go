package apiv1

import (
	"strings"
	"testing"
)

func TestNameMustBePrintable(t *testing.T) {
	for _, name := range []string{"a\x1b[31mb", "a\rb", "a\nb", "a\x00", "a\tb", "a\x7f", "a\u0085b", "a\u202eb", "a\xffb", "\xc3"} {
		s := JobSpec{Run: "x", Name: name}
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "spec.name") {
			t.Errorf("name %q: %v, want an error about spec.name", name, err)
		}
	}
	for _, name := range []string{"", "resnet-50 sweep #3", "résnet – ü 日本 🚀"} {
		s := JobSpec{Run: "x", Name: name}
		if err := s.Validate(); err != nil {
			t.Errorf("name %q: %v", name, err)
		}
	}
}
