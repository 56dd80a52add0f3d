// Package fleetmetrics exports the cluster's GPUs, jobs and nodes to
// Prometheus (GET /metrics/fleet; docs/ARCHITECTURE.md "Fleet metrics").
//
// Every controller serves it from its own replicated store, so any of them
// can be scraped. A scrape reads everything it needs in one short read
// transaction (Collector.Collect) and builds the metrics after that
// transaction has ended: a scrape never holds a store handle while
// Prometheus reads the response, and costs one transaction however many
// series it emits (invariant I1's rule for every reader). What it emits is
// bounded: per node its GPUs, and a capped number of jobs, each with a
// capped number of allow-listed metric keys.
package fleetmetrics

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/clockevents"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// DefaultMetricKeys is the allow-list of job metric keys exported as
// gantry_job_metric when none is configured: the usual training curves
// under their usual names. Patterns are globs: * matches any run of
// characters (including '/'), ? one character.
var DefaultMetricKeys = []string{
	"loss", "*_loss", "loss_*", "*/loss", "*/*_loss",
	"lr", "learning_rate", "*/lr", "*/learning_rate",
	"acc", "accuracy", "*_acc", "*_accuracy", "*/acc", "*/accuracy",
	"grad_norm", "*/grad_norm", "epoch", "mfu",
	"*tokens_per_s*", "*samples_per_s*", "*throughput*",
}

// Defaults of Options' bounds.
const (
	DefaultMaxKeysPerJob = 16
	DefaultMaxActiveJobs = 500
	DefaultMaxEndedJobs  = 50
	DefaultEndedWindow   = 15 * time.Minute
	DefaultStaleAfter    = 2 * time.Minute
)

// Keys that have gauges of their own and so are never gantry_job_metric.
const (
	keyStep       = "step"
	keyTotalSteps = "total_steps"
)

// Options configures a Collector. Zero bounds take the defaults above.
type Options struct {
	Store *store.Store
	// MetricKeys is the allow-list of job metric keys (globs); nil takes
	// DefaultMetricKeys, an empty non-nil list exports none.
	MetricKeys []string
	// MaxKeysPerJob caps gantry_job_metric series per job: of the allowed
	// keys a job has, the first in byte order are kept, so the kept set
	// does not change from one scrape to the next.
	MaxKeysPerJob int
	// MaxActiveJobs caps the jobs not ended that are exported. Jobs
	// holding GPUs always are (the fleet's GPUs bound them); queued ones
	// fill the rest, oldest first.
	MaxActiveJobs int
	// MaxEndedJobs and EndedWindow: jobs that ended within the window stay
	// exported (so a failure shows in Prometheus even between two scrapes
	// of a short job), the most recently ended first, at most this many.
	MaxEndedJobs int
	EndedWindow  time.Duration
	// StaleAfter: a GPU sample older than this exports only its age, not
	// its readings, so a node that went quiet does not show its last
	// utilisation as current.
	StaleAfter time.Duration
	// Leading reports whether this controller is the Raft leader; only
	// the leader holds the agents' links, so only it exports
	// gantry_node_connected. nil: never.
	Leading func() bool
	// Connected reports whether a node's agent is connected to this
	// controller (the leader's ingest).
	Connected func(nodeID string) bool
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
	Log *slog.Logger
}

// Collector is a prometheus.Collector over the controller's store.
type Collector struct {
	opts  Options
	allow *regexp.Regexp // nil: no key allowed

	mu       sync.Mutex
	verdicts map[string]bool // allow's answers by key (bounded, maxVerdicts)

	last    atomic.Int64 // nanoseconds the last Collect took
	series  atomic.Int64 // series the last Collect emitted
	failed  atomic.Int64 // Collects that could not read the store
	dropped atomic.Int64 // series refused by client_golang (bad label value), total
}

