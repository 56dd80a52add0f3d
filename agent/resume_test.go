package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/agent/metricsfile"
	"github.com/gantry-ml/gantry/agent/runner"
	"github.com/gantry-ml/gantry/agent/safefile"
	"github.com/gantry-ml/gantry/agent/spool"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

const testTimeout = 15 * time.Second

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, testTimeout, cond, what)
}

// testAgent is an Agent without link or GPUs: jobs, spool and recovery,
// which is all re-adoption involves. stop ends it as a restart would.
type testAgent struct {
	*Agent
	cancel context.CancelFunc
}

func newTestAgent(t *testing.T, dataDir string, sp *spool.Spool) *testAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{
		cfg:   Config{NodeID: "test", DataDir: dataDir},
		log:   slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		spool: sp, jobs: map[string]*job{}, ctx: ctx,
	}
	if err := a.installHelper(); err != nil {
		t.Fatal(err)
	}
	ta := &testAgent{Agent: a, cancel: cancel}
	t.Cleanup(ta.stop)
	return ta
}

// stop stops the agent's job goroutines; the jobs run on.
func (a *testAgent) stop() {
	a.cancel()
	a.wg.Wait()
}

// testWriter sends the agent's log to the test's.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func openSpool(t *testing.T, dir string) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(filepath.Join(dir, "spool.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp
}

