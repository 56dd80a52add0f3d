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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
)

// The agent restart tests run a real controller and a separate gantry-agent
// process, stop the agent mid-run (SIGTERM, as an upgrade does, or SIGKILL,
// as a crash does), start a new agent binary on the same data dir, and
// check what a user reads afterwards.

// restartTrainer writes $1 metric lines, one every 20 ms, and the same
// numbered lines to its log; the last metric line, carrying a key no other
// line has, is written right before it exits. It records its shell's pid.
const restartTrainer = `#!/bin/sh
n=$1
echo $$ > shell.pid
i=1
while [ $i -lt $n ]; do
  printf '{"step": %d, "loss": %d.25}\n' $i $((100000 - i)) >> "$GANTRY_METRICS_FILE"
  echo "line $i"
  sleep 0.02
  i=$((i + 1))
done
printf '{"step": %d, "loss": 0.5, "last_only": 1}\n' $n >> "$GANTRY_METRICS_FILE"
echo "line $n"
`

const restartAgentName = "gpu-restart"

// binProc is a running binary whose stderr is kept.
type binProc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	log    strings.Builder
	match  *regexp.Regexp
	found  chan []string
}

// startBin runs bin with args; lines of its stderr matching match (may be
// nil) are sent on found.
func startBin(t *testing.T, name string, match *regexp.Regexp, bin string, args ...string) *binProc {
	t.Helper()
	p := &binProc{t: t, name: name, cmd: exec.Command(filepath.Join(binDir, bin), args...),
		exited: make(chan struct{}), match: match, found: make(chan []string, 1)}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			if p.match != nil {
				if m := p.match.FindStringSubmatch(line); m != nil {
					select {
					case p.found <- m:
					default:
					}
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, p.logs())
		}
	})
	return p
}

