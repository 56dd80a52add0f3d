// Package health judges a running job's health on the agent: whether it
// still makes progress (new steps in its metrics file) and whether its
// GPUs are doing anything. It concludes one of three conditions —
// stalled, hung, idle_gpus (lifecycle.Cond*) — and says when one begins
// or ends, with the evidence and the signal that decided it.
//
// A Monitor is a pure state machine over what it is fed (metric lines,
// GPU samples) and the time it is asked at (Eval): it reads no clock of
// its own, so tests drive it with scripted traces and exact times. The
// agent feeds it and turns its verdicts into condition records.
//
// Memory is bounded: a fixed ring of step intervals, and per GPU a fixed
// ring of recent readings.
package health

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/internal/clockevents"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// Defaults of a job's health checks (README "Health").
const (
	// DefaultK times the typical step interval is how long a job that
	// has logged steps may go without a new one.
	DefaultK = 10
	// DefaultStallFloor is the least stall window: a job stepping every
	// 100 ms is not stalled after a second's pause for a checkpoint.
	DefaultStallFloor = 5 * time.Minute
	// DefaultStartupGrace is how long a job that never logged a step may
	// run (setup, data loading, compilation) before it counts as stalled.
	DefaultStartupGrace = 30 * time.Minute
	// DefaultIdleAfter is how long a GPU must stay idle for idle_gpus.
	DefaultIdleAfter = 10 * time.Minute
	// DefaultIdleUtilPct: below this utilization a GPU may be idle.
	DefaultIdleUtilPct = 5.0
	// DefaultIdlePowerFrac of the power limit: below this power a GPU may
	// be idle (utilization alone misses a GPU busy with copies).
	DefaultIdlePowerFrac = 0.25
	// DefaultIdlePowerW is the idle power threshold when the limit is
	// unknown.
	DefaultIdlePowerW = 100.0
	// DefaultThrottleAfter is how long a GPU's clocks must stay held down
	// for a throughput-costing reason, in every sample, before the job is
	// told (gpu_throttled). A minute is long past the power-cap and
	// clock-change blips a busy GPU shows for a second or two, and short
	// enough that a run losing a third of its speed to heat hears of it
	// long before it ends.
	DefaultThrottleAfter = 60 * time.Second
)

// The hang signature: every GPU of the job pegged at high utilization
// while drawing little power, its SM clock and memory use steady. A
// collective waiting on a peer spins a kernel that keeps the SM "busy"
// (utilization counts time a kernel is resident) without doing arithmetic.
const (
	hungMinUtilPct = 95.0
	// hungPowerFrac of the limit (or hungPowerW when unknown): below it
	// the GPU is doing little work whatever its utilization says.
	hungPowerFrac = 0.40
	hungPowerW    = 150.0
	// hungClockSpread is the most the SM clock may move (max-min over
	// mean) over the stall; hungMemSpreadBytes the most memory use may.
	hungClockSpread    = 0.05
	hungMemSpreadBytes = 256 << 20
	// minHangSamples is how many readings per GPU the verdict needs.
	minHangSamples = 3
	// hungLowShare of the readings must be below the low-power line.
	hungLowShare = 0.9
)

// Bounds on a Monitor's memory.
const (
	// intervalRing is how many recent step intervals the typical
	// interval is the median of.
	intervalRing = 64
	// sampleRing is how many recent readings are kept per GPU.
	sampleRing = 256
	// MaxGPUs is the most GPUs a Monitor watches; the rest are ignored.
	// A condition names at most this many (limits.MaxConditionGPUs).
	MaxGPUs = limits.MaxConditionGPUs
)

// Config is a job's health settings, defaults filled in.
type Config struct {
	// Disabled turns every check off.
	Disabled bool
	// StallAfter, when set, is the stall window; otherwise it is
	// max(K x typical step interval, StallFloor).
	StallAfter time.Duration
	K          float64
	StallFloor time.Duration
	// StartupGrace is the stall window of a job that never logged a step.
	StartupGrace time.Duration
	// IdleAfter is how long a GPU must stay idle for idle_gpus.
	IdleAfter time.Duration
	// IdleUtilPct and IdlePowerW are the idle thresholds; IdlePowerW 0
	// means DefaultIdlePowerFrac of the GPU's power limit.
	IdleUtilPct float64
	IdlePowerW  float64
	// ThrottleAfter is how long a GPU must stay throttled for a costing
	// reason before gpu_throttled (Monitor.Events).
	ThrottleAfter time.Duration
}

