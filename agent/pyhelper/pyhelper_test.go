package pyhelper

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/gantry-ml/gantry/python"
)

// embedded returns the package's files as Install should write them.
func embedded(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := fs.WalkDir(python.Package, python.PackageName, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(python.Package, p)
		out[strings.TrimPrefix(p, python.PackageName+"/")] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"__init__.py", "hf.py", "lightning.py"} {
		if len(out[m]) == 0 {
			t.Fatalf("the embedded package lacks %s: %v", m, names(out))
		}
	}
	return out
}

func names(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkInstalled fails unless dir/gantry_metrics holds exactly want, with
// the modes Install promises, and dir holds nothing but allowed entries.
func checkInstalled(t *testing.T, dir string, want map[string][]byte, allowed ...string) {
	t.Helper()
	pkg := filepath.Join(dir, python.PackageName)
	for p, mode := range map[string]os.FileMode{dir: 0o755, pkg: 0o755} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s: %v, want mode %v", p, err, mode)
		}
	}
	got := map[string][]byte{}
	es, err := os.ReadDir(pkg)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		p := filepath.Join(pkg, e.Name())
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o644 {
			t.Fatalf("%s: %v, want mode 0644", p, err)
		}
		got[e.Name()], _ = os.ReadFile(p)
	}
	if fmt.Sprint(names(got)) != fmt.Sprint(names(want)) {
		t.Fatalf("installed %v, want %v", names(got), names(want))
	}
	for k := range want {
		if !bytes.Equal(got[k], want[k]) {
			t.Fatalf("installed %s differs from the embedded one", k)
		}
	}
	top, _ := os.ReadDir(dir)
	ok := map[string]bool{python.PackageName: true}
	for _, a := range allowed {
		ok[a] = true
	}
	for _, e := range top {
		if !ok[e.Name()] {
			t.Fatalf("%s left in %s", e.Name(), dir)
		}
	}
}

func TestInstall(t *testing.T) {
	want := embedded(t)
	dir := filepath.Join(t.TempDir(), "python")
	// What an agent before the package left: the helper as one module.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, legacyModule), []byte("old = True\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := Install(dir); err != nil || got != dir {
		t.Fatalf("Install = %q, %v", got, err)
	}
	checkInstalled(t, dir, want)

	// Up to date (bytecode aside): nothing is rewritten.
	pkg := filepath.Join(dir, python.PackageName)
	if err := os.Mkdir(filepath.Join(pkg, "__pycache__"), 0o755); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(pkg)
	if _, err := Install(dir); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Stat(pkg); !os.SameFile(before, after) {
		t.Fatal("an up-to-date package was replaced")
	}

	// Each kind of damage is repaired, by a whole new package.
	damage := map[string]func() error{
		"changed module": func() error { return os.WriteFile(filepath.Join(pkg, "hf.py"), []byte("broken"), 0o644) },
		"missing module": func() error { return os.Remove(filepath.Join(pkg, "lightning.py")) },
		"extra module":   func() error { return os.WriteFile(filepath.Join(pkg, "stale.py"), nil, 0o644) },
		"file mode":      func() error { return os.Chmod(filepath.Join(pkg, "__init__.py"), 0o600) },
		"dir mode":       func() error { return os.Chmod(pkg, 0o700) },
		"not a dir": func() error {
			if err := os.RemoveAll(pkg); err != nil {
				return err
			}
			return os.WriteFile(pkg, nil, 0o644)
		},
	}
	for what, do := range damage {
		if err := do(); err != nil {
			t.Fatal(err)
		}
		if _, err := Install(dir); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		checkInstalled(t, dir, want, oldName)
	}
	// The replaced package is kept until the next install that replaces one.
	if _, err := os.Stat(filepath.Join(dir, oldName)); err != nil {
		t.Fatal(err)
	}
}