func (p *binProc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// stop sends sig and waits for the process to exit (SIGKILL after 15 s).
func (p *binProc) stop(sig syscall.Signal) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.t.Errorf("%s did not stop on %s within 15s; killing it", p.name, sig)
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// restartCluster is one controller and the data dir of one agent.
type restartCluster struct {
	t        *testing.T
	tlsDir   string
	agentDir string
	quicAddr string
	api      *client.Client
	agents   int
}

var controllerStarted = regexp.MustCompile(`msg="controller started" .*http=(\S+) quic=(\S+)`)

// startRestartCluster starts a bootstrapped single-node controller with
// certificates for it and for one agent.
func startRestartCluster(t *testing.T) *restartCluster {
	t.Helper()
	c := &restartCluster{t: t, tlsDir: t.TempDir(), agentDir: t.TempDir()}
	for _, args := range [][]string{
		{"tls", "init", c.tlsDir},
		{"tls", "issue", "--role", "controller", c.tlsDir, "c1"},
		{"tls", "issue", "--role", "agent", c.tlsDir, restartAgentName},
	} {
		out, err := exec.Command(filepath.Join(binDir, "gantry-controller"), args...).CombinedOutput()
		if err != nil {
			t.Fatalf("gantry-controller %v: %v\n%s", args, err, out)
		}
	}
	ctrl := startBin(t, "controller", controllerStarted, "gantry-controller",
		"-bootstrap", "-node-id", "c1", "-data-dir", t.TempDir(), "-tls-dir", c.tlsDir,
		"-http-addr", "127.0.0.1:0", "-quic-addr", "127.0.0.1:0", "-raft-addr", "127.0.0.1:0")
	select {
	case m := <-ctrl.found:
		c.api = client.New("http://" + m[1])
		c.quicAddr = m[2]
	case <-ctrl.exited:
		t.Fatalf("controller exited during start:\n%s", ctrl.logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("controller did not start:\n%s", ctrl.logs())
	}
	return c
}

// startAgent starts a gantry-agent on the cluster's agent data dir and
// waits until the controller sees it connected.
func (c *restartCluster) startAgent() *binProc {
	c.t.Helper()
	c.agents++
	ag := startBin(c.t, fmt.Sprintf("agent #%d", c.agents), nil, "gantry-agent",
		"-node-id", restartAgentName, "-controller", c.quicAddr, "-data-dir", c.agentDir, "-tls-dir", c.tlsDir,
		"-job-user", "root") // the jobs run scripts from 0700 temp dirs
	waitFor(c.t, 30*time.Second, "the agent to connect", func() bool {
		select {
		case <-ag.exited:
			c.t.Fatalf("agent exited during start:\n%s", ag.logs())
		default:
		}
		nodes, err := c.api.Nodes(context.Background())
		return err == nil && len(nodes) == 1 && nodes[0].State == "up" && nodes[0].Connected
	})
	return ag
}

// jobFile is the path of a file in a job's directory on the agent.
func (c *restartCluster) jobFile(id, name string) string {
	return filepath.Join(c.agentDir, "jobs", id, name)
}

// submitTrainer submits restartTrainer writing lines lines.
func (c *restartCluster) submitTrainer(lines int, killGrace time.Duration) string {
	c.t.Helper()
	script := filepath.Join(c.t.TempDir(), "trainer.sh")
	if err := os.WriteFile(script, []byte(restartTrainer), 0o755); err != nil {
		c.t.Fatal(err)
	}
	id, err := c.api.Submit(context.Background(), apiv1.JobSpec{
		Name: "restart", Run: fmt.Sprintf("exec '%s' %d", script, lines), KillGrace: apiv1.Duration(killGrace),
	})
	if err != nil {
		c.t.Fatal(err)
	}
	return id
}

// waitPoints waits until at least n points of job id are stored.
func (c *restartCluster) waitPoints(id string, n int) {
	c.t.Helper()
	waitFor(c.t, 30*time.Second, fmt.Sprintf("%d points of %s", n, id), func() bool {
		page, err := c.api.Metrics(context.Background(), id, 0, n)
		return err == nil && len(page.Points) >= n
	})
}

// fileLines counts the complete lines of a file.
func fileLines(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "\n")
}

// readPIDFile reads a pid a job wrote.
func readPIDFile(t *testing.T, path string) int {
	t.Helper()
	var pid int
	waitFor(t, 10*time.Second, "pid file "+path, func() bool {
		data, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
		return err == nil
	})
	return pid
}

// checkExactlyOnce checks that the stored points are steps 1..n in order,
// none missing and none doubled, and that the log holds "line 1".."line n"
// the same way.
func (c *restartCluster) checkExactlyOnce(id string, n int) {
	c.t.Helper()
	points := allPoints(c.t, c.api, id)
	if len(points) != n {
		c.t.Errorf("%d points stored, want %d (one per line written)", len(points), n)
	}
	for i, p := range points {
		if p.Step == nil || *p.Step != int64(i+1) {
			step := "none"
			if p.Step != nil {
				step = strconv.FormatInt(*p.Step, 10)
			}
			c.t.Errorf("point %d (seq %d) has step %s, want %d: a line was lost or doubled", i, p.Seq, step, i+1)
			break
		}
	}
	var log strings.Builder
	for offset := uint64(0); ; {
		page, err := c.api.Logs(context.Background(), id, offset)
		if err != nil {
			c.t.Fatalf("logs: %v", err)
		}
		log.WriteString(page.Data)
		if page.Next == offset || page.Data == "" {
			break
		}
		offset = page.Next
	}
	var want strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	if log.String() != want.String() {
		c.t.Errorf("stored log differs from what the job wrote (%d bytes stored, %d written)", log.Len(), want.Len())
	}
}

// hasEvent reports whether job id has an event of kind.
func (c *restartCluster) hasEvent(id, kind string) bool {
	c.t.Helper()
	events, err := c.api.Events(context.Background(), id)
	if err != nil {
		c.t.Fatalf("events: %v", err)
	}
	for _, e := range events {
		if e.Kind == kind {
			return true
		}
	}
	return false
}

// TestAgentRestartKeepsJobRunning stops the agent in the middle of a run and
// starts a new agent binary on the same data dir: the training process
// keeps running, finishes, and every metric line and log byte it wrote is
// stored exactly once, with final metrics equal to its last line.
func TestAgentRestartKeepsJobRunning(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		sig  syscall.Signal
	}{
		{"SIGTERM as in an upgrade", syscall.SIGTERM},
		{"SIGKILL as in a crash", syscall.SIGKILL},
	}
	for _, tt := range tests {
		sig := tt.sig
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := startRestartCluster(t)
			ag := c.startAgent()
			const lines = 150 // about 3 s at one line every 20 ms
			id := c.submitTrainer(lines, 0)
			c.waitPoints(id, 30)
			shell := readPIDFile(t, c.jobFile(id, "shell.pid"))

			ag.stop(sig)
			if err := syscall.Kill(shell, 0); err != nil {
				t.Fatalf("the job's shell (pid %d) died with the agent: %v", shell, err)
			}
			// Let the job write while no agent reads, so that the new one
			// has a backlog to pick up from the stored offset.
			down := fileLines(t, c.jobFile(id, "metrics.jsonl"))
			waitFor(t, 10*time.Second, "lines written while the agent is down", func() bool {
				return fileLines(t, c.jobFile(id, "metrics.jsonl")) >= down+10
			})
			c.startAgent()

			job := waitTerminal(t, c.api, id, 60*time.Second)
			if job.State != apiv1.StateSucceeded || job.ExitCode == nil || *job.ExitCode != 0 {
				t.Fatalf("job ended %s (exit code %v, signal %q, error %q), want succeeded with 0",
					job.State, job.ExitCode, job.Signal, job.Error)
			}
			want := map[string]float64{"step": lines, "loss": 0.5, "last_only": 1}
			for k, v := range want {
				if got, ok := job.FinalMetrics[k]; !ok || got != v {
					t.Errorf("final_metrics[%q] = %v (present %v), want %v; final_metrics=%v", k, got, ok, v, job.FinalMetrics)
				}
			}
			c.checkExactlyOnce(id, lines)
			if !c.hasEvent(id, "readopted") {
				t.Error("no readopted event for the job")
			}
		})
	}
}

