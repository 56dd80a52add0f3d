// Package e2e runs Gantry's real binaries against each other over real
// sockets: a dev-mode controller (Raft, bbolt, QUIC agent link, mock NVML)
// driven through its HTTP API, as a user would.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
)

// binDir holds the binaries built once for the whole package.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gantry-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := productBuild("-o", dir+"/", "./cmd/gantry-controller", "./cmd/gantry-agent", "./cmd/gantry")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// productBuild is `go build args...` in the repository root, the product's
// module. e2e is a module of its own, so that chromedp stays out of the
// product's build graph; the binaries under test are built with the
// product's go.mod, as `make build` builds them, not with this module's
// build list. Output paths must be absolute.
func productBuild(args ...string) *exec.Cmd {
	cmd := exec.Command("go", append([]string{"build"}, args...)...)
	cmd.Dir = ".."
	return cmd
}

// devController is a running `gantry-controller -dev`.
type devController struct {
	t       *testing.T
	cmd     *exec.Cmd
	dataDir string
	addr    string
	api     *client.Client
	logMu   sync.Mutex
	log     strings.Builder
	exited  chan struct{}
}

var apiLine = regexp.MustCompile(`msg="dev mode ready" api=(\S+)`)

// startDev starts a dev-mode controller with fakeGPUs mock GPUs on
// dataDir (a fresh temp dir when empty) and waits until its agent is up.
func startDev(t *testing.T, dataDir string, fakeGPUs int) *devController {
	t.Helper()
	// -job-user root: these tests' jobs run scripts from 0700 temp dirs.
	// Running jobs as an unprivileged user is agent_trust_test.go's.
	return startDevArgs(t, dataDir, fakeGPUs, "-job-user", "root")
}

// startDevArgs is startDev with more controller flags.
func startDevArgs(t *testing.T, dataDir string, fakeGPUs int, extra ...string) *devController {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	args := append([]string{"-dev",
		"-data-dir", dataDir, "-http-addr", "127.0.0.1:0", "-quic-addr", "127.0.0.1:0",
		"-raft-addr", "127.0.0.1:0", "-fake-gpus", fmt.Sprint(fakeGPUs)}, extra...)
	cmd := exec.Command(filepath.Join(binDir, "gantry-controller"), args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &devController{t: t, cmd: cmd, dataDir: dataDir, exited: make(chan struct{})}
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			d.logMu.Lock()
			d.log.WriteString(line + "\n")
			d.logMu.Unlock()
			if m := apiLine.FindStringSubmatch(line); m != nil {
				select {
				case addrCh <- m[1]:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() {
		_ = cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("controller log:\n%s", d.logs())
		}
	})
	select {
	case d.addr = <-addrCh:
	case <-d.exited:
		t.Fatalf("controller exited during start:\n%s", d.logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("controller did not start:\n%s", d.logs())
	}
	var opts []client.Option
	if tok := os.Getenv("GANTRY_TOKEN"); tok != "" {
		// The controller took it from its environment (-token's default).
		opts = append(opts, client.WithToken(tok))
	}
	d.api = client.New(d.addr, opts...)
	waitFor(t, 30*time.Second, "the local agent is up", func() bool {
		nodes, err := d.api.Nodes(context.Background())
		return err == nil && len(nodes) == 1 && nodes[0].State == "up" && nodes[0].Connected
	})
	return d
}

func (d *devController) logs() string {
	d.logMu.Lock()
	defer d.logMu.Unlock()
	return d.log.String()
}

// stop sends SIGTERM and waits; SIGKILL if it hangs.
func (d *devController) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		d.t.Errorf("controller did not stop on SIGTERM within 15s; killing it")
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitTerminal polls a job until it is terminal and returns it.
func waitTerminal(t *testing.T, api *client.Client, id string, timeout time.Duration) apiv1.Job {
	t.Helper()
	var job apiv1.Job
	waitFor(t, timeout, "job "+id+" to end", func() bool {
		var err error
		job, err = api.Job(context.Background(), id)
		return err == nil && apiv1.IsTerminal(job.State)
	})
	return job
}

// waitState polls a job until it is in state and returns it.
func waitState(t *testing.T, api *client.Client, id, state string, timeout time.Duration) apiv1.Job {
	t.Helper()
	var job apiv1.Job
	waitFor(t, timeout, "job "+id+" to be "+state, func() bool {
		var err error
		job, err = api.Job(context.Background(), id)
		return err == nil && job.State == state
	})
	return job
}

// allPoints pages through a job's stored points.
func allPoints(t *testing.T, api *client.Client, id string) []apiv1.Point {
	t.Helper()
	var out []apiv1.Point
	after := uint64(0)
	for {
		page, err := api.Metrics(context.Background(), id, after, 1000)
		if err != nil {
			t.Fatalf("metrics of %s: %v", id, err)
		}
		if len(page.Points) == 0 {
			return out
		}
		out = append(out, page.Points...)
		after = page.Next
	}
}
