package cli

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

func ptr[T any](v T) *T { return &v }

func pt(seq uint64, step int64, kv ...any) apiv1.Point {
	p := apiv1.Point{Seq: seq, Step: ptr(step), Values: map[string]float64{}}
	for i := 0; i < len(kv); i += 2 {
		p.Values[kv[i].(string)] = kv[i+1].(float64)
	}
	return p
}

var sample = &apiv1.GPUSample{Seq: 1, GPUs: []apiv1.GPUStat{
	{Index: 0, UtilizationPct: 97.4, MemoryUsedBytes: 30 << 30, MemoryTotalBytes: 80 << 30},
	{Index: 1, UtilizationPct: 12, MemoryUsedBytes: 1 << 30, MemoryTotalBytes: 80 << 30},
}}

func TestProgressLine(t *testing.T) {
	running := apiv1.Job{ID: "j-1", State: apiv1.StateRunning, GPUs: []int{0}}
	tests := []struct {
		name   string
		frames []apiv1.Frame
		width  int
		bar    bool
		want   string
	}{
		{
			name: "nothing yet",
			want: "connecting",
		},
		{
			name:   "queued",
			frames: []apiv1.Frame{{Type: apiv1.FrameSnapshot, Job: &apiv1.Job{State: apiv1.StateQueued}}},
			want:   "queued",
		},
		{
			name: "step with total and bar",
			frames: []apiv1.Frame{
				{Type: apiv1.FrameSnapshot, Job: &running, Points: []apiv1.Point{pt(1, 0, "total_steps", 300.0)}},
				{Type: apiv1.FrameMetrics, Points: []apiv1.Point{pt(2, 150, "loss", 0.5)}},
			},
			bar:  true,
			want: "running  step 150/300 [##########----------]  50%  loss=0.5",
		},
		{
			name: "plain lines have no bar",
			frames: []apiv1.Frame{
				{Type: apiv1.FrameSnapshot, Job: &running, Points: []apiv1.Point{pt(1, 0, "total_steps", 300.0)}},
				{Type: apiv1.FrameMetrics, Points: []apiv1.Point{pt(2, 30, "loss", 0.5)}},
			},
			want: "running  step 30/300  loss=0.5",
		},
		{
			name: "step without total",
			frames: []apiv1.Frame{
				{Type: apiv1.FrameSnapshot, Job: &running, Points: []apiv1.Point{pt(1, 7, "loss", 2.25)}},
			},
			bar:  true,
			want: "running  step 7  loss=2.25",
		},
		{
			name: "four most recent metrics, shown by name",
			frames: []apiv1.Frame{
				{Type: apiv1.FrameSnapshot, Job: &running, Points: []apiv1.Point{
					pt(1, 1, "eval_loss", 3.0, "zeta", 1.0),
				}},
				{Type: apiv1.FrameMetrics, Points: []apiv1.Point{
					pt(2, 2, "loss", 1.5, "lr", 0.0003, "tokens_per_s", 12345.67, "grad_norm", 0.9),
				}},
			},
			want: "running  step 2  grad_norm=0.9 loss=1.5 lr=0.0003 tokens_per_s=12345.7",
		},
		{
			name: "replayed points are ignored",
			frames: []apiv1.Frame{
				{Type: apiv1.FrameMetrics, Job: &running, Points: []apiv1.Point{pt(5, 50, "loss", 1.0)}},
				{Type: apiv1.FrameSnapshot, Points: []apiv1.Point{pt(4, 40, "loss", 9.0)}},
			},
			want: "running  step 50  loss=1",
		},
		{
			name: "GPUs of the job only",
			frames: []apiv1.Frame{
				{Type: apiv1.FrameSnapshot, Job: &running},
				{Type: apiv1.FrameGPU, GPU: sample},
			},
			want: "running  gpu0 97% 30.0/80.0G",
		},
		{
			name: "all GPUs when the job has none assigned",
			frames: []apiv1.Frame{
				{Type: apiv1.FrameSnapshot, Job: &apiv1.Job{State: apiv1.StateAssigned}, GPU: sample},
			},
			want: "assigned  gpu0 97% 30.0/80.0G gpu1 12% 1.0/80.0G",
		},
		{
			name: "a throttled GPU says why; a benign reason says nothing",
			frames: []apiv1.Frame{
				{Type: apiv1.FrameSnapshot, Job: &apiv1.Job{State: apiv1.StateRunning, GPUs: []int{0, 1}}},
				{Type: apiv1.FrameGPU, GPU: &apiv1.GPUSample{Seq: 2, GPUs: []apiv1.GPUStat{
					{Index: 0, UtilizationPct: 97, MemoryUsedBytes: 30 << 30, MemoryTotalBytes: 80 << 30,
						ThrottleReasons: 0x44, ThrottleReasonNames: []string{"sw_power_cap", "hw_thermal_slowdown"},
						ThrottledBy: []string{"sw_power_cap", "hw_thermal_slowdown"}},
					{Index: 1, MemoryTotalBytes: 80 << 30, ThrottleReasons: 0x1, ThrottleReasonNames: []string{"gpu_idle"}},
				}}},
			},
			want: "running  gpu0 97% 30.0/80.0G throttled:sw_power_cap,hw_thermal_slowdown gpu1 0% 0.0/80.0G",
		},
		{
			name: "final metrics win",
			frames: []apiv1.Frame{
				{Type: apiv1.FrameSnapshot, Job: &running, Points: []apiv1.Point{pt(1, 9, "loss", 2.0)}},
				{Type: apiv1.FrameFinal, Job: &apiv1.Job{State: apiv1.StateSucceeded,
					FinalMetrics: map[string]float64{"loss": 0.125, "step": 10}}},
			},
			want: "succeeded  step 10  loss=0.125",
		},
		{
			name: "fewer metrics before the GPUs are cut off",
			frames: []apiv1.Frame{
				{Type: apiv1.FrameSnapshot, Job: &running, GPU: sample, Points: []apiv1.Point{
					pt(1, 2, "loss", 1.5, "lr", 0.0003, "tokens_per_s", 12345.67, "grad_norm", 0.9),
				}},
			},
			width: 61,
			want:  "running  step 2  grad_norm=0.9 loss=1.5  gpu0 97% 30.0/80.0G",
		},
		{
			name: "truncated to the terminal",
			frames: []apiv1.Frame{
				{Type: apiv1.FrameSnapshot, Job: &running, Points: []apiv1.Point{pt(1, 7, "loss", 2.25)}},
			},
			width: 15,
			want:  "running  step…",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Progress
			for _, f := range tt.frames {
				p.Apply(f)
			}
			if got := ProgressLine(&p, tt.width, tt.bar); got != tt.want {
				t.Errorf("line = %q\nwant   %q", got, tt.want)
			}
			if tt.width > 0 && len([]rune(ProgressLine(&p, tt.width, tt.bar))) >= tt.width {
				t.Errorf("line fills the terminal width; it would wrap")
			}
		})
	}
}

