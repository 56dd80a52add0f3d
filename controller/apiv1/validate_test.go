package apiv1

import (
	"strings"
	"testing"
	"time"
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

func TestIsDigest(t *testing.T) {
	good := "sha256:" + strings.Repeat("ab", 32)
	for _, tt := range []struct {
		d    string
		want bool
	}{
		{good, true},
		{"sha256:" + strings.Repeat("AB", 32), false},
		{"sha256:" + strings.Repeat("a", 63), false},
		{"sha256:" + strings.Repeat("g", 64), false},
		{"md5:" + strings.Repeat("a", 64), false},
		{"", false},
	} {
		if got := IsDigest(tt.d); got != tt.want {
			t.Errorf("IsDigest(%q) = %v, want %v", tt.d, got, tt.want)
		}
	}
	s := JobSpec{Run: "true", CodeArchive: "sha256:nope"}
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "code_archive") {
		t.Errorf("Validate(bad code_archive) = %v, want a code_archive error", err)
	}
	s = JobSpec{Run: "true", QueueTimeout: -1}
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "queue_timeout") {
		t.Errorf("Validate(negative queue_timeout) = %v, want a queue_timeout error", err)
	}
}

func TestValidateHealth(t *testing.T) {
	for _, h := range []HealthSpec{
		{StallAfter: Duration(15 * time.Minute), OnStall: "cancel", OnIdle: "notify"},
		{OnStall: "requeue", OnIdle: "requeue", MaxRequeues: 20},
	} {
		ok := JobSpec{Run: "true", Health: &h}
		if err := ok.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v", ok.Health, err)
		}
	}
	for _, tt := range []struct {
		h     HealthSpec
		nodes int
		want  string
	}{
		{HealthSpec{OnIdle: "reboot"}, 1, "on_idle"},
		{HealthSpec{StallAfter: -1}, 1, "stall_after"},
		{HealthSpec{IdleUtilPct: 101}, 1, "idle_util_pct"},
		{HealthSpec{OnStall: "requeue", MaxRequeues: 21}, 1, "max_requeues"},
		{HealthSpec{MaxRequeues: -1}, 1, "max_requeues"},
	} {
		s := JobSpec{Run: "true", Health: &tt.h, Resources: Resources{Nodes: tt.nodes}}
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v) = %v, want an error with %q", tt.h, err, tt.want)
		}
	}
}
