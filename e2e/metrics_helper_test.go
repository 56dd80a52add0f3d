package e2e

import (
	"bytes"
	"context"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/python"
)

// helperJob is a training script that uses the gantry_metrics package the
// agent ships (nothing installed, no sys.path edit) with numpy values:
// float32, 0-d arrays, int64, bool_, and a NaN at step 3, which the helper
// must leave out, saying so on stderr, rather than write a line the agent
// would reject whole.
const helperJob = `
import os
import numpy as np
import gantry_metrics

print("helper:", gantry_metrics.__file__, flush=True)
with gantry_metrics.watch(total_steps=5) as run:
    for i in range(1, 6):
        run.log({
            "loss": np.float32(1.0 / i),
            "acc": np.array(0.5 + i / 100),
            "tokens": np.int64(1000 * i),
            "ok": np.bool_(True),
            "noisy": np.float64("nan") if i == 3 else np.float64(i),
        })
`

// TestMetricsHelper runs, on the real agent and controller, a job that
// imports gantry_metrics as the agent ships it and logs numpy values: the
// API has every value as a plain number at its step, total_steps for the
// progress bar, no bad line, the NaN counted on the job's stderr, and the
// job imported the agent's copy of the package, the same files as
// python/gantry_metrics.
func TestMetricsHelper(t *testing.T) {
	py := pythonWith(t, "numpy")
	if py == "" {
		t.Fatal("no python3 here imports numpy: apt-get install python3-numpy, or run scripts/test-deps.sh")
	}
	d := startDev(t, "", 1)
	script := filepath.Join(t.TempDir(), "train.py")
	if err := os.WriteFile(script, []byte(helperJob), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "helper", Run: py + " " + script})
	if err != nil {
		t.Fatal(err)
	}
	job := waitTerminal(t, d.api, id, 60*time.Second)
	logs := jobLogs(t, d.api, id)
	if job.State != "succeeded" {
		t.Fatalf("job %s: %s (%s)\n%s", id, job.State, job.Error, logs)
	}
	if job.BadLines != 0 {
		t.Errorf("%d bad lines: the helper wrote a line the agent rejected", job.BadLines)
	}

	points := allPoints(t, d.api, id)
	if len(points) != 6 {
		t.Fatalf("%d points, want total_steps and 5 steps: %+v", len(points), points)
	}
	if points[0].Step != nil || points[0].Values["total_steps"] != 5 {
		t.Errorf("first point %+v, want total_steps 5 without a step", points[0])
	}
	for i, p := range points[1:] {
		step := int64(i + 1)
		want := map[string]float64{
			"loss":   float64(float32(1.0 / float64(step))), // float32 rounding, then widened exactly
			"acc":    0.5 + float64(step)/100,
			"tokens": float64(1000 * step),
			"ok":     1,
			"noisy":  float64(step),
		}
		if step == 3 {
			delete(want, "noisy")
		}
		if p.Step == nil || *p.Step != step || len(p.Values) != len(want) {
			t.Errorf("point %d: step %v, values %v; want step %d, values %v", i+1, p.Step, p.Values, step, want)
			continue
		}
		for k, v := range want {
			if got, ok := p.Values[k]; !ok || math.Float64bits(got) != math.Float64bits(v) {
				t.Errorf("step %d: %s = %v, want %v", step, k, got, v)
			}
		}
	}
	if job.FinalMetrics["step"] != 5 || job.FinalMetrics["total_steps"] != 5 || job.FinalMetrics["tokens"] != 5000 {
		t.Errorf("final metrics %v", job.FinalMetrics)
	}
	if !strings.Contains(logs, "1 non-finite (noisy=nan) at step 3; 1 value left out so far") {
		t.Errorf("the NaN was not reported on the job's stderr:\n%s", logs)
	}

	// The job imported the package the agent installed, as embedded.
	m := regexp.MustCompile(`helper: (\S+)`).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no helper path in the job's output:\n%s", logs)
	}
	pkg := filepath.Dir(m[1])
	if !strings.HasPrefix(pkg, d.dataDir) || filepath.Base(pkg) != python.PackageName {
		t.Fatalf("the job imported %s, not the agent's copy under %s", m[1], d.dataDir)
	}
	err = fs.WalkDir(python.Package, python.PackageName, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		want, _ := fs.ReadFile(python.Package, p)
		got, err := os.ReadFile(filepath.Join(filepath.Dir(pkg), filepath.FromSlash(p)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("the agent's %s: %v, or it differs from python/%s", p, err, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// pythonWith returns the interpreter (sys.executable: a job gets none of
// a pyenv shim's environment) of the first of python3 on PATH and Debian's
// /usr/bin/python3 that imports mod, or "". (A pyenv or venv python3 may
// not see apt's python3-numpy.)
func pythonWith(t *testing.T, mod string) string {
	t.Helper()
	for _, c := range []string{"python3", "/usr/bin/python3"} {
		p, err := exec.LookPath(c)
		if err != nil {
			continue
		}
		out, err := exec.Command(p, "-c", "import sys, "+mod+"; print(sys.executable)").Output()
		if err == nil {
			return strings.TrimSpace(string(out))
		}
	}
	return ""
}
