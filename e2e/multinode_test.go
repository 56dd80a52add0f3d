package e2e

import (
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// systemPython is Debian's python3 with python3-torch (CPU); the agents'
// PATH may put another python first.
const systemPython = "/usr/bin/python3"

// requireTorch needs the system python with torch (gloo) and torchrun.
// As root, where make test installs python3-torch (scripts/test-deps.sh),
// their absence fails the test: the multi-node proof must not turn into a
// skip unnoticed. Otherwise it skips, saying what is missing.
func requireTorch(t *testing.T) {
	t.Helper()
	missing := func(format string, args ...any) {
		t.Helper()
		if os.Geteuid() == 0 {
			t.Fatalf(format+" (apt-get install python3-torch, or run scripts/test-deps.sh)", args...)
		}
		t.Skipf(format, args...)
	}
	out, err := exec.Command(systemPython, "-c", "import torch.distributed as d; assert d.is_gloo_available()").CombinedOutput()
	if err != nil {
		missing("multi-node e2e needs %s with torch (gloo): %v: %s", systemPython, err, out)
	}
	if _, err := os.Stat("/usr/bin/torchrun"); err != nil {
		missing("multi-node e2e needs /usr/bin/torchrun: %v", err)
	}
}

// ddpScript is a torchrun worker: it checks the Gantry rendezvous env,
// all_reduces the ranks, then trains a tiny linear model with DDP on gloo
// for STEPS steps (PAUSE seconds apart). Each node's local rank 0 writes
// its node's metrics file (rank 0's is the job's, the other node's is
// its rank's own series), tagged with its node rank; every worker prints
// its view of the env to the log.
const ddpScript = `
import json, os, sys, time
import torch, torch.distributed as dist
import torch.nn as nn

env = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NNODES", "NODE_RANK",
       "GPUS_PER_NODE", "GANTRY_NODE_RANK", "GANTRY_WORLD_SIZE", "GANTRY_MASTER_ADDR", "RANK", "LOCAL_RANK")}
print("worker env", json.dumps(env, sort_keys=True), flush=True)
assert os.environ["GANTRY_WORLD_SIZE"] == os.environ["WORLD_SIZE"], env
assert os.environ["GANTRY_MASTER_ADDR"] == os.environ["MASTER_ADDR"], env
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
assert world == int(os.environ["NNODES"]) * int(os.environ["GPUS_PER_NODE"]), (world, env)
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
assert t.item() == world * (world + 1) / 2, t
torch.manual_seed(0)
model = nn.Linear(4, 1)
ddp = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
g = torch.Generator().manual_seed(rank)
X = torch.randn(64, 4, generator=g)
Y = X @ torch.tensor([[1.0, -2.0, 3.0, 0.5]]).T
out = open(os.environ["GANTRY_METRICS_FILE"], "a") if os.environ["LOCAL_RANK"] == "0" else None
node_rank = int(os.environ["NODE_RANK"])
steps, pause = int(os.environ.get("STEPS", "20")), float(os.environ.get("PAUSE", "0"))
for step in range(1, steps + 1):
    opt.zero_grad()
    loss = ((ddp(X) - Y) ** 2).mean()
    loss.backward()
    opt.step()
    l = torch.tensor([loss.item()])
    dist.all_reduce(l)
    if out:
        out.write(json.dumps({"step": step, "loss": l.item() / world, "world_size": world, "allreduce_sum": t.item(),
                              "node_rank": node_rank}) + "\n")
        out.flush()
    time.sleep(pause)
dist.barrier()
dist.destroy_process_group()
print("worker", rank, "done", flush=True)
`

// torchrunFix works around Debian's torch 1.13 on Python 3.11, not
// Gantry: iterating an IntFlag there skips 0, so torchrun's
// Std.from_str("0") (its default --redirects and --tee) returns None and
// torchrun dies before it starts a worker. Loaded as sitecustomize from
// the job's PYTHONPATH, it patches only the torchrun process, so the
// command line stays the README's recipe.
const torchrunFix = `
import sys
if sys.argv and sys.argv[0].endswith("torchrun"):
    from torch.distributed.elastic.multiprocessing import api as _api
    def _from_str(vm, _orig=_api.Std.from_str):
        r = _orig(vm)
        return _api.Std(int(vm)) if r is None else r
    _api.Std.from_str = staticmethod(_from_str)
`

// torchrunCmd is the README's recipe, unchanged but for the absolute
// path of Debian's torchrun. The underscore spellings work on torchrun
// 1.x (Debian's 1.13) and 2.x alike; the dashed ones only on 2.x.
const torchrunCmd = `/usr/bin/torchrun --nnodes=$NNODES --nproc_per_node=$GPUS_PER_NODE --node_rank=$NODE_RANK ` +
	`--master_addr=$MASTER_ADDR --master_port=$MASTER_PORT train.py`

// ddpSpec is a 2-node × 2-GPU torchrun job over the fake GPUs of a1, a2.
func ddpSpec(t *testing.T, name string, steps int, pause float64) apiv1.JobSpec {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{"train.py": ddpScript, "sitecustomize.py": torchrunFix} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return apiv1.JobSpec{
		Name: name, Run: torchrunCmd, Workdir: dir,
		Resources: apiv1.Resources{Nodes: 2, GPUs: 2},
		Env: map[string]string{
			// Gloo picks its interface from the hostname, which every
			// namespace shares: point it at the host's own NIC.
			"GLOO_SOCKET_IFNAME": "eth0",
			"OMP_NUM_THREADS":    "1",
			"PYTHONPATH":         dir,
			"STEPS":              itoa(steps),
			"PAUSE":              ftoa(pause),
		},
		KillGrace: apiv1.Duration(3 * time.Second),
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// netGantry runs the gantry CLI on n's host against n's API and returns
// its combined output.
func netGantry(n *netNode, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.host.ns, filepath.Join(binDir, "gantry"),
		"--addr", "http://" + n.host.addr(portHTTP)}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ddpJobYAML is the README's 2-node torchrun spec for the e2e hosts:
// shipped as code (train.py and the torchrunFix next to it), on gloo over
// the hosts' eth0, with "." on PYTHONPATH so sitecustomize is found in the
// job's code directory, its working directory.
const ddpJobYAML = `name: ddp-cli
resources: {nodes: 2, gpus: 2}
env: {GLOO_SOCKET_IFNAME: eth0, OMP_NUM_THREADS: "1", PYTHONPATH: ".", STEPS: "20", PAUSE: "0"}
kill_grace: 3s
run: ` + torchrunCmd + "\n"

// waitGangState polls until the job's state is want (or terminal).
func waitGangState(t *testing.T, n *netNode, id, want string, timeout time.Duration) apiv1.Job {
	t.Helper()
	var job apiv1.Job
	if !pollUntil(timeout, 20*time.Millisecond, func() bool {
		var err error
		job, err = getJob(n, id)
		return err == nil && (job.State == want || apiv1.IsTerminal(job.State))
	}) {
		t.Fatalf("job %s not %s after %s: %+v", id, want, timeout, job)
	}
	if job.State != want {
		t.Fatalf("job %s is %s (error %q), want %s; ranks %+v", id, job.State, job.Error, want, job.Ranks)
	}
	return job
}

// TestNetnsTorchrunDDP: a 2-node × 2-process torchrun job on gloo across
// two network-namespace hosts, started by the Gantry env alone: every
// rank sees the same rendezvous, all_reduce sums the 4 workers, DDP
// training lowers the loss, and the final metrics are rank 0's last line.
func TestNetnsTorchrunDDP(t *testing.T) {
	requireTorch(t)
	c := startNetCluster(t)
	leader := c.waitLeader(10*time.Second, c.ctrls...)
	const steps = 20
	// Submitted as a user would: gantry run ships the directory of the
	// spec file as the job's code.
	dir := t.TempDir()
	for name, body := range map[string]string{"train.py": ddpScript, "sitecustomize.py": torchrunFix, "job.yaml": ddpJobYAML} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	submitAt := time.Now()
	out, err := netGantry(leader, "run", "-d", filepath.Join(dir, "job.yaml"))
	if err != nil {
		t.Fatalf("gantry run -d: %v\n%s", err, out)
	}
	fields := strings.Fields(out)
	id := fields[len(fields)-1]
	job := waitGangState(t, leader, id, apiv1.StateRunning, 60*time.Second)
	runningIn := time.Since(submitAt)
	if len(job.Ranks) != 2 || job.Ranks[0].Node == job.Ranks[1].Node || job.MasterAddr == "" || job.MasterPort == 0 {
		t.Fatalf("ranks %+v, master %s:%d", job.Ranks, job.MasterAddr, job.MasterPort)
	}
	if want := c.lab.hosts[job.Ranks[0].Node].ip; job.MasterAddr != want {
		t.Errorf("MASTER_ADDR %s, want rank 0's host address %s", job.MasterAddr, want)
	}
	var terminalAt, firstPointAt time.Time
	if !pollUntil(120*time.Second, 10*time.Millisecond, func() bool {
		j, err := getJob(leader, id)
		if err == nil && j.Points > 0 && firstPointAt.IsZero() {
			firstPointAt = time.Now()
		}
		if err == nil && apiv1.IsTerminal(j.State) {
			job, terminalAt = j, time.Now()
			return true
		}
		return false
	}) {
		t.Fatalf("job not terminal in 120 s: %+v", job)
	}
	var lastExit time.Time
	for _, r := range job.Ranks {
		if r.FinishedAt != nil && r.FinishedAt.After(lastExit) {
			lastExit = *r.FinishedAt
		}
	}
	if job.State != apiv1.StateSucceeded {
		logs0, _ := leader.api().RankLogs(context.Background(), id, 0, 0)
		logs1, _ := leader.api().RankLogs(context.Background(), id, 1, 0)
		t.Fatalf("job %s: %q; ranks %+v\nrank 0 log:\n%s\nrank 1 log:\n%s", job.State, job.Error, job.Ranks, logs0.Data, logs1.Data)
	}
	t.Logf("MEASURED submit → all ranks running: %s; submit → first training step stored (torch import, rendezvous, all_reduce, step 1): %s; "+
		"last rank exit → terminal with final metrics: %s (observed by polling every 10 ms)",
		runningIn.Round(time.Millisecond), firstPointAt.Sub(submitAt).Round(time.Millisecond), terminalAt.Sub(lastExit).Round(time.Millisecond))

	// Final metrics are rank 0's last logged line, and training helped.
	page, err := leader.api().Metrics(context.Background(), id, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	pts := page.Points
	if len(pts) != steps {
		t.Fatalf("%d points stored, want %d (rank 0's lines only)", len(pts), steps)
	}
	last, first := pts[len(pts)-1], pts[0]
	for k, v := range last.Values {
		if got := job.FinalMetrics[k]; math.Abs(got-v) > 1e-12 {
			t.Errorf("final_metrics[%s] = %v, rank 0's last line has %v", k, got, v)
		}
	}
	if job.FinalMetrics["step"] != steps || job.FinalMetrics["world_size"] != 4 || job.FinalMetrics["allreduce_sum"] != 10 ||
		job.FinalMetrics["node_rank"] != 0 {
		t.Errorf("final_metrics %v: want rank 0's, step %d, world_size 4, all_reduce sum 1+2+3+4", job.FinalMetrics, steps)
	}
	// Rank 1's own metrics file is its own series, apart from the job's.
	page1, err := leader.api().RankMetrics(context.Background(), id, 1, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(page1.Points); n != steps || page1.Points[n-1].Values["node_rank"] != 1 || job.Ranks[1].Points != steps {
		t.Errorf("rank 1 series: %d points (rank counts %d), last %v; want %d of node_rank 1", n, job.Ranks[1].Points, page1.Points, steps)
	}
	if !(last.Values["loss"] < first.Values["loss"]/2) {
		t.Errorf("loss went from %v to %v; want it at least halved", first.Values["loss"], last.Values["loss"])
	}
	// Each rank's log is its own, and says what env its workers saw.
	for rank := range 2 {
		l, err := leader.api().RankLogs(context.Background(), id, rank, 0)
		if err != nil {
			t.Fatal(err)
		}
		want := `"NODE_RANK": "` + itoa(rank) + `"`
		if !strings.Contains(l.Data, want) || !strings.Contains(l.Data, `"MASTER_ADDR": "`+job.MasterAddr+`"`) {
			t.Errorf("rank %d log lacks %s and the master address:\n%s", rank, want, l.Data)
		}
	}
}

// rankOn returns the rank of job on the named node.
func rankOn(t *testing.T, job apiv1.Job, node string) apiv1.Rank {
	t.Helper()
	for _, r := range job.Ranks {
		if r.Node == node {
			return r
		}
	}
	t.Fatalf("job %s has no rank on %s: %+v", job.ID, node, job.Ranks)
	return apiv1.Rank{}
}

// TestNetnsGangRankFailure: rank 1 exits 3 while rank 0 would run for
// ten minutes; rank 0 is cancelled (TERM) and the job fails naming rank 1
// and its exit.
func TestNetnsGangRankFailure(t *testing.T) {
	c := startNetCluster(t)
	leader := c.waitLeader(10*time.Second, c.ctrls...)
	// Three nodes of two: no set of registered nodes could ever run it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err := leader.api().Submit(ctx, apiv1.JobSpec{Name: "too-big", Run: "true", Resources: apiv1.Resources{Nodes: 3, GPUs: 1}})
	cancel()
	if err == nil || !strings.Contains(err.Error(), "the job needs 3 nodes with 1 GPU each") {
		t.Fatalf("submit of a 3-node job on 2 nodes: %v, want a 400 saying why", err)
	}
	id := submit(t, leader, apiv1.JobSpec{
		Name: "rank1-fails", Resources: apiv1.Resources{Nodes: 2, GPUs: 1},
		Run:       `echo "rank $NODE_RANK of $NNODES, world $WORLD_SIZE"; if [ "$NODE_RANK" = 1 ]; then sleep 1; exit 3; fi; exec sleep 600`,
		KillGrace: apiv1.Duration(2 * time.Second),
	})
	job := waitJobTerminal(t, leader, id, 60*time.Second)
	terminalAt := time.Now()
	r1 := job.Ranks[1]
	if job.State != apiv1.StateFailed || !strings.Contains(job.Error, "rank 1 (node "+r1.Node+")") ||
		!strings.Contains(job.Error, "exited with code 3") || job.ExitCode == nil || *job.ExitCode != 3 {
		t.Fatalf("job %s error %q exit %v; want failed naming rank 1 and code 3", job.State, job.Error, job.ExitCode)
	}
	r0 := job.Ranks[0]
	if r0.State != apiv1.StateCancelled || r1.State != apiv1.StateFailed {
		t.Fatalf("rank 0 %s (%s), rank 1 %s; want cancelled and failed", r0.State, r0.Error, r1.State)
	}
	t.Logf("MEASURED rank 1 exit → job terminal (rank 0 cancelled): %s", terminalAt.Sub(*r1.FinishedAt).Round(time.Millisecond))
	l, err := leader.api().RankLogs(context.Background(), id, 1, 0)
	if err != nil || !strings.Contains(l.Data, "rank 1 of 2, world 2") {
		t.Fatalf("rank 1 log %q, %v", l.Data, err)
	}
	if _, err := leader.api().RankLogs(context.Background(), id, 2, 0); err == nil || !strings.Contains(err.Error(), "has no rank 2") {
		t.Errorf("log of rank 2 of a 2-rank job: %v, want a 400 saying there is none", err)
	}

	// The CLI, run on a controller's host: logs --rank, status, ps.
	gantry := func(args ...string) string {
		t.Helper()
		out, err := netGantry(leader, args...)
		if err != nil && !strings.Contains(strings.Join(args, " "), "status") {
			t.Fatalf("gantry %v: %v\n%s", args, err, out)
		}
		return out
	}
	if out := gantry("logs", id, "--rank", "1"); !strings.Contains(out, "rank 1 of 2, world 2") {
		t.Errorf("gantry logs --rank 1:\n%s", out)
	}
	if out := gantry("logs", id); !strings.Contains(out, "rank 0 of 2, world 2") {
		t.Errorf("gantry logs (rank 0):\n%s", out)
	}
	if out := gantry("status", id); !strings.Contains(out, "RANK") || !strings.Contains(out, "exited with code 3") {
		t.Errorf("gantry status shows no ranks table:\n%s", out)
	}
	if out := gantry("ps"); !strings.Contains(out, r0.Node+" +1") {
		t.Errorf("gantry ps:\n%s", out)
	}
}

// TestNetnsGangNodeCutOff: rank 1's host is cut off mid-run; after the
// lost grace the job is lost and rank 0, on the host still reachable, is
// cancelled.
func TestNetnsGangNodeCutOff(t *testing.T) {
	requireTorch(t)
	c := startNetClusterWith(t, "-lost-grace", "3s")
	leader := c.waitLeader(10*time.Second, c.ctrls...)
	id := submit(t, leader, ddpSpec(t, "ddp-cut", 3000, 0.05))
	job := waitGangState(t, leader, id, apiv1.StateRunning, 60*time.Second)
	if !pollUntil(60*time.Second, 50*time.Millisecond, func() bool {
		j, err := getJob(leader, id)
		return err == nil && j.Points >= 5
	}) {
		t.Fatal("no training steps reported")
	}
	victim := c.lab.hosts[job.Ranks[1].Node]
	victim.cut()
	cutAt := time.Now()
	defer victim.heal()
	job = waitJobTerminal(t, leader, id, 90*time.Second)
	lostIn := time.Since(cutAt)
	if job.State != apiv1.StateLost || !strings.Contains(job.Error, "rank 1") {
		t.Fatalf("job %s %q, want lost naming rank 1", job.State, job.Error)
	}
	if job.FinalMetrics["step"] < 5 {
		t.Errorf("lost job's final metrics %v: want the latest values it reported", job.FinalMetrics)
	}
	survivor := job.Ranks[0].Node
	if !pollUntil(30*time.Second, 50*time.Millisecond, func() bool {
		j, err := getJob(leader, id)
		job = j
		return err == nil && apiv1.IsTerminal(rankOn(t, j, survivor).State)
	}) {
		t.Fatalf("rank 0 on %s not cancelled after the job was lost: %+v", survivor, job.Ranks)
	}
	if s := rankOn(t, job, survivor).State; s != apiv1.StateCancelled {
		t.Errorf("rank 0 ended %s, want cancelled", s)
	}
	t.Logf("MEASURED cut → lost: %s (lost grace 3 s); rank 0 cancelled %s after the cut", lostIn.Round(time.Millisecond),
		time.Since(cutAt).Round(time.Millisecond))
}

// TestNetnsGangAgentRestart: the agent on rank 1's host is killed and
// restarted mid-run; it re-adopts its rank and the job runs to success
// with rank 0's final metrics.
func TestNetnsGangAgentRestart(t *testing.T) {
	requireTorch(t)
	c := startNetCluster(t)
	leader := c.waitLeader(10*time.Second, c.ctrls...)
	const steps = 150
	id := submit(t, leader, ddpSpec(t, "ddp-restart", steps, 0.05))
	job := waitGangState(t, leader, id, apiv1.StateRunning, 60*time.Second)
	if !pollUntil(60*time.Second, 50*time.Millisecond, func() bool {
		j, err := getJob(leader, id)
		return err == nil && j.Points >= 5
	}) {
		t.Fatal("no training steps reported")
	}
	var agent *netNode
	for _, a := range c.agents {
		if a.name == job.Ranks[1].Node {
			agent = a
		}
	}
	agent.proc.kill()
	agent.proc.start()
	job = waitJobTerminal(t, leader, id, 120*time.Second)
	if job.State != apiv1.StateSucceeded {
		t.Fatalf("job %s %q after rank 1's agent restarted; ranks %+v", job.State, job.Error, job.Ranks)
	}
	if job.FinalMetrics["step"] != steps {
		t.Errorf("final metrics %v, want rank 0's last step %d", job.FinalMetrics, steps)
	}
	if n := agent.proc.logCount(`msg="agent started"`); n != 2 {
		t.Errorf("%s started %d times, want 2 (the restart did not happen)", agent.name, n)
	}
	if r := job.Ranks[1]; r.State != apiv1.StateSucceeded || r.ExitCode == nil || *r.ExitCode != 0 {
		t.Errorf("rank 1 %s exit %v: want its re-adopted process's clean exit", r.State, r.ExitCode)
	}
}

// TestNetnsGangCancel: a user's cancel reaches every rank (SIGTERM; a rank
// that ignores it is killed after kill_grace) and the job ends cancelled.
func TestNetnsGangCancel(t *testing.T) {
	c := startNetCluster(t)
	leader := c.waitLeader(10*time.Second, c.ctrls...)
	id := submit(t, leader, apiv1.JobSpec{
		Name: "cancel-all", Resources: apiv1.Resources{Nodes: 2, GPUs: 1},
		// Rank 1 ignores SIGTERM: only the SIGKILL after kill_grace ends it.
		Run:       `if [ "$NODE_RANK" = 1 ]; then trap "" TERM; fi; while true; do sleep 0.1; done`,
		KillGrace: apiv1.Duration(time.Second),
	})
	waitGangState(t, leader, id, apiv1.StateRunning, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cancelAt := time.Now()
	if err := leader.api().Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	job := waitJobTerminal(t, leader, id, 30*time.Second)
	if job.State != apiv1.StateCancelled {
		t.Fatalf("job %s %q, want cancelled; ranks %+v", job.State, job.Error, job.Ranks)
	}
	for _, r := range job.Ranks {
		if r.State != apiv1.StateCancelled {
			t.Errorf("rank %d on %s ended %s (%s), want cancelled", r.Rank, r.Node, r.State, r.Error)
		}
	}
	if r1 := job.Ranks[1]; r1.Signal != "SIGKILL" {
		t.Errorf("rank 1 ignored SIGTERM yet ended by %q, want SIGKILL after kill_grace", r1.Signal)
	}
	t.Logf("MEASURED cancel → terminal: %s (kill_grace 1 s)", time.Since(cancelAt).Round(time.Millisecond))
}

// TestNetnsGangWaitsWhole: while one host's GPUs are busy, a 2-node job
// holds nothing (no rank placed, the free host's GPUs stay free) and says
// what it waits for; it starts once the GPUs are free.
func TestNetnsGangWaitsWhole(t *testing.T) {
	c := startNetCluster(t)
	leader := c.waitLeader(10*time.Second, c.ctrls...)
	blocker := submit(t, leader, apiv1.JobSpec{Name: "blocker", Run: "exec sleep 600", Node: "a1",
		Resources: apiv1.Resources{GPUs: 2}})
	waitGangState(t, leader, blocker, apiv1.StateRunning, 30*time.Second)
	id := submit(t, leader, apiv1.JobSpec{Name: "gang", Run: "exec sleep 600", Resources: apiv1.Resources{Nodes: 2, GPUs: 2}})
	want := "waiting for 2 up nodes with 2 free GPUs each; nodes with room now: 1 (a2)"
	var job apiv1.Job
	if !pollUntil(10*time.Second, 50*time.Millisecond, func() bool {
		var err error
		job, err = getJob(leader, id)
		return err == nil && job.Reason == want
	}) {
		t.Fatalf("queued gang: %s, reason %q, want %q", job.State, job.Reason, want)
	}
	time.Sleep(2 * time.Second) // a few scheduler passes
	if job, _ = getJob(leader, id); job.State != apiv1.StateQueued || len(job.Ranks) != 0 {
		t.Fatalf("gang %s with ranks %+v while a1 is full: a partial gang was placed", job.State, job.Ranks)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nodes, err := leader.api().Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.ID == "a2" && n.FreeGPUs != 2 {
			t.Fatalf("a2 has %d free GPUs while the gang waits; want both free", n.FreeGPUs)
		}
	}
	if err := leader.api().Cancel(ctx, blocker); err != nil {
		t.Fatal(err)
	}
	waitGangState(t, leader, id, apiv1.StateRunning, 30*time.Second)
	if err := leader.api().Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	if job := waitJobTerminal(t, leader, id, 30*time.Second); job.State != apiv1.StateCancelled {
		t.Fatalf("gang ended %s %q", job.State, job.Error)
	}
}

// gangRequeueRun is a 2-node job that hangs on its first attempt (rank 0
// logs five steps, then no rank makes progress: a collective that never
// returns) and, run again ($GANTRY_ATTEMPT 2), logs five more steps on
// every rank and ends.
const gangRequeueRun = `echo "rank $NODE_RANK attempt $GANTRY_ATTEMPT job $GANTRY_JOB_ID"
if [ "$GANTRY_ATTEMPT" = 1 ]; then
  if [ "$NODE_RANK" = 0 ]; then for i in 1 2 3 4 5; do echo "{\"step\": $i}" >> "$GANTRY_METRICS_FILE"; sleep 0.1; done; fi
  while true; do sleep 0.1; done
fi
for i in 6 7 8 9 10; do echo "{\"step\": $i, \"rank\": $NODE_RANK}" >> "$GANTRY_METRICS_FILE"; sleep 0.1; done`

// TestNetnsGangRequeue: a multi-node job whose rank 0 stalls is stopped on
// both hosts by its requeue policy, queued again and placed afresh with a
// new rendezvous; its second attempt succeeds. The first attempt is kept
// with both ranks as they ended, rank 0's points run on in one series,
// and rank 1's log of each attempt is its own.
func TestNetnsGangRequeue(t *testing.T) {
	c := startNetCluster(t)
	leader := c.waitLeader(10*time.Second, c.ctrls...)
	id := submit(t, leader, apiv1.JobSpec{
		Name: "gang-requeue", Resources: apiv1.Resources{Nodes: 2, GPUs: 1}, Run: gangRequeueRun,
		KillGrace: apiv1.Duration(time.Second),
		Health:    &apiv1.HealthSpec{StallAfter: apiv1.Duration(3 * time.Second), OnStall: "requeue"},
	})
	first := waitGangState(t, leader, id, apiv1.StateRunning, 30*time.Second)
	job := waitJobTerminal(t, leader, id, 90*time.Second)
	if job.State != apiv1.StateSucceeded || job.Attempt != 2 || len(job.Attempts) != 1 {
		t.Fatalf("job %s (%s) on attempt %d with %d earlier; want succeeded on attempt 2; ranks %+v",
			job.State, job.Error, job.Attempt, len(job.Attempts), job.Ranks)
	}
	a := job.Attempts[0]
	if a.FinalMetrics["step"] != 5 || !strings.HasPrefix(a.Reason, "stalled: ") && !strings.HasPrefix(a.Reason, "hung: ") {
		t.Errorf("attempt 1 kept as %+v; want step 5 and the stall", a)
	}
	if job.FinalMetrics["step"] != 10 || len(job.Ranks) != 2 {
		t.Errorf("final metrics %v ranks %d, want step 10 from attempt 2's rank 0", job.FinalMetrics, len(job.Ranks))
	}
	if first.MasterPort == 0 || job.MasterPort == 0 {
		t.Errorf("rendezvous ports %d then %d", first.MasterPort, job.MasterPort)
	}
	ctx := context.Background()
	page, err := leader.api().Metrics(ctx, id, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Points) != 10 {
		t.Errorf("%d points of rank 0, want 5 of each attempt", len(page.Points))
	}
	page1, err := leader.api().RankMetrics(ctx, id, 1, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(page1.Points) != 5 || page1.Points[0].Values["rank"] != 1 {
		t.Errorf("rank 1 series of attempt 2: %+v, want its 5 points", page1.Points)
	}
	for attempt, want := range map[int]string{1: "rank 1 attempt 1 job " + id, 0: "rank 1 attempt 2 job " + id} {
		l, err := leader.api().AttemptRankLogs(ctx, id, 1, attempt, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(l.Data, want) || !l.Complete {
			t.Errorf("rank 1 log of attempt %d (0: current): %q complete %v, want %q", attempt, l.Data, l.Complete, want)
		}
	}
	l0, err := leader.api().Logs(ctx, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(l0.Data, "rank 0 attempt 1") || !strings.Contains(l0.Data, "rank 0 attempt 2") {
		t.Errorf("rank 0's log (the job's) lacks an attempt:\n%s", l0.Data)
	}
	out, err := netGantry(leader, "logs", id, "--rank", "1", "--attempt", "1")
	if err != nil || !strings.Contains(out, "rank 1 attempt 1") {
		t.Errorf("gantry logs --rank 1 --attempt 1: %v\n%s", err, out)
	}
	t.Logf("MEASURED gang requeue: attempt 1 ended %s, attempt 2 started %s later",
		a.FinishedAt.Format(time.RFC3339Nano), job.StartedAt.Sub(*a.FinishedAt).Round(time.Millisecond))
}
