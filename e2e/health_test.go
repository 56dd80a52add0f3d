package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// healthTrainer logs a step every 100 ms until the file named by its
// argument exists, then goes quiet without exiting (a stalled or hung
// run). It writes the time it stopped into that file's ".at" sibling.
const healthTrainer = `import json, os, sys, time
path = os.environ["GANTRY_METRICS_FILE"]
stop = sys.argv[1]
step = 0
stopped = False
last = 0.0
with open(path, "a") as f:
    while True:
        if os.path.exists(stop):
            if not stopped:
                stopped = True
                with open(stop + ".at", "w") as at:
                    at.write(repr(last))
        else:
            stopped = False
            step += 1
            f.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
            f.flush()
            last = time.time()
        time.sleep(0.1)
`

// requeueTrainer is a job that resumes: it keeps its step in a checkpoint
// file beside the stop file. On its first attempt it behaves like
// healthTrainer (logs until the stop file exists, then hangs); on a later
// one ($GANTRY_ATTEMPT) it resumes from the checkpoint, logs 20 more steps
// and exits 0.
const requeueTrainer = `import json, os, sys, time
path = os.environ["GANTRY_METRICS_FILE"]
attempt = int(os.environ["GANTRY_ATTEMPT"])
stop = sys.argv[1]
ckpt = stop + ".ckpt"
step = int(open(ckpt).read()) if attempt > 1 else 0
print("job %s attempt %d from step %d" % (os.environ["GANTRY_JOB_ID"], attempt, step), flush=True)
first = step
with open(path, "a") as f:
    while attempt > 1 or not os.path.exists(stop):
        step += 1
        f.write(json.dumps({"step": step, "loss": 1.0 / step, "attempt": attempt}) + "\n")
        f.flush()
        with open(ckpt + ".tmp", "w") as c:
            c.write(str(step))
        os.replace(ckpt + ".tmp", ckpt)
        if attempt > 1 and step >= first + 20:
            sys.exit(0)
        time.sleep(0.1)
    with open(stop + ".at", "w") as at:
        at.write(repr(time.time()))
    while True:
        time.sleep(1)
`

