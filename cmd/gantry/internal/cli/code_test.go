package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/internal/codearchive"
)

// TestRunShipsCode: `gantry run` ships the spec's directory (or its
// code: directory) honouring the ignore files, and the submitted spec
// names what was uploaded; code: none and an absolute workdir ship
// nothing; an archive the controller finds too large is a usage error
// naming the biggest files.
func TestRunShipsCode(t *testing.T) {
	project := func(t *testing.T, spec string) string {
		t.Helper()
		dir := t.TempDir()
		for name, body := range map[string]string{
			"train.py":       "print(1)",
			"src/model.py":   "x = 1",
			".gantryignore":  "checkpoints/\n",
			"checkpoints/a":  strings.Repeat("w", 1000),
			"job.yaml":       spec,
			"sub/other.yaml": spec,
		} {
			p := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	unpacked := func(t *testing.T, archive []byte) []string {
		t.Helper()
		dst := t.TempDir()
		if _, err := codearchive.Unpack(bytes.NewReader(archive), dst, codearchive.DefaultLimits, codearchive.Owner{Uid: -1}); err != nil {
			t.Fatal(err)
		}
		var files []string
		_ = filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(dst, p)
				files = append(files, rel)
			}
			return err
		})
		slices.Sort(files)
		return files
	}

	for _, tt := range []struct {
		name, spec, file string
		want             []string // files shipped; nil: no upload
	}{
		{"spec directory", "run: python train.py\n", "job.yaml",
			[]string{".gantryignore", "job.yaml", "src/model.py", "sub/other.yaml", "train.py"}},
		{"code directory", "run: python model.py\ncode: src\n", "job.yaml", []string{"model.py"}},
		{"code relative to a nested spec", "run: python train.py\ncode: ..\n", "sub/other.yaml",
			[]string{".gantryignore", "job.yaml", "src/model.py", "sub/other.yaml", "train.py"}},
		{"code none", "run: python train.py\ncode: none\n", "job.yaml", nil},
		{"absolute workdir on the host", "run: python train.py\nworkdir: /srv/code\n", "job.yaml", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fc := newFakeController(t)
			dir := project(t, tt.spec)
			r := runCLI(t, context.Background(), map[string]string{EnvAddr: fc.srv.URL}, "run", "-d", filepath.Join(dir, tt.file))
			if r.code != 0 {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			if len(fc.submitted) != 1 {
				t.Fatalf("submitted %d specs", len(fc.submitted))
			}
			digest := fc.submitted[0].CodeArchive
			if tt.want == nil {
				if digest != "" || len(fc.blobs) != 0 {
					t.Fatalf("shipped code (%q, %d uploads); want none", digest, len(fc.blobs))
				}
				return
			}
			archive, ok := fc.blobs[digest]
			if !ok {
				t.Fatalf("spec names archive %q, which was not uploaded (%d uploads)", digest, len(fc.blobs))
			}
			if got := unpacked(t, archive); !slices.Equal(got, tt.want) {
				t.Fatalf("shipped %v, want %v", got, tt.want)
			}
			if r.stdout != "j-1\n" || !strings.Contains(r.stderr, "uploading code from") {
				t.Fatalf("stdout %q (want the bare id), stderr %q", r.stdout, r.stderr)
			}
		})
	}

	t.Run("refused before the upload", func(t *testing.T) {
		fc := newFakeController(t)
		fc.rejectSpec = "the job can never be placed: no node has 8 GPUs"
		dir := project(t, "run: python train.py\nresources:\n  gpus: 8\n")
		r := runCLI(t, context.Background(), map[string]string{EnvAddr: fc.srv.URL}, "run", "-d", filepath.Join(dir, "job.yaml"))
		if r.code != exitUsage || !strings.Contains(r.stderr, "no node has 8 GPUs") || strings.Contains(r.stderr, "uploading") {
			t.Fatalf("exit %d, stderr %q; want %d and the reason, before any upload", r.code, r.stderr, exitUsage)
		}
		if len(fc.blobs) != 0 || len(fc.submitted) != 0 {
			t.Fatalf("%d uploads and %d submits for a spec the controller refuses", len(fc.blobs), len(fc.submitted))
		}
	})

	t.Run("home directory", func(t *testing.T) {
		fc := newFakeController(t)
		home := project(t, "run: python train.py\n")
		env := map[string]string{EnvAddr: fc.srv.URL, "HOME": home}
		r := runCLI(t, context.Background(), env, "run", "-d", filepath.Join(home, "job.yaml"))
		if r.code != exitUsage || !strings.Contains(r.stderr, "keys and all") || len(fc.blobs) != 0 || len(fc.submitted) != 0 {
			t.Fatalf("exit %d, stderr %q, %d uploads; want %d and no upload of the home directory", r.code, r.stderr, len(fc.blobs), exitUsage)
		}
		// Asked for explicitly, it ships.
		spec := filepath.Join(home, "explicit.yaml")
		if err := os.WriteFile(spec, []byte("run: python train.py\ncode: .\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if r := runCLI(t, context.Background(), env, "run", "-d", spec); r.code != 0 || len(fc.blobs) != 1 {
			t.Fatalf("explicit code: . in the home directory: exit %d, stderr %q, %d uploads", r.code, r.stderr, len(fc.blobs))
		}
	})

	t.Run("too large", func(t *testing.T) {
		fc := newFakeController(t)
		fc.maxBlob = 10
		dir := project(t, "run: python train.py\n")
		r := runCLI(t, context.Background(), map[string]string{EnvAddr: fc.srv.URL}, "run", "-d", filepath.Join(dir, "job.yaml"))
		if r.code != exitUsage || !strings.Contains(r.stderr, ".gantryignore") || !strings.Contains(r.stderr, "largest files: ") ||
			!strings.Contains(r.stderr, "train.py") {
			t.Fatalf("exit %d, stderr %q; want %d naming .gantryignore and the largest files", r.code, r.stderr, exitUsage)
		}
		if len(fc.submitted) != 0 {
			t.Fatal("a job was submitted without its code")
		}
	})
}