// Defaults are a host's defaults for what a job's spec leaves unset
// (gantry-agent -health-* flags); zero fields take the package defaults.
type Defaults struct {
	K            float64
	StallFloor   time.Duration
	StartupGrace time.Duration
	IdleAfter    time.Duration
	IdleUtilPct  float64
	// ThrottleAfter has no field in a job's spec: it is the host's
	// (gantry-agent -health-throttle-after).
	ThrottleAfter time.Duration
}

// ConfigFrom fills a Config from a job's spec, with the package defaults.
func ConfigFrom(h *gantrypb.HealthSpec) Config { return ConfigWith(h, Defaults{}) }

// ConfigWith fills a Config from a job's spec; what it leaves unset comes
// from d, then from the package defaults.
func ConfigWith(h *gantrypb.HealthSpec, d Defaults) Config {
	c := Config{
		Disabled:     h.GetDisabled(),
		StallAfter:   time.Duration(h.GetStallAfterMs()) * time.Millisecond,
		K:            d.K,
		StallFloor:   d.StallFloor,
		StartupGrace: time.Duration(h.GetStartupGraceMs()) * time.Millisecond,
		IdleAfter:    time.Duration(h.GetIdleAfterMs()) * time.Millisecond,
		IdleUtilPct:  h.GetIdleUtilPct(),
		IdlePowerW:   h.GetIdlePowerW(),
	}
	if c.StallAfter < 0 {
		c.StallAfter = 0
	}
	if !(c.K >= 1) || math.IsInf(c.K, 0) {
		c.K = DefaultK
	}
	if c.StallFloor <= 0 {
		c.StallFloor = DefaultStallFloor
	}
	if c.StartupGrace <= 0 {
		c.StartupGrace = cmpDur(d.StartupGrace, DefaultStartupGrace)
	}
	if c.IdleAfter <= 0 {
		c.IdleAfter = cmpDur(d.IdleAfter, DefaultIdleAfter)
	}
	c.ThrottleAfter = cmpDur(d.ThrottleAfter, DefaultThrottleAfter)
	if !(c.IdleUtilPct > 0) || c.IdleUtilPct > 100 {
		c.IdleUtilPct = DefaultIdleUtilPct
		if d.IdleUtilPct > 0 && d.IdleUtilPct <= 100 {
			c.IdleUtilPct = d.IdleUtilPct
		}
	}
	if !(c.IdlePowerW > 0) || math.IsInf(c.IdlePowerW, 0) {
		c.IdlePowerW = 0
	}
	return c
}

