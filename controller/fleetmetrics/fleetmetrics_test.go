package fleetmetrics

import (
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

var t0 = time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func update(t *testing.T, s *store.Store, fn func(*store.Tx) error) {
	t.Helper()
	if err := s.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// gpuNode is a node with n GPUs and one sample of them taken at ts.
func gpuNode(t *testing.T, s *store.Store, id string, n int, ts time.Time) {
	t.Helper()
	node := &gantrypb.Node{Id: id, Hostname: id, State: gantrypb.NodeState_NODE_STATE_UP, UnhealthyGpus: []*gantrypb.GPUHealth{{Index: 1, Reason: "XID 79"}}}
	sample := &gantrypb.GPUSample{Seq: 1, Ts: float64(ts.UnixNano()) / 1e9}
	for i := range n {
		node.Gpus = append(node.Gpus, &gantrypb.GPUInfo{Index: uint32(i), Uuid: fmt.Sprintf("GPU-%s-%d", id, i), Name: "NVIDIA A100-SXM4-40GB", MemoryTotalBytes: 40 << 30})
		sample.Gpus = append(sample.Gpus, &gantrypb.GPUStat{Index: uint32(i), Uuid: fmt.Sprintf("GPU-%s-%d", id, i), Name: "NVIDIA A100-SXM4-40GB",
			UtilizationPct: float64(10 * (i + 1)), MemoryUsedBytes: uint64(i+1) << 30, MemoryTotalBytes: 40 << 30,
			TemperatureC: 40 + float64(i), PowerW: 100 + float64(i), SmClockMhz: 1410})
	}
	update(t, s, func(tx *store.Tx) error {
		if err := tx.PutNode(node); err != nil {
			return err
		}
		return tx.PutGPUSample(id, sample)
	})
}

func putJob(t *testing.T, s *store.Store, j *gantrypb.Job) {
	t.Helper()
	update(t, s, func(tx *store.Tx) error { return tx.PutJob(j) })
}

// scrape gathers c alone and flattens it: "name{l1=v1,...}" → value,
// labels sorted by name (as Gather gives them) with empty values kept, so
// a test sees the whole label set.
func scrape(t *testing.T, c *Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[seriesKey(mf.GetName(), m)] = m.GetGauge().GetValue()
		}
	}
	return out
}

func seriesKey(name string, m *dto.Metric) string {
	var l []string
	for _, lp := range m.GetLabel() {
		l = append(l, lp.GetName()+"="+lp.GetValue())
	}
	return name + "{" + strings.Join(l, ",") + "}"
}

