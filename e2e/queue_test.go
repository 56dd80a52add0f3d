package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
)

// TestQueueReasonsAndTimeout runs against a real dev controller with two
// mock GPUs: a job no node could ever run is refused at submit, a job
// waiting for busy GPUs says so in GET, and a queue_timeout fails a job
// that waited too long, with an event saying why.
func TestQueueReasonsAndTimeout(t *testing.T) {
	d := startDev(t, "", 2)
	ctx := context.Background()

	_, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "too-big", Run: "true", Resources: apiv1.Resources{GPUs: 8}})
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest ||
		!strings.HasPrefix(apiErr.Message, "the job can never be placed: no node has 8 GPUs: the largest fit is 2 (local, 2× ") {
		t.Fatalf("submit of 8 GPUs on a 2-GPU cluster: %v, want 400 naming the largest fit", err)
	}
	t.Logf("impossible job refused: %s", apiErr.Message)
	if jobs, err := d.api.Jobs(ctx); err != nil || len(jobs) != 0 {
		t.Fatalf("after the refusal: jobs %v (%v), want none stored", jobs, err)
	}

	holder, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "holder", Run: "sleep 300", Resources: apiv1.Resources{GPUs: 2}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the holder to run", func() bool {
		j, err := d.api.Job(ctx, holder)
		return err == nil && j.State == apiv1.StateRunning
	})

	waiter, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "waiter", Run: "true", Resources: apiv1.Resources{GPUs: 1}})
	if err != nil {
		t.Fatal(err)
	}
	const wantReason = "waiting for 1 free GPU; most free now: 0 on local"
	var got apiv1.Job
	waitFor(t, 10*time.Second, "the waiter's reason", func() bool {
		got, err = d.api.Job(ctx, waiter)
		return err == nil && got.State == apiv1.StateQueued && got.Reason == wantReason
	})
	b, _ := json.Marshal(map[string]string{"id": got.ID, "state": got.State, "reason": got.Reason})
	t.Logf("GET /v1/jobs/%s: %s", waiter, b)

	timed, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "impatient", Run: "true", Resources: apiv1.Resources{GPUs: 2},
		QueueTimeout: apiv1.Duration(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	j := waitTerminal(t, d.api, timed, 20*time.Second)
	const wantErr = "still queued after 1s: waiting for 2 free GPUs; most free now: 0 on local"
	if j.State != apiv1.StateFailed || j.Error != wantErr || j.Reason != "" {
		t.Fatalf("impatient job ended %s with error %q reason %q; want failed, %q", j.State, j.Error, j.Reason, wantErr)
	}
	if waited := j.FinishedAt.Sub(*j.CreatedAt); waited < time.Second || waited > 10*time.Second {
		t.Errorf("impatient job failed %s after its submit, want about its 1s queue_timeout", waited)
	}
	evs, err := d.api.Events(ctx, timed)
	if err != nil || len(evs) != 1 || evs[0].Kind != "queue_timeout" || evs[0].Message != wantErr {
		t.Fatalf("events of the impatient job: %+v (%v), want one queue_timeout event", evs, err)
	}
	t.Logf("queue timeout: state=%s error=%q event=%s", j.State, j.Error, evs[0].Kind)

	// Once the holder is gone the waiter runs: it was waiting, not stuck.
	if err := d.api.Cancel(ctx, holder); err != nil {
		t.Fatal(err)
	}
	if j := waitTerminal(t, d.api, waiter, 30*time.Second); j.State != apiv1.StateSucceeded {
		t.Fatalf("waiter ended %s (%s) after the GPUs freed up, want succeeded", j.State, j.Error)
	}
}
