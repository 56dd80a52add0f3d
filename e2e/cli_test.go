package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// gantryCLI runs the gantry binary against d and returns its exit status,
// stdout and stderr.
func gantryCLI(t *testing.T, d *devController, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "gantry"), args...)
	cmd.Env = append(os.Environ(), "GANTRY_ADDR="+d.addr)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("gantry %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

// TestCLIAddressesJobsByNameAndPrefix drives the gantry binary against a
// real controller and agent: a name means its newest job, a unique id
// prefix means its job, an ambiguous one lists the candidates, and the
// documented exit codes come out of the process.
func TestCLIAddressesJobsByNameAndPrefix(t *testing.T) {
	d := startDev(t, "", 1)
	dir := t.TempDir()
	spec := func(file, body string) string {
		p := filepath.Join(dir, file)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	submit := func(path string) string {
		t.Helper()
		code, out, errOut := gantryCLI(t, d, "run", "-d", path)
		if code != 0 {
			t.Fatalf("gantry run -d %s: %d %s %s", path, code, out, errOut)
		}
		return strings.TrimSpace(out)
	}
	first := submit(spec("a.yaml", "name: twin\nrun: echo first-run\n"))
	waitTerminal(t, d.api, first, 60*time.Second)
	second := submit(spec("b.yaml", "name: twin\nrun: echo second-run\n"))
	if j := waitTerminal(t, d.api, second, 60*time.Second); j.State != apiv1.StateSucceeded {
		t.Fatalf("second twin %s: %+v", j.State, j)
	}

	// The name: the most recent twin, said on stderr.
	code, out, errOut := gantryCLI(t, d, "logs", "twin")
	if code != 0 || out != "second-run\n" || !strings.Contains(errOut, "2 jobs are named \"twin\"; using the most recent, "+second) {
		t.Fatalf("gantry logs twin: %d %q %q", code, out, errOut)
	}

	// Ids sort by creation and share a prefix; one more character than
	// they share tells them apart.
	common := 0
	for common < len(first) && first[common] == second[common] {
		common++
	}
	code, out, errOut = gantryCLI(t, d, "logs", second[:common+1])
	if code != 0 || out != "second-run\n" {
		t.Fatalf("gantry logs %s (unique prefix of %s): %d %q %q", second[:common+1], second, code, out, errOut)
	}
	code, out, errOut = gantryCLI(t, d, "status", first[:common+1], "-o", "json")
	if code != 0 || !strings.Contains(out, `"id": "`+first+`"`) {
		t.Fatalf("gantry status %s -o json: %d %q %q", first[:common+1], code, out, errOut)
	}
	if common > 0 {
		code, _, errOut = gantryCLI(t, d, "status", first[:common])
		if code != 2 || !strings.Contains(errOut, "matches") || !strings.Contains(errOut, first+"  twin  succeeded") ||
			!strings.Contains(errOut, second+"  twin  succeeded") {
			t.Fatalf("gantry status %s (shared prefix): %d %q", first[:common], code, errOut)
		}
	}

	if code, _, errOut := gantryCLI(t, d, "status", "no-such-job"); code != 3 || !strings.Contains(errOut, `no job with id, id prefix or name "no-such-job"`) {
		t.Fatalf("gantry status no-such-job: %d %q", code, errOut)
	}
	if code, out, _ := gantryCLI(t, d, "cancel", "twin"); code != 0 || out != "job "+second+" already succeeded; nothing to cancel\n" {
		t.Fatalf("gantry cancel twin: %d %q", code, out)
	}

	// Behind a job holding the only GPU, a job waits in the queue, with
	// its reason in ps; cancelled there, it never has a log.
	hog := submit(spec("h.yaml", "name: hog\nrun: sleep 300\nresources:\n  gpus: 1\n"))
	waitState(t, d.api, hog, apiv1.StateRunning, 60*time.Second)
	waiting := submit(spec("w.yaml", "name: waiting\nrun: echo never\nresources:\n  gpus: 1\n"))
	if code, out, errOut := gantryCLI(t, d, "ps", "--name", "waiting", "--state", "queued"); code != 0 || !strings.Contains(out, waiting) ||
		!strings.Contains(out, "REASON") || !strings.Contains(out, "waiting for 1 free GPU") {
		t.Fatalf("gantry ps --name waiting --state queued: %d %q %q", code, out, errOut)
	}
	if code, out, errOut := gantryCLI(t, d, "cancel", "waiting"); code != 0 || out != "cancel requested for job "+waiting+"\n" {
		t.Fatalf("gantry cancel waiting: %d %q %q", code, out, errOut)
	}
	waitTerminal(t, d.api, waiting, 30*time.Second)
	if code, out, errOut := gantryCLI(t, d, "logs", "waiting"); code != 1 || out != "" ||
		errOut != "job "+waiting+" was cancelled before it started; it has no logs\n" {
		t.Fatalf("gantry logs of a job cancelled while queued: %d %q %q", code, out, errOut)
	}
	if code, out, errOut := gantryCLI(t, d, "cancel", hog); code != 0 {
		t.Fatalf("gantry cancel hog: %d %q %q", code, out, errOut)
	}

	// Newest first, and --limit keeps the newest.
	code, out, errOut = gantryCLI(t, d, "ps", "--limit", "2")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[1], waiting) || !strings.HasPrefix(lines[2], hog) {
		t.Fatalf("gantry ps --limit 2: %d\n%s%s", code, out, errOut)
	}

	// A controller that is not there: 4.
	d.stop()
	if code, _, errOut := gantryCLI(t, d, "ps"); code != 4 || !strings.Contains(errOut, "cannot reach the controller") {
		t.Fatalf("gantry ps with the controller stopped: %d %q", code, errOut)
	}
}
