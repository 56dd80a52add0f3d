// Package view turns stored records into the API's JSON shapes (apiv1) and
// job specs from the API into stored ones. It is the one place that knows
// both sides of the contract.
package view

import (
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/internal/clockevents"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/flat"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// State returns the API name of a job state (lifecycle.StateName).
func State(s gantrypb.JobState) string {
	return lifecycle.StateName(s)
}

// NodeState returns the API name of a node state.
func NodeState(s gantrypb.NodeState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "NODE_STATE_"))
}

func msTime(ms int64) *time.Time {
	if ms == 0 {
		return nil
	}
	t := time.UnixMilli(ms).UTC()
	return &t
}

// Spec converts an API spec to its stored form.
func Spec(s apiv1.JobSpec) *gantrypb.JobSpec {
	return &gantrypb.JobSpec{
		Name:           s.Name,
		Run:            s.Run,
		Setup:          s.Setup,
		Env:            s.Env,
		Workdir:        s.Workdir,
		Resources:      &gantrypb.Resources{Gpus: uint32(s.Resources.GPUs), GpuType: s.Resources.GPUType, Nodes: uint32(max(s.Resources.Nodes, 0))},
		Node:           s.Node,
		Nodes:          s.Nodes,
		MaxDurationMs:  time.Duration(s.MaxDuration).Milliseconds(),
		KillGraceMs:    time.Duration(s.KillGrace).Milliseconds(),
		QueueTimeoutMs: time.Duration(s.QueueTimeout).Milliseconds(),
		CodeArchive:    s.CodeArchive,
		Health:         healthSpec(s.Health),
	}
}

func healthSpec(h *apiv1.HealthSpec) *gantrypb.HealthSpec {
	if h == nil {
		return nil
	}
	return &gantrypb.HealthSpec{
		StallAfterMs:   time.Duration(h.StallAfter).Milliseconds(),
		StartupGraceMs: time.Duration(h.StartupGrace).Milliseconds(),
		IdleAfterMs:    time.Duration(h.IdleAfter).Milliseconds(),
		IdleUtilPct:    h.IdleUtilPct,
		IdlePowerW:     h.IdlePowerW,
		OnStall:        h.OnStall,
		OnIdle:         h.OnIdle,
		MaxRequeues:    uint32(min(max(h.MaxRequeues, 0), lifecycle.MaxRequeuesLimit)),
		Disabled:       h.Disabled,
	}
}

func apiHealthSpec(h *gantrypb.HealthSpec) *apiv1.HealthSpec {
	if h == nil {
		return nil
	}
	ms := func(v int64) apiv1.Duration { return apiv1.Duration(time.Duration(v) * time.Millisecond) }
	return &apiv1.HealthSpec{
		StallAfter: ms(h.StallAfterMs), StartupGrace: ms(h.StartupGraceMs), IdleAfter: ms(h.IdleAfterMs),
		IdleUtilPct: h.IdleUtilPct, IdlePowerW: h.IdlePowerW, OnStall: h.OnStall, OnIdle: h.OnIdle, Disabled: h.Disabled,
		MaxRequeues: int(h.MaxRequeues),
	}
}

// Conditions converts a job's current health conditions.
func Conditions(cs []*gantrypb.JobCondition) []apiv1.Condition {
	if len(cs) == 0 {
		return nil
	}
	out := make([]apiv1.Condition, len(cs))
	for i, c := range cs {
		out[i] = apiv1.Condition{Kind: c.Kind, Since: msTime(c.SinceMs), Evidence: c.Evidence}
		for _, g := range c.Gpus {
			out[i].GPUs = append(out[i].GPUs, int(g))
		}
	}
	return out
}

// APISpec converts a stored spec back to the API form.
func APISpec(s *gantrypb.JobSpec) apiv1.JobSpec {
	if s == nil {
		return apiv1.JobSpec{}
	}
	return apiv1.JobSpec{
		Name:         s.Name,
		Run:          s.Run,
		Setup:        s.Setup,
		Env:          s.Env,
		Workdir:      s.Workdir,
		Resources:    apiv1.Resources{GPUs: int(s.GetResources().GetGpus()), GPUType: s.GetResources().GetGpuType(), Nodes: int(s.GetResources().GetNodes())},
		Node:         s.Node,
		Nodes:        s.Nodes,
		MaxDuration:  apiv1.Duration(time.Duration(s.MaxDurationMs) * time.Millisecond),
		KillGrace:    apiv1.Duration(time.Duration(s.KillGraceMs) * time.Millisecond),
		QueueTimeout: apiv1.Duration(time.Duration(s.QueueTimeoutMs) * time.Millisecond),
		CodeArchive:  s.CodeArchive,
		Health:       apiHealthSpec(s.Health),
	}
}

