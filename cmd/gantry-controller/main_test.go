package main

import (
	"fmt"
	"testing"

	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/store"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "512": 512, "64KiB": 64 << 10, "128MiB": 128 << 20, "128M": 128 << 20, "2GiB": 2 << 30,
		"1 GB": 1 << 30, "100B": 100,
	} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "12XB", "MiB", "9999999999999GiB", "1.5GiB"} {
		if got, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", bad, got)
		}
	}
}

func TestExitStatus(t *testing.T) {
	if got := exitStatus(fmt.Errorf("cluster: %w", cluster.ErrLogCorrupt)); got != exitCorrupt {
		t.Errorf("corrupt log: exit %d, want %d", got, exitCorrupt)
	}
	if got := exitStatus(fmt.Errorf("x: %w", store.ErrCorrupt)); got != exitCorrupt {
		t.Errorf("corrupt state.db: exit %d, want %d", got, exitCorrupt)
	}
	if got := exitStatus(fmt.Errorf("listen: address in use")); got != 1 {
		t.Errorf("other error: exit %d, want 1", got)
	}
}