// records returns job id's spooled records, with their spool indexes.
func records(t *testing.T, sp *spool.Spool, id string) ([]*gantrypb.Record, []uint64) {
	t.Helper()
	es, err := sp.Read(0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var recs []*gantrypb.Record
	var idx []uint64
	for _, e := range es {
		if e.Record.JobId == id {
			recs = append(recs, e.Record)
			idx = append(idx, e.Index)
		}
	}
	return recs, idx
}

// savedJob reads job id's stored state; nil if there is none.
func savedJob(t *testing.T, sp *spool.Spool, id string) *gantrypb.AgentJob {
	t.Helper()
	jobs, err := sp.Jobs()
	if err != nil {
		t.Fatal(err)
	}
	data, ok := jobs[id]
	if !ok {
		return nil
	}
	st := &gantrypb.AgentJob{}
	if err := proto.Unmarshal(data, st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitExit waits for job id's exit record and checks that the stored state
// points at it.
func waitExit(t *testing.T, sp *spool.Spool, id string) *gantrypb.JobExit {
	t.Helper()
	var exit *gantrypb.JobExit
	var exitIdx uint64
	waitFor(t, "exit record of "+id, func() bool {
		recs, idx := records(t, sp, id)
		for i, r := range recs {
			if x := r.GetExit(); x != nil {
				exit, exitIdx = x, idx[i]
				return true
			}
		}
		return false
	})
	if st := savedJob(t, sp, id); st == nil || st.ExitIndex != exitIdx {
		t.Fatalf("stored state %v does not point at the exit record %d", st, exitIdx)
	}
	return exit
}

// twoHalves writes lines 1..10 (line 5 alone has "early"), waits for a file
// named go, writes 11..20 (line 20 alone has "last_only") and exits 0. It
// logs "line N" for each.
const twoHalves = `i=1
while [ $i -le 20 ]; do
  if [ $i -eq 11 ]; then
    echo > half
    while [ ! -e go ]; do sleep 0.01; done
  fi
  extra=""
  [ $i -eq 5 ] && extra=', "early": 5'
  [ $i -eq 20 ] && extra=', "last_only": 1'
  printf '{"step": %d, "loss": %d%s}\n' $i $((100 - i)) "$extra" >> "$GANTRY_METRICS_FILE"
  echo "line $i"
  i=$((i + 1))
done`

// TestRestartResumesFromStoredOffsets stops an agent in the middle of a
// job, lets the job write while no agent runs, and starts a new agent on
// the same spool: every line ends up spooled exactly once, the log bytes
// are contiguous, the final metrics hold keys from before the restart, and
// the job stays in Hello's active jobs.
func TestRestartResumesFromStoredOffsets(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	first := newTestAgent(t, dir, sp)
	const id = "job-1"
	first.start(&gantrypb.StartJob{JobId: id, Spec: &gantrypb.JobSpec{Run: twoHalves}})
	jd := jobDir(dir, id)
	waitFor(t, "first half written", func() bool {
		_, err := os.Stat(filepath.Join(jd, "half"))
		return err == nil
	})
	size := func(name string) int64 {
		fi, err := os.Stat(filepath.Join(jd, name))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	waitFor(t, "first half spooled", func() bool {
		st := savedJob(t, sp, id)
		return st.MetricsOffset == size(MetricsFileName) && st.LogOffset == size(LogFileName)
	})
	first.stop()
	stopped := savedJob(t, sp, id)
	if stopped.Pid == 0 || stopped.StartTime == 0 || stopped.BootId == "" || stopped.StatusFile == "" {
		t.Fatalf("stored state lacks the process identity: %v", stopped)
	}

	// The job writes its second half and exits while no agent runs.
	if err := os.WriteFile(filepath.Join(jd, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "job to exit", func() bool {
		_, err := os.Stat(stopped.StatusFile)
		return err == nil
	})

	second := newTestAgent(t, dir, sp)
	if err := second.recover(); err != nil {
		t.Fatal(err)
	}
	if active := (*linkHandler)(second.Agent).Hello().ActiveJobs; !slices.Contains(active, id) {
		t.Fatalf("Hello.active_jobs = %v, want %s", active, id)
	}
	exit := waitExit(t, sp, id)
	if exit.ExitCode == nil || *exit.ExitCode != 0 || exit.Signal != "" || exit.Error != "" {
		t.Fatalf("exit = %v, want a plain exit 0", exit)
	}
	want := map[string]float64{"step": 20, "loss": 80, "early": 5, "last_only": 1}
	for k, v := range want {
		if got, ok := exit.FinalMetrics[k]; !ok || got != v {
			t.Errorf("final_metrics[%q] = %v (present %v), want %v; all: %v", k, got, ok, v, exit.FinalMetrics)
		}
	}

	recs, _ := records(t, sp, id)
	var steps []int64
	var log strings.Builder
	var readopted bool
	for i, r := range recs {
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d has seq %d: seqs must stay dense across the restart", i, r.Seq)
		}
		switch b := r.Body.(type) {
		case *gantrypb.Record_Point:
			steps = append(steps, b.Point.GetStep())
		case *gantrypb.Record_Log:
			if int(b.Log.Offset) != log.Len() {
				t.Fatalf("log chunk at offset %d after %d bytes: a gap or an overlap", b.Log.Offset, log.Len())
			}
			log.Write(b.Log.Data)
		case *gantrypb.Record_Event:
			readopted = readopted || b.Event.Kind == string(lifecycle.EventReadopted)
		}
	}
	var wantSteps []int64
	var wantLog strings.Builder
	for i := int64(1); i <= 20; i++ {
		wantSteps = append(wantSteps, i)
		fmt.Fprintf(&wantLog, "line %d\n", i)
	}
	if !slices.Equal(steps, wantSteps) {
		t.Errorf("spooled steps %v, want 1..20 once each", steps)
	}
	if log.String() != wantLog.String() {
		t.Errorf("spooled log %q, want %q", log.String(), wantLog.String())
	}
	if !readopted {
		t.Error("no readopted event")
	}
}

// TestRestartCancelAdoptedJob: a cancel for a re-adopted job signals it,
// is persisted, and the exit says cancelled.
func TestRestartCancelAdoptedJob(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	first := newTestAgent(t, dir, sp)
	const id = "job-c"
	first.start(&gantrypb.StartJob{JobId: id, Spec: &gantrypb.JobSpec{Run: "echo > ready; exec sleep 30"}})
	waitFor(t, "job ready", func() bool {
		_, err := os.Stat(filepath.Join(jobDir(dir, id), "ready"))
		st := savedJob(t, sp, id)
		return err == nil && st != nil && st.Pid != 0
	})
	first.stop()

	second := newTestAgent(t, dir, sp)
	if err := second.recover(); err != nil {
		t.Fatal(err)
	}
	(*linkHandler)(second.Agent).Cancel(&gantrypb.CancelJob{JobId: id})
	exit := waitExit(t, sp, id)
	if exit.Reason != string(lifecycle.ReasonCancelled) || exit.Signal != "SIGTERM" {
		t.Fatalf("exit = %v, want cancelled by SIGTERM", exit)
	}
	if st := savedJob(t, sp, id); st.CancelReason != string(lifecycle.ReasonCancelled) || st.CancelAt == 0 {
		t.Fatalf("cancel not persisted: %v", st)
	}
}

// TestRestartJobsThatCannotBeFollowed: a saved job whose process cannot be
// followed is reported at once with an exit record that says why (or with
// the status its supervisor recorded), never silently dropped.
func TestRestartJobsThatCannotBeFollowed(t *testing.T) {
	bootID, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	boot := strings.TrimSpace(string(bootID))

	tests := []struct {
		name string
		// state is the saved job; statusFile is where a status is
		// written first when status is not empty.
		state  func(statusFile string) *gantrypb.AgentJob
		status string
		code   int32 // -1: none
		errHas string
	}{
		{
			name:   "agent died while launching",
			state:  func(string) *gantrypb.AgentJob { return &gantrypb.AgentJob{StartedAt: 1} },
			code:   -1,
			errHas: "before its process was recorded",
		},
		{
			name:   "started by an agent that could not re-adopt",
			state:  func(string) *gantrypb.AgentJob { return &gantrypb.AgentJob{Pid: 12345} },
			code:   -1,
			errHas: "cannot re-adopt jobs",
		},
		{
			name: "pid reused, nothing recorded",
			state: func(sf string) *gantrypb.AgentJob {
				// Our own pid with a start time that is not ours.
				return &gantrypb.AgentJob{Pid: int64(os.Getpid()), StartTime: 1, BootId: boot, StatusFile: sf}
			},
			code:   -1,
			errHas: "process vanished while the agent was down; exit status unknown",
		},
		{
			name: "ended with a recorded status",
			state: func(sf string) *gantrypb.AgentJob {
				return &gantrypb.AgentJob{Pid: 1 << 30, StartTime: 1, BootId: boot, StatusFile: sf}
			},
			status: `{"version":1,"exit_code":3,"ended_at":"2026-01-02T03:04:05Z"}`,
			code:   3,
		},
		{
			name: "host rebooted",
			state: func(sf string) *gantrypb.AgentJob {
				return &gantrypb.AgentJob{Pid: 1 << 30, StartTime: 1, BootId: "an-earlier-boot", StatusFile: sf}
			},
			code:   -1,
			errHas: "rebooted",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			sp := openSpool(t, dir)
			const id = "job-x"
			sf := filepath.Join(jobDir(dir, id), runner.StatusFileName)
			if err := os.MkdirAll(filepath.Dir(sf), 0o750); err != nil {
				t.Fatal(err)
			}
			if tt.status != "" {
				if err := os.WriteFile(sf, []byte(tt.status), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			st := tt.state(sf)
			st.JobId = id
			data, err := proto.Marshal(st)
			if err != nil {
				t.Fatal(err)
			}
			if err := sp.PutJob(id, data); err != nil {
				t.Fatal(err)
			}
			a := newTestAgent(t, dir, sp)
			if err := a.recover(); err != nil {
				t.Fatal(err)
			}
			exit := waitExit(t, sp, id)
			if !strings.Contains(exit.Error, tt.errHas) || (tt.errHas == "" && exit.Error != "") {
				t.Fatalf("exit error %q, want it to contain %q", exit.Error, tt.errHas)
			}
			switch {
			case tt.code < 0 && exit.ExitCode != nil:
				t.Fatalf("exit code %d reported for an unknown status", *exit.ExitCode)
			case tt.code >= 0 && (exit.ExitCode == nil || *exit.ExitCode != tt.code):
				t.Fatalf("exit code %v, want %d", exit.ExitCode, tt.code)
			}
		})
	}
}

func TestReplayFinal(t *testing.T) {
	long := `{"step": 99, "x": "` + strings.Repeat("y", metricsfile.MaxLineBytes) + `"}`
	content := `{"step": 1, "loss": 3, "a": 1}` + "\n" +
		"not json\n" +
		long + "\n" +
		"\n" +
		`{"step": 2, "loss": 2}` + "\n" +
		`{"step": 3, "loss": 1, "b": 7}` + "\n"
	dir := t.TempDir()
	path := filepath.Join(dir, MetricsFileName)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	upToStep2 := int64(strings.Index(content, `{"step": 3`))
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		path   string
		offset int64
		want   map[string]float64
		err    error
	}{
		{"nothing read yet", path, 0, map[string]float64{}, nil},
		{"up to a line boundary", path, upToStep2, map[string]float64{"step": 2, "loss": 2, "a": 1}, nil},
		{"everything", path, int64(len(content)), map[string]float64{"step": 3, "loss": 1, "a": 1, "b": 7}, nil},
		{"file gone", filepath.Join(dir, "nope"), 10, map[string]float64{}, os.ErrNotExist},
		// Swapped while the agent was down: refused, not blocked on.
		{"fifo", fifo, 10, map[string]float64{}, safefile.ErrUnsafe},
		{"dev zero", zero, 10, map[string]float64{}, safefile.ErrUnsafe},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			final, err := replayFinal(tt.path, tt.offset)
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if got := final.Metrics(); !maps.Equal(got, tt.want) {
				t.Fatalf("final = %v, want %v", got, tt.want)
			}
		})
	}
}
