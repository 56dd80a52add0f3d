package e2e

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// dayOneTrainer is a laptop project's training script: it imports a
// module of its own project (so the directory must have shipped), checks
// that ignored files did not ship, and logs numpy values the wandb way.
const dayOneTrainer = `import os
import numpy as np
import gantry_metrics
from helpers import lr_at

for ignored in ("data", "ckpt.pt", "venv"):
    assert not os.path.exists(ignored), ignored + " was shipped despite .gitignore/.gantryignore"
gantry_metrics.log({"total_steps": 20})
for step in range(1, 21):
    gantry_metrics.log({"loss": np.float32(1.0 / step), "lr": lr_at(step)}, step=np.int64(step))
print("trained in", os.getcwd(), "code dir", os.environ["GANTRY_CODE_DIR"])
`

// TestDayOne is the first hour of a new user, with the real binaries: a
// spec next to train.py on the laptop, `gantry run job.yaml`, and the
// code ships (ignore files honoured), numpy metrics arrive, a typo in a
// spec is explained with a suggestion, and ps, status and logs find the
// job by its name. The job runs as the agent's unprivileged job user
// when the test runs as root: the unpacked code is that user's.
func TestDayOne(t *testing.T) {
	py := pythonWith(t, "numpy")
	if py == "" {
		t.Fatal("no python3 here imports numpy: apt-get install python3-numpy, or run scripts/test-deps.sh")
	}
	// The data dir is under /tmp itself, which the job user may pass
	// through, unlike t.TempDir; the project stays in a private 0700 one,
	// as on a laptop: only the shipped copy is the job's.
	dataDir, err := os.MkdirTemp("", "gantry-e2e-dayone-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dataDir) })
	d := startDevArgs(t, dataDir, 1)
	proj := t.TempDir()
	for name, body := range map[string]string{
		"train.py":      dayOneTrainer,
		"helpers.py":    "def lr_at(step):\n    return 0.1 / step\n",
		".gitignore":    "data/\n*.pt\n",
		".gantryignore": "venv/\n",
		"data/big.bin":  strings.Repeat("d", 1<<16),
		"ckpt.pt":       "weights",
		"venv/bin/x":    "a virtualenv",
		"job.yaml":      "name: day-one\nrun: " + py + " train.py\nresources:\n  gpus: 1\n",
		"typo.yaml":     "name: typo\nrun: " + py + " train.py\nresources:\n  gpu: 1\n",
	} {
		p := filepath.Join(proj, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	code, _, errOut := gantryCLI(t, d, "run", filepath.Join(proj, "typo.yaml"))
	if code != 2 || !strings.Contains(errOut, "unknown field `gpu` in resources; did you mean `gpus`?") {
		t.Fatalf("gantry run typo.yaml: %d %q; want 2 and a suggestion", code, errOut)
	}

	code, out, errOut := gantryCLI(t, d, "run", filepath.Join(proj, "job.yaml"))
	if code != 0 || !strings.Contains(out, "succeeded") || !strings.Contains(errOut, "uploading code from "+proj+": 6 files") {
		t.Fatalf("gantry run job.yaml: %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	t.Logf("gantry run job.yaml:\n%s%s", errOut, out)

	code, out, errOut = gantryCLI(t, d, "status", "day-one")
	if code != 0 || !strings.Contains(out, "succeeded") || !strings.Contains(out, "loss") {
		t.Fatalf("gantry status day-one: %d %q %q", code, out, errOut)
	}
	code, out, errOut = gantryCLI(t, d, "logs", "day-one")
	if code != 0 || !strings.Contains(out, "trained in ") || !strings.Contains(out, "/code code dir ") {
		t.Fatalf("gantry logs day-one: %d %q %q", code, out, errOut)
	}
	code, out, errOut = gantryCLI(t, d, "ps", "--name", "day-one", "-o", "json")
	if code != 0 || !strings.Contains(out, `"code_archive": "sha256:`) {
		t.Fatalf("gantry ps --name day-one -o json: %d %q %q", code, out, errOut)
	}

	jobs, err := d.api.Jobs(context.Background())
	if err != nil || len(jobs) != 1 {
		t.Fatalf("jobs: %v %v", jobs, err)
	}
	job := waitTerminal(t, d.api, jobs[0].ID, 10*time.Second)
	if want := float64(float32(1.0 / 20)); job.FinalMetrics["loss"] != want || job.FinalMetrics["step"] != 20 ||
		math.Abs(job.FinalMetrics["lr"]-0.005) > 1e-12 || job.FinalMetrics["total_steps"] != 20 {
		t.Fatalf("final metrics %v; want loss %v (the float32 exactly), lr 0.005, step 20, total_steps 20", job.FinalMetrics, want)
	}
	events, err := d.api.Events(context.Background(), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range events {
		found = found || (e.Kind == "code_unpacked" && strings.Contains(e.Message, "6 files"))
	}
	if !found {
		t.Fatalf("no code_unpacked event naming 6 files in %+v", events)
	}
}