// New checks the options and returns a Collector.
func New(opts Options) (*Collector, error) {
	if opts.Store == nil {
		return nil, errors.New("fleetmetrics: no store")
	}
	if opts.MetricKeys == nil {
		opts.MetricKeys = DefaultMetricKeys
	}
	if opts.MaxKeysPerJob < 0 || opts.MaxActiveJobs < 0 || opts.MaxEndedJobs < 0 || opts.EndedWindow < 0 || opts.StaleAfter < 0 {
		return nil, errors.New("fleetmetrics: negative bound")
	}
	opts.MaxKeysPerJob = cmp.Or(opts.MaxKeysPerJob, DefaultMaxKeysPerJob)
	opts.MaxActiveJobs = cmp.Or(opts.MaxActiveJobs, DefaultMaxActiveJobs)
	opts.MaxEndedJobs = cmp.Or(opts.MaxEndedJobs, DefaultMaxEndedJobs)
	opts.EndedWindow = cmp.Or(opts.EndedWindow, DefaultEndedWindow)
	opts.StaleAfter = cmp.Or(opts.StaleAfter, DefaultStaleAfter)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	c := &Collector{opts: opts, verdicts: map[string]bool{}}
	// One alternation rather than a regexp per pattern: a scrape asks
	// about every key of every exported job.
	alts := make([]string, 0, len(opts.MetricKeys))
	for _, p := range opts.MetricKeys {
		re, err := Glob(p)
		if err != nil {
			return nil, err
		}
		alts = append(alts, strings.TrimSuffix(strings.TrimPrefix(re.String(), "^"), "$"))
	}
	if len(alts) > 0 {
		c.allow = regexp.MustCompile("^(?:" + strings.Join(alts, "|") + ")$") // parts compiled above
	}
	return c, nil
}

