package e2e

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestMetricsHelper runs the Python metrics helper's own tests
// (scripts/test_gantry_metrics.py): numpy scalars and torch-like tensors
// written as plain numbers, wandb-style dicts, the warnings for dropped
// non-finite values. With numpy installed (python3-numpy), they use it too.
func TestMetricsHelper(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed (the demo trainer and the metrics helper): %v", err)
	}
	cmd := exec.Command(py, "-m", "unittest", "-v", "test_gantry_metrics.py")
	cmd.Dir = filepath.Join("..", "scripts")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python3 -m unittest test_gantry_metrics.py: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