// cmpDur is d when positive, else def.
func cmpDur(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Verdict is a condition beginning (Active) or ending.
type Verdict struct {
	Kind     string // lifecycle.Cond*
	Active   bool
	At       time.Time
	Evidence string
	// Signal names what decided it (see gantrypb.HealthCondition.signal).
	Signal string
	GPUs   []uint32
}

// reading is one GPU's sample.
type reading struct {
	at      time.Time
	util    float64
	powerW  float64
	limitW  float64
	smMHz   float64
	memUsed uint64
	tempC   float64
}

// gpuTrack is what a Monitor keeps of one GPU.
type gpuTrack struct {
	ring [sampleRing]reading
	n    int // readings in ring (at most sampleRing)
	next int // where the next one goes
	// idleSince is the first reading of the current idle run (zero: the
	// last reading was busy, or none yet).
	idleSince time.Time
	last      reading
	throttle  throttleRun
}

// throttleRun is a GPU's current run of consecutive samples throttled for
// a throughput-costing reason (the zero value: none).
type throttleRun struct {
	since time.Time // the run's first sample
	last  time.Time // its latest sample
	mask  uint64    // the costing reasons seen in it, together
	told  bool      // gpu_throttled was reported for it
	// ended is a run that was told and has ended, waiting for Events to
	// report its end; endedAt is the first sample without a costing
	// reason (or the run's last sample, when a gap in samples ended it).
	ended   *throttleRun
	endedAt time.Time
}

func (g *gpuTrack) add(r reading) {
	g.ring[g.next] = r
	g.next = (g.next + 1) % sampleRing
	g.n = min(g.n+1, sampleRing)
	g.last = r
}

// since returns the readings after t, oldest first.
func (g *gpuTrack) since(t time.Time) []reading {
	out := make([]reading, 0, g.n)
	for i := range g.n {
		r := g.ring[(g.next-g.n+i+sampleRing)%sampleRing]
		if r.at.After(t) {
			out = append(out, r)
		}
	}
	return out
}

// Monitor watches one job.
type Monitor struct {
	cfg   Config
	start time.Time
	gpus  []uint32
	track map[uint32]*gpuTrack

	// Progress: the last step seen and when it changed.
	stepped      bool
	lastStep     int64
	lastProgress time.Time
	intervals    [intervalRing]time.Duration
	nIntervals   int
	nextInterval int

	active map[string]bool
	// resumed: the monitor was rebuilt (agent restart) and does not know
	// which conditions the controller holds for the job; the first
	// evidence against each is reported as its end, which the controller
	// ignores for a condition it does not hold.
	resumed map[string]bool
}

// New returns a Monitor for a job that started at start on gpus.
// resumed says the job was re-adopted after an agent restart.
func New(cfg Config, gpus []uint32, start time.Time, resumed bool) *Monitor {
	if len(gpus) > MaxGPUs {
		gpus = gpus[:MaxGPUs]
	}
	m := &Monitor{cfg: cfg, start: start, gpus: slices.Clone(gpus), track: map[uint32]*gpuTrack{},
		active: map[string]bool{}, resumed: map[string]bool{}}
	for _, g := range m.gpus {
		m.track[g] = &gpuTrack{}
	}
	if resumed {
		for _, k := range lifecycle.Conditions {
			m.resumed[k] = true
		}
	}
	return m
}

// Line records a metrics line written at t. A line with a new step (or
// with no step at all: a job that logs no steps progresses by lines) is
// progress.
func (m *Monitor) Line(step *int64, t time.Time) {
	if step != nil && m.stepped && *step == m.lastStep {
		return
	}
	if m.stepped {
		if d := t.Sub(m.lastProgress); d > 0 {
			m.intervals[m.nextInterval] = d
			m.nextInterval = (m.nextInterval + 1) % intervalRing
			m.nIntervals = min(m.nIntervals+1, intervalRing)
		}
	}
	m.stepped = true
	if step != nil {
		m.lastStep = *step
	}
	if t.After(m.lastProgress) {
		m.lastProgress = t
	}
}

// Sample records a GPU sample; GPUs the job was not given are ignored.
func (m *Monitor) Sample(s *gantrypb.GPUSample, t time.Time) {
	for _, st := range s.GetGpus() {
		g := m.track[st.GetIndex()]
		if g == nil {
			continue
		}
		r := reading{at: t, util: st.GetUtilizationPct(), powerW: st.GetPowerW(), limitW: st.GetPowerLimitW(),
			smMHz: float64(st.GetSmClockMhz()), memUsed: st.GetMemoryUsedBytes(), tempC: st.GetTemperatureC()}
		g.add(r)
		m.throttleSample(g, st.GetThrottleReasons()&clockevents.CostlyMask, t)
		if m.idle(r) {
			if g.idleSince.IsZero() {
				g.idleSince = t
			}
		} else {
			g.idleSince = time.Time{}
		}
	}
}

// idlePower is the power below which a GPU may be idle.
func (m *Monitor) idlePower(limitW float64) float64 {
	if m.cfg.IdlePowerW > 0 {
		return m.cfg.IdlePowerW
	}
	if limitW > 0 {
		return DefaultIdlePowerFrac * limitW
	}
	return DefaultIdlePowerW
}

func (m *Monitor) idle(r reading) bool {
	return r.util < m.cfg.IdleUtilPct && r.powerW < m.idlePower(r.limitW)
}

// typical is the median recent step interval (0: none yet).
func (m *Monitor) typical() time.Duration {
	if m.nIntervals == 0 {
		return 0
	}
	d := slices.Clone(m.intervals[:m.nIntervals])
	slices.Sort(d)
	return d[len(d)/2]
}

// StallWindow is how long the job may go without progress now, and what
// it is measured from.
func (m *Monitor) StallWindow() (window time.Duration, from time.Time, why string) {
	if !m.stepped {
		return m.cfg.StartupGrace, m.start, fmt.Sprintf("startup grace %s: no step logged yet", m.cfg.StartupGrace)
	}
	if m.cfg.StallAfter > 0 {
		return m.cfg.StallAfter, m.lastProgress, fmt.Sprintf("stall_after %s", m.cfg.StallAfter)
	}
	typ := m.typical()
	w := max(time.Duration(m.cfg.K*float64(typ)), m.cfg.StallFloor)
	return w, m.lastProgress, fmt.Sprintf("window %s = max(%gx typical step interval %s, %s)",
		w.Round(time.Millisecond), m.cfg.K, typ.Round(time.Millisecond), m.cfg.StallFloor)
}

// Eval returns the conditions that began or ended by t.
func (m *Monitor) Eval(t time.Time) []Verdict {
	if m.cfg.Disabled {
		return nil
	}
	var out []Verdict
	out = append(out, m.evalStall(t)...)
	out = append(out, m.evalIdle(t)...)
	return out
}

func (m *Monitor) set(kind string, v Verdict) []Verdict {
	if v.Active == m.active[kind] && !(m.resumed[kind] && !v.Active) {
		return nil
	}
	m.active[kind] = v.Active
	delete(m.resumed, kind)
	v.Kind = kind
	return []Verdict{v}
}

func (m *Monitor) evalStall(t time.Time) []Verdict {
	window, from, why := m.StallWindow()
	quiet := t.Sub(from)
	stalling := m.active[lifecycle.CondStalled] || m.active[lifecycle.CondHung]
	if quiet < window {
		if !stalling && !(m.stepped && (m.resumed[lifecycle.CondStalled] || m.resumed[lifecycle.CondHung])) {
			return nil
		}
		ev := fmt.Sprintf("progress resumed: step %d at %s", m.lastStep, from.UTC().Format(time.RFC3339))
		var out []Verdict
		for _, k := range []string{lifecycle.CondStalled, lifecycle.CondHung} {
			if m.active[k] || m.resumed[k] {
				out = append(out, m.set(k, Verdict{Active: false, At: t, Signal: "progress", Evidence: ev})...)
			}
		}
		return out
	}
	if m.active[lifecycle.CondHung] {
		return nil
	}
	// A stall is judged on the readings of its last window (two minutes
	// at most): a stall that began with busy GPUs and turned into the
	// hang signature (a collective that started waiting later) is hung
	// from then on.
	since := from
	if lo := t.Add(-min(window, 2*time.Minute)); since.Before(lo) {
		since = lo
	}
	kind, signal, gpuEv := m.classify(since)
	if stalling && kind != lifecycle.CondHung {
		return nil
	}
	last := "no step logged since the job started " + quiet.Round(time.Second).String() + " ago"
	if m.stepped {
		last = fmt.Sprintf("no new step for %s (last step %d)", quiet.Round(time.Second), m.lastStep)
	}
	v := Verdict{Active: true, At: t, Signal: signal, GPUs: slices.Clone(m.gpus),
		Evidence: fmt.Sprintf("%s; %s; %s", last, why, gpuEv)}
	if kind == lifecycle.CondHung {
		// hung replaces stalled: say so if stalled was reported.
		return m.set(lifecycle.CondHung, v)
	}
	return m.set(lifecycle.CondStalled, v)
}

// classify decides between stalled and hung from the GPU readings after
// since (the one taken with the last progress was still of a working
// job), and returns the signal and the GPU evidence.
func (m *Monitor) classify(since time.Time) (kind, signal, evidence string) {
	if len(m.gpus) == 0 {
		return lifecycle.CondStalled, "no_step", "the job has no GPUs"
	}
	allIdle, allHung := true, true
	var parts []string
	for _, g := range m.gpus {
		rs := m.track[g].since(since)
		if len(rs) < minHangSamples {
			return lifecycle.CondStalled, "no_step", fmt.Sprintf("too few GPU readings to judge the GPUs (%d on GPU %d)", len(rs), g)
		}
		s := summarize(rs)
		parts = append(parts, fmt.Sprintf("GPU %d util %.0f-%.0f%% power %.0f W (limit %s) SM %.0f-%.0f MHz mem %s-%s",
			g, s.minUtil, s.maxUtil, s.meanPower, limitText(s.limit), s.minSM, s.maxSM, mib(s.minMem), mib(s.maxMem)))
		if !(s.maxUtil < m.cfg.IdleUtilPct && s.meanPower < m.idlePower(s.limit)) {
			allIdle = false
		}
		lowPower := hungPowerW
		if s.limit > 0 {
			lowPower = hungPowerFrac * s.limit
		}
		steadyClock := s.meanSM > 0 && (s.maxSM-s.minSM)/s.meanSM <= hungClockSpread
		steadyMem := s.maxMem-s.minMem <= hungMemSpreadBytes
		// Low power in nearly every reading, not on average: a GPU that
		// computed at full power a moment ago is not hung yet.
		if !(s.minUtil >= hungMinUtilPct && lowShare(rs, lowPower) >= hungLowShare && steadyClock && steadyMem) {
			allHung = false
		}
	}
	ev := strings.Join(parts, "; ")
	switch {
	case allHung:
		return lifecycle.CondHung, "gpus_pegged_low_power", "GPUs pegged at low power, SM clock and memory steady (a collective waiting?): " + ev
	case allIdle:
		return lifecycle.CondStalled, "gpus_idle", "GPUs idle: " + ev
	default:
		return lifecycle.CondStalled, "no_step", "GPUs busy but no step: " + ev
	}
}

type summary struct {
	minUtil, maxUtil, meanPower, limit, minSM, maxSM, meanSM float64
	minMem, maxMem                                           uint64
}

func summarize(rs []reading) summary {
	s := summary{minUtil: math.Inf(1), maxUtil: math.Inf(-1), minSM: math.Inf(1), maxSM: math.Inf(-1),
		minMem: math.MaxUint64}
	for _, r := range rs {
		s.minUtil, s.maxUtil = math.Min(s.minUtil, r.util), math.Max(s.maxUtil, r.util)
		s.minSM, s.maxSM = math.Min(s.minSM, r.smMHz), math.Max(s.maxSM, r.smMHz)
		s.minMem, s.maxMem = min(s.minMem, r.memUsed), max(s.maxMem, r.memUsed)
		s.meanPower += r.powerW
		s.meanSM += r.smMHz
		s.limit = r.limitW
	}
	s.meanPower /= float64(len(rs))
	s.meanSM /= float64(len(rs))
	return s
}

// lowShare is the share of rs drawing less than w.
func lowShare(rs []reading, w float64) float64 {
	n := 0
	for _, r := range rs {
		if r.powerW < w {
			n++
		}
	}
	return float64(n) / float64(len(rs))
}

func limitText(w float64) string {
	if w <= 0 {
		return "unknown"
	}
	return fmt.Sprintf("%.0f W", w)
}

func mib(b uint64) string { return fmt.Sprintf("%d MiB", b>>20) }

func (m *Monitor) evalIdle(t time.Time) []Verdict {
	// A stalled or hung job's idle GPUs are explained by the stall.
	if m.active[lifecycle.CondStalled] || m.active[lifecycle.CondHung] {
		return nil
	}
	var idle []uint32
	var parts []string
	for _, g := range m.gpus {
		tr := m.track[g]
		if tr.idleSince.IsZero() || t.Sub(tr.idleSince) < m.cfg.IdleAfter {
			continue
		}
		idle = append(idle, g)
		parts = append(parts, fmt.Sprintf("GPU %d idle for %s (now util %.0f%%, power %.0f W)",
			g, t.Sub(tr.idleSince).Round(time.Second), tr.last.util, tr.last.powerW))
	}
	sort.Slice(idle, func(i, j int) bool { return idle[i] < idle[j] })
	if len(idle) > 0 {
		thr := fmt.Sprintf("below %.0f%% utilization and the idle power for %s", m.cfg.IdleUtilPct, m.cfg.IdleAfter)
		return m.set(lifecycle.CondIdleGPUs, Verdict{Active: true, At: t, Signal: "low_util_and_power", GPUs: idle,
			Evidence: strings.Join(parts, "; ") + " (" + thr + ")"})
	}
	if !m.active[lifecycle.CondIdleGPUs] && !m.resumed[lifecycle.CondIdleGPUs] {
		return nil
	}
	// Cleared once every GPU's last reading is busy (a resumed monitor
	// too: it waits for readings before saying so, rather than clear what
	// it would set again).
	for _, g := range m.gpus {
		if tr := m.track[g]; tr.n == 0 || !tr.idleSince.IsZero() {
			return nil
		}
	}
	return m.set(lifecycle.CondIdleGPUs, Verdict{Active: false, At: t, Signal: "gpus_busy", Evidence: "the job's GPUs are busy again"})
}

// Active reports whether a condition is held.
func (m *Monitor) Active(kind string) bool { return m.active[kind] }

// Event is a job event the monitor concludes: information for the job's
// owner, not a condition (no policy acts on it).
type Event struct {
	Kind    lifecycle.EventKind
	At      time.Time
	GPU     uint32
	Message string
	// Count is the event's number (JobEvent.count): for gpu_throttled
	// and its end, the episode's length in whole seconds.
	Count uint64
}

// throttleSample extends or ends GPU g's throttled run with a sample at t
// whose throughput-costing reasons are costly. Only consecutive samples
// make a run: a gap between two throttled samples longer than the window
// starts a new one, since what the GPU did in the gap is unknown.
func (m *Monitor) throttleSample(g *gpuTrack, costly uint64, t time.Time) {
	run := &g.throttle
	if costly == 0 {
		if run.told {
			ended := *run
			ended.ended = nil
			run.ended, run.endedAt = &ended, t
		}
		ended, at := run.ended, run.endedAt
		*run = throttleRun{ended: ended, endedAt: at}
		return
	}
	if !run.since.IsZero() && t.Sub(run.last) > m.throttleWindow() {
		ended, at := run.ended, run.endedAt
		if run.told {
			// Not a clear end, but the episode told is over.
			e := *run
			e.ended = nil
			ended, at = &e, run.last
		}
		*run = throttleRun{ended: ended, endedAt: at}
	}
	if run.since.IsZero() {
		run.since = t
	}
	if t.After(run.last) {
		run.last = t
	}
	run.mask |= costly
}

// Events returns the job events due by t: per GPU, gpu_throttled once a
// run of throttled samples has lasted the window, and
// gpu_throttled_cleared when a run that was told ends. A run shorter than
// the window, or of benign reasons only (gpu_idle, sync_boost, ...), says
// nothing. Unlike Eval it is not turned off with the checks of a resumed
// monitor: a restarted agent that finds a GPU still throttled tells the
// job again after a full window, which is the truth from its view.
func (m *Monitor) Events(t time.Time) []Event {
	if m.cfg.Disabled {
		return nil
	}
	var out []Event
	for _, idx := range m.gpus {
		g := m.track[idx]
		run := &g.throttle
		if e := run.ended; e != nil {
			d := run.endedAt.Sub(e.since)
			out = append(out, Event{Kind: lifecycle.EventGPUThrottledCleared, At: t, GPU: idx, Count: secs(d),
				Message: fmt.Sprintf("GPU %d is no longer throttled, after %s (%s)",
					idx, d.Round(time.Second), clockevents.Describe(e.mask))})
			run.ended = nil
		}
		if run.since.IsZero() || run.told {
			continue
		}
		if d := run.last.Sub(run.since); d >= m.throttleWindow() {
			run.told = true
			r := g.last
			out = append(out, Event{Kind: lifecycle.EventGPUThrottled, At: t, GPU: idx, Count: secs(d),
				Message: fmt.Sprintf("GPU %d throttled for %s by %s: its clocks are held down, so the job runs slower "+
					"(now SM %.0f MHz, %.0f °C, %.0f W of %s)",
					idx, d.Round(time.Second), clockevents.Describe(run.mask),
					r.smMHz, r.tempC, r.powerW, limitText(r.limitW))})
		}
	}
	return out
}

// throttleWindow is the configured window, the default for a Config
// built by hand without one.
func (m *Monitor) throttleWindow() time.Duration {
	return cmpDur(m.cfg.ThrottleAfter, DefaultThrottleAfter)
}

func secs(d time.Duration) uint64 { return uint64(max(0, d.Round(time.Second)/time.Second)) }
