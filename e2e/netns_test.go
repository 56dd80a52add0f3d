//go:build linux

package e2e

// Multi-host tests of the controller cluster: three controllers and two
// agents, each in its own network namespace with its own address (see
// netns_helpers_test.go), run as the real binaries. They kill, cut off
// and restart hosts and check invariant I3 (every point stored exactly
// once, on every controller) and I2 (terminal means final) across it.

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
)

// TestNetnsLeaderKilledMidStream: SIGKILL the leader while both agents
// stream 100,000 points; a new leader takes over, the jobs end succeeded
// with their final metrics, and after the killed node is back every
// point is stored exactly once, identically, on all three controllers.
func TestNetnsLeaderKilledMidStream(t *testing.T) {
	c := startNetCluster(t)
	leader := c.waitLeader(10*time.Second, c.ctrls...)
	const rounds, perRound = 50, 1000
	const perJob = rounds * perRound
	jobs := map[string]string{} // job id → agent
	for _, a := range c.agents {
		id := submit(t, leader, apiv1.JobSpec{
			Name: "stream-" + a.name, Run: trainerRounds(rounds, perRound, "0.02"),
			Node: a.name, Resources: apiv1.Resources{GPUs: 1},
		})
		jobs[id] = a.name
	}

	// Kill the leader once the stream is well under way.
	var stored uint64
	if !pollUntil(30*time.Second, 10*time.Millisecond, func() bool {
		stored = 0
		for id := range jobs {
			j, err := getJob(leader, id)
			if err != nil {
				return false
			}
			stored += j.Points
		}
		return stored >= 2*perJob/5
	}) {
		t.Fatalf("the leader stored only %d points in 30 s", stored)
	}
	if stored >= 2*perJob {
		t.Fatalf("all %d points were stored before the kill; the kill proved nothing", stored)
	}
	survivors := c.others(leader)
	killedAt := time.Now()
	leader.proc.kill()

	// Failover time: leader killed → a write accepted again, polling a
	// survivor every 50 ms.
	var lastErr error
	if !pollUntil(30*time.Second, 50*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, lastErr = survivors[0].api().Submit(ctx, apiv1.JobSpec{Name: "failover-probe", Run: "true"})
		return lastErr == nil
	}) {
		t.Fatalf("no write accepted through %s within 30 s of killing leader %s: %v", survivors[0].name, leader.name, lastErr)
	}
	failover := time.Since(killedAt)
	newLeader := c.waitLeader(15*time.Second, survivors...)
	t.Logf("failover: leader %s SIGKILLed with %d of %d points stored; %s accepted a write %s later; new leader %s",
		leader.name, stored, 2*perJob, survivors[0].name, failover.Round(time.Millisecond), newLeader.name)
	// The data path fails over when the agents notice the dead link.
	c.waitAgentsUp(30*time.Second, newLeader)
	t.Logf("both agents connected to %s %s after the kill", newLeader.name, time.Since(killedAt).Round(time.Millisecond))

	for id, agent := range jobs {
		job := waitJobTerminal(t, newLeader, id, 60*time.Second)
		checkFinal(t, newLeader.name+"/"+agent, job, finalFor(perJob))
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("both jobs ended %s after the kill", time.Since(killedAt).Round(time.Millisecond))

	// Bring the killed node back and let it catch up with the leader.
	leader.proc.start()
	st, err := localStatus(newLeader)
	if err != nil {
		t.Fatal(err)
	}
	var applied uint64
	if !pollUntil(60*time.Second, 50*time.Millisecond, func() bool {
		s, err := localStatus(leader)
		applied = s.AppliedIndex
		return err == nil && s.AppliedIndex >= st.AppliedIndex
	}) {
		t.Fatalf("restarted %s applied index %d, leader was at %d", leader.name, applied, st.AppliedIndex)
	}
	t.Logf("restarted %s caught up to index %d", leader.name, st.AppliedIndex)
	defer func(start time.Time) {
		t.Logf("compared the points of 3 nodes in %s", time.Since(start).Round(time.Millisecond))
	}(time.Now())

	// Read every job's points from every node at once (300,000 points).
	type key struct{ node, job string }
	var mu sync.Mutex
	sets := map[key]pointSet{}
	var wg sync.WaitGroup
	for id := range jobs {
		for _, n := range c.ctrls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ps, err := readPoints(n, id)
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				sets[key{n.name, id}] = ps
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	for id, agent := range jobs {
		ref := sets[key{c.ctrls[0].name, id}]
		for _, n := range c.ctrls {
			job := waitJobTerminal(t, n, id, 20*time.Second)
			checkFinal(t, n.name+"/"+agent, job, finalFor(perJob))
			if job.Points != perJob {
				t.Errorf("%s: job on %s counts %d points, want %d", n.name, agent, job.Points, perJob)
			}
			ps := sets[key{n.name, id}]
			if err := checkSteps(ps.steps, perJob); err != nil {
				t.Errorf("%s: job on %s: %v", n.name, agent, err)
			}
			if ps.count != ref.count || ps.digest != ref.digest {
				t.Errorf("job on %s: %s stores %d points (sha256 %s), %s stores %d (sha256 %s)",
					agent, n.name, ps.count, ps.digest, c.ctrls[0].name, ref.count, ref.digest)
			}
		}
	}
}

// TestNetnsAgentCutOff: an agent loses its network for 10 s while its job
// writes a line every 20 ms. Nothing reaches the controllers meanwhile;
// the agent spools, and after the cut every point arrives exactly once
// and the job ends succeeded with final metrics equal to its last line.
func TestNetnsAgentCutOff(t *testing.T) {
	c := startNetCluster(t)
	leader := c.waitLeader(10*time.Second, c.ctrls...)
	a1 := c.agents[0]
	const lines = 1000
	id := submit(t, leader, apiv1.JobSpec{
		Name: "cut-agent", Run: trainerLines(lines, 0.02), Node: a1.name, Resources: apiv1.Resources{GPUs: 1},
	})
	var job apiv1.Job
	if !pollUntil(20*time.Second, 20*time.Millisecond, func() bool {
		var err error
		job, err = getJob(leader, id)
		return err == nil && job.Points >= 50
	}) {
		t.Fatalf("job never streamed 50 points: %+v", job)
	}
	connectsBefore := a1.proc.logCount(`msg="connected to controller"`)

	a1.host.cut()
	cutAt := time.Now()
	// Hold the cut for 10 s. After a grace for what was already received
	// (committed and applied within milliseconds, unless the machine is
	// very busy), the stored count must not move: nothing can arrive.
	var frozen uint64
	for time.Since(cutAt) < 10*time.Second {
		j, err := getJob(leader, id)
		if err != nil {
			t.Fatalf("read job during the cut: %v", err)
		}
		if apiv1.IsTerminal(j.State) {
			t.Fatalf("job became %s while its agent was cut off", j.State)
		}
		switch since := time.Since(cutAt); {
		case since < 2*time.Second:
			frozen = j.Points
		case j.Points != frozen:
			t.Fatalf("stored points moved from %d to %d %s into the cut", frozen, j.Points, since.Round(time.Millisecond))
		}
		time.Sleep(200 * time.Millisecond)
	}
	a1.host.heal()
	if frozen >= lines {
		t.Fatalf("all %d points were stored before the cut ended; the cut proved nothing", frozen)
	}

	healedAt := time.Now()
	if !pollUntil(30*time.Second, 20*time.Millisecond, func() bool {
		return a1.proc.logCount(`msg="connected to controller"`) > connectsBefore
	}) {
		t.Fatalf("%s never reconnected to a controller within 30 s of the heal", a1.name)
	}
	reconnected := time.Since(healedAt)
	job = waitJobTerminal(t, leader, id, 60*time.Second)
	t.Logf("%d of %d points stored when cut; %s reconnected %s after the heal; job ended %s, %s after the heal",
		frozen, lines, a1.name, reconnected.Round(time.Millisecond), job.State, time.Since(healedAt).Round(time.Millisecond))
	checkFinal(t, leader.name, job, finalFor(lines))
	if job.Points != lines {
		t.Errorf("job counts %d points, want %d", job.Points, lines)
	}
	var ref pointSet
	for i, n := range c.ctrls {
		if n != leader {
			waitJobTerminal(t, n, id, 10*time.Second)
		}
		ps, err := readPoints(n, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkSteps(ps.steps, lines); err != nil {
			t.Errorf("%s: %v", n.name, err)
		}
		if i > 0 && (ps.count != ref.count || ps.digest != ref.digest) {
			t.Errorf("%s stores %d points (sha256 %s), %s stores %d (sha256 %s)", n.name, ps.count, ps.digest, c.ctrls[0].name, ref.count, ref.digest)
		}
		if i == 0 {
			ref = ps
		}
	}
}

// TestNetnsRestartAllControllers: SIGTERM all three controllers and start
// them on the same data dirs: jobs and points are intact on every node, a
// leader is elected, and the cluster takes writes and runs a new job.
func TestNetnsRestartAllControllers(t *testing.T) {
	c := startNetCluster(t)
	leader := c.waitLeader(10*time.Second, c.ctrls...)
	const before = 1000
	var ids []string
	for _, a := range c.agents {
		ids = append(ids, submit(t, leader, apiv1.JobSpec{
			Name: "before-restart-" + a.name, Run: trainerRounds(2, before/2, "0"), Node: a.name, Resources: apiv1.Resources{GPUs: 1},
		}))
	}
	want := map[string]pointSet{}
	for _, id := range ids {
		job := waitJobTerminal(t, leader, id, 30*time.Second)
		checkFinal(t, leader.name, job, finalFor(before))
		ps, err := readPoints(leader, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkSteps(ps.steps, before); err != nil {
			t.Fatalf("before the restart: %v", err)
		}
		want[id] = ps
	}
	// Every node has applied everything before they all go down.
	st, err := localStatus(leader)
	if err != nil {
		t.Fatal(err)
	}
	jobsBefore, err := leader.api().Jobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.ctrls {
		if !pollUntil(10*time.Second, 20*time.Millisecond, func() bool {
			s, err := localStatus(n)
			return err == nil && s.AppliedIndex >= st.CommitIndex
		}) {
			t.Fatalf("%s did not apply up to %d", n.name, st.CommitIndex)
		}
	}

	var wg sync.WaitGroup
	for _, n := range c.ctrls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !n.proc.stop(15 * time.Second) {
				t.Errorf("%s did not stop within 15 s of SIGTERM", n.name)
			}
		}()
	}
	wg.Wait()
	restartAt := time.Now()
	for _, n := range c.ctrls {
		n.proc.start()
	}
	leader = c.waitLeader(30*time.Second, c.ctrls...)
	t.Logf("after a full restart %s leads, elected %s after the restart", leader.name, time.Since(restartAt).Round(time.Millisecond))
	// Each controller rebuilds its state from the Raft log, and a log
	// entry is applied only once a leader of the new term commits again:
	// wait for that before reading.
	for _, n := range c.ctrls {
		if !pollUntil(20*time.Second, 20*time.Millisecond, func() bool {
			s, err := localStatus(n)
			return err == nil && s.AppliedIndex >= st.CommitIndex
		}) {
			t.Fatalf("%s did not re-apply its log up to %d after the restart", n.name, st.CommitIndex)
		}
	}
	t.Logf("every controller re-applied its log %s after the restart", time.Since(restartAt).Round(time.Millisecond))

	for _, n := range c.ctrls {
		jobs, err := n.api().Jobs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) != len(jobsBefore) {
			t.Errorf("%s after restart lists %d jobs, before %d", n.name, len(jobs), len(jobsBefore))
		}
		for _, id := range ids {
			job, err := getJob(n, id)
			if err != nil {
				t.Fatalf("%s lost job %s: %v", n.name, id, err)
			}
			checkFinal(t, n.name+" after restart", job, finalFor(before))
			ps, err := readPoints(n, id)
			if err != nil {
				t.Fatal(err)
			}
			if ps.count != want[id].count || ps.digest != want[id].digest {
				t.Errorf("%s after restart: job %s has %d points (sha256 %s), before %d (sha256 %s)",
					n.name, id, ps.count, ps.digest, want[id].count, want[id].digest)
			}
		}
	}

	c.waitAgentsUp(30*time.Second, leader)
	const after = 300
	id := submit(t, c.others(leader)[0], apiv1.JobSpec{
		Name: "after-restart", Run: trainerRounds(1, after, "0"), Node: c.agents[1].name, Resources: apiv1.Resources{GPUs: 1},
	})
	job := waitJobTerminal(t, leader, id, 30*time.Second)
	checkFinal(t, leader.name, job, finalFor(after))
	ps, err := readPoints(leader, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkSteps(ps.steps, after); err != nil {
		t.Errorf("new job after restart: %v", err)
	}
}

// TestNetnsPartitionMinority: cut the leader off. The majority elects a
// new leader and keeps taking writes; the isolated node cannot commit
// and answers a write with 503 within a bounded time; once healed it
// catches up with what the majority wrote meanwhile.
func TestNetnsPartitionMinority(t *testing.T) {
	c := startNetCluster(t)
	isolated := c.waitLeader(10*time.Second, c.ctrls...)
	majority := c.others(isolated)

	isolated.host.cut()
	cutAt := time.Now()
	newLeader := c.waitLeader(15*time.Second, majority...)
	t.Logf("%s cut off; %s elected on the majority side %s later", isolated.name, newLeader.name, time.Since(cutAt).Round(time.Millisecond))
	// The old leader has lost its lease by now (it steps down after
	// 250 ms without a quorum); from here on it must commit nothing.
	var before apiv1.Cluster
	if !pollUntil(5*time.Second, 20*time.Millisecond, func() bool {
		var err error
		before, err = localStatus(isolated)
		return err == nil && before.State != "Leader"
	}) {
		t.Fatalf("isolated %s still claims leadership %s after the cut", isolated.name, time.Since(cutAt))
	}

	// Writes through either majority node (the follower forwards).
	var written []string
	for _, n := range majority {
		for i := 0; i < 3; i++ {
			written = append(written, submit(t, n, apiv1.JobSpec{Name: "during-partition-" + n.name, Run: "true"}))
		}
	}
	// The agents, which streamed to the old leader, move to the new one.
	c.waitAgentsUp(30*time.Second, newLeader)
	t.Logf("both agents connected to %s %s after the cut", newLeader.name, time.Since(cutAt).Round(time.Millisecond))

	// The isolated node reaches no leader: a write fails with 503 in
	// bounded time and creates nothing.
	sent := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	_, err := isolated.api().Submit(ctx, apiv1.JobSpec{Name: "to-the-minority", Run: "true"})
	cancel()
	took := time.Since(sent)
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusServiceUnavailable {
		t.Fatalf("write to the isolated node: got %v after %s, want a 503", err, took)
	}
	if took > 10*time.Second {
		t.Errorf("write to the isolated node took %s to fail, want under 10 s", took)
	}
	t.Logf("write to isolated %s: %d after %s (%s)", isolated.name, apiErr.Status, took.Round(time.Millisecond), apiErr.Message)
	mid, err := localStatus(isolated)
	if err != nil {
		t.Fatal(err)
	}
	if mid.State == "Leader" || mid.CommitIndex != before.CommitIndex {
		t.Errorf("isolated %s committed alone: state %s, commit index %d → %d", isolated.name, mid.State, before.CommitIndex, mid.CommitIndex)
	}
	for _, id := range written {
		if _, err := getJob(isolated, id); !errors.Is(err, client.ErrNotFound) {
			t.Errorf("isolated %s answers job %s written on the majority side: err %v", isolated.name, id, err)
		}
	}
	lst, err := localStatus(newLeader)
	if err != nil {
		t.Fatal(err)
	}

	isolated.host.heal()
	if !pollUntil(30*time.Second, 50*time.Millisecond, func() bool {
		s, err := localStatus(isolated)
		return err == nil && s.AppliedIndex >= lst.CommitIndex
	}) {
		t.Fatalf("healed %s never applied up to %d", isolated.name, lst.CommitIndex)
	}
	for _, id := range written {
		if _, err := getJob(isolated, id); err != nil {
			t.Errorf("healed %s lacks job %s written during the partition: %v", isolated.name, id, err)
		}
	}
	jobs, err := isolated.api().Jobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		if j.Name == "to-the-minority" {
			t.Errorf("the write refused by the isolated node was stored: %+v", j)
		}
	}
	leader := c.waitLeader(15*time.Second, c.ctrls...)
	id := submit(t, isolated, apiv1.JobSpec{Name: "after-heal", Run: "true"})
	t.Logf("healed; leader %s; a write through %s succeeded (job %s)", leader.name, isolated.name, id)
}
