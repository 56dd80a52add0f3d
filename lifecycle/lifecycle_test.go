package lifecycle

import (
	"math"
	"slices"
	"testing"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func code(c int32) *int32 { return &c }

// TestClassifyExit pins the exit rules: the state and error text are
// stored, so a change here is a change of contract.
func TestClassifyExit(t *testing.T) {
	const (
		ok        = gantrypb.JobState_JOB_STATE_SUCCEEDED
		failed    = gantrypb.JobState_JOB_STATE_FAILED
		cancelled = gantrypb.JobState_JOB_STATE_CANCELLED
	)
	for _, tt := range []struct {
		name      string
		exit      *gantrypb.JobExit
		cancel    bool
		wantState gantrypb.JobState
		wantErr   string
	}{
		{"clean exit", &gantrypb.JobExit{ExitCode: code(0)}, false, ok, ""},
		{"non-zero exit", &gantrypb.JobExit{ExitCode: code(3)}, false, failed, "exited with code 3"},
		{"signal", &gantrypb.JobExit{Signal: "SIGSEGV"}, false, failed, "killed by SIGSEGV"},
		{"unknown", &gantrypb.JobExit{}, false, failed, "exit status unknown"},
		{"agent error", &gantrypb.JobExit{Error: "vanished"}, false, failed, "vanished"},
		{"cancelled", &gantrypb.JobExit{Reason: "cancelled", Signal: "SIGTERM"}, false, cancelled, "cancelled: killed by SIGTERM"},
		{"cancel requested, no reason", &gantrypb.JobExit{ExitCode: code(1)}, true, cancelled, "cancelled: exited with code 1"},
		{"cancel raced a clean exit", &gantrypb.JobExit{Reason: "cancelled", ExitCode: code(0)}, true, ok, ""},
		{"cancel requested, error", &gantrypb.JobExit{Error: "gone"}, true, cancelled, "cancelled: gone"},
		{"max_duration", &gantrypb.JobExit{Reason: "max_duration", Signal: "SIGKILL"}, false, failed, "exceeded max_duration: killed by SIGKILL"},
		{"max_duration with error", &gantrypb.JobExit{Reason: "max_duration", Error: "boom"}, false, failed, "boom"},
		{"max_duration beats a requested cancel", &gantrypb.JobExit{Reason: "max_duration", ExitCode: code(0)}, true, failed, "exceeded max_duration: exited with code 0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, msg := ClassifyExit(tt.exit, tt.cancel)
			if st != tt.wantState || msg != tt.wantErr {
				t.Fatalf("ClassifyExit = %v, %q; want %v, %q", st, msg, tt.wantState, tt.wantErr)
			}
		})
	}
}

// TestStates checks that the API names and the terminal rules agree with
// the stored enum.
func TestStates(t *testing.T) {
	var names []string
	for v := range gantrypb.JobState_name {
		s := gantrypb.JobState(v)
		if s == gantrypb.JobState_JOB_STATE_UNSPECIFIED {
			continue
		}
		name := StateName(s)
		names = append(names, name)
		if IsTerminal(s) != IsTerminalName(name) {
			t.Errorf("%v: IsTerminal %v, IsTerminalName(%q) %v", s, IsTerminal(s), name, IsTerminalName(name))
		}
	}
	slices.Sort(names)
	want := slices.Sorted(slices.Values(StateNames))
	if !slices.Equal(names, want) {
		t.Fatalf("enum names %v, StateNames %v", names, want)
	}
	for s, holds := range map[gantrypb.JobState]bool{
		gantrypb.JobState_JOB_STATE_QUEUED: false, gantrypb.JobState_JOB_STATE_ASSIGNED: true,
		gantrypb.JobState_JOB_STATE_RUNNING: true, gantrypb.JobState_JOB_STATE_SUCCEEDED: false,
		gantrypb.JobState_JOB_STATE_LOST: false,
	} {
		if HoldsGPUs(s) != holds {
			t.Errorf("HoldsGPUs(%v) = %v", s, !holds)
		}
	}
	if StateName(gantrypb.JobState_JOB_STATE_LOST) != StateLost || !IsTerminalName(StateLost) || IsTerminalName(StateRunning) {
		t.Fatal("state names changed")
	}
}

func TestQueueDeadlineMs(t *testing.T) {
	job := func(created, timeout int64) *gantrypb.Job {
		return &gantrypb.Job{CreatedAtMs: created, Spec: &gantrypb.JobSpec{QueueTimeoutMs: timeout}}
	}
	for _, tt := range []struct {
		name   string
		j      *gantrypb.Job
		want   int64
		wantOK bool
	}{
		{"created plus timeout", job(1000, 60_000), 61_000, true},
		{"no timeout", job(1000, 0), 0, false},
		{"negative timeout", job(1000, -5), 0, false},
		{"too large to add never runs out", job(1000, math.MaxInt64-999), 0, false},
		{"largest that adds", job(1000, math.MaxInt64-1000), math.MaxInt64, true},
		{"no spec", &gantrypb.Job{CreatedAtMs: 5}, 0, false},
	} {
		got, ok := QueueDeadlineMs(tt.j)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("%s: QueueDeadlineMs = %d, %v; want %d, %v", tt.name, got, ok, tt.want, tt.wantOK)
		}
	}
}
