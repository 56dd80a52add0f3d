package blobstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestPutOpenHas(t *testing.T) {
	s, err := Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("print('hello')\n")
	d := digestOf(data)
	if _, ok := s.Has(d); ok {
		t.Fatal("Has before Put")
	}
	n, err := s.Put(d, bytes.NewReader(data))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("Put = %d, %v", n, err)
	}
	if size, ok := s.Has(d); !ok || size != int64(len(data)) {
		t.Fatalf("Has = %d, %v", size, ok)
	}
	f, size, err := s.Open(d)
	if err != nil || size != int64(len(data)) {
		t.Fatalf("Open = %d, %v", size, err)
	}
	got, _ := io.ReadAll(f)
	f.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("read %q", got)
	}
	// Putting it again keeps one copy and succeeds.
	if _, err := s.Put(d, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
}

func TestPutRefusesAndStoresNothing(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 8)
	if err != nil {
		t.Fatal(err)
	}
	small := []byte("abc")
	big := []byte("0123456789")
	for _, tt := range []struct {
		name   string
		digest string
		data   []byte
		want   error
	}{
		{"forged digest", digestOf([]byte("other")), small, ErrDigestMismatch},
		{"too large", digestOf(big), big, ErrTooLarge},
		{"bad digest", "sha256:../../etc/passwd", small, ErrBadDigest},
		{"uppercase digest", strings.ToUpper(digestOf(small)), small, ErrBadDigest},
	} {
		if _, err := s.Put(tt.digest, bytes.NewReader(tt.data)); !errors.Is(err, tt.want) {
			t.Errorf("%s: Put = %v, want %v", tt.name, err, tt.want)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("refused puts left %d files", len(ents))
	}
	if _, _, err := s.Open(digestOf(small)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open of a missing blob = %v", err)
	}
}

func TestOpenRemovesCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".tmp-123"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-123")); !os.IsNotExist(err) {
		t.Fatalf("leftover still there: %v", err)
	}
}

func TestGCKeepsReferencedAndRecent(t *testing.T) {
	s, err := Open(t.TempDir(), 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	put := func(data string, age time.Duration) string {
		d := digestOf([]byte(data))
		if _, err := s.Put(d, strings.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		p, _ := s.path(d)
		at := time.Now().Add(-age)
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
		return d
	}
	referenced := put("used by a running job", 48*time.Hour)
	recent := put("just uploaded", time.Minute)
	stale := put("nobody needs this", 48*time.Hour)
	removed, err := s.GC(map[string]bool{referenced: true}, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Digest != stale {
		t.Fatalf("removed %v, want only %s", removed, stale)
	}
	for _, d := range []string{referenced, recent} {
		if _, ok := s.Has(d); !ok {
			t.Errorf("%s was removed", d)
		}
	}
	// Touch restarts the grace period.
	s.Touch(referenced)
	if removed, _ := s.GC(nil, time.Now().Add(-time.Hour)); len(removed) != 0 {
		t.Fatalf("touched and recent blobs removed: %v", removed)
	}
}