// Job converts a stored job. final_metrics is always an object for terminal
// jobs (never null), and null while the job runs.
func Job(j *gantrypb.Job) apiv1.Job {
	out := apiv1.Job{
		ID:                j.Id,
		Name:              j.GetSpec().GetName(),
		State:             State(j.State),
		Node:              j.Node,
		Signal:            j.Signal,
		CreatedAt:         msTime(j.CreatedAtMs),
		StartedAt:         msTime(j.StartedAtMs),
		FinishedAt:        msTime(j.FinishedAtMs),
		Error:             j.Error,
		Spec:              APISpec(j.Spec),
		CancelRequested:   j.CancelRequested,
		Points:            j.Points,
		LastSeq:           j.LastSeq,
		BadLines:          j.BadLines,
		DroppedMetricKeys: j.DroppedMetricKeys,
		RejectedRecords:   j.RejectedRecords,
		LogBytes:          j.LogBytes,
		LogTail:           j.LogTail,
		PID:               j.Pid,
		LatestMetrics:     j.LatestMetrics,
		Conditions:        Conditions(j.Conditions),
	}
	out.GPUs, out.ExitCode = gpuInts(j.Gpus), exitCode(j.ExitCode)
	out.MasterAddr, out.MasterPort = j.MasterAddr, int(j.MasterPort)
	out.Attempt, out.Requeuing = int(j.Attempt)+1, j.RequeueReason
	for _, a := range j.Attempts {
		out.Attempts = append(out.Attempts, attempt(a))
	}
	for _, r := range j.Ranks {
		out.Ranks = append(out.Ranks, apiv1.Rank{Rank: int(r.Rank), Node: r.Node, GPUs: gpuInts(r.Gpus), State: State(r.State),
			ExitCode: exitCode(r.ExitCode), Signal: r.Signal, Error: r.Error, PID: r.Pid,
			StartedAt: msTime(r.StartedAtMs), FinishedAt: msTime(r.FinishedAtMs),
			LogBytes: r.LogBytes, Points: r.Points, LatestMetrics: r.LatestMetrics, LastSeq: r.LastSeq})
	}
	if lifecycle.IsTerminal(j.State) {
		out.FinalMetrics = j.FinalMetrics
		if out.FinalMetrics == nil {
			out.FinalMetrics = map[string]float64{}
		}
	}
	return out
}

// gpuInts converts GPU indices; never nil, so an empty list is [] in JSON.
func gpuInts(gpus []uint32) []int {
	out := make([]int, len(gpus))
	for i, g := range gpus {
		out[i] = int(g)
	}
	return out
}

// exitCode converts an exit code that may be unknown (nil).
func exitCode(c *int32) *int {
	if c == nil {
		return nil
	}
	v := int(*c)
	return &v
}

// attempt converts an earlier attempt of a job.
func attempt(a *gantrypb.Attempt) apiv1.Attempt {
	out := apiv1.Attempt{Attempt: int(a.Attempt) + 1, Node: a.Node, GPUs: gpuInts(a.Gpus), ExitCode: exitCode(a.ExitCode),
		StartedAt: msTime(a.StartedAtMs), FinishedAt: msTime(a.FinishedAtMs), Signal: a.Signal,
		FinalMetrics: a.FinalMetrics, Reason: a.Reason, LogTail: a.LogTail,
		FirstSeq: a.FirstSeq, LastSeq: a.LastSeq, LogStart: a.LogStart, LogEnd: a.LogEnd}
	if out.FinalMetrics == nil {
		out.FinalMetrics = map[string]float64{}
	}
	return out
}

// Point converts a stored metric point.
func Point(p *gantrypb.MetricPoint) apiv1.Point { return PointIn(p, nil) }

// PointIn converts a point whose flat values (KeyIdx, Vals) index keys;
// a point in the map form ignores keys, and an index past keys is left
// out (the FSM built both, so that does not happen).
func PointIn(p *gantrypb.MetricPoint, keys []string) apiv1.Point {
	return apiv1.Point{Seq: p.Seq, Step: p.Step, TS: p.Ts, Values: flat.Values(p, keys)}
}

// Points converts stored points; the result is never nil.
func Points(ps []*gantrypb.MetricPoint) []apiv1.Point { return PointsIn(ps, nil) }

