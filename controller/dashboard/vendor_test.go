package dashboard

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"testing"
)

// vendorManifest is vendor.json, written by `make dashboard-vendor`.
type vendorManifest struct {
	Packages map[string]struct {
		Version   string            `json:"version"`
		Integrity string            `json:"integrity"`
		Files     map[string]string `json:"files"` // name under static/assets/vendor → "sha256:HEX"
	} `json:"packages"`
}

// TestVendoredFilesMatchLockfile holds three things to each other, so that
// none can change alone: the versions and tarball hashes web/package-lock.json
// pins, the record vendor.json keeps of what was copied from those tarballs,
// and the bytes committed under static/assets/vendor (which is what the
// binary embeds). Bumping the lockfile without `make dashboard-vendor`,
// hand-editing a vendored file, or leaving an unrecorded file there fails.
func TestVendoredFilesMatchLockfile(t *testing.T) {
	var lock struct {
		Packages map[string]struct {
			Version   string `json:"version"`
			Integrity string `json:"integrity"`
			Resolved  string `json:"resolved"`
		} `json:"packages"`
	}
	readJSON(t, "web/package-lock.json", &lock)
	var pkg struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	readJSON(t, "web/package.json", &pkg)
	var man vendorManifest
	readJSON(t, "vendor.json", &man)

	for name, want := range pkg.Dependencies {
		// An exact pin: a range would let `npm install` move the lockfile.
		if strings.ContainsAny(want, "^~<>=* x") {
			t.Errorf("package.json asks for %s %q; pin an exact version", name, want)
		}
		locked, ok := lock.Packages["node_modules/"+name]
		if !ok {
			t.Errorf("package-lock.json has no entry for %s", name)
			continue
		}
		if locked.Version != want {
			t.Errorf("%s: package.json pins %s, package-lock.json holds %s", name, want, locked.Version)
		}
		if locked.Resolved != "" {
			t.Errorf("%s: package-lock.json records a download address (%s); web/.npmrc omits them", name, locked.Resolved)
		}
		m, ok := man.Packages[name]
		if !ok {
			t.Errorf("vendor.json does not record %s: run make dashboard-vendor", name)
			continue
		}
		if m.Version != locked.Version || m.Integrity != locked.Integrity || !strings.HasPrefix(m.Integrity, "sha512-") {
			t.Errorf("%s: vendored from %s (%s), but the lockfile pins %s (%s): run make dashboard-vendor",
				name, m.Version, m.Integrity, locked.Version, locked.Integrity)
		}
	}
	if len(man.Packages) != len(pkg.Dependencies) {
		t.Errorf("vendor.json records %d packages, package.json depends on %d", len(man.Packages), len(pkg.Dependencies))
	}

	// Every file under static/assets/vendor is recorded, with its hash.
	recorded := map[string]string{}
	for _, p := range man.Packages {
		for f, sum := range p.Files {
			recorded[f] = sum
		}
	}
	entries, err := fs.ReadDir(static, "static/assets/vendor")
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, e := range entries {
		seen = append(seen, e.Name())
		data, err := fs.ReadFile(static, path.Join("static/assets/vendor", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		got := "sha256:" + hex.EncodeToString(sum[:])
		want, ok := recorded[e.Name()]
		switch {
		case !ok:
			t.Errorf("static/assets/vendor/%s is not recorded in vendor.json", e.Name())
		case got != want:
			t.Errorf("static/assets/vendor/%s hashes to %s, vendor.json records %s: a vendored file was edited", e.Name(), got, want)
		}
	}
	for f := range recorded {
		if !contains(seen, f) {
			t.Errorf("vendor.json records %s, which is not under static/assets/vendor", f)
		}
	}

	// uPlot's banner names its version: a second witness besides the record.
	js, err := fs.ReadFile(static, "static/assets/vendor/uPlot.iife.min.js")
	if err != nil {
		t.Fatal(err)
	}
	if v := lock.Packages["node_modules/uplot"].Version; !bytes.Contains(js[:min(len(js), 200)], []byte("(v"+v+")")) {
		t.Errorf("uPlot.iife.min.js's banner does not name v%s: %q", v, js[:min(len(js), 80)])
	}
}

// The page loads the vendored files, and nothing in the embedded scripts
// evaluates strings as code, which the CSP (no 'unsafe-eval') would block.
func TestScriptsAreCSPClean(t *testing.T) {
	body := get(t, Handler(), "GET", "/", nil).Body.String()
	for _, ref := range []string{"/assets/vendor/uPlot.iife.min.js", "/assets/vendor/uPlot.min.css"} {
		if !strings.Contains(body, ref) {
			t.Errorf("index.html does not load %s", ref)
		}
	}
	if strings.Contains(body, "<script>") || strings.Contains(body, " style=") || strings.Contains(body, "<style") {
		t.Error("index.html has inline script or style, which the CSP refuses")
	}
	var names []string
	_ = fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".js") {
			names = append(names, p)
		}
		return err
	})
	sort.Strings(names)
	for _, n := range names {
		data, _ := fs.ReadFile(static, n)
		for _, bad := range []string{"eval(", "new Function(", "innerHTML"} {
			if bytes.Contains(data, []byte(bad)) {
				t.Errorf("%s uses %s", n, bad)
			}
		}
	}
	if len(names) < 2 {
		t.Errorf("found scripts %v, want app.js and uPlot", names)
	}
}

func readJSON(t *testing.T, name string, v any) {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
