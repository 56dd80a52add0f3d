package scheduler

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// submitTimed submits a job created at createdMs that may wait timeout.
func (e *env) submitTimed(id string, n uint32, createdMs int64, timeout time.Duration) {
	e.t.Helper()
	s := spec(n, "", "")
	s.QueueTimeoutMs = timeout.Milliseconds()
	e.must(&gantrypb.SubmitJobCmd{JobId: id, Spec: s, AtMs: createdMs})
}

func TestQueueTimeoutFailsAWaitingJob(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 4, true)
	e.submit("busy", 3)
	e.s.Reconcile() // busy takes 3 of the 4 GPUs
	created := time.UnixMilli(1_000_000)
	e.submitTimed("big", 4, created.UnixMilli(), 10*time.Minute)
	e.submitTimed("patient", 4, created.UnixMilli(), time.Hour)
	e.submit("forever", 4)

	e.s.now = func() time.Time { return created.Add(10*time.Minute - time.Millisecond) }
	e.s.Reconcile()
	if st := e.job("big").State; st != gantrypb.JobState_JOB_STATE_QUEUED {
		t.Fatalf("big is %s before its deadline", st)
	}
	if want := created.Add(10 * time.Minute); !e.s.nextDeadline.Equal(want) {
		t.Fatalf("next deadline %v, want %v (the earliest ahead)", e.s.nextDeadline, want)
	}

	e.s.now = func() time.Time { return created.Add(10 * time.Minute) }
	e.s.Reconcile()
	j := e.job("big")
	const want = "still queued after 10m0s: waiting for 4 free GPUs; most free now: 1 on n1"
	if j.State != gantrypb.JobState_JOB_STATE_FAILED || j.Error != want {
		t.Fatalf("big at its deadline: %s %q, want failed %q", j.State, j.Error, want)
	}
	for _, id := range []string{"patient", "forever"} {
		if st := e.job(id).State; st != gantrypb.JobState_JOB_STATE_QUEUED {
			t.Fatalf("%s is %s", id, st)
		}
	}
	if want := created.Add(time.Hour); !e.s.nextDeadline.Equal(want) {
		t.Fatalf("next deadline %v, want %v", e.s.nextDeadline, want)
	}
}

// A node that is up in the store but whose agent is not connected to the
// leader cannot take the job: the timeout says it waits for that node.
func TestQueueTimeoutReasonCountsOnlyConnectedNodes(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 2, false)
	created := time.UnixMilli(1_000_000)
	e.submitTimed("j", 1, created.UnixMilli(), time.Minute)
	e.s.now = func() time.Time { return created.Add(time.Minute) }
	e.s.Reconcile()
	if j := e.job("j"); j.State != gantrypb.JobState_JOB_STATE_FAILED ||
		j.Error != "still queued after 1m0s: waiting for node n1 (down)" {
		t.Fatalf("job: %s %q", j.State, j.Error)
	}
}

// A job that fits when its deadline comes is placed, not failed.
func TestQueueTimeoutPlacesAJobThatFitsAtTheDeadline(t *testing.T) {
	e := newEnv(t)
	e.node("n1", 1, true)
	created := time.UnixMilli(1_000_000)
	e.submitTimed("j", 1, created.UnixMilli(), time.Minute)
	e.s.now = func() time.Time { return created.Add(time.Hour) }
	e.s.Reconcile()
	if st := e.job("j").State; st != gantrypb.JobState_JOB_STATE_ASSIGNED {
		t.Fatalf("job is %s, want assigned", st)
	}
}

// A new leader (a new scheduler on the same replicated store) computes the
// same deadline from the stored created_at.
func TestQueueTimeoutSurvivesFailover(t *testing.T) {
	e := newEnv(t)
	created := time.UnixMilli(1_000_000)
	e.submitTimed("j", 1, created.UnixMilli(), 5*time.Minute)
	e.s.now = func() time.Time { return created.Add(time.Minute) }
	e.s.Reconcile()
	if want := created.Add(5 * time.Minute); !e.s.nextDeadline.Equal(want) {
		t.Fatalf("old leader's deadline %v, want %v", e.s.nextDeadline, want)
	}

	next := New(e.st, e.raft, e.agents, NewWakeup(), logging.Discard())
	next.now = func() time.Time { return created.Add(5 * time.Minute) }
	next.Reconcile()
	j := e.job("j")
	if j.State != gantrypb.JobState_JOB_STATE_FAILED ||
		j.Error != "still queued after 5m0s: no agent connected yet: waiting for a node to register" {
		t.Fatalf("after failover: %s %q", j.State, j.Error)
	}
	// The old leader, had it kept running, would be refused.
	e.s.now = next.now
	e.s.Reconcile()
	if got := e.job("j"); got.FinishedAtMs != j.FinishedAtMs || !lifecycle.IsTerminal(got.State) {
		t.Fatalf("a second timeout changed the job: %v", got)
	}
}

// Run wakes at the deadline itself: with an interval far longer than the
// test, only the deadline timer can fail the job in time.
func TestRunWakesAtTheQueueDeadline(t *testing.T) {
	e := newEnv(t)
	e.s.Interval = time.Hour
	start := time.Now()
	e.submitTimed("j", 1, start.UnixMilli(), 300*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	e.s.Wake() // the submit's own wake-up, as the FSM's feed gives it
	testutil.WaitFor(t, 10*time.Second, func() bool {
		return e.job("j").State == gantrypb.JobState_JOB_STATE_FAILED
	}, "the job to fail at its queue deadline")
	j := e.job("j")
	if j.FinishedAtMs < start.UnixMilli()+300 || !strings.HasPrefix(j.Error, "still queued after 300ms: ") {
		t.Fatalf("failed job: finished %d (created %d), error %q", j.FinishedAtMs, start.UnixMilli(), j.Error)
	}
}