// gpuScript writes the dev agent's mock GPU script (gpu.ScriptEnv):
// readings for the listed GPUs, replaced atomically.
func gpuScript(t *testing.T, path string, gpus []int, util, powerW, smMHz float64) {
	t.Helper()
	doc := map[string]map[string]map[string]float64{"gpus": {}}
	for _, g := range gpus {
		doc["gpus"][fmt.Sprint(g)] = map[string]float64{"util": util, "power_w": powerW, "sm_mhz": smMHz, "mem_used_mib": 30000}
	}
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// gpuScriptRaw writes the mock GPU script as given, replaced atomically.
func gpuScriptRaw(t *testing.T, path, doc string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// conditionOf returns the job's current condition of kind, if held.
func conditionOf(j apiv1.Job, kind string) (apiv1.Condition, bool) {
	for _, c := range j.Conditions {
		if c.Kind == kind {
			return c, true
		}
	}
	return apiv1.Condition{}, false
}

// TestHealthConditions runs the trainer under a dev controller whose mock
// GPUs the test scripts, and checks each condition end to end: detected
// by the agent, carried as a record, applied on the job, shown by the API
// with its evidence and as an event, and the cancel policy. It logs each
// detection time (the condition's since minus the onset the test caused).
func TestHealthConditions(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "gpus.json")
	gpuScript(t, script, nil, 0, 0, 0)
	t.Setenv("GANTRY_TEST_GPU_SCRIPT", script)
	trainer := filepath.Join(dir, "train.py")
	if err := os.WriteFile(trainer, []byte(healthTrainer), 0o644); err != nil {
		t.Fatal(err)
	}
	hooks := newHookReceiver(t)
	d := startDevArgs(t, "", 2, "-job-user", "root", "-alert-webhook", hooks.url)
	ctx := context.Background()

	// run submits the trainer and waits until it has logged steps.
	run := func(t *testing.T, name string, h *apiv1.HealthSpec) (string, apiv1.Job, string) {
		t.Helper()
		stop := filepath.Join(dir, name+".stop")
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: name, Run: "exec python3 " + trainer + " " + stop,
			Resources: apiv1.Resources{GPUs: 1}, Health: h, KillGrace: apiv1.Duration(2 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		var j apiv1.Job
		waitFor(t, 30*time.Second, name+" logging steps", func() bool {
			j, err = d.api.Job(ctx, id)
			return err == nil && j.State == apiv1.StateRunning && j.Points >= 10
		})
		return id, j, stop
	}
	// scripted waits until the node's newest GPU sample shows what the
	// script says for gpu: the readings of a stall window that starts
	// after this are all scripted ones, however late a loaded box takes
	// its samples.
	scripted := func(t *testing.T, j apiv1.Job, util float64) {
		t.Helper()
		waitFor(t, 20*time.Second, fmt.Sprintf("GPU %v of %s sampled at %v%%", j.GPUs, j.Node, util), func() bool {
			samples, err := d.api.GPUs(ctx, j.Node)
			if err != nil || len(samples) == 0 {
				return false
			}
			newest := samples[0]
			for _, s := range samples {
				if s.Seq > newest.Seq {
					newest = s
				}
			}
			for _, g := range newest.GPUs {
				if len(j.GPUs) > 0 && g.Index == j.GPUs[0] {
					return g.UtilizationPct == util
				}
			}
			return false
		})
	}
	// stopLogging makes the trainer go quiet; it returns when it has.
	stopLogging := func(t *testing.T, stop string) time.Time {
		t.Helper()
		if err := os.WriteFile(stop, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		var at time.Time
		waitFor(t, 10*time.Second, "the trainer to stop logging", func() bool {
			b, err := os.ReadFile(stop + ".at")
			var sec float64
			if err != nil || len(b) == 0 {
				return false
			}
			if _, err := fmt.Sscan(string(b), &sec); err != nil {
				return false
			}
			at = time.Unix(0, int64(sec*1e9))
			return true
		})
		return at
	}
	waitCondition := func(t *testing.T, id, kind string, timeout time.Duration) apiv1.Condition {
		t.Helper()
		var c apiv1.Condition
		waitFor(t, timeout, "job "+id+" to be "+kind, func() bool {
			j, err := d.api.Job(ctx, id)
			if err != nil {
				return false
			}
			var ok bool
			c, ok = conditionOf(j, kind)
			return ok
		})
		return c
	}
	hasEvent := func(t *testing.T, id, kind string) (apiv1.Event, bool) {
		evs, err := d.api.Events(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Kind == kind {
				return e, true
			}
		}
		return apiv1.Event{}, false
	}
	finish := func(t *testing.T, id string) apiv1.Job {
		t.Helper()
		if err := d.api.Cancel(ctx, id); err != nil && !strings.Contains(err.Error(), "ended") {
			t.Fatal(err)
		}
		j := waitTerminal(t, d.api, id, 30*time.Second)
		gpuScript(t, script, nil, 0, 0, 0)
		return j
	}

	t.Run("stalled with idle GPUs", func(t *testing.T) {
		id, j, stop := run(t, "stall", &apiv1.HealthSpec{StallAfter: apiv1.Duration(3 * time.Second)})
		gpuScript(t, script, j.GPUs, 0, 55, 210)
		scripted(t, j, 0)
		onset := stopLogging(t, stop)
		c := waitCondition(t, id, "stalled", 30*time.Second)
		t.Logf("MEASURE stalled (stall_after 3s, GPUs idle): detected %s after the last step", c.Since.Sub(onset).Round(time.Millisecond))
		if !strings.Contains(c.Evidence, "GPUs idle") || len(c.GPUs) != 1 {
			t.Errorf("stalled evidence %q GPUs %v", c.Evidence, c.GPUs)
		}
		if e, ok := hasEvent(t, id, "stalled"); !ok || !strings.Contains(e.Message, "signal: gpus_idle") {
			t.Errorf("no stalled event saying gpus_idle decided: %+v", e)
		}
		a := hooks.wait(t, id, "stalled")
		t.Logf("MEASURE stalled webhook delivered %s after the condition", a.got.Sub(*c.Since).Round(time.Millisecond))
		// Progress clears it.
		if err := os.Remove(stop); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "stalled cleared", func() bool {
			j, err := d.api.Job(ctx, id)
			_, held := conditionOf(j, "stalled")
			return err == nil && !held
		})
		if _, ok := hasEvent(t, id, "stalled_cleared"); !ok {
			t.Error("no stalled_cleared event")
		}
		hooks.wait(t, id, "stalled_cleared")
		finish(t, id)
		hooks.wait(t, id, "job_cancelled")
	})

	t.Run("hung with pegged GPUs at low power, cancelled by policy", func(t *testing.T) {
		id, j, stop := run(t, "hang", &apiv1.HealthSpec{StallAfter: apiv1.Duration(5 * time.Second), OnStall: "cancel"})
		gpuScript(t, script, j.GPUs, 100, 80, 1410)
		scripted(t, j, 100)
		onset := stopLogging(t, stop)
		end := waitTerminal(t, d.api, id, 40*time.Second)
		e, ok := hasEvent(t, id, "hung")
		if !ok {
			t.Fatalf("no hung event; job ended %s: %s", end.State, end.Error)
		}
		if !strings.Contains(e.Message, "signal: gpus_pegged_low_power") || !strings.Contains(e.Message, "policy cancel") {
			t.Errorf("hung event %q", e.Message)
		}
		at := time.Unix(0, int64(e.TS*1e9))
		t.Logf("MEASURE hung (stall_after 5s, util 100%% at 80 W): detected %s after the last step; cancelled %s after",
			at.Sub(onset).Round(time.Millisecond), end.FinishedAt.Sub(onset).Round(time.Millisecond))
		if end.State != apiv1.StateCancelled {
			t.Errorf("state %s (%s), want cancelled", end.State, end.Error)
		}
		if end.FinalMetrics["step"] < 10 || end.FinalMetrics["loss"] == 0 {
			t.Errorf("cancelled job's final metrics %v lack its last step (I2)", end.FinalMetrics)
		}
		if len(end.Conditions) != 0 {
			t.Errorf("ended job keeps conditions %v", end.Conditions)
		}
		if a := hooks.wait(t, id, "hung"); !strings.Contains(a.Text, "is hung") || !strings.Contains(a.Text, "policy cancel: cancelling the job") {
			t.Errorf("hung alert text %q", a.Text)
		}
		hooks.wait(t, id, "job_cancelled")
		gpuScript(t, script, nil, 0, 0, 0)
	})

	t.Run("hung, requeued by policy, resumes and succeeds on its second attempt", func(t *testing.T) {
		requeuer := filepath.Join(dir, "requeue.py")
		if err := os.WriteFile(requeuer, []byte(requeueTrainer), 0o644); err != nil {
			t.Fatal(err)
		}
		stop := filepath.Join(dir, "rq.stop")
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "requeue", Run: "exec python3 " + requeuer + " " + stop,
			Resources: apiv1.Resources{GPUs: 1}, KillGrace: apiv1.Duration(2 * time.Second),
			Health: &apiv1.HealthSpec{StallAfter: apiv1.Duration(4 * time.Second), OnStall: "requeue"}})
		if err != nil {
			t.Fatal(err)
		}
		var j apiv1.Job
		waitFor(t, 30*time.Second, "attempt 1 logging steps", func() bool {
			j, err = d.api.Job(ctx, id)
			return err == nil && j.State == apiv1.StateRunning && j.Points >= 10
		})
		gpuScript(t, script, j.GPUs, 100, 80, 1410)
		scripted(t, j, 100)
		onset := stopLogging(t, stop)
		// The stall is diagnosed hung, the run stopped and queued again;
		// attempt 2 resumes from attempt 1's checkpoint and ends.
		end := waitTerminal(t, d.api, id, 60*time.Second)
		gpuScript(t, script, nil, 0, 0, 0)
		if end.State != apiv1.StateSucceeded || end.Attempt != 2 || len(end.Attempts) != 1 {
			t.Fatalf("state %s (%s) attempt %d attempts %d, want succeeded on attempt 2", end.State, end.Error, end.Attempt, len(end.Attempts))
		}
		first := end.Attempts[0]
		if !strings.HasPrefix(first.Reason, "hung: ") || first.FinalMetrics["step"] < 10 || first.Node == "" || first.FinishedAt == nil {
			t.Errorf("attempt 1 kept as %+v; want its reason and its final metrics (I2)", first)
		}
		ckpt := first.FinalMetrics["step"]
		if end.FinalMetrics["step"] != ckpt+20 || end.FinalMetrics["attempt"] != 2 {
			t.Errorf("final metrics %v, want step %v (resumed from the checkpoint at %v, 20 more) on attempt 2", end.FinalMetrics, ckpt+20, ckpt)
		}
		e, ok := hasEvent(t, id, "hung")
		if !ok || !strings.Contains(e.Message, "policy requeue: stopping the job to run it again (attempt 2 of at most 3)") {
			t.Errorf("hung event %+v", e)
		}
		rq, ok := hasEvent(t, id, "requeued")
		if !ok || !strings.Contains(rq.Message, "queued again as attempt 2") {
			t.Errorf("requeued event %+v", rq)
		}
		hungAt, requeuedAt := time.Unix(0, int64(e.TS*1e9)), time.Unix(0, int64(rq.TS*1e9))
		t.Logf("MEASURE hung then requeued (stall_after 4s): hung %s after the last step; attempt 1 stopped %s after that; attempt 2 started %s after the stop",
			hungAt.Sub(onset).Round(time.Millisecond), requeuedAt.Sub(hungAt).Round(time.Millisecond), end.StartedAt.Sub(requeuedAt).Round(time.Millisecond))
		// Every point of both attempts is there, in one increasing sequence.
		page, err := d.api.Metrics(ctx, id, 0, 10_000)
		if err != nil {
			t.Fatal(err)
		}
		if want := uint64(ckpt) + 20; uint64(len(page.Points)) != want || end.Points != want {
			t.Errorf("%d points (job says %d), want %d: every step of both attempts", len(page.Points), end.Points, want)
		}
		for i := 1; i < len(page.Points); i++ {
			if page.Points[i].Seq <= page.Points[i-1].Seq {
				t.Fatalf("point seqs go back at %d: %d after %d", i, page.Points[i].Seq, page.Points[i-1].Seq)
			}
		}
		logs, err := d.api.Logs(ctx, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"job " + id + " attempt 1 from step 0", "attempt 1 of 3 stopped (hung: ",
			"job " + id + " attempt 2 from step " + fmt.Sprint(ckpt)} {
			if !strings.Contains(logs.Data, want) {
				t.Errorf("log lacks %q:\n%s", want, logs.Data)
			}
		}
		hooks.wait(t, id, "hung")
		hooks.wait(t, id, "requeued")
		hooks.wait(t, id, "job_succeeded")
	})

	t.Run("idle GPUs while logging", func(t *testing.T) {
		id, j, _ := run(t, "idle", &apiv1.HealthSpec{IdleAfter: apiv1.Duration(3 * time.Second)})
		onset := time.Now()
		gpuScript(t, script, j.GPUs, 0, 50, 210)
		c := waitCondition(t, id, "idle_gpus", 30*time.Second)
		t.Logf("MEASURE idle_gpus (idle_after 3s): detected %s after the GPUs went idle", c.Since.Sub(onset).Round(time.Millisecond))
		if len(c.GPUs) != 1 || c.GPUs[0] != j.GPUs[0] || !strings.Contains(c.Evidence, fmt.Sprintf("GPU %d idle", j.GPUs[0])) {
			t.Errorf("idle_gpus GPUs %v evidence %q, want GPU %d", c.GPUs, c.Evidence, j.GPUs[0])
		}
		if a := hooks.wait(t, id, "idle_gpus"); len(a.GPUs) != 1 || a.GPUs[0] != uint32(j.GPUs[0]) {
			t.Errorf("idle_gpus alert GPUs %v", a.GPUs)
		}
		finish(t, id)
	})

	t.Run("startup grace, a declared stall_after and a checkpoint hold back", func(t *testing.T) {
		// A job that loads for 4 s before its first step, with a 6 s
		// grace; then pauses 3 s with its GPUs idle (a checkpoint) under
		// stall_after and idle_after 5 s.
		stop := filepath.Join(dir, "fp.stop")
		if err := os.WriteFile(stop, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "fp", Run: "exec python3 " + trainer + " " + stop,
			Resources: apiv1.Resources{GPUs: 1}, KillGrace: apiv1.Duration(2 * time.Second),
			Health: &apiv1.HealthSpec{StartupGrace: apiv1.Duration(6 * time.Second), StallAfter: apiv1.Duration(5 * time.Second),
				IdleAfter: apiv1.Duration(5 * time.Second)}})
		if err != nil {
			t.Fatal(err)
		}
		waitState(t, d.api, id, apiv1.StateRunning, 30*time.Second)
		time.Sleep(4 * time.Second) // the "load": the behaviour under test is that nothing fires
		_ = os.Remove(stop)
		_ = os.Remove(stop + ".at")
		waitFor(t, 10*time.Second, "steps", func() bool { j, err := d.api.Job(ctx, id); return err == nil && j.Points > 5 })
		// A checkpoint: no step and the GPUs idle for 3 s, under
		// stall_after and idle_after 5 s.
		gpuScript(t, script, j0GPUs(t, d, id), 0, 55, 210)
		stopLogging(t, stop)
		time.Sleep(3 * time.Second) // the "checkpoint": the behaviour under test is that nothing fires
		gpuScript(t, script, nil, 0, 0, 0)
		_ = os.Remove(stop)
		time.Sleep(2 * time.Second)
		evs, err := d.api.Events(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Kind == "stalled" || e.Kind == "hung" || e.Kind == "idle_gpus" {
				t.Errorf("false positive: %s %s", e.Kind, e.Message)
			}
		}
		finish(t, id)
	})

	t.Run("demo trainer is healthy", func(t *testing.T) {
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "demo", Run: "exec python3 " + demoTrainer(t) + " --steps 150 --sleep 0.02",
			Resources: apiv1.Resources{GPUs: 2}})
		if err != nil {
			t.Fatal(err)
		}
		j := waitTerminal(t, d.api, id, 60*time.Second)
		if j.State != apiv1.StateSucceeded {
			t.Fatalf("demo %s: %s", j.State, j.Error)
		}
		hooks.wait(t, id, "job_succeeded")
		evs, err := d.api.Events(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if strings.HasPrefix(e.Kind, "stalled") || strings.HasPrefix(e.Kind, "hung") || strings.HasPrefix(e.Kind, "idle_gpus") {
				t.Errorf("condition on the demo trainer: %s %s", e.Kind, e.Message)
			}
		}
	})

	t.Run("stray process and a GPU the job was not given", func(t *testing.T) {
		id, j, _ := run(t, "procs", nil)
		mine, other := j.GPUs[0], 1-j.GPUs[0]
		// The job's main process (its session leader) on both GPUs; this
		// test's own process, of no job, on the job's GPU.
		gpuScriptRaw(t, script, fmt.Sprintf(`{"gpus": {
			"%d": {"util": 90, "power_w": 300, "sm_mhz": 1400, "processes": [{"pid": %d, "mem_mib": 2048}, {"pid": %d, "mem_mib": 512}]},
			"%d": {"util": 90, "power_w": 300, "sm_mhz": 1400, "processes": [{"pid": %d, "mem_mib": 1024}]}}}`,
			mine, j.PID, os.Getpid(), other, j.PID))
		onset := time.Now()
		var stray apiv1.Event
		waitFor(t, 30*time.Second, "the stray and unallocated events", func() bool {
			var ok1, ok2, ok3 bool
			stray, ok1 = hasEvent(t, id, "stray_gpu_process")
			_, ok2 = hasEvent(t, id, "unallocated_gpu")
			_, ok3 = hasEvent(t, id, "gpu_memory")
			return ok1 && ok2 && ok3
		})
		t.Logf("MEASURE stray process: event %s after the process appeared", time.Unix(0, int64(stray.TS*1e9)).Sub(onset).Round(time.Millisecond))
		if want := fmt.Sprintf("process %d", os.Getpid()); !strings.Contains(stray.Message, want) || !strings.Contains(stray.Message, "of no job") {
			t.Errorf("stray event %q", stray.Message)
		}
		if e, _ := hasEvent(t, id, "unallocated_gpu"); !strings.Contains(e.Message, fmt.Sprintf("uses GPU %d, which it was not given", other)) {
			t.Errorf("unallocated event %q", e.Message)
		}
		if e, _ := hasEvent(t, id, "gpu_memory"); !strings.Contains(e.Message, "3.0 GiB") {
			t.Errorf("gpu_memory event %q", e.Message)
		}
		finish(t, id)
	})

	t.Run("a GPU process that daemonizes out of the job's session is the job's, and dies with it", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("job cgroups need a root agent")
		}
		// The trainer's GPU process leaves the job's session and process
		// group (a double fork and setsid): only the job's cgroup still
		// holds it.
		escPid := filepath.Join(dir, "escapee.pid")
		stop := filepath.Join(dir, "escape.stop")
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "escape",
			Run: "(setsid sh -c 'echo $$ > " + escPid + ".tmp; mv " + escPid + ".tmp " + escPid + "; exec sleep 300' &); " +
				"exec python3 " + trainer + " " + stop,
			Resources: apiv1.Resources{GPUs: 1}, KillGrace: apiv1.Duration(2 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		var j apiv1.Job
		waitFor(t, 30*time.Second, "escape logging steps", func() bool {
			j, err = d.api.Job(ctx, id)
			return err == nil && j.State == apiv1.StateRunning && j.Points >= 10
		})
		var esc int
		waitFor(t, 10*time.Second, "the escapee's pid", func() bool {
			data, err := os.ReadFile(escPid)
			if err != nil {
				return false
			}
			esc, err = strconv.Atoi(strings.TrimSpace(string(data)))
			return err == nil
		})
		t.Cleanup(func() { _ = syscall.Kill(esc, syscall.SIGKILL) })
		// /proc/PID/stat: "pid (comm) state ppid pgrp session ...".
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", esc))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 4 || f[3] == strconv.FormatInt(j.PID, 10) {
			t.Fatalf("the escapee %d is still in the job's session: %s", esc, stat)
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", esc))
		if err != nil || !strings.Contains(string(data), "/job-") {
			t.Skipf("the agent runs jobs without cgroups here (escapee in %q, %v)", data, err)
		}
		gpuScriptRaw(t, script, fmt.Sprintf(`{"gpus": {"%d": {"util": 90, "power_w": 300, "sm_mhz": 1400,
			"processes": [{"pid": %d, "mem_mib": 1536}]}}}`, j.GPUs[0], esc))
		waitFor(t, 30*time.Second, "the escapee's GPU memory counted as the job's", func() bool {
			e, ok := hasEvent(t, id, "gpu_memory")
			return ok && strings.Contains(e.Message, fmt.Sprintf("processes [%d]", esc))
		})
		if e, ok := hasEvent(t, id, "stray_gpu_process"); ok {
			t.Errorf("the job's own process reported stray: %s", e.Message)
		}
		finish(t, id)
		// Gone once the job is terminal: the agent emptied the cgroup
		// before it reported the exit. A zombie has ended.
		stat, err = os.ReadFile(fmt.Sprintf("/proc/%d/stat", esc))
		if err == nil && !strings.Contains(string(stat), ") Z ") {
			t.Fatalf("the escapee %d outlived its cancelled job: %s", esc, stat)
		}
		if e, ok := hasEvent(t, id, "orphans_killed"); !ok || !strings.Contains(e.Message, strconv.Itoa(esc)) {
			t.Errorf("no orphans_killed event names the escapee: %+v", e)
		}
	})

	// GPU faults come last: a failing GPU stays failing in the dev agent.
	t.Run("XID 79 makes the job's GPU unhealthy; nothing more is placed on it", func(t *testing.T) {
		id, j, _ := run(t, "xid", nil)
		gpu := j.GPUs[0]
		onset := time.Now()
		gpuScriptRaw(t, script, fmt.Sprintf(`{"gpus": {"%d": {"xid": 79, "util": 50, "power_w": 200, "sm_mhz": 1400}}}`, gpu))
		var failing apiv1.GPU
		waitFor(t, 30*time.Second, "the GPU marked failing", func() bool {
			nodes, err := d.api.Nodes(ctx)
			if err != nil || len(nodes) != 1 {
				return false
			}
			for _, g := range nodes[0].GPUs {
				if g.Index == gpu && !g.Healthy {
					failing = g
					return true
				}
			}
			return false
		})
		nodes, _ := d.api.Nodes(ctx)
		node := nodes[0].ID
		a := hooks.waitNode(t, node, "gpu_unhealthy", gpu)
		t.Logf("MEASURE gpu unhealthy (XID 79 through the NVML event set): alert delivered %s after the XID", a.got.Sub(onset).Round(time.Millisecond))
		if failing.Fault != "XID 79 (GPU has fallen off the bus)" {
			t.Errorf("fault %q", failing.Fault)
		}
		if e, ok := hasEvent(t, id, "gpu_unhealthy"); !ok || !strings.Contains(e.Message, "XID 79") {
			t.Errorf("the job on the GPU got no gpu_unhealthy event: %+v", e)
		}
		finish(t, id)
		// Two GPUs, one failing: a 2-GPU job waits, and says why.
		big, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "big", Run: "true", Resources: apiv1.Resources{GPUs: 2}})
		if err != nil {
			t.Fatal(err)
		}
		q := waitState(t, d.api, big, apiv1.StateQueued, 10*time.Second)
		if !strings.Contains(q.Reason, "most free now: 1") {
			t.Errorf("2-GPU job on a node with a failing GPU: reason %q", q.Reason)
		}
		// Draining the other GPU leaves none; undraining it brings one back.
		other := 1 - gpu
		if _, err := d.api.Drain(ctx, node, []int{other}, false); err != nil {
			t.Fatal(err)
		}
		small, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "small", Run: "true", Resources: apiv1.Resources{GPUs: 1}})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the 1-GPU job to wait for a drained GPU", func() bool {
			j, err := d.api.Job(ctx, small)
			return err == nil && j.State == apiv1.StateQueued && strings.Contains(j.Reason, "most free now: 0")
		})
		if _, err := d.api.Drain(ctx, node, []int{other}, true); err != nil {
			t.Fatal(err)
		}
		if j := waitTerminal(t, d.api, small, 30*time.Second); j.State != apiv1.StateSucceeded || j.GPUs[0] != other {
			t.Errorf("after undrain: %s on GPUs %v, want succeeded on %d", j.State, j.GPUs, other)
		}
		if err := d.api.Cancel(ctx, big); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a lost GPU is unhealthy", func(t *testing.T) {
		nodes, err := d.api.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var healthy = -1
		for _, g := range nodes[0].GPUs {
			if g.Healthy {
				healthy = g.Index
			}
		}
		onset := time.Now()
		gpuScriptRaw(t, script, fmt.Sprintf(`{"gpus": {"%d": {"lost": true}}}`, healthy))
		a := hooks.waitNode(t, nodes[0].ID, "gpu_unhealthy", healthy)
		t.Logf("MEASURE gpu lost: alert delivered %s after the GPU stopped answering", a.got.Sub(onset).Round(time.Millisecond))
		if !strings.Contains(a.Text, "GPU is lost") {
			t.Errorf("lost GPU alert %q", a.Text)
		}
	})

}

