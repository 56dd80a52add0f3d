package pyhelper

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestInstall(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "python")
	if _, err := Install(dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileName)
	b, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(b, Source) || len(Source) == 0 {
		t.Fatalf("installed %d bytes (%v), want the %d of the helper", len(b), err, len(Source))
	}
	for p, want := range map[string]os.FileMode{dir: 0o755, path: 0o644} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: %v %v, want mode %v", p, fi.Mode(), err, want)
		}
	}
	// A stale or damaged copy is replaced; nothing else is left behind.
	if err := os.WriteFile(path, []byte("broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, Source) {
		t.Fatal("a damaged copy was kept")
	}
	if es, _ := os.ReadDir(dir); len(es) != 1 {
		t.Fatalf("%d entries in %s, want the module alone", len(es), dir)
	}
}
