// Package pyhelper is the Python metrics helper (gantry_metrics.py) as the
// agent ships it to jobs: the agent writes it into a directory of its own
// and puts that directory on every job's PYTHONPATH, so a training script
// can `import gantry_metrics` with nothing installed on the host.
// (scripts/gantry_metrics.py in the repository is a link to the same file.)
package pyhelper

import (
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
)

// Source is gantry_metrics.py.
//
//go:embed gantry_metrics.py
var Source []byte

// FileName is the module's file name.
const FileName = "gantry_metrics.py"

// Install writes the helper into dir (created 0755, the file 0644: a job's
// user, whoever it is, must be able to list the directory and read the
// module) unless it is there already with the same bytes, and returns dir.
// The file is replaced atomically, so a job importing it meanwhile reads
// the old or the new helper, never half of one.
func Install(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("pyhelper: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", fmt.Errorf("pyhelper: %w", err)
	}
	path := filepath.Join(dir, FileName)
	if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, Source) {
		return dir, nil
	}
	tmp, err := os.CreateTemp(dir, ".gantry_metrics-*.py")
	if err != nil {
		return "", fmt.Errorf("pyhelper: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename this removes nothing
	if _, err := tmp.Write(Source); err != nil {
		tmp.Close()
		return "", fmt.Errorf("pyhelper: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", fmt.Errorf("pyhelper: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("pyhelper: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("pyhelper: install %s: %w", path, err)
	}
	return dir, nil
}
