package python

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// pythons returns the distinct Python 3 interpreters to try: python3 on
// PATH, then Debian's /usr/bin/python3 (where apt's python3-numpy and
// python3-torch go; a pyenv or venv python3 on PATH may not see them).
func pythons(t *testing.T) []string {
	t.Helper()
	var out []string
	seen := map[string]bool{}
	for _, c := range []string{"python3", "/usr/bin/python3"} {
		p, err := exec.LookPath(c)
		if err != nil {
			continue
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil || seen[real] {
			continue
		}
		seen[real] = true
		out = append(out, p)
	}
	if len(out) == 0 {
		t.Fatal("no python3 (scripts/test-deps.sh says how to install it)")
	}
	return out
}

// withModule returns the first of pythons that imports mod, or "".
func withModule(t *testing.T, mod string) string {
	t.Helper()
	for _, py := range pythons(t) {
		if exec.Command(py, "-c", "import "+mod).Run() == nil {
			return py
		}
	}
	return ""
}

// unittest runs python/tests with py; require names the optional modules
// (numpy, torch) whose tests must run rather than skip.
func unittest(t *testing.T, py string, require ...string) {
	t.Helper()
	cmd := exec.Command(py, "-m", "unittest", "discover", "-v", "-s", "tests")
	cmd.Env = append(os.Environ(),
		"PYTHONPATH=.", // this directory: the package as committed
		"PYTHONDONTWRITEBYTECODE=1",
		"GANTRY_TEST_REQUIRE="+strings.Join(require, ","),
		"GANTRY_METRICS_FILE=", // the tests choose their files
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s -m unittest: %v\n%s", py, err, out)
	}
	t.Logf("%s:\n%s", py, out)
}

// TestPythonPackage runs the package's Python tests (python/tests): with
// the first python3 found, then with one that has numpy (required: apt's
// python3-numpy), then with one that has torch (skipped, saying so, where
// no Python here imports torch; apt's python3-torch).
func TestPythonPackage(t *testing.T) {
	t.Run("stdlib", func(t *testing.T) {
		unittest(t, pythons(t)[0])
	})
	t.Run("numpy", func(t *testing.T) {
		py := withModule(t, "numpy")
		if py == "" {
			t.Fatalf("no python3 here imports numpy (tried %v): apt-get install python3-numpy, or run scripts/test-deps.sh", pythons(t))
		}
		unittest(t, py, "numpy")
	})
	t.Run("torch", func(t *testing.T) {
		py := withModule(t, "torch")
		if py == "" {
			t.Skipf("SKIPPED the torch tests: no python3 here imports torch (tried %v); apt-get install python3-torch to run them", pythons(t))
		}
		unittest(t, py, "torch")
	})
}

// TestEmbedsEveryModule: Package holds every module of the package
// directory, so the agent ships what pip installs.
func TestEmbedsEveryModule(t *testing.T) {
	var onDisk, embedded []string
	err := filepath.WalkDir(PackageName, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "__pycache__" {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			onDisk = append(onDisk, filepath.ToSlash(p))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = fs.WalkDir(Package, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			embedded = append(embedded, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(onDisk)
	sort.Strings(embedded)
	if strings.Join(onDisk, " ") != strings.Join(embedded, " ") || len(embedded) < 3 {
		t.Fatalf("embedded %v, the package directory holds %v", embedded, onDisk)
	}
}

// TestPipInstall: `pip install ./python` works offline (no index, no build
// isolation: the build backend, setuptools, comes from the system) and the
// installed package imports, from the install target rather than this
// directory, with its version in the metadata, and logs.
func TestPipInstall(t *testing.T) {
	var py string
	for _, p := range pythons(t) {
		// setuptools first: imported after pip, Debian's trips over the
		// distutils pip has loaded.
		if exec.Command(p, "-c", "import setuptools, wheel, pip").Run() == nil {
			py = p
			break
		}
	}
	if py == "" {
		t.Fatalf("no python3 here has pip, setuptools and wheel (setuptools before 70 builds wheels with it) (tried %v): apt-get install python3-pip python3-setuptools python3-wheel, or run scripts/test-deps.sh", pythons(t))
	}
	// pip builds in the source tree (build/, *.egg-info): build from a copy,
	// so the checkout stays clean and concurrent runs do not collide.
	src := filepath.Join(t.TempDir(), "python")
	if err := os.CopyFS(src, os.DirFS(".")); err != nil {
		t.Fatal(err)
	}
	for _, junk := range []string{"build", "gantry_metrics.egg-info"} {
		os.RemoveAll(filepath.Join(src, junk))
	}
	target := filepath.Join(t.TempDir(), "site")
	cmd := exec.Command(py, "-m", "pip", "install", "--no-build-isolation", "--no-index",
		"--no-cache-dir", "--disable-pip-version-check", "--target", target, src)
	cmd.Env = append(os.Environ(), "PIP_CONFIG_FILE=/dev/null")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pip install: %v\n%s", err, out)
	}
	for _, m := range []string{"__init__.py", "hf.py", "lightning.py"} {
		want, _ := fs.ReadFile(Package, PackageName+"/"+m)
		got, err := os.ReadFile(filepath.Join(target, PackageName, m))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("installed %s: %v, or it differs from the package's", m, err)
		}
	}
	if _, err := os.Stat(filepath.Join(target, "tests")); err == nil {
		t.Fatal("pip installed the tests as a package")
	}

	metrics := filepath.Join(t.TempDir(), "m.jsonl")
	run := exec.Command(py, "-c", `
import importlib.metadata as md, json, gantry_metrics as g
g.log({"loss": 0.5}, step=1)
print(json.dumps({"file": g.__file__, "version": md.version("gantry-metrics"), "module_version": g.__version__}))
`)
	run.Dir = t.TempDir()
	run.Env = append(os.Environ(), "PYTHONPATH="+target, "GANTRY_METRICS_FILE="+metrics, "PYTHONDONTWRITEBYTECODE=1")
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("importing the installed package: %v\n%s", err, out)
	}
	var got struct {
		File          string `json:"file"`
		Version       string `json:"version"`
		ModuleVersion string `json:"module_version"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got.File != filepath.Join(target, PackageName, "__init__.py") || got.Version == "" || got.Version != got.ModuleVersion {
		t.Fatalf("imported %+v, want the package in %s with its version in the metadata", got, target)
	}
	var line map[string]any
	b, _ := os.ReadFile(metrics)
	if err := json.Unmarshal(b, &line); err != nil || line["loss"] != 0.5 || line["step"] != 1.0 {
		t.Fatalf("metrics file %q (%v)", b, err)
	}
}
