package stage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/bench/proc"
	"github.com/gantry-ml/gantry/controller/apiv1"
)

// agentID is the real gantry-agent's node id.
const agentID = "bench-agent"

// startAgent starts a real gantry-agent process (8 mock GPUs) connected to
// the cluster, once, and waits until the leader sees it up.
func (e *Env) startAgent(ctx context.Context) error {
	if e.agent != nil {
		if !e.agent.Alive() {
			return fmt.Errorf("%w: gantry-agent: %v\n%s", proc.ErrExited, e.agent.Err(), e.agent.Tail(2000))
		}
		return nil
	}
	if _, err := e.Cluster.IssueAgent(agentID); err != nil {
		return err
	}
	args := []string{"-node-id", agentID, "-data-dir", filepath.Join(e.RunDir, "agent"),
		"-controller", strings.Join(e.Cluster.QUICAddrs(), ","), "-tls-dir", e.Cluster.TLSDir,
		"-fake-gpus", "8", "-log-level", "warn"}
	if os.Geteuid() == 0 {
		// As root the agent runs jobs as an unprivileged account, which
		// could not reach the trainer in this run's private temp dir (nor
		// need exist here). The benchmark measures the data path, not
		// job isolation.
		args = append(args, "-job-user", "root")
	}
	p, err := e.Group.Start("agent", filepath.Join(e.BinDir, "gantry-agent"), args...)
	if err != nil {
		return err
	}
	e.agent = p
	return waitFor(ctx, 30*time.Second, 50*time.Millisecond, "the real agent to connect", func() (bool, error) {
		if !p.Alive() {
			return false, fmt.Errorf("%w: gantry-agent: %v\n%s", proc.ErrExited, p.Err(), p.Tail(2000))
		}
		nodes, err := e.Leader.API.Nodes(ctx)
		if err != nil {
			return false, nil
		}
		for _, n := range nodes {
			if n.ID == agentID && n.State == "up" && n.Connected {
				return true, nil
			}
		}
		return false, nil
	})
}

// submitTrainer submits a job on the real agent that runs this binary as
// the trainer with args.
func (e *Env) submitTrainer(ctx context.Context, name string, args ...string) (string, error) {
	run := fmt.Sprintf("exec '%s' trainer -watch-pid %d %s", e.Self, os.Getpid(), strings.Join(args, " "))
	return e.Cluster.Submit(ctx, apiv1.JobSpec{Name: name, Run: run, Node: agentID})
}