func newCollector(t *testing.T, o Options) *Collector {
	t.Helper()
	if o.Now == nil {
		o.Now = func() time.Time { return t0 }
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func want(t *testing.T, got map[string]float64, key string, v float64) {
	t.Helper()
	g, ok := got[key]
	if !ok {
		t.Errorf("no series %s; have:\n%s", key, dump(got, strings.SplitN(key, "{", 2)[0]))
		return
	}
	if g != v {
		t.Errorf("%s = %v, want %v", key, g, v)
	}
}

func dump(got map[string]float64, prefix string) string {
	var keys []string
	for k := range got {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s %v\n", k, got[k])
	}
	return b.String()
}

// TestGPUAndJobSeries: a node with two GPUs, one held by a running job:
// every GPU gauge with its converted unit, the holding job's labels on its
// GPU only (empty ones on the other, same label set), node and job gauges.
func TestGPUAndJobSeries(t *testing.T) {
	s := openStore(t)
	gpuNode(t, s, "n1", 2, t0.Add(-3*time.Second))
	putJob(t, s, &gantrypb.Job{Id: "j1", Spec: &gantrypb.JobSpec{Name: "bert"}, State: gantrypb.JobState_JOB_STATE_RUNNING,
		Node: "n1", Gpus: []uint32{1}, Points: 2, BadLines: 3, Attempt: 2,
		LatestMetrics: map[string]float64{"loss": 0.5, "step": 20, "total_steps": 100, "secret_thing": 7},
		Conditions:    []*gantrypb.JobCondition{{Kind: "idle_gpus", Gpus: []uint32{1}}}})
	update(t, s, func(tx *store.Tx) error {
		step := int64(20)
		return tx.PutPoint("j1", &gantrypb.MetricPoint{Seq: 1, Step: &step, Ts: float64(t0.Add(-10 * time.Second).Unix()), Values: map[string]float64{"loss": 0.5}})
	})
	putJob(t, s, &gantrypb.Job{Id: "j2", Spec: &gantrypb.JobSpec{Name: "waits"}, State: gantrypb.JobState_JOB_STATE_QUEUED})

	c := newCollector(t, Options{Store: s, Leading: func() bool { return true }, Connected: func(n string) bool { return n == "n1" }})
	got := scrape(t, c)

	idle := "gpu=0,job_id=,job_name=,model=NVIDIA A100-SXM4-40GB,node=n1,uuid=GPU-n1-0"
	held := "gpu=1,job_id=j1,job_name=bert,model=NVIDIA A100-SXM4-40GB,node=n1,uuid=GPU-n1-1"
	want(t, got, "gantry_gpu_utilization_ratio{"+idle+"}", 0.1)
	want(t, got, "gantry_gpu_utilization_ratio{"+held+"}", 0.2)
	want(t, got, "gantry_gpu_memory_used_bytes{"+held+"}", 2<<30)
	want(t, got, "gantry_gpu_memory_total_bytes{"+held+"}", 40<<30)
	want(t, got, "gantry_gpu_temperature_celsius{"+held+"}", 41)
	want(t, got, "gantry_gpu_power_watts{"+held+"}", 101)
	want(t, got, "gantry_gpu_sm_clock_hertz{"+held+"}", 1410e6)
	want(t, got, "gantry_gpu_sample_age_seconds{"+held+"}", 3)

	want(t, got, "gantry_node_up{node=n1}", 1)
	want(t, got, "gantry_node_connected{node=n1}", 1)
	want(t, got, "gantry_node_gpus{node=n1}", 2)
	want(t, got, "gantry_node_gpus_free{node=n1}", 1)
	want(t, got, "gantry_gpu_healthy{gpu=0,node=n1}", 1)
	want(t, got, "gantry_gpu_healthy{gpu=1,node=n1}", 0)

	want(t, got, "gantry_job_state{job_id=j1,job_name=bert,state=running}", 1)
	want(t, got, "gantry_job_state{job_id=j2,job_name=waits,state=queued}", 1)
	want(t, got, "gantry_job_step{job_id=j1,job_name=bert}", 20)
	want(t, got, "gantry_job_total_steps{job_id=j1,job_name=bert}", 100)
	want(t, got, "gantry_job_points{job_id=j1,job_name=bert}", 2)
	want(t, got, "gantry_job_bad_lines{job_id=j1,job_name=bert}", 3)
	want(t, got, "gantry_job_requeues{job_id=j1,job_name=bert}", 2)
	want(t, got, "gantry_job_last_metric_age_seconds{job_id=j1,job_name=bert}", 10)
	want(t, got, "gantry_job_metric{job_id=j1,job_name=bert,key=loss}", 0.5)
	want(t, got, "gantry_job_gpus{job_id=j1,job_name=bert,node=n1}", 1)
	want(t, got, "gantry_job_gpus{job_id=j2,job_name=waits,node=}", 0)
	want(t, got, "gantry_job_condition{condition=idle_gpus,job_id=j1,job_name=bert}", 1)
	want(t, got, "gantry_job_condition{condition=stalled,job_id=j1,job_name=bert}", 0)
	want(t, got, "gantry_job_condition{condition=hung,job_id=j1,job_name=bert}", 0)
	want(t, got, "gantry_fleet_omitted_jobs{}", 0)
	for k := range got {
		if strings.HasPrefix(k, "gantry_job_condition{") && strings.Contains(k, "job_id=j2") {
			t.Errorf("series %s: a job not running has no condition series", k)
		}
		switch {
		case strings.Contains(k, "secret_thing"), strings.Contains(k, "key=step"), strings.Contains(k, "key=total_steps"):
			t.Errorf("series %s: not on the allow-list (or has its own gauge)", k)
		case strings.HasPrefix(k, "gantry_job_state{job_id=j1") && !strings.Contains(k, "state=running"):
			t.Errorf("series %s: only the current state is exported", k)
		case strings.HasPrefix(k, "gantry_job_last_metric_age_seconds{job_id=j2"):
			t.Errorf("series %s: a job without points has no metric age", k)
		case strings.HasPrefix(k, "gantry_job_requeues{job_id=j2"):
			t.Errorf("series %s: a job never requeued has no requeue series", k)
		}
	}
	if n := c.series.Load(); int(n) != len(got) {
		t.Errorf("gantry_fleet_series says %d, the scrape had %d", n, len(got))
	}
}

// TestOneReadTransactionPerScrape: however many nodes, GPUs and jobs, a
// scrape begins exactly one store read transaction, and none stays open.
func TestOneReadTransactionPerScrape(t *testing.T) {
	s := openStore(t)
	for i := range 8 {
		gpuNode(t, s, fmt.Sprint("n", i), 8, t0)
	}
	for i := range 40 {
		putJob(t, s, &gantrypb.Job{Id: fmt.Sprintf("j%03d", i), State: gantrypb.JobState_JOB_STATE_RUNNING, Node: fmt.Sprint("n", i%8),
			Gpus: []uint32{uint32(i / 8)}, Points: 1, LatestMetrics: map[string]float64{"loss": 1}})
		update(t, s, func(tx *store.Tx) error {
			return tx.PutPoint(fmt.Sprintf("j%03d", i), &gantrypb.MetricPoint{Seq: 1, Ts: float64(t0.Unix()), Values: map[string]float64{"loss": 1}})
		})
	}
	c := newCollector(t, Options{Store: s})
	before := s.ReadTxnsStarted()
	got := scrape(t, c)
	if n := s.ReadTxnsStarted() - before; n != 1 {
		t.Errorf("one scrape of 8 nodes and 40 jobs began %d read transactions, want 1", n)
	}
	if n := s.OpenReadTxns(); n != 0 {
		t.Errorf("%d read transactions open after the scrape", n)
	}
	if len(got) < 8*8*7+40*6 {
		t.Errorf("only %d series", len(got))
	}
}

// TestAllowListAndKeyCap: only allow-listed keys (globs cross '/'), at
// most MaxKeysPerJob per job, the first in byte order, the rest counted.
func TestAllowListAndKeyCap(t *testing.T) {
	s := openStore(t)
	putJob(t, s, &gantrypb.Job{Id: "j", Spec: &gantrypb.JobSpec{Name: "x"}, State: gantrypb.JobState_JOB_STATE_RUNNING,
		LatestMetrics: map[string]float64{"train/loss": 1, "eval/loss": 2, "loss": 3, "lr": 4, "weights/l3/norm": 5, "z_loss": 6}})
	keys, err := ParseKeys(" *loss , lr,")
	if err != nil {
		t.Fatal(err)
	}
	c := newCollector(t, Options{Store: s, MetricKeys: keys, MaxKeysPerJob: 3})
	got := scrape(t, c)
	var exported []string
	for k := range got {
		if strings.HasPrefix(k, "gantry_job_metric{") {
			exported = append(exported, k)
		}
	}
	sort.Strings(exported)
	wantKeys := []string{
		"gantry_job_metric{job_id=j,job_name=x,key=eval/loss}",
		"gantry_job_metric{job_id=j,job_name=x,key=loss}",
		"gantry_job_metric{job_id=j,job_name=x,key=lr}",
	}
	if !slices.Equal(exported, wantKeys) {
		t.Errorf("exported %v, want %v", exported, wantKeys)
	}
	want(t, got, "gantry_fleet_omitted_metric_keys{}", 2) // train/loss, z_loss

	none, err := ParseKeys("-")
	if err != nil || none == nil || len(none) != 0 {
		t.Fatalf(`ParseKeys("-") = %v, %v; want an empty list`, none, err)
	}
	for k := range scrape(t, newCollector(t, Options{Store: s, MetricKeys: none})) {
		if strings.HasPrefix(k, "gantry_job_metric{") {
			t.Errorf("empty allow-list exported %s", k)
		}
	}
	if def, err := ParseKeys(""); err != nil || def != nil {
		t.Errorf(`ParseKeys("") = %v, %v; want nil (the defaults)`, def, err)
	}
}

// TestEndedJobsWindowAndCaps: an ended job stays for EndedWindow, newest
// ended first up to MaxEndedJobs, with its final metrics; queued jobs past
// MaxActiveJobs are counted, never exported; holders always are.
func TestEndedJobsWindowAndCaps(t *testing.T) {
	s := openStore(t)
	gpuNode(t, s, "n1", 1, t0)
	ms := func(d time.Duration) int64 { return t0.Add(-d).UnixMilli() }
	putJob(t, s, &gantrypb.Job{Id: "a-old", State: gantrypb.JobState_JOB_STATE_SUCCEEDED, FinishedAtMs: ms(time.Hour)})
	putJob(t, s, &gantrypb.Job{Id: "b-ok", State: gantrypb.JobState_JOB_STATE_SUCCEEDED, FinishedAtMs: ms(5 * time.Minute),
		LatestMetrics: map[string]float64{"loss": 9}, FinalMetrics: map[string]float64{"loss": 0.1, "step": 99}})
	putJob(t, s, &gantrypb.Job{Id: "c-failed", State: gantrypb.JobState_JOB_STATE_FAILED, FinishedAtMs: ms(time.Minute)})
	putJob(t, s, &gantrypb.Job{Id: "d-q1", State: gantrypb.JobState_JOB_STATE_QUEUED})
	putJob(t, s, &gantrypb.Job{Id: "e-q2", State: gantrypb.JobState_JOB_STATE_QUEUED})
	putJob(t, s, &gantrypb.Job{Id: "f-q3", State: gantrypb.JobState_JOB_STATE_QUEUED})
	putJob(t, s, &gantrypb.Job{Id: "z-run", State: gantrypb.JobState_JOB_STATE_RUNNING, Node: "n1", Gpus: []uint32{0}})

	got := scrape(t, newCollector(t, Options{Store: s, MaxActiveJobs: 2, MaxEndedJobs: 1, EndedWindow: 10 * time.Minute}))
	states := map[string]bool{}
	for k := range got {
		if strings.HasPrefix(k, "gantry_job_state{") {
			states[k] = true
		}
	}
	wantStates := map[string]bool{
		"gantry_job_state{job_id=c-failed,job_name=,state=failed}": true, // newest ended
		"gantry_job_state{job_id=d-q1,job_name=,state=queued}":     true, // oldest queued, in the room the holder leaves
		"gantry_job_state{job_id=z-run,job_name=,state=running}":   true, // holders always
	}
	if fmt.Sprint(states) != fmt.Sprint(wantStates) {
		t.Errorf("exported states:\n%s\nwant %v", dump(got, "gantry_job_state"), wantStates)
	}
	want(t, got, "gantry_fleet_omitted_jobs{}", 3) // b-ok (ended cap), e-q2, f-q3; a-old is past the window, not counted

	got = scrape(t, newCollector(t, Options{Store: s, EndedWindow: 10 * time.Minute}))
	want(t, got, "gantry_job_metric{job_id=b-ok,job_name=,key=loss}", 0.1) // final, not latest
	want(t, got, "gantry_job_step{job_id=b-ok,job_name=}", 99)
	want(t, got, "gantry_job_gpus{job_id=b-ok,job_name=,node=}", 0)
	if _, ok := got["gantry_job_state{job_id=a-old,job_name=,state=succeeded}"]; ok {
		t.Error("a job that ended before the window is exported")
	}
}

// TestStaleSampleAndFollower: a sample older than StaleAfter exports its
// age only; a follower (not leading) exports no gantry_node_connected; a
// down node is 0 and its held GPUs are not free.
func TestStaleSampleAndFollower(t *testing.T) {
	s := openStore(t)
	gpuNode(t, s, "n1", 2, t0.Add(-10*time.Minute))
	update(t, s, func(tx *store.Tx) error {
		n, err := tx.Node("n1")
		if err != nil {
			return err
		}
		n.State = gantrypb.NodeState_NODE_STATE_DOWN
		return tx.PutNode(n)
	})
	putJob(t, s, &gantrypb.Job{Id: "j", State: gantrypb.JobState_JOB_STATE_ASSIGNED, Node: "n1", Gpus: []uint32{0, 1}})
	got := scrape(t, newCollector(t, Options{Store: s, Leading: func() bool { return false }, Connected: func(string) bool { return true }}))
	want(t, got, "gantry_gpu_sample_age_seconds{gpu=0,job_id=j,job_name=,model=NVIDIA A100-SXM4-40GB,node=n1,uuid=GPU-n1-0}", 600)
	want(t, got, "gantry_node_up{node=n1}", 0)
	want(t, got, "gantry_node_gpus_free{node=n1}", 0)
	for k := range got {
		if strings.HasPrefix(k, "gantry_gpu_utilization_ratio") || strings.HasPrefix(k, "gantry_node_connected") {
			t.Errorf("series %s: stale readings and a follower's connected flag are not exported", k)
		}
	}
}

// TestHostileSampleDoesNotFailTheScrape: a sample repeating a GPU index
// (admission should keep it out; the exporter does not rely on that)
// yields one series per GPU, so the scrape still succeeds.
func TestHostileSampleDoesNotFailTheScrape(t *testing.T) {
	s := openStore(t)
	update(t, s, func(tx *store.Tx) error {
		if err := tx.PutNode(&gantrypb.Node{Id: "n", State: gantrypb.NodeState_NODE_STATE_UP}); err != nil {
			return err
		}
		return tx.PutGPUSample("n", &gantrypb.GPUSample{Seq: 1, Ts: float64(t0.Unix()),
			Gpus: []*gantrypb.GPUStat{{Index: 0, UtilizationPct: 50}, {Index: 0, UtilizationPct: 60}}})
	})
	got := scrape(t, newCollector(t, Options{Store: s}))
	want(t, got, "gantry_gpu_utilization_ratio{gpu=0,job_id=,job_name=,model=,node=n,uuid=}", 0.5)
}

// TestBadOptions: patterns and bounds are checked at start, not per scrape.
func TestBadOptions(t *testing.T) {
	s := openStore(t)
	if _, err := New(Options{Store: s, MetricKeys: []string{""}}); err == nil {
		t.Error("empty pattern accepted")
	}
	if _, err := New(Options{Store: s, MaxKeysPerJob: -1}); err == nil {
		t.Error("negative cap accepted")
	}
	if _, err := New(Options{}); err == nil {
		t.Error("no store accepted")
	}
	re, err := Glob("train/*.loss?")
	if err != nil {
		t.Fatal(err)
	}
	for k, match := range map[string]bool{"train/a/b.loss1": true, "train/x.loss": false, "trainXa.loss1": false} {
		if re.MatchString(k) != match {
			t.Errorf("Glob(train/*.loss?) on %q = %v", k, !match)
		}
	}
}

// fiftyKeys is a job's 50 metric keys: 8 that the default allow-list
// takes and 42 per-layer norms that it does not (unless allLayers, when
// they are named so that it does: */grad_norm).
func fiftyKeys(allLayers bool) map[string]float64 {
	m := map[string]float64{"loss": 1, "eval_loss": 1, "lr": 1, "grad_norm": 1, "epoch": 1, "tokens_per_sec": 1,
		"train/loss": 1, "train/acc": 1, "step": 1, "total_steps": 1}
	for i := range 40 {
		if allLayers {
			m[fmt.Sprintf("layer%02d/grad_norm", i)] = 1
		} else {
			m[fmt.Sprintf("layer%02d/weight_norm", i)] = 1
		}
	}
	return m
}

// TestCardinalityBounded: 100 running jobs with 50 metric keys each on
// the default allow-list export a bounded, exact number of series, and
// still so when every key is allow-listed (the per-job cap holds).
func TestCardinalityBounded(t *testing.T) {
	for _, allLayers := range []bool{false, true} {
		s := openStore(t)
		for i := range 100 {
			putJob(t, s, &gantrypb.Job{Id: fmt.Sprintf("j%03d", i), Spec: &gantrypb.JobSpec{Name: "sweep"}, State: gantrypb.JobState_JOB_STATE_RUNNING,
				Node: "n", Gpus: []uint32{uint32(i)}, LatestMetrics: fiftyKeys(allLayers)})
		}
		got := scrape(t, newCollector(t, Options{Store: s}))
		metricKeys := 8
		if allLayers {
			metricKeys = DefaultMaxKeysPerJob
		}
		// per job: state, points, bad_lines, gpus, step, total_steps, the
		// three health conditions, and its metric keys; plus the two
		// omitted gauges.
		want := 100*(6+3+metricKeys) + 2
		if len(got) != want {
			t.Errorf("all layers %v: %d series, want %d:\n%s", allLayers, len(got), want, dump(got, "gantry_job_metric{job_id=j000"))
		}
		if allLayers {
			omitted := got["gantry_fleet_omitted_metric_keys{}"]
			if omitted != 100*(48-DefaultMaxKeysPerJob) {
				t.Errorf("omitted metric keys = %v, want %d", omitted, 100*(48-DefaultMaxKeysPerJob))
			}
		}
	}
}

// TestRealisticFleetSeries measures a realistic fleet: 32 nodes of 8
// GPUs all held by 64 running jobs of 4 GPUs, 116 queued jobs and 20 that
// ended in the last minutes (200 jobs), each run with 50 metric keys. It
// checks the count against the formula and logs it with the collection
// time (go test -v -run TestRealisticFleetSeries).
func TestRealisticFleetSeries(t *testing.T) {
	s := openStore(t)
	for n := range 32 {
		gpuNode(t, s, fmt.Sprintf("gpu-host-%02d", n), 8, t0.Add(-time.Second))
	}
	update(t, s, func(tx *store.Tx) error {
		for i := range 200 {
			j := &gantrypb.Job{Id: fmt.Sprintf("j%03d", i), Spec: &gantrypb.JobSpec{Name: fmt.Sprint("run-", i)}}
			switch {
			case i < 20:
				j.State, j.FinishedAtMs, j.FinalMetrics = gantrypb.JobState_JOB_STATE_SUCCEEDED, t0.Add(-time.Minute).UnixMilli(), fiftyKeys(false)
			case i < 84:
				k := i - 20
				j.State, j.Node, j.Gpus = gantrypb.JobState_JOB_STATE_RUNNING, fmt.Sprintf("gpu-host-%02d", k/2), []uint32{uint32(k%2*4 + 0), uint32(k%2*4 + 1), uint32(k%2*4 + 2), uint32(k%2*4 + 3)}
				j.LatestMetrics, j.Points = fiftyKeys(false), 1
				step := int64(1)
				if err := tx.PutPoint(j.Id, &gantrypb.MetricPoint{Seq: 1, Step: &step, Ts: float64(t0.Unix()), Values: map[string]float64{"loss": 1}}); err != nil {
					return err
				}
			default:
				j.State = gantrypb.JobState_JOB_STATE_QUEUED
			}
			if err := tx.PutJob(j); err != nil {
				return err
			}
		}
		return nil
	})
	c := newCollector(t, Options{Store: s, Leading: func() bool { return true }, Connected: func(string) bool { return true }})
	got := scrape(t, c)
	const (
		nodes, gpus = 32, 32 * 8
		perNode     = 4                    // up, connected (on the leader), gpus, gpus_free
		perGPU      = 7 + 1 + 1            // ... + gantry_gpu_healthy, gantry_gpu_throttled (no reason active)
		ended       = 20 * (6 + 8)         // state, points, bad_lines, gpus, step, total_steps + 8 keys
		running     = 64 * (6 + 8 + 1 + 3) // ... + last_metric_age + 3 health conditions
		queued      = 116 * 4              // state, points, bad_lines, gpus
	)
	want := nodes*perNode + gpus*perGPU + ended + running + queued + 2
	if len(got) != want {
		t.Errorf("realistic fleet: %d series, want %d", len(got), want)
	}
	start := time.Now()
	for range 10 {
		scrape(t, c)
	}
	t.Logf("realistic fleet (32 nodes × 8 GPUs, 200 jobs × 50 keys): %d series; a scrape (collect + gather) takes %v; last collect %v",
		len(got), time.Since(start)/10, time.Duration(c.last.Load()))
}

// TestClocksEventReasons: each active reason of a fresh sample is one
// series, unknown bits one "unknown" series whatever they are;
// gantry_gpu_throttled is 1 for a costing reason only; a stale sample
// exports neither.
func TestClocksEventReasons(t *testing.T) {
	s := openStore(t)
	gpuNode(t, s, "n1", 3, t0.Add(-time.Second))
	update(t, s, func(tx *store.Tx) error {
		last, err := tx.GPUSamples("n1", 1)
		if err != nil {
			return err
		}
		smp := last[0]
		smp.Seq = 2
		smp.Gpus[0].ThrottleReasons = 0x1 | 0x40 | 0x800 | 0x8000_0000_0000_0000
		smp.Gpus[1].ThrottleReasons = 0x1 | 0x10
		return tx.PutGPUSample("n1", smp)
	})
	got := scrape(t, newCollector(t, Options{Store: s}))
	var reasons []string
	for k := range got {
		if strings.HasPrefix(k, "gantry_gpu_clocks_event_reason{") {
			reasons = append(reasons, k)
		}
	}
	sort.Strings(reasons)
	wantReasons := []string{
		"gantry_gpu_clocks_event_reason{gpu=0,node=n1,reason=gpu_idle}",
		"gantry_gpu_clocks_event_reason{gpu=0,node=n1,reason=hw_thermal_slowdown}",
		"gantry_gpu_clocks_event_reason{gpu=0,node=n1,reason=unknown}",
		"gantry_gpu_clocks_event_reason{gpu=1,node=n1,reason=gpu_idle}",
		"gantry_gpu_clocks_event_reason{gpu=1,node=n1,reason=sync_boost}",
	}
	if !slices.Equal(reasons, wantReasons) {
		t.Errorf("reason series\n%q\nwant\n%q", reasons, wantReasons)
	}
	for _, k := range wantReasons {
		want(t, got, k, 1)
	}
	lbl := func(i int) string {
		return fmt.Sprintf("gpu=%d,job_id=,job_name=,model=NVIDIA A100-SXM4-40GB,node=n1,uuid=GPU-n1-%d", i, i)
	}
	want(t, got, "gantry_gpu_throttled{"+lbl(0)+"}", 1)
	want(t, got, "gantry_gpu_throttled{"+lbl(1)+"}", 0)
	want(t, got, "gantry_gpu_throttled{"+lbl(2)+"}", 0)

	stale := scrape(t, newCollector(t, Options{Store: s, Now: func() time.Time { return t0.Add(time.Hour) }}))
	for k := range stale {
		if strings.HasPrefix(k, "gantry_gpu_clocks_event_reason{") || strings.HasPrefix(k, "gantry_gpu_throttled{") {
			t.Errorf("stale sample exported %s", k)
		}
	}
}
