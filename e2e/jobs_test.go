package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
)

// TestDevModeJobs runs the one-machine slice's user-visible behaviour
// against one dev-mode controller.
func TestDevModeJobs(t *testing.T) {
	d := startDev(t, "", 2)
	ctx := context.Background()

	t.Run("GPUSamplesFlowWithFakeGPUs", func(t *testing.T) {
		nodes, err := d.api.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes[0].GPUs) != 2 {
			t.Fatalf("node has %d GPUs, want 2 mock GPUs", len(nodes[0].GPUs))
		}
		var samples []apiv1.GPUSample
		waitFor(t, 10*time.Second, "two GPU samples", func() bool {
			samples, err = d.api.GPUs(ctx, nodes[0].ID)
			return err == nil && len(samples) >= 2
		})
		last := samples[len(samples)-1]
		if len(last.GPUs) != 2 {
			t.Fatalf("sample has %d GPUs, want 2", len(last.GPUs))
		}
		for _, g := range last.GPUs {
			if g.MemoryTotalBytes == 0 || g.PowerW <= 0 || g.TemperatureC <= 0 || g.SMClockMHz == 0 {
				t.Errorf("GPU %d sample has empty readings: %+v", g.Index, g)
			}
		}
		if samples[0].Seq >= last.Seq {
			t.Errorf("sample seqs not increasing: %d then %d", samples[0].Seq, last.Seq)
		}
	})

	t.Run("InvalidSpecIs400WithReason", func(t *testing.T) {
		cases := map[string]struct{ body, reason string }{
			"missing run":       {`{"name":"x"}`, "spec.run is required"},
			"unknown field":     {`{"run":"true","resouces":{"gpus":1}}`, "unknown field"},
			"negative gpus":     {`{"run":"true","resources":{"gpus":-1}}`, "spec.resources.gpus"},
			"bad duration":      {`{"run":"true","max_duration":"soon"}`, "invalid duration"},
			"not json":          {`run: true`, "invalid job spec"},
			"trailing garbage":  {`{"run":"true"} {}`, "trailing data"},
			"reserved env":      {`{"run":"true","env":{"CUDA_VISIBLE_DEVICES":"0"}}`, "set by Gantry"},
			"too many gpus ask": {`{"run":"true","resources":{"gpus":1000}}`, "spec.resources.gpus"},
		}
		for name, c := range cases {
			resp, err := http.Post(d.addr+"/v1/jobs", "application/json", strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			var body apiv1.Error
			_ = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body.Error, c.reason) {
				t.Errorf("%s: got %d %q, want 400 with %q", name, resp.StatusCode, body.Error, c.reason)
			}
		}
		jobs, err := d.api.Jobs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			if strings.HasPrefix(j.Name, "x") {
				t.Errorf("a rejected spec was stored: %+v", j)
			}
		}
	})

	t.Run("UnknownJobIs404", func(t *testing.T) {
		for _, path := range []string{"/v1/jobs/nope", "/v1/jobs/nope/metrics", "/v1/jobs/nope/logs", "/v1/jobs/nope/events", "/v1/nodes/nope/gpus"} {
			resp, err := http.Get(d.addr + path)
			if err != nil {
				t.Fatal(err)
			}
			var body apiv1.Error
			_ = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound || body.Error == "" {
				t.Errorf("GET %s: %d %q, want 404 with a reason", path, resp.StatusCode, body.Error)
			}
		}
		err := d.api.Cancel(ctx, "nope")
		var apiErr *client.APIError
		if !errors.As(err, &apiErr) || apiErr.Status != http.StatusNotFound {
			t.Errorf("cancel of unknown job: %v, want a 404", err)
		}
		err = d.api.Watch(ctx, "nope", func(apiv1.Frame) error { return nil })
		if !errors.Is(err, client.ErrUnknownJob) {
			t.Errorf("watch of unknown job: %v, want ErrUnknownJob (close 4404)", err)
		}
	})

	t.Run("GarbageMetricsAreCountedNotFatal", func(t *testing.T) {
		dir := t.TempDir()
		script := filepath.Join(dir, "garbage.sh")
		body := `#!/bin/sh
f="$GANTRY_METRICS_FILE"
echo 'not json at all' >> "$f"
echo '{"step": 1, "loss": 2.5}' >> "$f"
echo '[1, 2, 3]' >> "$f"
echo '{"step": 2, "loss": NaN}' >> "$f"
echo '{"step": 2.5, "loss": 1}' >> "$f"
echo '{"step": 3, "loss": 1e999}' >> "$f"
head -c 1100000 /dev/zero | tr '\0' 'x' >> "$f"; echo >> "$f"
echo '{"step": 4, "loss": 0.5, "note": "strings are ignored"}' >> "$f"
echo 'done'
`
		if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "garbage", Run: script})
		if err != nil {
			t.Fatal(err)
		}
		job := waitTerminal(t, d.api, id, 30*time.Second)
		if job.State != apiv1.StateSucceeded {
			t.Fatalf("job with bad metric lines ended %s (%s), want succeeded", job.State, job.Error)
		}
		if job.BadLines != 6 {
			t.Errorf("bad_lines = %d, want 6", job.BadLines)
		}
		if job.FinalMetrics["step"] != 4 || job.FinalMetrics["loss"] != 0.5 {
			t.Errorf("final_metrics = %v, want step 4 and loss 0.5", job.FinalMetrics)
		}
		if pts := allPoints(t, d.api, id); len(pts) != 2 {
			t.Errorf("%d points stored, want the 2 good lines", len(pts))
		}
		events, err := d.api.Events(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var counted uint64
		for _, e := range events {
			if e.Kind == "bad_metric_lines" {
				counted += e.Count
				if e.Message == "" {
					t.Errorf("bad_metric_lines event without a reason: %+v", e)
				}
			}
		}
		if counted != 6 {
			t.Errorf("events report %d bad lines, want 6: %+v", counted, events)
		}
		logs, err := d.api.Logs(ctx, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.Data, "done") || !logs.Complete {
			t.Errorf("logs = %+v, want the job's output and complete", logs)
		}
	})

	t.Run("CancelEscalatesAndKeepsMetrics", func(t *testing.T) {
		run := `echo '{"step": 1, "loss": 3}' >> "$GANTRY_METRICS_FILE"; trap '' TERM; while :; do sleep 0.05; done`
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "stubborn", Run: run, KillGrace: apiv1.Duration(300 * time.Millisecond)})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 15*time.Second, "the job's first point", func() bool {
			j, err := d.api.Job(ctx, id)
			return err == nil && j.Points == 1
		})
		if err := d.api.Cancel(ctx, id); err != nil {
			t.Fatal(err)
		}
		job := waitTerminal(t, d.api, id, 15*time.Second)
		if job.State != apiv1.StateCancelled || job.Signal != "SIGKILL" {
			t.Errorf("cancelled job: state %s signal %q, want cancelled by SIGKILL", job.State, job.Signal)
		}
		if job.FinalMetrics["loss"] != 3 {
			t.Errorf("final_metrics = %v, want loss 3", job.FinalMetrics)
		}
		events, err := d.api.Events(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		escalated := false
		for _, e := range events {
			escalated = escalated || e.Kind == "kill_escalated"
		}
		if !escalated {
			t.Errorf("no kill_escalated event after kill_grace: %+v", events)
		}
		if err := d.api.Cancel(ctx, id); err == nil {
			t.Error("cancelling a finished job succeeded; want 409")
		}
	})

	t.Run("LiveWatchEndsWithFinal", func(t *testing.T) {
		run := `for i in $(seq 1 40); do echo "{\"step\": $i, \"loss\": $i}" >> "$GANTRY_METRICS_FILE"; sleep 0.02; done`
		id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "live", Run: run, Resources: apiv1.Resources{GPUs: 1}})
		if err != nil {
			t.Fatal(err)
		}
		seqs := map[uint64]int{}
		var types []string
		var final *apiv1.Job
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		err = d.api.Watch(wctx, id, func(f apiv1.Frame) error {
			if len(types) == 0 || types[len(types)-1] != f.Type {
				types = append(types, f.Type)
			}
			for _, p := range f.Points {
				seqs[p.Seq]++
			}
			if f.Type == apiv1.FrameFinal {
				final = f.Job
			}
			return nil
		})
		if err != nil {
			t.Fatalf("watch: %v (frames %v)", err, types)
		}
		if types[0] != apiv1.FrameSnapshot || final == nil {
			t.Fatalf("frames %v: want a snapshot first and a final frame last", types)
		}
		if final.FinalMetrics["step"] != 40 || final.FinalMetrics["loss"] != 40 {
			t.Errorf("final frame metrics = %v, want step 40", final.FinalMetrics)
		}
		for seq, n := range seqs {
			if n != 1 {
				t.Errorf("point seq %d delivered %d times", seq, n)
			}
		}
		if stored := allPoints(t, d.api, id); len(stored) != len(seqs) || len(seqs) != 40 {
			t.Errorf("watcher saw %d points, %d stored, want 40 and 40", len(seqs), len(stored))
		}
	})
}

