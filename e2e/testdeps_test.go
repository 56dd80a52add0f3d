package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestTestDepsSaysWhatIsMissing: on a machine without the tools (here, a
// PATH with only bash and the few commands the script itself uses),
// scripts/test-deps.sh --check exits 1, before any test could run,
// naming each missing Debian package and the apt-get line installing it.
// (--check installs nothing, even as root.)
func TestTestDepsSaysWhatIsMissing(t *testing.T) {
	bin := t.TempDir()
	for _, c := range []string{"bash", "sed", "dirname", "id"} {
		p, err := exec.LookPath(c)
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if err := os.Symlink(p, filepath.Join(bin, c)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(filepath.Join(bin, "bash"), filepath.Join("..", "scripts", "test-deps.sh"), "--check")
	cmd.Env = []string{"PATH=" + bin, "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit %v, want 1:\n%s", err, out)
	}
	s := string(out)
	for _, want := range []string{
		"missing go: install Go 1.", "https://go.dev/dl/",
		"  gcc: ", "  git: ", "  iproute2: ", "  util-linux: ",
		"apt-get install -y --no-install-recommends gcc libc6-dev git",
		"not running the tests",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "installing") || strings.Contains(s, "command not found") {
		t.Errorf("--check tried to install, or ran a missing command:\n%s", s)
	}
}
