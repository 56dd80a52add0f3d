package driver

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestPick(t *testing.T) {
	tests := []struct {
		names []string
		want  []string
		err   error
	}{
		{nil, []string{"watchers", "ingest", "freshness", "final", "storage", "devmode", "gobench"}, nil},
		{[]string{"final", "ingest"}, []string{"final", "ingest"}, nil},
		{[]string{"nope"}, nil, ErrUnknownStage},
	}
	for _, tc := range tests {
		got, err := pick(tc.names)
		if !errors.Is(err, tc.err) {
			t.Fatalf("pick(%v) error %v, want %v", tc.names, err, tc.err)
		}
		if len(got) != len(tc.want) {
			t.Fatalf("pick(%v) = %d stages, want %v", tc.names, len(got), tc.want)
		}
		for i := range got {
			if got[i].Name != tc.want[i] {
				t.Errorf("pick(%v)[%d] = %s, want %s", tc.names, i, got[i].Name, tc.want[i])
			}
		}
	}
}

func TestRunNeedsBuiltBinaries(t *testing.T) {
	err := Run(context.Background(), Config{BinDir: t.TempDir(), OutDir: t.TempDir(), Out: io.Discard})
	if !errors.Is(err, ErrMissingBinary) {
		t.Fatalf("Run without binaries: %v, want ErrMissingBinary", err)
	}
}

func TestRemoveAllBut(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"logs", "c0", "etcd"} {
		if err := os.MkdirAll(filepath.Join(dir, d, "x"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := removeAllBut(dir, "logs"); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "logs" {
		t.Fatalf("left %v, want only logs", entries)
	}
}