// TestInstallImportable: Python imports the installed package from the
// directory the agent puts on PYTHONPATH, and logs with it.
func TestInstallImportable(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed (scripts/test-deps.sh installs it)")
	}
	dir, err := Install(filepath.Join(t.TempDir(), "python"))
	if err != nil {
		t.Fatal(err)
	}
	metrics := filepath.Join(t.TempDir(), "m.jsonl")
	cmd := exec.Command(py, "-c", `import gantry_metrics as g; print(g.__file__); g.log({"loss": 0.5}, step=2)`)
	cmd.Dir = t.TempDir() // not the repository: nothing to import by accident
	cmd.Env = append(os.Environ(), "PYTHONPATH="+dir, "GANTRY_METRICS_FILE="+metrics, "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if want := filepath.Join(dir, python.PackageName, "__init__.py"); strings.TrimSpace(string(out)) != want {
		t.Fatalf("imported %s, want %s", out, want)
	}
	if b, _ := os.ReadFile(metrics); !bytes.Contains(b, []byte(`"step":2,`)) || !bytes.Contains(b, []byte(`"loss":0.5`)) {
		t.Fatalf("metrics file: %q", b)
	}
}

// TestInstallIsAtomicForReaders: while the package is replaced over and
// over by one of two versions, readers of its files by path (as Python
// opens them) always find every file, and always read one version's whole
// file, never a mix or a part.
func TestInstallIsAtomicForReaders(t *testing.T) {
	version := func(v byte) fstest.MapFS {
		fsys := fstest.MapFS{}
		for i, name := range []string{"__init__.py", "a.py", "b.py"} {
			// Large enough that a file written in place would be seen
			// part-written.
			fsys["pkg/"+name] = &fstest.MapFile{Data: bytes.Repeat([]byte{v + byte(i)}, 256<<10)}
		}
		return fsys
	}
	versions := []fstest.MapFS{version('a'), version('n')}
	dir := t.TempDir()
	if err := install(dir, versions[0], "pkg"); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var reads atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	// A cheap lookup, many times per swap: a moment with no package
	// (two renames instead of one exchange) is caught here.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if _, err := os.Stat(filepath.Join(dir, "pkg", "__init__.py")); err != nil {
				errs <- fmt.Errorf("no package during a swap: %w", err)
				return
			}
		}
	}()
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				for _, name := range []string{"__init__.py", "a.py", "b.py"} {
					b, err := os.ReadFile(filepath.Join(dir, "pkg", name))
					if err != nil {
						errs <- fmt.Errorf("read %s during a swap: %w", name, err)
						return
					}
					if !bytes.Equal(b, versions[0]["pkg/"+name].Data) && !bytes.Equal(b, versions[1]["pkg/"+name].Data) {
						errs <- fmt.Errorf("read %s: %d bytes of neither version", name, len(b))
						return
					}
					reads.Add(1)
				}
			}
		}()
	}
	deadline := time.Now().Add(2 * time.Second)
	swaps := 0
	for ; swaps < 300 && time.Now().Before(deadline) && len(errs) == 0; swaps++ {
		if err := install(dir, versions[(swaps+1)%2], "pkg"); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if swaps < 10 || reads.Load() < 10 {
		t.Fatalf("only %d swaps and %d reads: the test proved nothing", swaps, reads.Load())
	}
	t.Logf("%d swaps, %d whole reads", swaps, reads.Load())
}

// TestSwapByRenames: the fallback for file systems without RENAME_EXCHANGE
// also leaves the new package in place and the old one aside.
func TestSwapByRenames(t *testing.T) {
	dir := t.TempDir()
	tmp, dst, old := filepath.Join(dir, "tmp"), filepath.Join(dir, "dst"), filepath.Join(dir, "old")
	for p, content := range map[string]string{tmp: "new", dst: "old"} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "f"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := swapByRenames(tmp, dst, old); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{dst: "new", old: "old"} {
		if b, err := os.ReadFile(filepath.Join(p, "f")); err != nil || string(b) != want {
			t.Fatalf("%s: %q %v, want %q", p, b, err, want)
		}
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("tmp still there: %v", err)
	}
}
