package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// stateFile leaves a real state.db behind, as a controller that applied
// up to index 900 and then stopped does.
func stateFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	update(t, s, func(tx *Tx) error {
		for i := 0; i < 200; i++ {
			if err := tx.PutJob(&gantrypb.Job{Id: strings.Repeat("j", 1+i%50) + string(rune('a'+i%26)), Error: strings.Repeat("x", 300)}); err != nil {
				return err
			}
		}
		return tx.SetAppliedIndex(900)
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestOpenReportsPrevApplied(t *testing.T) {
	path := stateFile(t)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.PrevApplied(); got != 900 {
		t.Fatalf("PrevApplied = %d, want 900", got)
	}
	// A first start has nothing to report.
	fresh, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if got := fresh.PrevApplied(); got != 0 {
		t.Fatalf("PrevApplied of a first start = %d, want 0", got)
	}
}

// wantCorrupt checks that reading a damaged state.db fails with an error
// naming the file.
func wantCorrupt(t *testing.T, path string, err error) {
	t.Helper()
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Fatalf("reading a damaged state.db: err = %v, want ErrCorrupt naming %s", err, path)
	}
}

func TestOpenDamagedStateDBMovesItAside(t *testing.T) {
	page := os.Getpagesize()
	tests := map[string]func(b []byte) []byte{
		// bbolt keeps two meta pages and falls back to the other when one
		// fails its checksum; damage to both leaves nothing to trust.
		"both meta pages": func(b []byte) []byte {
			for _, off := range []int{32, page + 32} {
				b[off] ^= 0xff
			}
			return b
		},
		"garbage file": func([]byte) []byte { return bytes.Repeat([]byte("not a bolt file "), 1024) },
		"truncated":    func(b []byte) []byte { return b[:100] },
	}
	for name, damage := range tests {
		t.Run(name, func(t *testing.T) {
			path := stateFile(t)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, damage(b), 0o600); err != nil {
				t.Fatal(err)
			}
			// The file is only a cache of the Raft state: a damaged one
			// (a power loss tears it: it runs without fsync) is moved
			// aside and named, and the start goes on.
			s, err := Open(path)
			if err != nil {
				t.Fatalf("Open with a damaged state.db: %v", err)
			}
			defer s.Close()
			prevErr := s.PrevAppliedErr()
			wantCorrupt(t, path, prevErr)
			if !strings.Contains(prevErr.Error(), path+".corrupt") || !strings.Contains(prevErr.Error(), "lost its tail") {
				t.Fatalf("warning %q does not say where the file went and what this start cannot check", prevErr)
			}
			if _, err := os.Stat(path + ".corrupt"); err != nil {
				t.Fatalf("the damaged file was not kept aside: %v", err)
			}
			if s.PrevApplied() != 0 {
				t.Fatalf("PrevApplied = %d from a damaged file", s.PrevApplied())
			}
			update(t, s, func(tx *Tx) error { return tx.SetAppliedIndex(1) })
		})
	}
}

// Overwriting any one page in use must never panic: reading the applied
// index either fails with ErrCorrupt (the page held what it reads) or
// returns the right index (the page held data that is discarded anyway).
// It calls readApplied, Open's first step, because Open removes the file
// when it succeeds and rewriting the whole file per page is slow.
func TestDamagedPagesNeverPanic(t *testing.T) {
	path := stateFile(t)
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// bbolt grows the file in large steps; only pages before the last
	// non-zero byte were ever written.
	used := len(bytes.TrimRight(orig, "\x00"))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := os.Getpagesize()
	refused := 0
	junk := make([]byte, page)
	for off := 2 * page; off < used; off += page {
		for i := range junk {
			junk[i] = byte((off+i)*7 + 13)
		}
		if _, err := f.WriteAt(junk, int64(off)); err != nil {
			t.Fatal(err)
		}
		got, err := readApplied(path)
		if err != nil {
			wantCorrupt(t, path, err)
			refused++
		} else if got != 900 {
			t.Errorf("page at %d overwritten: applied index read as %d, want 900", off, got)
		}
		if _, err := f.WriteAt(orig[off:off+page], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if refused == 0 {
		t.Fatalf("none of %d damaged pages was noticed: the meta bucket's page must be", (used-2*page)/page)
	}
	t.Logf("%d of %d damaged pages refused", refused, (used-2*page)/page)
}
