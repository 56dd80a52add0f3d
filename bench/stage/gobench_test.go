package stage

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseBench(t *testing.T) {
	out := `goos: linux
goarch: amd64
pkg: github.com/gantry-ml/gantry/agent/metricsfile
cpu: Some CPU
BenchmarkParseLine-2   	    3088	    102256 ns/op	   3.93 MB/s	    5032 B/op	      98 allocs/op
PASS
pkg: github.com/gantry-ml/gantry/controller/feed
BenchmarkMetricsFrame/points=100-2       	     100	   3285922 ns/op	     30433 points/s	  208019 B/op	    4104 allocs/op
BenchmarkBroken-2 --- FAIL: something
ok  	github.com/gantry-ml/gantry/controller/feed	0.887s
`
	got, err := ParseBench(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("parsed %d results, want 2: %+v", len(got), got)
	}
	tests := []struct {
		i                    int
		name                 string
		ns, b, allocs, extra float64
		unit                 string
	}{
		{0, "metricsfile.BenchmarkParseLine", 102256, 5032, 98, 3.93, "MB/s"},
		{1, "feed.BenchmarkMetricsFrame/points=100", 3285922, 208019, 4104, 30433, "points/s"},
	}
	for _, tc := range tests {
		r := got[tc.i]
		if r.Name != tc.name || r.NsOp != tc.ns || r.BOp != tc.b || r.AllocOp != tc.allocs || r.Extra[tc.unit] != tc.extra {
			t.Errorf("result %d = %+v, want %s %v ns/op %v B/op %v allocs/op %v %s", tc.i, r, tc.name, tc.ns, tc.b, tc.allocs, tc.extra, tc.unit)
		}
	}
}

func TestEveryBaselinePairIsMeasured(t *testing.T) {
	// A renamed benchmark would silently lose its reference: the pairs
	// must name packages that GoBench runs.
	pkgs := map[string]bool{}
	for _, p := range goBenchPackages {
		pkgs[p[strings.LastIndexByte(p, '/')+1:]] = true
	}
	for product, base := range baselineOf {
		for _, name := range []string{product, base.bench} {
			pkg, _, _ := strings.Cut(name, ".")
			if !pkgs[pkg] {
				t.Errorf("%s: package %s is not in goBenchPackages", name, pkg)
			}
		}
	}
}

func TestSizes(t *testing.T) {
	tests := []struct {
		scale float64
		quick bool
		want  int
	}{
		{1, false, 100}, {1, true, 20}, {2.5, false, 250}, {0, false, 100}, {0.001, true, 1},
	}
	for _, tc := range tests {
		e := &Env{Scale: tc.scale, Quick: tc.quick}
		if got := e.n(100, 20); got != tc.want {
			t.Errorf("n(100, 20) at scale %v quick %v = %d, want %d", tc.scale, tc.quick, got, tc.want)
		}
	}
}

func TestGoBenchRunsSplitByModule(t *testing.T) {
	got := goBenchRuns([]string{"./agent/spool", "./bench/baseline", "./controller/feed"})
	want := []goBenchRun{
		{Dir: ".", Pkgs: []string{"./agent/spool", "./controller/feed"}},
		{Dir: "bench", Pkgs: []string{"./baseline"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("goBenchRuns = %+v, want %+v", got, want)
	}
	if got := goBenchRuns([]string{"./agent/spool"}); len(got) != 1 || got[0].Dir != "." {
		t.Fatalf("goBenchRuns of product packages only = %+v, want one run at the root", got)
	}
}

func TestGoBenchPackagesExistInTheirModule(t *testing.T) {
	// A package moved or renamed would make the gobench stage fail only
	// when make bench runs; the test runs in bench/stage, two levels below
	// the repository root.
	root := filepath.Join("..", "..")
	for _, run := range goBenchRuns(goBenchPackages) {
		if _, err := os.Stat(filepath.Join(root, run.Dir, "go.mod")); err != nil {
			t.Errorf("run dir %s is not a module root: %v", run.Dir, err)
		}
		for _, p := range run.Pkgs {
			files, _ := filepath.Glob(filepath.Join(root, run.Dir, p, "*_test.go"))
			if len(files) == 0 {
				t.Errorf("%s in module %s: no test files", p, run.Dir)
			}
		}
	}
}
