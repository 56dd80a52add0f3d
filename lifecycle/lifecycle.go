// Package lifecycle holds the rules of a job's life that more than one side
// of Gantry must agree on: its states and which of them are final, how an
// exit record classifies the job, the exit reasons and event kinds that
// travel in records, and the domain errors the controller returns.
//
// It sits low in the import graph (it imports only proto/gantrypb) so that
// the agent, the controller and the CLI can all use it without importing
// each other. Changing the lifecycle means editing this package.
//
// Every string here is a contract: it is stored in the Raft log and the
// state database, sent over the agent link, and shown by the API. Only add.
package lifecycle

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Job states by their API names (the lower-cased enum name without the
// JOB_STATE_ prefix; see StateName).
const (
	StateQueued    = "queued"
	StateAssigned  = "assigned"
	StateRunning   = "running"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateCancelled = "cancelled"
	StateLost      = "lost"
)

// StateNames lists every API state name, in lifecycle order.
var StateNames = []string{StateQueued, StateAssigned, StateRunning,
	StateSucceeded, StateFailed, StateCancelled, StateLost}

// StateName returns the API name of a stored job state.
func StateName(s gantrypb.JobState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_"))
}

// IsTerminal reports whether a job in this state never changes again.
func IsTerminal(s gantrypb.JobState) bool {
	switch s {
	case gantrypb.JobState_JOB_STATE_SUCCEEDED, gantrypb.JobState_JOB_STATE_FAILED,
		gantrypb.JobState_JOB_STATE_CANCELLED, gantrypb.JobState_JOB_STATE_LOST:
		return true
	}
	return false
}

// HoldsGPUs reports whether a job in this state holds the GPUs it was
// assigned: from assignment until it ends. Placement counts them as used.
func HoldsGPUs(s gantrypb.JobState) bool {
	return s == gantrypb.JobState_JOB_STATE_ASSIGNED || s == gantrypb.JobState_JOB_STATE_RUNNING
}

// IsTerminalName is IsTerminal for a state's API name, for the clients
// that only see the API.
func IsTerminalName(name string) bool {
	switch name {
	case StateSucceeded, StateFailed, StateCancelled, StateLost:
		return true
	}
	return false
}

// QueueDeadlineMs is when a queued job's queue_timeout runs out (unix
// milliseconds: created_at + queue_timeout) and whether it has one. The
// leader's scheduler and every voter's FSM both use it, so they agree on
// the deadline; a timeout too large to add to created_at (only a hand-made
// entry has one) never runs out rather than wrapping into the past.
//
// A job a requeue policy queued again waits anew: its deadline counts
// from queued_at.
func QueueDeadlineMs(j *gantrypb.Job) (int64, bool) {
	ms := j.GetSpec().GetQueueTimeoutMs()
	from := max(j.GetCreatedAtMs(), j.GetQueuedAtMs())
	if ms <= 0 || from > math.MaxInt64-ms {
		return 0, false
	}
	return from + ms, true
}

// Domain errors the controller returns for a request that is valid but
// not allowed in the job's current state.
var (
	ErrJobExists   = errors.New("job already exists")
	ErrJobNotFound = errors.New("job not found")
	ErrTerminal    = errors.New("job already ended")
	ErrNotQueued   = errors.New("job is not queued")
	// ErrNodeNotFound refuses a drain of a node that never registered.
	ErrNodeNotFound = errors.New("node not found")
	// ErrNotDue refuses a queue timeout committed before the job's
	// deadline (created_at + queue_timeout), or for a job without one.
	ErrNotDue = errors.New("job's queue timeout is not due")
)

// ExitReason says why the agent, rather than the job itself, stopped a job.
// It travels in JobExit.reason; empty means the job ended by itself.
type ExitReason string

// Exit reasons.
const (
	// ReasonCancelled is a user (or controller) cancel.
	ReasonCancelled ExitReason = "cancelled"
	// ReasonMaxDuration is the spec's max_duration running out.
	ReasonMaxDuration ExitReason = "max_duration"
)

// EventKind is the kind of a job event (JobEvent.kind).
type EventKind string

// Job event kinds reported by the agent.
const (
	// EventBadMetricLines counts metrics lines the agent could not parse;
	// the controller adds its count to the job's bad_lines.
	EventBadMetricLines EventKind = "bad_metric_lines"
	// EventMetricsTruncated says the metrics file shrank while the job ran.
	EventMetricsTruncated EventKind = "metrics_truncated"
	// EventReadError says the agent could not read a job file.
	EventReadError EventKind = "read_error"
	// EventKillEscalated means processes outlived kill_grace after SIGTERM
	// and were sent SIGKILL.
	EventKillEscalated EventKind = "kill_escalated"
	// EventOrphansKilled means the job's main process exited while other
	// processes of its group were still running; they were sent SIGKILL so
	// that they do not keep GPUs busy.
	EventOrphansKilled EventKind = "orphans_killed"
	// EventReadopted is reported by a restarted agent for each job it
	// takes over.
	EventReadopted EventKind = "readopted"
	// EventGPUUnhealthy says a GPU the job was given is failing (an XID
	// critical error, a double-bit ECC error, lost, retired pages).
	EventGPUUnhealthy EventKind = "gpu_unhealthy"
	// EventGPUMemory reports the GPU memory the job's processes use: when
	// first seen, then when it has grown (count: bytes).
	EventGPUMemory EventKind = "gpu_memory"
	// EventStrayGPUProcess says a process of no job, or of another job,
	// uses a GPU this job holds.
	EventStrayGPUProcess EventKind = "stray_gpu_process"
	// EventUnallocatedGPU says a process of this job uses a GPU the job
	// was not given.
	EventUnallocatedGPU EventKind = "unallocated_gpu"
	// EventCodeUnpacked says the job's code archive was fetched and
	// unpacked into its working directory, with what it held.
	EventCodeUnpacked EventKind = "code_unpacked"
	// EventNoCgroup says the job runs without a cgroup of its own on an
	// agent that gives jobs one (it could not be created): a process of
	// the job that leaves its session is not killed at its end.
	EventNoCgroup EventKind = "no_cgroup"
	// EventGPUThrottled says a GPU the job holds has had its clocks held
	// down for a throughput-costing reason (thermal or power slowdown,
	// power cap; internal/clockevents) in every sample of a sustained
	// window; the message names the GPU, the reasons and how long, count
	// is the seconds so far. Once per episode. Information only: it is
	// not a health condition and no policy acts on it.
	EventGPUThrottled EventKind = "gpu_throttled"
	// EventGPUThrottledCleared ends an episode EventGPUThrottled began:
	// the GPU's first sample without a costing reason; count is the
	// episode's length in seconds.
	EventGPUThrottledCleared EventKind = "gpu_throttled_cleared"
)

// Job event kinds reported by either side.
const (
	// EventMetricKeysDropped says metric values were left out because of
	// the key caps: the agent's (key length, keys per line, distinct keys
	// per job) or the controller's limits.MaxKeysPerJob.
	EventMetricKeysDropped EventKind = "metric_keys_dropped"
)

// Job event kinds the controller itself records.
const (
	// EventRecordRejected replaces a record of the job that broke a limit;
	// it keeps the record's seq, so the stream stays dense.
	EventRecordRejected EventKind = "record_rejected"
	// EventLateExit keeps an exit record that arrived after the job was
	// already terminal (declared lost while its agent was cut off): it does
	// not rewrite the job, but nothing is hidden.
	EventLateExit EventKind = "late_exit"
	// EventQueueTimeout says the job failed because it was still queued
	// when its spec's queue_timeout ran out; the message says what it was
	// waiting for.
	EventQueueTimeout EventKind = "queue_timeout"
)

// ClassifyExit decides the terminal state of a job from its exit record and
// whether a cancel was requested, and the error text stored with it ("" for
// success). It is a pure function: every voter classifies alike.
func ClassifyExit(x *gantrypb.JobExit, cancelRequested bool) (gantrypb.JobState, string) {
	reason := ExitReason(x.Reason)
	clean := x.ExitCode != nil && *x.ExitCode == 0 && x.Signal == ""
	switch {
	case reason == ReasonCancelled || (cancelRequested && reason == ""):
		if clean {
			// It finished on its own before the signal landed.
			return gantrypb.JobState_JOB_STATE_SUCCEEDED, ""
		}
		return gantrypb.JobState_JOB_STATE_CANCELLED, "cancelled: " + DescribeExit(x)
	case x.Error != "":
		return gantrypb.JobState_JOB_STATE_FAILED, x.Error
	case reason == ReasonMaxDuration:
		return gantrypb.JobState_JOB_STATE_FAILED, "exceeded max_duration: " + DescribeExit(x)
	case clean:
		return gantrypb.JobState_JOB_STATE_SUCCEEDED, ""
	default:
		return gantrypb.JobState_JOB_STATE_FAILED, DescribeExit(x)
	}
}

// DescribeExit says in words how a job's process ended.
func DescribeExit(x *gantrypb.JobExit) string {
	switch {
	case x.Signal != "":
		return "killed by " + x.Signal
	case x.ExitCode != nil:
		return fmt.Sprintf("exited with code %d", *x.ExitCode)
	case x.Error != "":
		return x.Error
	}
	return "exit status unknown"
}

// Holding is a node and the GPU indices a job holds there.
type Holding struct {
	Node string
	GPUs []uint32
}

// Holdings lists where a job holds GPUs while HoldsGPUs(its state): every
// rank of a multi-node job that has not ended (a rank that exited freed
// its GPUs, and its node going down no longer matters to the job), or its
// one node. A job not placed yet holds nothing.
func Holdings(j *gantrypb.Job) []Holding {
	if len(j.GetRanks()) > 0 {
		out := make([]Holding, 0, len(j.Ranks))
		for _, r := range j.Ranks {
			if !IsTerminal(r.GetState()) {
				out = append(out, Holding{Node: r.GetNode(), GPUs: r.GetGpus()})
			}
		}
		return out
	}
	if j.GetNode() == "" {
		return nil
	}
	return []Holding{{Node: j.Node, GPUs: j.Gpus}}
}

// MarkHoldings sets m[node][gpu] = v for every GPU j holds (Holdings),
// making a node's map when it has none: the scheduler's used GPUs, the
// API's and the fleet exporter's GPU holders.
func MarkHoldings[V any](m map[string]map[uint32]V, j *gantrypb.Job, v V) {
	for _, h := range Holdings(j) {
		if m[h.Node] == nil {
			m[h.Node] = map[uint32]V{}
		}
		for _, g := range h.GPUs {
			m[h.Node][g] = v
		}
	}
}

// IsGang reports whether a spec asks for a multi-node (gang) job: more than
// one node. Nodes 0 and 1 are today's single-node path, unchanged.
func IsGang(spec *gantrypb.JobSpec) bool { return spec.GetResources().GetNodes() > 1 }

// RankOf returns the rank a multi-node job runs on node, or nil when node
// holds none (or the job is single-node). A node holds at most one rank of
// a job, so the sending node alone names the rank of its records.
func RankOf(j *gantrypb.Job, node string) *gantrypb.Rank {
	for _, r := range j.GetRanks() {
		if r.GetNode() == node {
			return r
		}
	}
	return nil
}

// Nodes lists every node a job was assigned to: its ranks' nodes (ended
// or not), or its one node.
func Nodes(j *gantrypb.Job) []string {
	if len(j.GetRanks()) > 0 {
		out := make([]string, len(j.Ranks))
		for i, r := range j.Ranks {
			out[i] = r.GetNode()
		}
		return out
	}
	if j.GetNode() == "" {
		return nil
	}
	return []string{j.Node}
}

// RunsOn reports whether node runs the job or one of its ranks: the nodes
// whose records the controller takes for it.
func RunsOn(j *gantrypb.Job, node string) bool {
	if len(j.GetRanks()) > 0 {
		return RankOf(j, node) != nil
	}
	return j.GetNode() == node
}

// Health conditions: what the agent's progress and GPU checks conclude
// about a running job (Job.conditions, HealthCondition.kind). Each also
// names the job event recorded when it begins; its end is recorded as the
// kind with EventCleared appended.
const (
	// CondStalled: no new step for longer than the job's stall window,
	// with GPUs idle or busy in a way that does not look hung.
	CondStalled = "stalled"
	// CondHung: stalled while the job's GPUs show utilization pegged near
	// 100% at low power with steady SM clock and constant memory — the
	// signature of a collective (NCCL) waiting forever.
	CondHung = "hung"
	// CondIdleGPUs: the job runs but some of its GPUs stayed below the
	// idle thresholds (utilization and power) for the whole idle window.
	CondIdleGPUs = "idle_gpus"
)

// Conditions lists every health condition kind.
var Conditions = []string{CondStalled, CondHung, CondIdleGPUs}

// IsCondition reports whether kind is a health condition kind.
func IsCondition(kind string) bool {
	switch kind {
	case CondStalled, CondHung, CondIdleGPUs:
		return true
	}
	return false
}

// EventCleared is appended to a condition's kind for the event of its end
// ("stalled_cleared").
const EventCleared = "_cleared"

// Health policies: what happens when a condition begins
// (HealthSpec.on_stall, HealthSpec.on_idle).
const (
	// PolicyNotify (also the empty string) only reports the condition.
	PolicyNotify = "notify"
	// PolicyCancel cancels the job through the normal cancel path (the
	// agent stops it and reports its final metrics).
	PolicyCancel = "cancel"
	// PolicyRequeue stops the job through the normal cancel path and,
	// once its exit is in, queues it again as the next attempt (a new run
	// id, see RunID). Past the spec's max_requeues it cancels instead.
	PolicyRequeue = "requeue"
)

// DefaultMaxRequeues is how many times a requeue policy may queue a job
// again when its spec does not say: a job that hangs every time is
// cancelled after its third attempt rather than burn GPUs forever.
const DefaultMaxRequeues = 2

// MaxRequeuesLimit bounds a spec's max_requeues, and so a job's attempts.
const MaxRequeuesLimit = 20

// MaxRequeues is the spec's bound on requeues, or the default.
func MaxRequeues(h *gantrypb.HealthSpec) uint32 {
	if n := h.GetMaxRequeues(); n > 0 {
		return min(n, MaxRequeuesLimit)
	}
	return DefaultMaxRequeues
}

// EventRequeued says a requeue policy stopped an attempt and queued the
// job again.
const EventRequeued EventKind = "requeued"

// runSep separates a job id from its attempt in a run id. Job ids hold no
// '~' (admission.CheckJobID), so a run id parses one way only.
const runSep = "~"

// RunID is the id under which attempt n of a job runs on an agent: the
// job id itself for the first attempt (0), and "id~n" after a requeue.
// Agents key everything by it (their streams, directories and run-once
// rule), so a requeued job is a new run to them while the controller
// keeps one job.
func RunID(jobID string, attempt uint32) string {
	if attempt == 0 {
		return jobID
	}
	return jobID + runSep + strconv.FormatUint(uint64(attempt), 10)
}

// JobRunID is RunID of the job's current attempt.
func JobRunID(j *gantrypb.Job) string { return RunID(j.GetId(), j.GetAttempt()) }

// AttemptNodes lists the nodes an earlier attempt of the job ran on (one,
// or one per rank of a multi-node attempt); nil for an attempt it has
// not had.
func AttemptNodes(j *gantrypb.Job, attempt uint32) []string {
	a := EarlierAttempt(j, attempt)
	if a == nil {
		return nil
	}
	if len(a.GetRanks()) == 0 {
		return []string{a.GetNode()}
	}
	out := make([]string, 0, len(a.GetRanks()))
	for _, r := range a.GetRanks() {
		out = append(out, r.GetNode())
	}
	return out
}

// EarlierAttempt returns the job's earlier attempt numbered attempt (from
// 0), nil when it has had none such.
func EarlierAttempt(j *gantrypb.Job, attempt uint32) *gantrypb.Attempt {
	for _, a := range j.GetAttempts() {
		if a.GetAttempt() == attempt {
			return a
		}
	}
	return nil
}

// ParseRunID splits a run id into the job id and the attempt. An id
// without the separator is attempt 0; ok is false for a malformed suffix
// (not a canonical decimal number from 1 to MaxRequeuesLimit).
func ParseRunID(run string) (jobID string, attempt uint32, ok bool) {
	id, n, found := strings.Cut(run, runSep)
	if !found {
		return run, 0, true
	}
	v, err := strconv.ParseUint(n, 10, 32)
	if err != nil || v == 0 || v > MaxRequeuesLimit || strconv.FormatUint(v, 10) != n || id == "" {
		return "", 0, false
	}
	return id, uint32(v), true
}

// EventPolicyCancel says the controller cancelled the job because a
// health condition began and the spec's policy says cancel.
const EventPolicyCancel EventKind = "health_policy_cancel"

// PolicyFor returns the spec's policy for a condition kind: on_stall for
// stalled and hung, on_idle for idle_gpus; "notify" when unset.
func PolicyFor(h *gantrypb.HealthSpec, kind string) string {
	var p string
	switch kind {
	case CondStalled, CondHung:
		p = h.GetOnStall()
	case CondIdleGPUs:
		p = h.GetOnIdle()
	}
	if p == "" {
		return PolicyNotify
	}
	return p
}

// AlertNodeLost is the alert kind of a node whose agent stopped
// answering. Other alert kinds are "job_" and the terminal state's name,
// and the condition event kinds (CondStalled, ... and their EventCleared
// forms).
const AlertNodeLost = "node_lost"

// AlertGPUUnhealthy is the alert kind of a GPU an agent reported failing.
const AlertGPUUnhealthy = "gpu_unhealthy"
