package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
)

// TestAgentTrust runs the real dev-mode binary with its default job user
// (issue 9, items 4 and 8): a job prints its environment and tries to read
// the cluster CA key and the agent's key from the data dir; nothing of the
// controller's secrets appears and, as root, the reads fail because the job
// runs as an unprivileged user. Jobs whose metrics file is a FIFO, a link
// to /dev/zero or a link to a file outside the job directory end when their
// process does, with an event; and the next job on the node succeeds.
//
// As root, dev mode runs jobs as gantry-job when that account exists and
// as nobody otherwise, so this test needs no account of its own. Its data
// dir is under /tmp, which every user may pass through, unlike t.TempDir.
func TestAgentTrust(t *testing.T) {
	const token = "tok-SECRET-e2e"
	t.Setenv("GANTRY_TOKEN", token)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "aws-SECRET-e2e")
	dataDir, err := os.MkdirTemp("", "gantry-e2e-trust-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dataDir) })
	// The controller takes GANTRY_TOKEN from its environment; the test's
	// client sends it (startDevArgs).
	d := startDevArgs(t, dataDir, 0)
	ctx := context.Background()
	root := os.Geteuid() == 0

	caKey := filepath.Join(dataDir, "tls", "ca-key.pem")
	agentKey := filepath.Join(dataDir, "tls", "local-key.pem")
	for _, k := range []string{caKey, agentKey} {
		if _, err := os.Stat(k); err != nil {
			t.Fatalf("dev mode key %s: %v", k, err)
		}
	}
	run := `env; id -u; for k in '` + caKey + `' '` + agentKey + `'; do
  if cat "$k"; then echo KEY-WAS-READ; else echo key-read-failed; fi
done`
	id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "env-and-keys", Run: run})
	if err != nil {
		t.Fatal(err)
	}
	job := waitTerminal(t, d.api, id, 60*time.Second)
	if job.State != "succeeded" {
		t.Fatalf("job %s: %+v", job.State, job)
	}
	logs := jobLogs(t, d.api, id)
	if !strings.Contains(logs, "GANTRY_JOB_ID="+id) {
		t.Fatalf("the job's environment is not in its log:\n%s", logs)
	}
	for _, secret := range []string{token, "aws-SECRET-e2e", "PRIVATE KEY"} {
		if strings.Contains(logs, secret) {
			t.Errorf("the job saw %q:\n%s", secret, logs)
		}
	}
	if root {
		if strings.Contains(logs, "KEY-WAS-READ") || strings.Count(logs, "key-read-failed") != 2 {
			t.Fatalf("a job read a key in dev mode as root:\n%s", logs)
		}
		if strings.Contains(logs, "\n0\n") {
			t.Fatalf("the job ran as uid 0:\n%s", logs)
		}
	} else {
		t.Log("not root: jobs run as the agent's user; only the environment is checked")
	}

	secret := filepath.Join(dataDir, "outside-secret")
	if err := os.WriteFile(secret, []byte(`{"step": 1, "stolen": 666}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, mk := range map[string]string{
		"fifo":    `mkfifo "$GANTRY_METRICS_FILE"`,
		"devzero": `ln -s /dev/zero "$GANTRY_METRICS_FILE"`,
		"outside": `ln -s '` + secret + `' "$GANTRY_METRICS_FILE"`,
	} {
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "unsafe-" + name, Run: mk + "; echo done"})
		if err != nil {
			t.Fatal(err)
		}
		job := waitTerminal(t, d.api, id, 60*time.Second)
		if job.State != "succeeded" {
			t.Fatalf("%s: job %s: %+v", name, job.State, job)
		}
		if _, ok := job.FinalMetrics["stolen"]; ok {
			t.Fatalf("%s: the agent read the link's target: %v", name, job.FinalMetrics)
		}
		evs, err := d.api.Events(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		refused := false
		for _, e := range evs {
			refused = refused || (e.Kind == "read_error" && strings.Contains(e.Message, "refused"))
		}
		if !refused {
			t.Fatalf("%s: no read_error event: %+v", name, evs)
		}
	}
	id, err = d.api.Submit(ctx, apiv1.JobSpec{Name: "after", Run: `echo '{"step": 3, "loss": 0.25}' >> "$GANTRY_METRICS_FILE"`})
	if err != nil {
		t.Fatal(err)
	}
	if job := waitTerminal(t, d.api, id, 60*time.Second); job.State != "succeeded" || job.FinalMetrics["loss"] != 0.25 {
		t.Fatalf("next job: %+v", job)
	}
}

// jobLogs reads a job's whole log.
func jobLogs(t *testing.T, api *client.Client, id string) string {
	t.Helper()
	var out strings.Builder
	var offset uint64
	for {
		page, err := api.Logs(context.Background(), id, offset)
		if err != nil {
			t.Fatal(err)
		}
		out.WriteString(page.Data)
		if page.Complete || page.Next == offset {
			return out.String()
		}
		offset = page.Next
	}
}
