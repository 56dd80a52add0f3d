package stage

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/gantry-ml/gantry/bench/report"
)

// goBenchPackages are the hot paths' benchmarks and their baselines, as
// paths from the repository root.
var goBenchPackages = []string{
	"./agent/metricsfile", "./agent/spool", "./controller/feed", "./controller/fsm", "./bench/baseline",
}

// benchModuleDir is the benchmark's own module (bench/go.mod), relative to
// the repository root.
const benchModuleDir = "bench"

// goBenchRun is one `go test -bench` invocation: packages of one module,
// run in that module's directory.
type goBenchRun struct {
	Dir  string // relative to the repository root
	Pkgs []string
}

// goBenchRuns splits pkgs by module. One `go test` cannot take packages of
// two modules, and the product's packages must be measured in the product
// module, with the dependency versions its binaries link, not with the
// bench module's build list.
func goBenchRuns(pkgs []string) []goBenchRun {
	product := goBenchRun{Dir: "."}
	bench := goBenchRun{Dir: benchModuleDir}
	for _, p := range pkgs {
		if rest, ok := strings.CutPrefix(p, "./"+benchModuleDir+"/"); ok {
			bench.Pkgs = append(bench.Pkgs, "./"+rest)
		} else {
			product.Pkgs = append(product.Pkgs, p)
		}
	}
	var out []goBenchRun
	for _, r := range []goBenchRun{product, bench} {
		if len(r.Pkgs) > 0 {
			out = append(out, r)
		}
	}
	return out
}

// baselineOf pairs a hot-path benchmark (package suffix and name without
// the -GOMAXPROCS suffix) with the baseline benchmark it is compared to.
var baselineOf = map[string]struct{ bench, what string }{
	"metricsfile.BenchmarkParseLine": {"baseline.BenchmarkJSONUnmarshalLine",
		"encoding/json into map[string]any, same line"},
	"spool.BenchmarkAppendAck": {"baseline.BenchmarkBoltAppendDelete",
		"bbolt: put 100 records in one Update, delete them in another"},
	"feed.BenchmarkMetricsFrame/points=1": {"baseline.BenchmarkJSONMarshalPoints/points=1",
		"encoding/json of the same points"},
	"feed.BenchmarkMetricsFrame/points=100": {"baseline.BenchmarkJSONMarshalPoints/points=100",
		"encoding/json of the same points"},
	"fsm.BenchmarkApplyIngest/points=100": {"baseline.BenchmarkBoltPutPoints/points=100",
		"bbolt: the same points in one Update, same key layout"},
}

// BenchResult is one `go test -bench` line.
type BenchResult struct {
	// Name is "<last package element>.<benchmark name>" without the
	// GOMAXPROCS suffix.
	Name    string
	Iters   int64
	NsOp    float64
	BOp     float64
	AllocOp float64
	// Extra holds custom metrics (points/s, MB/s, …) by unit.
	Extra map[string]float64
}

var procsSuffix = regexp.MustCompile(`-\d+$`)

// ParseBench reads `go test -bench -benchmem` output.
func ParseBench(r io.Reader) ([]BenchResult, error) {
	var out []BenchResult
	pkg := ""
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = p[strings.LastIndexByte(p, '/')+1:]
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue // "BenchmarkX" alone, or a name with a failure message
		}
		iters, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		res := BenchResult{Name: pkg + "." + procsSuffix.ReplaceAllString(f[0], ""), Iters: iters, Extra: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("stage: bench line %q: %w", line, err)
			}
			switch f[i+1] {
			case "ns/op":
				res.NsOp = v
			case "B/op":
				res.BOp = v
			case "allocs/op":
				res.AllocOp = v
			default:
				res.Extra[f[i+1]] = v
			}
		}
		out = append(out, res)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("stage: read bench output: %w", err)
	}
	return out, nil
}

// GoBench is stage 5: the hot paths' testing.B benchmarks beside their
// baselines, ns/op and allocs/op.
func GoBench(ctx context.Context, e *Env) error {
	const stage = "gobench"
	benchtime := "1s"
	if e.Quick {
		benchtime = "100ms"
	}
	var out []byte
	for _, run := range goBenchRuns(goBenchPackages) {
		args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-count", "1", "-benchtime", benchtime},
			run.Pkgs...)
		e.Progress(stage, "(in %s) go %s", run.Dir, strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, goBinary(), args...)
		cmd.Dir = filepath.Join(e.RepoDir, run.Dir)
		o, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("stage: go test -bench in %s: %w\n%s", run.Dir, err, o)
		}
		// Each run's output names its packages ("pkg: ..."), so the
		// outputs parse as one.
		out = append(out, o...)
	}
	results, err := ParseBench(strings.NewReader(string(out)))
	if err != nil {
		return err
	}
	byName := map[string]BenchResult{}
	for _, r := range results {
		byName[r.Name] = r
	}
	for _, r := range results {
		if strings.HasPrefix(r.Name, "baseline.") {
			continue
		}
		ns := report.Figure{Stage: stage, Name: r.Name + ": time", Value: r.NsOp, Unit: "ns/op", Note: extraNote(r)}
		al := report.Figure{Stage: stage, Name: r.Name + ": allocations", Value: r.AllocOp, Unit: "allocs/op",
			Note: fmt.Sprintf("%.0f B/op", r.BOp)}
		if b, ok := baselineOf[r.Name]; ok {
			if base, ok := byName[b.bench]; ok {
				ns.Against, ns.AgainstValue = b.what+" ("+b.bench+")", base.NsOp
				al.Against, al.AgainstValue = b.what, base.AllocOp
			}
		}
		e.Report.Add(ns)
		e.Report.Add(al)
		e.Progress(stage, "%s: %.0f ns/op, %.0f allocs/op", r.Name, r.NsOp, r.AllocOp)
	}
	return nil
}

func extraNote(r BenchResult) string {
	var parts []string
	for unit, v := range r.Extra {
		parts = append(parts, report.FormatValue(v, unit))
	}
	return strings.Join(parts, ", ")
}
