package e2e

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// startSecondAgent starts another agent, node name, against the dev
// controller d (whose QUIC address is quic), with a certificate from the
// dev CA in d's data directory. It is killed when the test ends.
func startSecondAgent(t *testing.T, d *devController, quic, name string) {
	t.Helper()
	tlsDir := filepath.Join(d.dataDir, "tls")
	if out, err := exec.Command(filepath.Join(binDir, "gantry-controller"), "tls", "issue", "--role", "agent", tlsDir, name).CombinedOutput(); err != nil {
		t.Fatalf("issue %s's certificate: %v: %s", name, err, out)
	}
	cmd := exec.Command(filepath.Join(binDir, "gantry-agent"), "-node-id", name, "-data-dir", t.TempDir(), "-tls-dir", tlsDir,
		"-controller", quic, "-fake-gpus", "2", "-job-user", "root")
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s log:\n%s", name, log.String())
		}
	})
	waitFor(t, 30*time.Second, name+" up", func() bool {
		nodes, err := d.api.Nodes(context.Background())
		if err != nil {
			return false
		}
		for _, n := range nodes {
			if n.ID == name && n.State == "up" && n.Connected {
				return true
			}
		}
		return false
	})
}

// freeUDPAddr is a loopback UDP address free a moment ago.
func freeUDPAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// TestDashboardRanks: a 2-node job (the dev agent and a second local
// agent) shows its ranks table on the job page, and "Chart every rank"
// overlays each rank's own metrics on the compare page.
func TestDashboardRanks(t *testing.T) {
	b := newBrowser(t)
	quic := freeUDPAddr(t)
	d := startDevArgs(t, "", 2, "-job-user", "root", "-quic-addr", quic)
	startSecondAgent(t, d, quic, "second")
	b.ready(t)
	ctx := context.Background()
	const steps = 20
	id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "ranks-ui", Resources: apiv1.Resources{Nodes: 2, GPUs: 1},
		Run: `for i in $(seq 1 ` + strconv.Itoa(steps) + `); do echo "{\"step\": $i, \"loss\": $((100 * (NODE_RANK + 1) - i))}" >> "$GANTRY_METRICS_FILE"; done`})
	if err != nil {
		t.Fatal(err)
	}
	job := waitTerminal(t, d.api, id, 30*time.Second)
	if job.State != apiv1.StateSucceeded || len(job.Ranks) != 2 || job.Ranks[1].Points != steps {
		t.Fatalf("job %s %q, ranks %+v", job.State, job.Error, job.Ranks)
	}
	b.do(t, "open the job page", chromedp.Navigate(d.addr+"/jobs/"+id), chromedp.WaitVisible(chromedp.CSS(`#ranks-panel`)))
	b.waitJS(t, 10*time.Second, "two rank rows", `document.querySelectorAll('#ranks tbody tr').length === 2`)
	row1 := b.text(t, `#ranks tr[data-rank="1"]`)
	if !strings.Contains(row1, job.Ranks[1].Node) || !strings.Contains(row1, "succeeded") || !strings.Contains(row1, "loss 180") {
		t.Errorf("rank 1 row %q: want its node, state and latest loss", row1)
	}
	b.waitJS(t, 10*time.Second, "rank 0's loss chart", `Number(document.querySelector('.chart[data-key="loss"]')?.dataset.points) === `+strconv.Itoa(steps))
	b.do(t, "chart every rank", chromedp.Click(chromedp.CSS(`#compare-ranks`)))
	b.waitJS(t, 10*time.Second, "both ranks on the loss chart", `(() => { const e = document.querySelector('.chart[data-key="loss"] .uplot'); return e && e.querySelectorAll('.u-legend tr.u-series').length - 1 === 2; })()`)
	if legend := b.text(t, "#compare-runs"); !strings.Contains(legend, "rank 1") {
		t.Errorf("compare legend %q does not name rank 1", legend)
	}
	b.checkNoErrors(t)
}