// Glob compiles a metric-key pattern: * matches any run of characters
// (metric keys like "train/loss" have slashes, so unlike path.Match it
// crosses them), ? one character, everything else itself.
func Glob(pattern string) (*regexp.Regexp, error) {
	if pattern == "" {
		return nil, errors.New("fleetmetrics: empty metric key pattern")
	}
	var b strings.Builder
	b.WriteString("^")
	for _, r := range pattern {
		switch r {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// ParseKeys splits a -fleet-metric-keys value: comma-separated globs,
// blanks ignored. "" gives nil (the defaults); "-" gives an empty list
// (no gantry_job_metric at all).
func ParseKeys(s string) ([]string, error) {
	if strings.TrimSpace(s) == "-" {
		return []string{}, nil
	}
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		if _, err := Glob(p); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// maxVerdicts bounds the cache of allow-list answers; past it the cache
// starts again, so hostile key names cost at most this much memory.
const maxVerdicts = 8192

// allowed says whether key is exported as gantry_job_metric. Jobs of a
// fleet share most key names, so answers are cached across scrapes.
func (c *Collector) allowed(key string) bool {
	if key == keyStep || key == keyTotalSteps || c.allow == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.verdicts[key]; ok {
		return v
	}
	if len(c.verdicts) >= maxVerdicts {
		clear(c.verdicts)
	}
	v := c.allow.MatchString(key)
	c.verdicts[key] = v
	return v
}

// Label names. The job's label is job_id, not job: Prometheus gives every
// scraped series a target label `job` (the scrape job), and a scraped
// `job` label would be renamed exported_job (or, with honor_labels,
// would take over the scrape job's name on idle GPUs' series).
var (
	gpuLabels = []string{"node", "gpu", "uuid", "model", "job_id", "job_name"}
	jobLabels = []string{"job_id", "job_name"}
)

func gauge(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descGPUUtil      = gauge("gantry_gpu_utilization_ratio", "GPU utilisation over the last sample period, 0..1 (DCGM_FI_DEV_GPU_UTIL / 100).", gpuLabels...)
	descGPUMemUsed   = gauge("gantry_gpu_memory_used_bytes", "GPU framebuffer memory used (DCGM_FI_DEV_FB_USED, MiB there).", gpuLabels...)
	descGPUMemTot    = gauge("gantry_gpu_memory_total_bytes", "GPU framebuffer memory in total (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE).", gpuLabels...)
	descGPUTemp      = gauge("gantry_gpu_temperature_celsius", "GPU temperature (DCGM_FI_DEV_GPU_TEMP).", gpuLabels...)
	descGPUPower     = gauge("gantry_gpu_power_watts", "GPU power draw (DCGM_FI_DEV_POWER_USAGE).", gpuLabels...)
	descGPUClock     = gauge("gantry_gpu_sm_clock_hertz", "GPU SM clock (DCGM_FI_DEV_SM_CLOCK, MHz there).", gpuLabels...)
	descGPUReason    = gauge("gantry_gpu_clocks_event_reason", "1 for each NVML clocks event (throttle) reason active on the GPU in its latest sample: gpu_idle, applications_clocks_setting, sw_power_cap, hw_slowdown, sync_boost, sw_thermal_slowdown, hw_thermal_slowdown, hw_power_brake_slowdown, display_clock_setting, board_limit, reliability, or unknown for bits NVML did not define when Gantry was built; absent when inactive (DCGM_FI_DEV_CLOCK_THROTTLE_REASONS is the raw mask).", "node", "gpu", "reason")
	descGPUThrottled = gauge("gantry_gpu_throttled", "1 while the GPU's latest sample has a throughput-costing clocks event reason (sw_power_cap, hw_slowdown, sw_thermal_slowdown, hw_thermal_slowdown, hw_power_brake_slowdown), else 0.", gpuLabels...)
	descGPUAge       = gauge("gantry_gpu_sample_age_seconds", "Seconds since the agent read this GPU's latest stored sample. Readings older than the stale limit are not exported; this one always is.", gpuLabels...)

	descJobState      = gauge("gantry_job_state", "1 for the job's current state (queued, assigned, running, or for a while after the end succeeded, failed, cancelled, lost).", "job_id", "job_name", "state")
	descJobStep       = gauge("gantry_job_step", "The job's last reported step.", jobLabels...)
	descJobTotalSteps = gauge("gantry_job_total_steps", "The job's total_steps metric, when it reports one.", jobLabels...)
	descJobPoints     = gauge("gantry_job_points", "Metric points stored for the job.", jobLabels...)
	descJobBadLines   = gauge("gantry_job_bad_lines", "Lines of the job's metrics file that were not metrics.", jobLabels...)
	descJobRequeues   = gauge("gantry_job_requeues", "Times a health policy requeued the job (its attempt is this plus 1); absent for a job never requeued.", jobLabels...)
	descJobMetricAge  = gauge("gantry_job_last_metric_age_seconds", "Seconds since the timestamp of the job's newest stored point.", jobLabels...)
	descJobMetric     = gauge("gantry_job_metric", "The latest value of an allow-listed metric key of the job (final value once it ended).", "job_id", "job_name", "key")
	descJobGPUs       = gauge("gantry_job_gpus", "GPUs the job holds (0 when it holds none), on node.", "job_id", "job_name", "node")
	descJobCondition  = gauge("gantry_job_condition", "1 while the running job has the health condition (stalled, hung, idle_gpus), 0 while it does not; absent for jobs not running.", "job_id", "job_name", "condition")

	descNodeUp        = gauge("gantry_node_up", "1 while the node's agent is registered up in the replicated state, 0 while it is down.", "node")
	descNodeConnected = gauge("gantry_node_connected", "1 while the node's agent holds a link to this controller. Exported by the Raft leader only: agents link to the leader, so a follower does not know.", "node")
	descNodeGPUs      = gauge("gantry_node_gpus", "GPUs the node offers.", "node")
	descGPUHealthy    = gauge("gantry_gpu_healthy", "1 while the GPU is healthy, 0 once its agent reported it failing (XID critical error, double-bit ECC, lost, retired pages); back to 1 when an operator undrains it.", "node", "gpu")
	descNodeGPUsFree  = gauge("gantry_node_gpus_free", "GPUs of the node no job holds.", "node")

	descOmittedJobs = gauge("gantry_fleet_omitted_jobs", "Jobs left out of this scrape by the caps (-fleet-max-jobs, the ended-jobs cap).")
	descOmittedKeys = gauge("gantry_fleet_omitted_metric_keys", "Allow-listed job metric values left out of this scrape by the per-job key cap.")
	descError       = gauge("gantry_fleet_error", "Reading the store failed.")

	allDescs = []*prometheus.Desc{descGPUUtil, descGPUMemUsed, descGPUMemTot, descGPUTemp, descGPUPower, descGPUClock, descGPUAge, descGPUReason, descGPUThrottled,
		descJobState, descJobStep, descJobTotalSteps, descJobPoints, descJobBadLines, descJobRequeues, descJobMetricAge, descJobMetric, descJobGPUs, descJobCondition,
		descNodeUp, descNodeConnected, descNodeGPUs, descNodeGPUsFree, descGPUHealthy, descOmittedJobs, descOmittedKeys, descError}
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// snapshot is what one scrape reads from the store: copies, so the
// transaction can end before any metric is built.
type snapshot struct {
	nodes   []*gantrypb.Node
	samples map[string]*gantrypb.GPUSample // node id → its latest GPU sample
	jobs    []jobView                      // exported jobs, in id order
	holders map[string]map[uint32]jobView  // node → GPU index → job holding it
	omitted int
}

type jobView struct {
	job       *gantrypb.Job
	lastTs    float64
	hasPoints bool
}

func (j jobView) name() string { return j.job.GetSpec().GetName() }

// read takes the snapshot in one read transaction.
func (c *Collector) read(now time.Time) (*snapshot, error) {
	s := &snapshot{samples: map[string]*gantrypb.GPUSample{}, holders: map[string]map[uint32]jobView{}}
	cutoff := now.Add(-c.opts.EndedWindow).UnixMilli()
	err := c.opts.Store.View(func(tx *store.Tx) error {
		nodes, err := tx.Nodes()
		if err != nil {
			return err
		}
		s.nodes = nodes
		for _, n := range nodes {
			last, err := tx.GPUSamples(n.Id, 1)
			if err != nil {
				return err
			}
			if len(last) == 1 {
				s.samples[n.Id] = last[0]
			}
		}
		// Holders are always kept; other active jobs up to the cap (more
		// are only counted, never held in memory); ended ones sorted below.
		var holding, waiting, ended []*gantrypb.Job
		err = tx.JobsWhere(func(st gantrypb.JobState, finished int64) bool {
			if lifecycle.IsTerminal(st) {
				return finished >= cutoff
			}
			if !lifecycle.HoldsGPUs(st) && len(waiting) >= c.opts.MaxActiveJobs {
				s.omitted++
				return false
			}
			return true
		}, func(j *gantrypb.Job) bool {
			switch {
			case lifecycle.IsTerminal(j.State):
				ended = append(ended, j)
			case lifecycle.HoldsGPUs(j.State):
				holding = append(holding, j)
			default:
				waiting = append(waiting, j)
			}
			return true
		})
		if err != nil {
			return err
		}
		if room := max(0, c.opts.MaxActiveJobs-len(holding)); len(waiting) > room {
			s.omitted += len(waiting) - room
			waiting = waiting[:room]
		}
		slices.SortStableFunc(ended, func(a, b *gantrypb.Job) int { return cmp.Compare(b.FinishedAtMs, a.FinishedAtMs) })
		if len(ended) > c.opts.MaxEndedJobs {
			s.omitted += len(ended) - c.opts.MaxEndedJobs
			ended = ended[:c.opts.MaxEndedJobs]
		}
		all := slices.Concat(holding, waiting, ended)
		slices.SortFunc(all, func(a, b *gantrypb.Job) int { return strings.Compare(a.Id, b.Id) })
		for _, j := range all {
			v := jobView{job: j}
			if j.Points > 0 {
				ts, ok, err := tx.LastPointTs(j.Id)
				if err != nil {
					return err
				}
				v.lastTs, v.hasPoints = ts, ok
			}
			s.jobs = append(s.jobs, v)
			if lifecycle.HoldsGPUs(j.State) {
				lifecycle.MarkHoldings(s.holders, j, v)
			}
		}
		return nil
	})
	return s, err
}

// Collect implements prometheus.Collector: one read transaction, then the
// metrics built from its copies.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	start := time.Now()
	now := c.opts.Now()
	s, err := c.read(now)
	if err != nil {
		c.failed.Add(1)
		c.opts.Log.Error("fleet metrics: reading the store", "err", err)
		// An invalid metric fails the scrape with the reason (HTTP 500),
		// rather than answering with a fleet that looks empty (I4).
		ch <- prometheus.NewInvalidMetric(descError, fmt.Errorf("fleet metrics: %w", err))
		return
	}
	e := emitter{ch: ch, c: c}
	c.emitNodes(&e, s, now)
	omittedKeys := c.emitJobs(&e, s, now)
	e.emit(descOmittedJobs, float64(s.omitted))
	e.emit(descOmittedKeys, float64(omittedKeys))
	c.series.Store(int64(e.n))
	c.last.Store(int64(time.Since(start)))
}

// emitter sends const metrics, counting them. A series client_golang
// refuses (a label value that is not UTF-8) is dropped and counted: one
// bad value must not fail the whole fleet's scrape.
type emitter struct {
	ch chan<- prometheus.Metric
	c  *Collector
	n  int
}

func (e *emitter) emit(d *prometheus.Desc, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, v, labels...)
	if err != nil {
		if e.c.dropped.Add(1) == 1 {
			e.c.opts.Log.Warn("fleet metrics: series dropped (counted in gantry_fleet_dropped_series_total)", "err", err)
		}
		return
	}
	e.ch <- m
	e.n++
}

func (c *Collector) emitNodes(e *emitter, s *snapshot, now time.Time) {
	leading := c.opts.Leading != nil && c.opts.Leading() && c.opts.Connected != nil
	for _, n := range s.nodes {
		e.emit(descNodeUp, b2f(n.State == gantrypb.NodeState_NODE_STATE_UP), n.Id)
		if leading {
			e.emit(descNodeConnected, b2f(c.opts.Connected(n.Id)), n.Id)
		}
		offered := map[uint32]*gantrypb.GPUInfo{}
		for _, g := range n.Gpus {
			offered[g.Index] = g
		}
		free := 0
		for idx := range offered {
			if _, held := s.holders[n.Id][idx]; !held {
				free++
			}
		}
		e.emit(descNodeGPUs, float64(len(offered)), n.Id)
		e.emit(descNodeGPUsFree, float64(free), n.Id)
		failing := map[uint32]bool{}
		for _, h := range n.UnhealthyGpus {
			failing[h.Index] = true
		}
		for _, g := range n.Gpus {
			e.emit(descGPUHealthy, b2f(!failing[g.Index]), n.Id, strconv.FormatUint(uint64(g.Index), 10))
		}

		sample := s.samples[n.Id]
		if sample == nil {
			continue
		}
		// An agent's clock ahead of ours would make a negative age.
		age := max(0, now.Sub(time.Unix(0, int64(sample.Ts*1e9))).Seconds())
		fresh := age <= c.opts.StaleAfter.Seconds()
		seen := map[uint32]bool{}
		for _, g := range sample.Gpus {
			if seen[g.Index] {
				continue // one series per GPU; a duplicate would fail the scrape
			}
			seen[g.Index] = true
			uuid, model := g.Uuid, g.Name
			if info := offered[g.Index]; info != nil {
				uuid, model = cmp.Or(uuid, info.Uuid), cmp.Or(model, info.Name)
			}
			holder := s.holders[n.Id][g.Index]
			var jobID, jobName string
			if holder.job != nil {
				jobID, jobName = holder.job.Id, holder.name()
			}
			l := []string{n.Id, strconv.FormatUint(uint64(g.Index), 10), uuid, model, jobID, jobName}
			e.emit(descGPUAge, age, l...)
			if !fresh {
				continue
			}
			e.emit(descGPUUtil, g.UtilizationPct/100, l...)
			e.emit(descGPUMemUsed, float64(g.MemoryUsedBytes), l...)
			e.emit(descGPUMemTot, float64(g.MemoryTotalBytes), l...)
			e.emit(descGPUTemp, g.TemperatureC, l...)
			e.emit(descGPUPower, g.PowerW, l...)
			e.emit(descGPUClock, float64(g.SmClockMhz)*1e6, l...)
			e.emit(descGPUThrottled, b2f(clockevents.Throttled(g.ThrottleReasons)), l...)
			c.emitReasons(e, n.Id, l[1], g.ThrottleReasons)
		}
	}
}

// unknownReason is the reason label of bits NVML had not defined when
// Gantry was built. One fixed value, not the bits: a GPU has at most one
// such series whatever its agent reports, so a GPU exports at most
// len(clockevents.Reasons)+1 reason series (the API names the bits).
const unknownReason = "unknown"

// emitReasons emits a series for each reason active in mask.
func (c *Collector) emitReasons(e *emitter, node, gpu string, mask uint64) {
	for _, r := range clockevents.Reasons {
		if mask&r.Bit != 0 {
			e.emit(descGPUReason, 1, node, gpu, r.Name)
		}
	}
	if mask&^clockevents.Known != 0 {
		e.emit(descGPUReason, 1, node, gpu, unknownReason)
	}
}

// emitJobs emits the jobs' series and returns how many allow-listed
// metric values the per-job cap left out.
func (c *Collector) emitJobs(e *emitter, s *snapshot, now time.Time) (omittedKeys int) {
	var keys []string
	for _, v := range s.jobs {
		j := v.job
		id, name := j.Id, v.name()
		e.emit(descJobState, 1, id, name, lifecycle.StateName(j.State))
		e.emit(descJobPoints, float64(j.Points), id, name)
		e.emit(descJobBadLines, float64(j.BadLines), id, name)
		if j.Attempt > 0 {
			// Only then: a fleet of jobs that never hang pays no series.
			e.emit(descJobRequeues, float64(j.Attempt), id, name)
		}
		gpus := 0
		if lifecycle.HoldsGPUs(j.State) {
			// Every live rank's GPUs for a multi-node job (node: rank 0's).
			for _, h := range lifecycle.Holdings(j) {
				gpus += len(h.GPUs)
			}
		}
		e.emit(descJobGPUs, float64(gpus), id, name, j.Node)
		if j.State == gantrypb.JobState_JOB_STATE_RUNNING {
			// Every kind, 0 or 1: an alert rule sees a condition clear
			// rather than its series vanish.
			for _, kind := range lifecycle.Conditions {
				held := slices.ContainsFunc(j.Conditions, func(c *gantrypb.JobCondition) bool { return c.Kind == kind })
				e.emit(descJobCondition, b2f(held), id, name, kind)
			}
		}
		if v.hasPoints {
			e.emit(descJobMetricAge, max(0, now.Sub(time.Unix(0, int64(v.lastTs*1e9))).Seconds()), id, name)
		}
		values := j.LatestMetrics
		if lifecycle.IsTerminal(j.State) && len(j.FinalMetrics) > 0 {
			values = j.FinalMetrics
		}
		if step, ok := values[keyStep]; ok {
			e.emit(descJobStep, step, id, name)
		}
		if total, ok := values[keyTotalSteps]; ok {
			e.emit(descJobTotalSteps, total, id, name)
		}
		keys = keys[:0]
		for k := range values {
			if c.allowed(k) {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		if len(keys) > c.opts.MaxKeysPerJob {
			omittedKeys += len(keys) - c.opts.MaxKeysPerJob
			keys = keys[:c.opts.MaxKeysPerJob]
		}
		for _, k := range keys {
			e.emit(descJobMetric, values[k], id, name, k)
		}
	}
	return omittedKeys
}

// SelfMetrics are the exporter's own gauges, for the process registry
// (/metrics): how long the last scrape's collection took, how many series
// it emitted, and the failures.
func (c *Collector) SelfMetrics() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gantry_fleet_collect_seconds",
			Help: "How long the last /metrics/fleet collection took (its one store read and building the series)."},
			func() float64 { return time.Duration(c.last.Load()).Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gantry_fleet_series",
			Help: "Series the last /metrics/fleet scrape emitted."},
			func() float64 { return float64(c.series.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gantry_fleet_collect_failures_total",
			Help: "/metrics/fleet scrapes that failed reading the store."},
			func() float64 { return float64(c.failed.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gantry_fleet_dropped_series_total",
			Help: "/metrics/fleet series dropped because client_golang refused them (a label value that is not UTF-8)."},
			func() float64 { return float64(c.dropped.Load()) }),
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