// hookReceiver is a local webhook: it records every alert posted to it,
// and checks that no idempotency key comes with two different alerts.
type hookReceiver struct {
	url string
	mu  sync.Mutex
	got []hookAlert
}

// hookPayload is the webhook JSON contract (alert.Payload), spelled out
// here as a receiver would.
type hookPayload struct {
	ID       string   `json:"id"`
	AlertID  uint64   `json:"alert_id"`
	Kind     string   `json:"kind"`
	Text     string   `json:"text"`
	JobID    string   `json:"job_id"`
	JobName  string   `json:"job_name"`
	Node     string   `json:"node"`
	Evidence string   `json:"evidence"`
	GPUs     []uint32 `json:"gpus"`
	At       string   `json:"at"`
}

type hookAlert struct {
	hookPayload
	key string
	got time.Time
}

func newHookReceiver(t *testing.T) *hookReceiver {
	h := &hookReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p hookPayload
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		h.got = append(h.got, hookAlert{hookPayload: p, key: r.Header.Get("Idempotency-Key"), got: time.Now()})
		h.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	h.url = srv.URL + "/hook"
	return h
}

// wait returns the alert of kind for job id once it has been posted.
func (h *hookReceiver) wait(t *testing.T, id, kind string) hookAlert {
	t.Helper()
	var a hookAlert
	waitFor(t, 30*time.Second, "a "+kind+" webhook for "+id, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, x := range h.got {
			if x.JobID == id && x.Kind == kind {
				a = x
				return true
			}
		}
		return false
	})
	if a.key != a.ID || a.Text == "" {
		t.Errorf("alert %+v: Idempotency-Key %q, want its id and a text", a.hookPayload, a.key)
	}
	return a
}