// PointsIn converts points whose flat values index keys (PointIn).
func PointsIn(ps []*gantrypb.MetricPoint, keys []string) []apiv1.Point {
	out := make([]apiv1.Point, len(ps))
	for i, p := range ps {
		out[i] = PointIn(p, keys)
	}
	return out
}

// Event converts a stored job event.
func Event(e *gantrypb.JobEvent) apiv1.Event {
	return apiv1.Event{Seq: e.Seq, TS: e.Ts, Kind: e.Kind, Message: e.Message, Count: e.Count}
}

// GPUSample converts a stored GPU sample.
func GPUSample(s *gantrypb.GPUSample) apiv1.GPUSample {
	out := apiv1.GPUSample{Seq: s.Seq, TS: s.Ts, GPUs: make([]apiv1.GPUStat, len(s.Gpus))}
	for i, g := range s.Gpus {
		out.GPUs[i] = apiv1.GPUStat{
			Index:            int(g.Index),
			UUID:             g.Uuid,
			Name:             g.Name,
			UtilizationPct:   g.UtilizationPct,
			MemoryUsedBytes:  g.MemoryUsedBytes,
			MemoryTotalBytes: g.MemoryTotalBytes,
			TemperatureC:     g.TemperatureC,
			PowerW:           g.PowerW,
			SMClockMHz:       g.SmClockMhz,
			ThrottleReasons:  g.ThrottleReasons,
			// Decoded here, once for every client: the dashboard and
			// scripts need not know NVML's bits.
			ThrottleReasonNames: clockevents.Names(g.ThrottleReasons),
			ThrottledBy:         clockevents.Costly(g.ThrottleReasons),
		}
	}
	return out
}

// Node converts a stored node; holders maps GPU index to the job holding it.
func Node(n *gantrypb.Node, holders map[uint32]string, connected bool) apiv1.Node {
	out := apiv1.Node{
		ID:        n.Id,
		Hostname:  n.Hostname,
		State:     NodeState(n.State),
		Version:   n.Version,
		GPUs:      make([]apiv1.GPU, len(n.Gpus)),
		LastSeen:  msTime(n.LastSeenMs),
		Connected: connected,
		Drained:   n.Drained,
	}
	faults := map[uint32]string{}
	for _, h := range n.UnhealthyGpus {
		faults[h.Index] = h.Reason
	}
	for i, g := range n.Gpus {
		fault, failing := faults[g.Index]
		out.GPUs[i] = apiv1.GPU{Index: int(g.Index), UUID: g.Uuid, Name: g.Name, MemoryTotalBytes: g.MemoryTotalBytes, JobID: holders[g.Index],
			Healthy: !failing, Fault: fault, Drained: slices.Contains(n.DrainedGpus, g.Index)}
		// Free: no job holds it and placement may use it.
		if holders[g.Index] == "" && !failing && !out.GPUs[i].Drained && !n.Drained {
			out.FreeGPUs++
		}
	}
	sort.Slice(out.GPUs, func(a, b int) bool { return out.GPUs[a].Index < out.GPUs[b].Index })
	return out
}

// ThrottleStaleAfter is how old a node's latest GPU sample may be for
// NodeThrottle to still take it as the GPUs' present state: a node that
// went quiet must not show an old throttling as current (the fleet
// metrics' default stale limit too).
const ThrottleStaleAfter = 2 * time.Minute

// NodeThrottle fills each GPU's ThrottledBy of a converted node from the
// node's latest GPU sample, if that sample is at most ThrottleStaleAfter
// old at now. A nil sample leaves the node as it is.
func NodeThrottle(n *apiv1.Node, latest *gantrypb.GPUSample, now time.Time) {
	if latest == nil || now.Sub(time.Unix(0, int64(latest.Ts*1e9))) > ThrottleStaleAfter {
		return
	}
	for _, st := range latest.Gpus {
		for i := range n.GPUs {
			if n.GPUs[i].Index == int(st.Index) {
				n.GPUs[i].ThrottledBy = clockevents.Costly(st.ThrottleReasons)
			}
		}
	}
}

// Cluster maps a node's Raft status to the API's shape.
func Cluster(st cluster.Status) apiv1.Cluster {
	out := apiv1.Cluster{
		NodeID: st.NodeID, State: st.State, Leader: st.Leader, LeaderID: st.LeaderID,
		Term: st.Term, CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex, LastIndex: st.LastIndex,
	}
	for _, s := range st.Servers {
		out.Peers = append(out.Peers, apiv1.Peer{ID: s.ID, Address: s.Address, Suffrage: s.Suffrage, Leader: s.Leader})
	}
	return out
}