// TestStateSurvivesControllerRestart restarts a dev controller on the same
// data dir: the jobs and their final metrics come back from the Raft log.
func TestStateSurvivesControllerRestart(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, dir, 1)
	ctx := context.Background()
	id, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "before-restart", Run: `echo '{"step": 7, "acc": 0.9}' >> "$GANTRY_METRICS_FILE"`})
	if err != nil {
		t.Fatal(err)
	}
	before := waitTerminal(t, d.api, id, 30*time.Second)
	d.stop()

	d2 := startDev(t, dir, 1)
	after, err := d2.api.Job(ctx, id)
	if err != nil {
		t.Fatalf("job gone after restart: %v", err)
	}
	if after.State != before.State || after.FinalMetrics["acc"] != 0.9 || after.FinalMetrics["step"] != 7 {
		t.Errorf("after restart: %s %v, before: %s %v", after.State, after.FinalMetrics, before.State, before.FinalMetrics)
	}
	// And it still runs new jobs.
	id2, err := d2.api.Submit(ctx, apiv1.JobSpec{Name: "after-restart", Run: "true"})
	if err != nil {
		t.Fatal(err)
	}
	if j := waitTerminal(t, d2.api, id2, 30*time.Second); j.State != apiv1.StateSucceeded {
		t.Errorf("job after restart ended %s: %s", j.State, j.Error)
	}
}