func TestProgressApplyReportsStateChanges(t *testing.T) {
	var p Progress
	steps := []struct {
		f    apiv1.Frame
		want bool
	}{
		{apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &apiv1.Job{State: apiv1.StateQueued}}, true},
		{apiv1.Frame{Type: apiv1.FrameMetrics, Points: []apiv1.Point{pt(1, 1)}}, false},
		{apiv1.Frame{Type: apiv1.FrameState, Job: &apiv1.Job{State: apiv1.StateQueued}}, false},
		{apiv1.Frame{Type: apiv1.FrameState, Job: &apiv1.Job{State: apiv1.StateRunning}}, true},
		{apiv1.Frame{Type: apiv1.FrameGPU, GPU: sample}, false},
		{apiv1.Frame{Type: apiv1.FrameFinal, Job: &apiv1.Job{State: apiv1.StateFailed}}, true},
	}
	for i, s := range steps {
		if got := p.Apply(s.f); got != s.want {
			t.Errorf("frame %d (%s): changed = %v, want %v", i, s.f.Type, got, s.want)
		}
	}
}

func TestFormatValue(t *testing.T) {
	tests := []struct {
		v    float64
		want string
	}{
		{0, "0"},
		{300, "300"},
		{-2, "-2"},
		{0.123456, "0.1235"},
		{3e-4, "0.0003"},
		{1.5e-6, "1.5e-06"},
		{12.3456, "12.35"},
		{12345.678, "12345.7"},
		{2.5e7 + 0.5, "2.5e+07"},
		{math.Inf(1), "+Inf"},
	}
	for _, tt := range tests {
		if got := FormatValue(tt.v); got != tt.want {
			t.Errorf("FormatValue(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
}

func TestWriteFinalMetrics(t *testing.T) {
	var b bytes.Buffer
	err := WriteFinalMetrics(&b, map[string]float64{
		"tokens_per_s": 15234.5, "loss": 0.123456789, "step": 300, "eval_loss": 0.2, "lr": 1e-5,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "" +
		"METRIC        VALUE\n" +
		"step          300\n" +
		"eval_loss     0.2\n" +
		"loss          0.12345679\n" +
		"lr            1e-05\n" +
		"tokens_per_s  15234.5\n"
	if b.String() != want {
		t.Errorf("table =\n%s\nwant\n%s", b.String(), want)
	}

	b.Reset()
	if err := WriteFinalMetrics(&b, nil); err != nil || !strings.Contains(b.String(), "no final metrics") {
		t.Errorf("empty metrics = %q, %v", b.String(), err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWritersReportErrors(t *testing.T) {
	job := apiv1.Job{ID: "j", State: apiv1.StateFailed, FinalMetrics: map[string]float64{"a": 1}, LogTail: "boom"}
	for name, fn := range map[string]func() error{
		"final":   func() error { return WriteFinalMetrics(failWriter{}, job.FinalMetrics) },
		"result":  func() error { return WriteResult(failWriter{}, job) },
		"status":  func() error { return WriteJobStatus(failWriter{}, job, nil, time.Now()) },
		"cluster": func() error { return WriteCluster(failWriter{}, apiv1.Cluster{}) },
		"jobs":    func() error { return WriteJobsTable(failWriter{}, []apiv1.Job{job}, time.Now()) },
		"nodes":   func() error { return WriteNodesTable(failWriter{}, nil, time.Now()) },
	} {
		if err := fn(); err == nil {
			t.Errorf("%s: write error swallowed", name)
		}
	}
}

func TestFormatAge(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{42 * time.Second, "42s"},
		{7*time.Minute + 59*time.Second, "7m"},
		{5 * time.Hour, "5h"},
		{47 * time.Hour, "47h"},
		{72 * time.Hour, "3d"},
	}
	for _, tt := range tests {
		if got := FormatAge(tt.d); got != tt.want {
			t.Errorf("FormatAge(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestJobExitCode(t *testing.T) {
	tests := []struct {
		name string
		job  apiv1.Job
		want int
	}{
		{"succeeded", apiv1.Job{State: apiv1.StateSucceeded, ExitCode: ptr(0)}, 0},
		{"failed with code", apiv1.Job{State: apiv1.StateFailed, ExitCode: ptr(3)}, 3},
		{"failed with large code", apiv1.Job{State: apiv1.StateFailed, ExitCode: ptr(255)}, 125},
		{"failed with code 0", apiv1.Job{State: apiv1.StateFailed, ExitCode: ptr(0)}, 1},
		{"failed with negative code", apiv1.Job{State: apiv1.StateFailed, ExitCode: ptr(-1)}, 1},
		{"failed by signal", apiv1.Job{State: apiv1.StateFailed, Signal: "SIGKILL"}, 1},
		{"cancelled", apiv1.Job{State: apiv1.StateCancelled, ExitCode: ptr(143)}, 1},
		{"lost", apiv1.Job{State: apiv1.StateLost}, 1},
	}
	for _, tt := range tests {
		if got := JobExitCode(tt.job); got != tt.want {
			t.Errorf("%s: JobExitCode = %d, want %d", tt.name, got, tt.want)
		}
	}
}

var (
	now     = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	created = now.Add(-90 * time.Minute)
	started = now.Add(-80 * time.Minute)
	ended   = now.Add(-10 * time.Minute)
	doneJob = apiv1.Job{
		ID: "j-1", Name: "bert", State: apiv1.StateFailed, Node: "gpu-a", GPUs: []int{0, 1},
		ExitCode: ptr(3), CreatedAt: &created, StartedAt: &started, FinishedAt: &ended,
		FinalMetrics: map[string]float64{"loss": 0.5, "step": 120},
		Error:        "process exited with code 3",
		Spec:         apiv1.JobSpec{Run: "python train.py", Resources: apiv1.Resources{GPUs: 2, GPUType: "A100"}},
		Points:       121, LastSeq: 125, BadLines: 2, LogBytes: 4096, LogTail: "Traceback...\nValueError: nan",
	}
)

func TestWriteJobsTable(t *testing.T) {
	var b bytes.Buffer
	queued := apiv1.Job{ID: "j-2", State: apiv1.StateQueued, CreatedAt: &ended}
	running := apiv1.Job{ID: "j-3", State: apiv1.StateRunning, CreatedAt: &ended, Points: 31,
		LatestMetrics: map[string]float64{"step": 29, "loss": 1.5}}
	sick := apiv1.Job{ID: "j-4", State: apiv1.StateRunning, CreatedAt: &ended, Node: "gpu-a", GPUs: []int{1, 3},
		Conditions: []apiv1.Condition{{Kind: "stalled", Since: &ended}, {Kind: "idle_gpus", Since: &ended, GPUs: []int{1, 3}}}}
	if err := WriteJobsTable(&b, []apiv1.Job{doneJob, queued, running, sick}, now); err != nil {
		t.Fatal(err)
	}
	// A running job shows the step it has reached, from its latest metrics.
	want := "" +
		"ID   NAME  STATE    HEALTH                  NODE   GPUS  STEP/POINTS  AGE\n" +
		"j-1  bert  failed   -                       gpu-a  0,1   120/121      1h\n" +
		"j-2  -     queued   -                       -      -     -/0          10m\n" +
		"j-3  -     running  ok                      -      -     29/31        10m\n" +
		"j-4  -     running  stalled,idle_gpus(1,3)  gpu-a  1,3   -/0          10m\n"
	if b.String() != want {
		t.Errorf("table =\n%s\nwant\n%s", b.String(), want)
	}
}

func TestWriteNodesTable(t *testing.T) {
	var b bytes.Buffer
	seen := now.Add(-5 * time.Second)
	nodes := []apiv1.Node{
		{ID: "gpu-a", Hostname: "host-a", State: "ready", GPUs: make([]apiv1.GPU, 8), FreeGPUs: 6, LastSeen: &seen, Connected: true},
		{ID: "gpu-b", State: "down", GPUs: make([]apiv1.GPU, 4)},
	}
	if err := WriteNodesTable(&b, nodes, now); err != nil {
		t.Fatal(err)
	}
	// A connected node is seen now, whenever it connected.
	want := "" +
		"ID     HOSTNAME  STATE  GPUS FREE/TOTAL  CONNECTED  LAST SEEN\n" +
		"gpu-a  host-a    ready  6/8              yes        now\n" +
		"gpu-b  -         down   0/4              no         -\n"
	if b.String() != want {
		t.Errorf("table =\n%s\nwant\n%s", b.String(), want)
	}
}

// `gantry nodes` names a throttled GPU in the HEALTH column, which
// appears for it alone.
func TestWriteNodesTableThrottled(t *testing.T) {
	var b bytes.Buffer
	gpus := make([]apiv1.GPU, 4)
	for i := range gpus {
		gpus[i] = apiv1.GPU{Index: i, Healthy: true}
	}
	gpus[2].ThrottledBy = []string{"hw_thermal_slowdown"}
	nodes := []apiv1.Node{
		{ID: "gpu-a", Hostname: "host-a", State: "ready", GPUs: gpus, FreeGPUs: 4, Connected: true},
		{ID: "gpu-b", State: "ready", GPUs: []apiv1.GPU{{Index: 0, Healthy: true}}, FreeGPUs: 1, Connected: true},
	}
	if err := WriteNodesTable(&b, nodes, now); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"ID     HOSTNAME  STATE  GPUS FREE/TOTAL  CONNECTED  LAST SEEN  HEALTH\n" +
		"gpu-a  host-a    ready  4/4              yes        now        GPU 2 throttled: hw_thermal_slowdown\n" +
		"gpu-b  -         ready  1/1              yes        now        -\n"
	if b.String() != want {
		t.Errorf("table =\n%s\nwant\n%s", b.String(), want)
	}
}

// `gantry status` of a running job names its throttled GPUs, not another
// job's, and has no Throttled row when none of its GPUs is.
func TestWriteJobStatusThrottled(t *testing.T) {
	nodes := []apiv1.Node{{ID: "gpu-a", GPUs: []apiv1.GPU{
		{Index: 0}, {Index: 1, ThrottledBy: []string{"hw_slowdown", "hw_power_brake_slowdown"}}, {Index: 2, ThrottledBy: []string{"sw_power_cap"}},
	}}}
	var b bytes.Buffer
	j := apiv1.Job{ID: "j-5", State: apiv1.StateRunning, Node: "gpu-a", GPUs: []int{0, 1}}
	if err := WriteJobStatusNodes(&b, j, nil, nodes, now); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "Throttled:  GPU 1 on gpu-a: hw_slowdown,hw_power_brake_slowdown\n") ||
		strings.Contains(out, "sw_power_cap") {
		t.Errorf("status:\n%s", out)
	}
	b.Reset()
	j.GPUs = []int{0}
	if err := WriteJobStatusNodes(&b, j, nil, nodes, now); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); strings.Contains(out, "Throttled") {
		t.Errorf("status of a job with no throttled GPU:\n%s", out)
	}
}

// A running job's status shows the metrics it has reported so far.
func TestWriteJobStatusRunning(t *testing.T) {
	var b bytes.Buffer
	j := apiv1.Job{ID: "j-3", State: apiv1.StateRunning, CreatedAt: &ended, LatestMetrics: map[string]float64{"step": 29, "loss": 1.5}}
	if err := WriteJobStatus(&b, j, nil, now); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "Latest metrics:\n  METRIC  VALUE\n  step    29\n  loss    1.5\n") || strings.Contains(out, "no final metrics") {
		t.Errorf("running status:\n%s", out)
	}
}

func TestWriteJobStatus(t *testing.T) {
	var b bytes.Buffer
	events := []apiv1.Event{{Seq: 1, TS: float64(started.Unix()), Kind: "bad_lines", Message: "2 lines skipped", Count: 2}}
	if err := WriteJobStatus(&b, doneJob, events, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"ID:", "j-1", "State:", "failed", "Node:", "gpu-a", "0,1 (requested 2 A100)",
		"Exit code:", "3", "2025-03-01T10:30:00Z (1h ago)", "Duration:", "1h10m0s",
		"121 (last seq 125)", "Bad lines:", "Error:", "process exited with code 3",
		"Final metrics:\n  METRIC  VALUE\n  step    120\n  loss    0.5\n",
		"Events:\n  TIME                  KIND       COUNT  MESSAGE\n  2025-03-01T10:40:00Z  bad_lines  2      2 lines skipped\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	b.Reset()
	if err := WriteJobStatus(&b, apiv1.Job{ID: "j-3", State: apiv1.StateRunning, CancelRequested: true}, nil, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"running (cancel requested)", "(no final metrics)", "Events:\n  (none)\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "Dropped keys") || strings.Contains(b.String(), "Rejected") {
		t.Errorf("status shows refusal counters that are zero:\n%s", b.String())
	}

	// What the controller refused is shown when there is some.
	b.Reset()
	if err := WriteJobStatus(&b, apiv1.Job{ID: "j-4", State: apiv1.StateRunning, DroppedMetricKeys: 70000, RejectedRecords: 3}, nil, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Dropped keys:", "70000", "Rejected:", "3"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
}

func TestWriteCluster(t *testing.T) {
	var b bytes.Buffer
	cl := apiv1.Cluster{NodeID: "c2", State: "Follower", Leader: "10.0.0.1:7000", LeaderID: "c1", Term: 7,
		CommitIndex: 100, AppliedIndex: 99, LastIndex: 101,
		Peers: []apiv1.Peer{
			{ID: "c1", Address: "10.0.0.1:7000", Suffrage: "Voter", Leader: true, AppliedIndex: 100, Reachable: true},
			{ID: "c2", Address: "10.0.0.2:7000", Suffrage: "Voter", AppliedIndex: 99, LastContactMs: 40, Reachable: true},
			{ID: "c3", Address: "10.0.0.3:7000", Suffrage: "Voter", Error: "connection refused"},
		}}
	if err := WriteCluster(&b, cl); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"Answered by:    c2 (Follower)\n" +
		"Leader:         c1 at 10.0.0.1:7000\n" +
		"Term:           7\n" +
		"Commit index:   100\n" +
		"Applied index:  99\n" +
		"Last index:     101\n" +
		"\nPeers:\n" +
		"  ID  ADDRESS        SUFFRAGE  LEADER  APPLIED      LAST CONTACT\n" +
		"  c1  10.0.0.1:7000  Voter     yes     100          now\n" +
		"  c2  10.0.0.2:7000  Voter     no      99           40ms ago\n" +
		"  c3  10.0.0.3:7000  Voter     no      unreachable  -\n"
	if b.String() != want {
		t.Errorf("cluster =\n%s\nwant\n%s", b.String(), want)
	}
}

func TestWriteResult(t *testing.T) {
	var b bytes.Buffer
	if err := WriteResult(&b, doneJob); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"job j-1 failed after 1h10m0s (exit code 3)\n" +
		"error: process exited with code 3\n" +
		"METRIC  VALUE\nstep    120\nloss    0.5\n" +
		"\nlast log lines:\n  Traceback...\n  ValueError: nan\n"
	if b.String() != want {
		t.Errorf("result =\n%s\nwant\n%s", b.String(), want)
	}
}

// fakeClock is advanced by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestLiveViewPlainPacing(t *testing.T) {
	var b bytes.Buffer
	clk := &fakeClock{t: now}
	v := newLiveView(Env{Stdout: &b, Now: clk.now, Width: func() int { return 0 }})
	running := apiv1.Job{ID: "j-1", State: apiv1.StateRunning, Node: "gpu-a", GPUs: []int{0}}
	v.frame(apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &running, Points: []apiv1.Point{pt(1, 1, "loss", 3.0)}})
	for i := range 20 { // 20 frames within 200ms: at most one progress line
		clk.t = clk.t.Add(10 * time.Millisecond)
		v.frame(apiv1.Frame{Type: apiv1.FrameMetrics, Points: []apiv1.Point{pt(uint64(i+2), int64(i+2), "loss", 2.0)}})
	}
	clk.t = clk.t.Add(time.Second)
	v.frame(apiv1.Frame{Type: apiv1.FrameMetrics, Points: []apiv1.Point{pt(30, 30, "loss", 1.0)}})
	done := running
	done.State = apiv1.StateSucceeded
	v.frame(apiv1.Frame{Type: apiv1.FrameFinal, Job: &done})
	v.finish()
	want := "" +
		"job j-1 running on gpu-a (GPUs 0)\n" +
		"running  step 1  loss=3\n" +
		"running  step 30  loss=1\n"
	if b.String() != want {
		t.Errorf("output =\n%q\nwant\n%q", b.String(), want)
	}
	if strings.Contains(b.String(), "\r") {
		t.Error("plain output contains carriage returns")
	}
}

// While a job waits in the queue, the live view says why.
func TestLiveViewShowsQueueReason(t *testing.T) {
	queued := apiv1.Job{ID: "j-1", Name: "big", State: apiv1.StateQueued, Reason: "waiting for 8 free GPUs; most free now: 4 on gpu-a"}
	var p Progress
	p.Apply(apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &queued})
	if got := ProgressLine(&p, 0, false); got != "queued: waiting for 8 free GPUs; most free now: 4 on gpu-a" {
		t.Errorf("line = %q", got)
	}
	if got := ProgressLine(&p, 20, false); got != "queued: waiting fo…" {
		t.Errorf("line at width 20 = %q", got)
	}
	lines := Panel(&p, 80, 24, now)
	if len(lines) < 2 || lines[1] != "reason: waiting for 8 free GPUs; most free now: 4 on gpu-a" {
		t.Errorf("panel = %q", lines)
	}
	// Once it runs, the reason is gone even if a stale one came along.
	running := queued
	running.State = apiv1.StateRunning
	p.Apply(apiv1.Frame{Type: apiv1.FrameState, Job: &running})
	if got := ProgressLine(&p, 0, false); strings.Contains(got, "waiting") {
		t.Errorf("running line = %q", got)
	}
	if lines := Panel(&p, 80, 24, now); strings.Contains(strings.Join(lines, "\n"), "reason") {
		t.Errorf("running panel = %q", lines)
	}

	// Plain output (not a terminal) prints the reason as the job waits.
	var out strings.Builder
	v := newLiveView(Env{Stdout: &out, Now: func() time.Time { return now }})
	v.frame(apiv1.Frame{Type: apiv1.FrameSnapshot, Job: &queued})
	if !strings.Contains(out.String(), "job j-1 queued\nqueued: waiting for 8 free GPUs; most free now: 4 on gpu-a\n") {
		t.Errorf("plain live output:\n%s", out.String())
	}
}

func TestWriteJobStatusShowsConditions(t *testing.T) {
	var b bytes.Buffer
	j := apiv1.Job{ID: "j-4", State: apiv1.StateRunning, CreatedAt: &ended,
		Conditions: []apiv1.Condition{{Kind: "hung", Since: &ended, Evidence: "no new step for 5m\n(last step 40)"}}}
	if err := WriteJobStatus(&b, j, []apiv1.Event{{Seq: 3, TS: 1.7e9, Kind: "hung", Message: "no new step (signal: gpus_pegged_low_power)"}}, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Health:     hung", "  hung:     since ", "no new step for 5m (last step 40)", "signal: gpus_pegged_low_power"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := WriteEvents(&b, nil, now); err != nil || b.String() != "(none)\n" {
		t.Errorf("no events: %q %v", b.String(), err)
	}
}

func TestWriteJobStatusShowsAttempts(t *testing.T) {
	var b bytes.Buffer
	started := ended.Add(-90 * time.Second)
	j := apiv1.Job{ID: "j-5", State: apiv1.StateRunning, Attempt: 2, CreatedAt: &ended,
		Attempts: []apiv1.Attempt{{Attempt: 1, Node: "gpu-a", GPUs: []int{0, 1}, StartedAt: &started, FinishedAt: &ended,
			Signal: "SIGTERM", FinalMetrics: map[string]float64{"step": 400, "loss": 0.7}, Reason: "hung: no new step for 5m\nat 100%"}}}
	if err := WriteJobStatus(&b, j, nil, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Attempt:    2 (1 requeued)", "Earlier attempts:", "gpu-a", "1m30s", "SIGTERM", "400",
		"hung: no new step for 5m at 100%"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	j = apiv1.Job{ID: "j-6", State: apiv1.StateRunning, Attempt: 1, CancelRequested: true, Requeuing: "stalled: x"}
	if err := WriteJobStatus(&b, j, nil, now); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "running (stopping, to be requeued)") || !strings.Contains(b.String(), "Attempt:    1 (0 requeued)") {
		t.Errorf("a job being requeued:\n%s", b.String())
	}
	b.Reset()
	if err := WriteJobStatus(&b, apiv1.Job{ID: "j-7", State: apiv1.StateRunning, Attempt: 1}, nil, now); err != nil || strings.Contains(b.String(), "Attempt") {
		t.Errorf("a first attempt shows an Attempt row:\n%s", b.String())
	}
}