// TestAgentRestartJobEndsWhileDown ends the job's processes while no agent
// runs: the restarted agent reports how it ended, from the status its
// supervisor recorded, or says the status is unknown when the supervisor
// died too; either way with every line written stored once and the final
// metrics of the last one.
func TestAgentRestartJobEndsWhileDown(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// kill ends the job, given its shell's pid.
		kill       func(t *testing.T, shell int)
		wantSignal string
		wantError  string
	}{
		{
			name: "shell killed",
			kill: func(t *testing.T, shell int) {
				if err := syscall.Kill(shell, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			},
			wantSignal: "SIGKILL",
			wantError:  "killed by SIGKILL",
		},
		{
			name: "whole group killed",
			kill: func(t *testing.T, shell int) {
				pgid, err := syscall.Getpgid(shell)
				if err != nil {
					t.Fatal(err)
				}
				if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			},
			wantError: "process vanished while the agent was down; exit status unknown",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := startRestartCluster(t)
			ag := c.startAgent()
			id := c.submitTrainer(1000000, 0)
			c.waitPoints(id, 10)
			shell := readPIDFile(t, c.jobFile(id, "shell.pid"))

			ag.stop(syscall.SIGKILL)
			tt.kill(t, shell)
			waitFor(t, 10*time.Second, "the job's shell to die", func() bool {
				return syscall.Kill(shell, 0) != nil || isZombie(shell)
			})
			written := fileLines(t, c.jobFile(id, "metrics.jsonl"))
			c.startAgent()

			job := waitTerminal(t, c.api, id, 30*time.Second)
			if job.State != apiv1.StateFailed || job.Signal != tt.wantSignal || !strings.Contains(job.Error, tt.wantError) {
				t.Fatalf("job ended %s, signal %q, error %q; want failed, signal %q, error containing %q",
					job.State, job.Signal, job.Error, tt.wantSignal, tt.wantError)
			}
			if job.ExitCode != nil {
				t.Errorf("exit code %d reported for a job killed by a signal", *job.ExitCode)
			}
			if got := job.FinalMetrics["step"]; got != float64(written) {
				t.Errorf("final_metrics step = %v, want %d (the last line written); final_metrics=%v", got, written, job.FinalMetrics)
			}
			c.checkExactlyOnce(id, written)
		})
	}
}

// TestAgentRestartCancelAdoptedJob cancels a job that a restarted agent
// re-adopted: the signal reaches its process group, SIGKILL follows after
// kill_grace for a trainer that ignores SIGTERM, and the job is cancelled.
func TestAgentRestartCancelAdoptedJob(t *testing.T) {
	t.Parallel()
	c := startRestartCluster(t)
	ag := c.startAgent()
	script := filepath.Join(t.TempDir(), "stubborn.sh")
	body := "#!/bin/sh\ntrap '' TERM\necho $$ > shell.pid\ni=1\nwhile :; do\n" +
		"  printf '{\"step\": %d}\\n' $i >> \"$GANTRY_METRICS_FILE\"\n  i=$((i + 1))\n  sleep 0.02\ndone\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	id, err := c.api.Submit(context.Background(), apiv1.JobSpec{
		Name: "stubborn", Run: "exec '" + script + "'", KillGrace: apiv1.Duration(300 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	c.waitPoints(id, 5)
	shell := readPIDFile(t, c.jobFile(id, "shell.pid"))
	ag.stop(syscall.SIGTERM)
	c.startAgent()
	c.waitPoints(id, fileLines(t, c.jobFile(id, "metrics.jsonl"))+5) // the new agent follows it

	if err := c.api.Cancel(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	job := waitTerminal(t, c.api, id, 30*time.Second)
	if job.State != apiv1.StateCancelled || job.Signal != "SIGKILL" {
		t.Fatalf("job ended %s, signal %q, error %q; want cancelled by SIGKILL after kill_grace", job.State, job.Signal, job.Error)
	}
	if !c.hasEvent(id, "kill_escalated") {
		t.Error("no kill_escalated event")
	}
	if err := syscall.Kill(shell, 0); err == nil && !isZombie(shell) {
		t.Errorf("the job's shell (pid %d) still runs after cancel", shell)
	}
	points := allPoints(t, c.api, id)
	for i, p := range points {
		if p.Step == nil || *p.Step != int64(i+1) {
			t.Fatalf("point %d has step %v, want %d: a line was lost or doubled", i, p.Step, i+1)
		}
	}
}

// isZombie reports whether pid has exited but is not reaped yet.
func isZombie(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(data), ')')
	return i >= 0 && i+2 < len(data) && data[i+2] == 'Z'
}
