package safefile

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestOpen checks every kind of file a job can put at its metrics path.
// Each case must return within the test's deadline: a blocking open of a
// FIFO would hang it.
func TestOpen(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		name := "openat2"
		if fallback {
			name = "O_NOFOLLOW"
		}
		t.Run(name, func(t *testing.T) {
			if fallback {
				old := noOpenat2.Load()
				noOpenat2.Store(true)
				t.Cleanup(func() { noOpenat2.Store(old) })
			}
			outside := filepath.Join(t.TempDir(), "secret")
			if err := os.WriteFile(outside, []byte("secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			mk := func(name string, f func(p string) error) string {
				p := filepath.Join(dir, name)
				if err := f(p); err != nil {
					t.Fatal(err)
				}
				return p
			}
			regular := mk("regular", func(p string) error { return os.WriteFile(p, []byte("ok\n"), 0o600) })
			fifo := mk("fifo", func(p string) error { return unix.Mkfifo(p, 0o600) })
			zero := mk("zero", func(p string) error { return os.Symlink("/dev/zero", p) })
			shadow := mk("shadow", func(p string) error { return os.Symlink("/etc/shadow", p) })
			out := mk("outside", func(p string) error { return os.Symlink(outside, p) })
			up := mk("up", func(p string) error { return os.Symlink("../"+filepath.Base(dir)+"/regular", p) })
			sub := mk("subdir", func(p string) error { return os.Mkdir(p, 0o700) })

			f, err := Open(regular, os.Getuid())
			if err != nil {
				t.Fatalf("regular file refused: %v", err)
			}
			data, err := io.ReadAll(f)
			f.Close()
			if err != nil || string(data) != "ok\n" {
				t.Fatalf("read %q, %v", data, err)
			}
			if _, err := Open(filepath.Join(dir, "missing"), AnyOwner); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("missing file: %v, want fs.ErrNotExist", err)
			}
			for _, p := range []string{fifo, zero, shadow, out, up, sub} {
				start := time.Now()
				f, err := Open(p, AnyOwner)
				if err == nil {
					f.Close()
					t.Errorf("%s: opened, want refused", filepath.Base(p))
					continue
				}
				if !errors.Is(err, ErrUnsafe) {
					t.Errorf("%s: %v, want ErrUnsafe", filepath.Base(p), err)
				}
				if d := time.Since(start); d > time.Second {
					t.Errorf("%s: took %v", filepath.Base(p), d)
				}
			}
			if _, err := Open(regular, os.Getuid()+1); !errors.Is(err, ErrUnsafe) {
				t.Fatalf("file of another owner: %v, want ErrUnsafe", err)
			}
		})
	}
}