// waitNode returns the alert of kind about node, naming gpu, once posted.
func (h *hookReceiver) waitNode(t *testing.T, node, kind string, gpu int) hookAlert {
	t.Helper()
	var a hookAlert
	waitFor(t, 30*time.Second, "a "+kind+" webhook for "+node, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, x := range h.got {
			if x.Node == node && x.Kind == kind && len(x.GPUs) == 1 && int(x.GPUs[0]) == gpu {
				a = x
				return true
			}
		}
		return false
	})
	return a
}

// j0GPUs returns the GPUs job id holds.
func j0GPUs(t *testing.T, d *devController, id string) []int {
	t.Helper()
	j, err := d.api.Job(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return j.GPUs
}

// demoTrainer is the absolute path of scripts/demo/train.py.
func demoTrainer(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("../scripts/demo/train.py")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHealthDashboard: the dashboard shows a job's condition, with its
// evidence, on the jobs list and the job page, and a failing GPU on the
// nodes page.
func TestHealthDashboard(t *testing.T) {
	b := newBrowser(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "gpus.json")
	gpuScriptRaw(t, script, `{"gpus": {}}`)
	t.Setenv("GANTRY_TEST_GPU_SCRIPT", script)
	trainer := filepath.Join(dir, "train.py")
	if err := os.WriteFile(trainer, []byte(healthTrainer), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDev(t, "", 1)
	b.ready(t)
	ctx := context.Background()
	stop := filepath.Join(dir, "stop")
	if err := os.WriteFile(stop, nil, 0o644); err != nil { // never logs a step
		t.Fatal(err)
	}
	id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "quiet", Run: "exec python3 " + trainer + " " + stop,
		Resources: apiv1.Resources{GPUs: 1}, Health: &apiv1.HealthSpec{StartupGrace: apiv1.Duration(2 * time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the job stalled", func() bool {
		j, err := d.api.Job(ctx, id)
		_, ok := conditionOf(j, "stalled")
		return err == nil && ok
	})
	b.do(t, "open the job page", chromedp.Navigate(d.addr+"/jobs/"+id), chromedp.WaitVisible(chromedp.CSS(`#job-state`)))
	b.waitJS(t, 10*time.Second, "the stalled condition on the job page", `!!document.querySelector('[data-condition="stalled"]')`)
	if txt := b.text(t, `[data-condition="stalled"]`); !strings.Contains(txt, "startup grace") {
		t.Errorf("job page condition %q lacks its evidence", txt)
	}
	b.do(t, "open the jobs list", chromedp.Navigate(d.addr+"/"))
	b.waitJS(t, 10*time.Second, "the stalled badge in the jobs list", `!!document.querySelector('.cond-stalled')`)
	if err := d.api.Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitTerminal(t, d.api, id, 30*time.Second)

	// A job requeued once, then cancelled when it stalls again
	// (max_requeues 1): its page lists the earlier attempt.
	rq, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "requeued", Run: "exec python3 " + trainer + " " + stop,
		Resources: apiv1.Resources{GPUs: 1}, KillGrace: apiv1.Duration(time.Second),
		Health: &apiv1.HealthSpec{StartupGrace: apiv1.Duration(time.Second), OnStall: "requeue", MaxRequeues: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if j := waitTerminal(t, d.api, rq, 60*time.Second); j.State != apiv1.StateCancelled || j.Attempt != 2 || len(j.Attempts) != 1 {
		t.Fatalf("requeued job ended %s on attempt %d with %d earlier, want cancelled on attempt 2", j.State, j.Attempt, len(j.Attempts))
	}
	b.do(t, "open the requeued job's page", chromedp.Navigate(d.addr+"/jobs/"+rq), chromedp.WaitVisible(chromedp.CSS(`#job-state`)))
	b.waitJS(t, 10*time.Second, "the earlier attempt listed", `!!document.querySelector('#attempts-panel:not([hidden]) tr[data-attempt="1"]')`)
	if txt := b.text(t, `tr[data-attempt="1"]`); !strings.Contains(txt, "stalled") {
		t.Errorf("earlier attempt row %q does not say why it was requeued", txt)
	}
	if txt := b.text(t, `#job-attempt`); txt != "2" {
		t.Errorf("attempt fact %q, want 2", txt)
	}

	gpuScriptRaw(t, script, `{"gpus": {"0": {"xid": 79, "util": 50, "power_w": 200}}}`)
	waitFor(t, 30*time.Second, "the GPU failing", func() bool {
		nodes, err := d.api.Nodes(ctx)
		return err == nil && len(nodes) == 1 && !nodes[0].GPUs[0].Healthy
	})
	b.do(t, "open the nodes page", chromedp.Navigate(d.addr+"/nodes"))
	b.waitJS(t, 10*time.Second, "the failing GPU on the nodes page", `!!document.querySelector('[data-gpu-health="failing"]')`)
	if txt := b.text(t, `[data-gpu-health="failing"]`); !strings.Contains(txt, "XID 79") {
		t.Errorf("nodes page shows %q", txt)
	}
	b.checkNoErrors(t)
}
