// Package apiv1 holds the JSON shapes of Gantry's HTTP and WebSocket API
// (docs/ARCHITECTURE.md "Contracts"). The server, the Go client and the CLI all use
// these types, so a field renamed here is a contract broken everywhere.
package apiv1

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/gantry-ml/gantry/lifecycle"
)

// Job states, as they appear in the API. They are the lifecycle package's
// names, repeated here so that an API client has them beside the types.
const (
	StateQueued    = lifecycle.StateQueued
	StateAssigned  = lifecycle.StateAssigned
	StateRunning   = lifecycle.StateRunning
	StateSucceeded = lifecycle.StateSucceeded
	StateFailed    = lifecycle.StateFailed
	StateCancelled = lifecycle.StateCancelled
	StateLost      = lifecycle.StateLost
)

// IsTerminal reports whether a job in this state will never change again.
// The rule is lifecycle.IsTerminalName; this stays for API clients.
func IsTerminal(state string) bool { return lifecycle.IsTerminalName(state) }

// Resources is what a job asks of a node.
type Resources struct {
	GPUs    int    `json:"gpus" yaml:"gpus"`
	GPUType string `json:"gpu_type,omitempty" yaml:"gpu_type"`
	// Nodes is how many hosts a multi-node job spans, one rank per host
	// with GPUs GPUs each; 0 or 1 is a single-node job.
	Nodes int `json:"nodes,omitempty" yaml:"nodes"`
}

// JobSpec is a job as submitted (JSON on the API, YAML for the CLI).
type JobSpec struct {
	Name      string            `json:"name" yaml:"name"`
	Run       string            `json:"run" yaml:"run"`
	Setup     string            `json:"setup,omitempty" yaml:"setup"`
	Env       map[string]string `json:"env,omitempty" yaml:"env"`
	Workdir   string            `json:"workdir,omitempty" yaml:"workdir"`
	Resources Resources         `json:"resources" yaml:"resources"`
	Node      string            `json:"node,omitempty" yaml:"node"`
	// Nodes pins the ranks of a multi-node job to hosts among these
	// (Node pins a single-node job).
	Nodes       []string `json:"nodes,omitempty" yaml:"nodes"`
	MaxDuration Duration `json:"max_duration,omitempty" yaml:"max_duration"`
	KillGrace   Duration `json:"kill_grace,omitempty" yaml:"kill_grace"`
	// QueueTimeout fails the job if it is still queued this long after
	// submit; zero waits as long as it takes.
	QueueTimeout Duration `json:"queue_timeout,omitempty" yaml:"queue_timeout"`
	// CodeArchive is the digest ("sha256:" and 64 hex digits) of a
	// gzip-compressed tar of the job's code, uploaded with PUT
	// /v1/blobs/{digest} before submit. The agent unpacks it into the
	// job's working directory (Workdir when set) before Setup. The CLI
	// fills it from the spec file's `code:` directory; it is not
	// written in YAML.
	CodeArchive string `json:"code_archive,omitempty" yaml:"-"`
	// Health tunes the job's health checks (README "Health"); nil takes
	// every default.
	Health *HealthSpec `json:"health,omitempty" yaml:"health"`
}

// HealthSpec tunes a job's health checks. Zero fields take the defaults.
type HealthSpec struct {
	// StallAfter: no new step for this long is stalled (default
	// max(10 x the job's typical step interval, 5m)).
	StallAfter Duration `json:"stall_after,omitempty" yaml:"stall_after"`
	// StartupGrace: how long a job may run before its first step
	// (default 30m).
	StartupGrace Duration `json:"startup_grace,omitempty" yaml:"startup_grace"`
	// IdleAfter: how long an allocated GPU may stay idle (default 10m).
	IdleAfter Duration `json:"idle_after,omitempty" yaml:"idle_after"`
	// IdleUtilPct and IdlePowerW: below both a GPU is idle (defaults 5%
	// and 25% of its power limit).
	IdleUtilPct float64 `json:"idle_util_pct,omitempty" yaml:"idle_util_pct"`
	IdlePowerW  float64 `json:"idle_power_w,omitempty" yaml:"idle_power_w"`
	// OnStall (stalled and hung) and OnIdle (idle_gpus): "notify"
	// (default), "cancel", or "requeue" (stop the job and queue it again
	// as a new attempt).
	OnStall string `json:"on_stall,omitempty" yaml:"on_stall"`
	OnIdle  string `json:"on_idle,omitempty" yaml:"on_idle"`
	// MaxRequeues bounds how often requeue may run the job again; past
	// it the policy cancels (default 2, at most 20).
	MaxRequeues int `json:"max_requeues,omitempty" yaml:"max_requeues"`
	// Disabled turns the job's health checks off.
	Disabled bool `json:"disabled,omitempty" yaml:"disabled"`
}

// Condition is a health condition that holds for a job now.
type Condition struct {
	// Kind is "stalled", "hung" or "idle_gpus".
	Kind string `json:"kind"`
	// Since is when the agent declared it.
	Since *time.Time `json:"since"`
	// Evidence says what was seen and which signal decided.
	Evidence string `json:"evidence"`
	// GPUs are the GPU indices it concerns (idle_gpus).
	GPUs []int `json:"gpus,omitempty"`
}

// Job is a job as the API shows it.
type Job struct {
	ID           string             `json:"id"`
	Name         string             `json:"name"`
	State        string             `json:"state"`
	Node         string             `json:"node,omitempty"`
	GPUs         []int              `json:"gpus"`
	ExitCode     *int               `json:"exit_code"`
	Signal       string             `json:"signal,omitempty"`
	CreatedAt    *time.Time         `json:"created_at"`
	StartedAt    *time.Time         `json:"started_at"`
	FinishedAt   *time.Time         `json:"finished_at"`
	FinalMetrics map[string]float64 `json:"final_metrics"`
	Error        string             `json:"error,omitempty"`
	// Reason says why a queued job is not running yet, e.g. "waiting for
	// 8 free GPUs; most free now: 4 on gpu-host-2". Empty in other states.
	// It is computed on every read (GET, the list, the live snapshot) from
	// the nodes and held GPUs; live state frames, encoded once per change
	// for every watcher, leave it empty.
	Reason string `json:"reason,omitempty"`

	// Extensions beyond the list in docs/ARCHITECTURE.md.
	Spec            JobSpec `json:"spec"`
	CancelRequested bool    `json:"cancel_requested,omitempty"`
	Points          uint64  `json:"points"`
	LastSeq         uint64  `json:"last_seq"`
	BadLines        uint64  `json:"bad_lines"`
	// DroppedMetricKeys counts metric values refused because the job
	// already had the most distinct keys a job may have.
	DroppedMetricKeys uint64 `json:"dropped_metric_keys,omitempty"`
	// RejectedRecords counts records of the job the controller refused
	// for breaking a limit (each also a record_rejected event).
	RejectedRecords uint64 `json:"rejected_records,omitempty"`
	LogBytes        uint64 `json:"log_bytes"`
	LogTail         string `json:"log_tail,omitempty"`
	PID             int64  `json:"pid,omitempty"`
	// LatestMetrics is the last value of every key so far, while it runs.
	LatestMetrics map[string]float64 `json:"latest_metrics,omitempty"`
	// Conditions are the health conditions holding now (running jobs).
	Conditions []Condition `json:"conditions,omitempty"`

	// Ranks are a multi-node job's ranks, rank 0 first (empty for a
	// single-node job); Node and GPUs above are rank 0's.
	Ranks []Rank `json:"ranks,omitempty"`
	// MasterAddr and MasterPort are the rendezvous address every rank
	// got (MASTER_ADDR, MASTER_PORT).
	MasterAddr string `json:"master_addr,omitempty"`
	MasterPort int    `json:"master_port,omitempty"`

	// Attempt numbers the job's current run from 1; a requeue policy
	// starts the next (health.on_stall / on_idle: requeue).
	Attempt int `json:"attempt"`
	// Attempts are the earlier runs a requeue stopped, oldest first.
	Attempts []Attempt `json:"attempts,omitempty"`
	// Requeuing says why the job is being stopped to be requeued (set
	// until its exit is in).
	Requeuing string `json:"requeuing,omitempty"`
}

// Attempt is an earlier run of a job that a requeue policy stopped, with
// what it reported.
type Attempt struct {
	// Attempt numbers it from 1.
	Attempt      int                `json:"attempt"`
	Node         string             `json:"node"`
	GPUs         []int              `json:"gpus"`
	StartedAt    *time.Time         `json:"started_at"`
	FinishedAt   *time.Time         `json:"finished_at"`
	ExitCode     *int               `json:"exit_code"`
	Signal       string             `json:"signal,omitempty"`
	FinalMetrics map[string]float64 `json:"final_metrics"`
	// Reason is the condition that had it requeued, with its evidence.
	Reason  string `json:"reason"`
	LogTail string `json:"log_tail,omitempty"`
	// FirstSeq and LastSeq bound its points and events in the job's
	// streams; LogStart and LogEnd its bytes of the job's log.
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	LogStart uint64 `json:"log_start"`
	LogEnd   uint64 `json:"log_end"`
}

// Rank is one node's share of a multi-node job.
type Rank struct {
	Rank       int        `json:"rank"`
	Node       string     `json:"node"`
	GPUs       []int      `json:"gpus"`
	State      string     `json:"state"`
	ExitCode   *int       `json:"exit_code"`
	Signal     string     `json:"signal,omitempty"`
	Error      string     `json:"error,omitempty"`
	PID        int64      `json:"pid,omitempty"`
	StartedAt  *time.Time `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	LogBytes   uint64     `json:"log_bytes"`
	// Points counts the rank's metric points. Rank 0's are the job's;
	// rank K's are its own series (GET /v1/jobs/{id}/metrics?rank=K).
	Points uint64 `json:"points"`
	// LatestMetrics is the last value of every key of rank K > 0's own
	// series (rank 0's are the job's latest_metrics).
	LatestMetrics map[string]float64 `json:"latest_metrics,omitempty"`
	// LastSeq is the seq of rank K > 0's last stored point (rank 0's is
	// the job's last_seq).
	LastSeq uint64 `json:"last_seq,omitempty"`
}

// SubmitResponse answers POST /v1/jobs.
type SubmitResponse struct {
	ID string `json:"id"`
}

// Validation answers POST /v1/jobs/validate for a spec a submit would
// take (any other answer is an error with its reason).
type Validation struct {
	OK bool `json:"ok"`
}

// Blob answers PUT /v1/blobs/{digest}: the stored code archive and how
// many controllers hold it.
type Blob struct {
	Digest   string `json:"digest"`
	Size     int64  `json:"size"`
	Replicas int    `json:"replicas"`
}

// JobList answers GET /v1/jobs.
type JobList struct {
	Jobs []Job `json:"jobs"`
}

// Point is one stored metric point.
type Point struct {
	Seq    uint64             `json:"seq"`
	Step   *int64             `json:"step"`
	TS     float64            `json:"ts"`
	Values map[string]float64 `json:"values"`
}

// PointPage answers GET /v1/jobs/{id}/metrics. Next is the seq to pass as
// `after` for the following page (the last seq returned, or `after` itself
// when the page is empty).
type PointPage struct {
	Points []Point `json:"points"`
	Next   uint64  `json:"next"`
}

// Bucket summarizes one metric over a range of a job's points: the last
// point's step and ts, and the min, max and last value, so spikes survive
// downsampling.
type Bucket struct {
	FirstSeq uint64  `json:"first_seq"`
	LastSeq  uint64  `json:"last_seq"`
	Step     *int64  `json:"step"`
	TS       float64 `json:"ts"`
	Min      float64 `json:"min"`
	Max      float64 `json:"max"`
	Last     float64 `json:"last"`
	Count    int     `json:"count"`
}

// Downsampled answers GET /v1/jobs/{id}/metrics?max_points=N: at most N
// buckets per metric covering points 1..LastSeq. BucketSeqs is how many
// seqs one bucket spans.
type Downsampled struct {
	Series     map[string][]Bucket `json:"series"`
	Points     uint64              `json:"points"`
	LastSeq    uint64              `json:"last_seq"`
	BucketSeqs uint64              `json:"bucket_seqs"`
}

// Event is a job event (bad metric lines, kill escalation, …).
type Event struct {
	Seq     uint64  `json:"seq"`
	TS      float64 `json:"ts"`
	Kind    string  `json:"kind"`
	Message string  `json:"message"`
	Count   uint64  `json:"count,omitempty"`
}

// EventList answers GET /v1/jobs/{id}/events.
type EventList struct {
	Events []Event `json:"events"`
}

// Logs answers GET /v1/jobs/{id}/logs?offset=N. Data holds the bytes from
// Offset on; Next is the offset to ask for next.
type Logs struct {
	Offset uint64 `json:"offset"`
	Next   uint64 `json:"next"`
	Data   string `json:"data"`
	// Complete is true once the job is terminal and every byte is stored.
	Complete bool `json:"complete"`
}

// GPU describes one GPU of a node.
type GPU struct {
	Index            int    `json:"index"`
	UUID             string `json:"uuid,omitempty"`
	Name             string `json:"name,omitempty"`
	MemoryTotalBytes uint64 `json:"memory_total_bytes"`
	// JobID is the job holding this GPU, if any.
	JobID string `json:"job_id,omitempty"`
	// Healthy is false once the agent reported the GPU failing; Fault
	// says how. Nothing new is placed on it until it is undrained.
	Healthy bool   `json:"healthy"`
	Fault   string `json:"fault,omitempty"`
	// Drained: nothing new is placed on this GPU.
	Drained bool `json:"drained,omitempty"`
	// ThrottledBy names the throughput-costing clocks event reasons of
	// the GPU in the node's latest GPU sample (GPUStat.ThrottledBy); empty
	// when it is not throttled or the sample is stale or missing.
	ThrottledBy []string `json:"throttled_by,omitempty"`
}

// Node is an agent as the API shows it.
type Node struct {
	ID        string     `json:"id"`
	Hostname  string     `json:"hostname"`
	State     string     `json:"state"`
	Version   string     `json:"version,omitempty"`
	GPUs      []GPU      `json:"gpus"`
	FreeGPUs  int        `json:"free_gpus"`
	LastSeen  *time.Time `json:"last_seen"`
	Connected bool       `json:"connected"`
	// Drained: nothing new is placed on the node.
	Drained bool `json:"drained,omitempty"`
}

// DrainRequest is the body of POST /v1/nodes/{id}/drain and /undrain:
// some GPUs, or (empty) the whole node.
type DrainRequest struct {
	GPUs []int `json:"gpus,omitempty"`
}

// NodeList answers GET /v1/nodes.
type NodeList struct {
	Nodes []Node `json:"nodes"`
}

// GPUStat is one GPU's reading inside a sample.
type GPUStat struct {
	Index            int     `json:"index"`
	UUID             string  `json:"uuid,omitempty"`
	Name             string  `json:"name,omitempty"`
	UtilizationPct   float64 `json:"utilization_pct"`
	MemoryUsedBytes  uint64  `json:"memory_used_bytes"`
	MemoryTotalBytes uint64  `json:"memory_total_bytes"`
	TemperatureC     float64 `json:"temperature_c"`
	PowerW           float64 `json:"power_w"`
	SMClockMHz       uint32  `json:"sm_clock_mhz"`
	// ThrottleReasons is NVML's clocks event reasons mask as the agent
	// read it (0 when none, or when the GPU does not report it).
	ThrottleReasons uint64 `json:"throttle_reasons,omitempty"`
	// ThrottleReasonNames names every bit of ThrottleReasons, benign ones
	// (gpu_idle, sync_boost, ...) included; an unknown bit is named
	// "unknown_0x…".
	ThrottleReasonNames []string `json:"throttle_reason_names,omitempty"`
	// ThrottledBy is the part of ThrottleReasonNames that costs the work
	// throughput (thermal, power cap, hardware slowdown); empty when the
	// GPU runs at the clocks it was asked for.
	ThrottledBy []string `json:"throttled_by,omitempty"`
}

// GPUSample is every GPU of a node at one instant.
type GPUSample struct {
	Seq  uint64    `json:"seq"`
	TS   float64   `json:"ts"`
	GPUs []GPUStat `json:"gpus"`
}

// SampleList answers GET /v1/nodes/{id}/gpus.
type SampleList struct {
	Samples []GPUSample `json:"samples"`
}

// Peer is one Raft server.
type Peer struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
	// AppliedIndex and LastContactMs are the peer's own, asked over HTTP;
	// Reachable is false (and Error set) when it did not answer.
	AppliedIndex  uint64 `json:"applied_index"`
	LastContactMs int64  `json:"last_contact_ms"`
	Reachable     bool   `json:"reachable"`
	Error         string `json:"error,omitempty"`
}

// Cluster answers GET /v1/cluster.
type Cluster struct {
	NodeID       string `json:"node_id"`
	State        string `json:"state"`
	Leader       string `json:"leader"`
	LeaderID     string `json:"leader_id"`
	Peers        []Peer `json:"peers"`
	Term         uint64 `json:"term"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	LastIndex    uint64 `json:"last_index"`
	// LastContactMs is how long ago this node heard from the leader (0 on
	// the leader).
	LastContactMs int64 `json:"last_contact_ms"`
}

// Error is every non-2xx body.
type Error struct {
	Error string `json:"error"`
}

// WebSocket frame types on /v1/jobs/{id}/live and /playback.
const (
	FrameSnapshot = "snapshot"
	FrameMetrics  = "metrics"
	FrameGPU      = "gpu"
	FrameState    = "state"
	FrameFinal    = "final"
	FrameError    = "error"
	FramePoints   = "points"
	FrameEvent    = "event"
)

// Encode is the one place a frame becomes the bytes a watcher receives:
// the feed, the hub (merging a lagging watcher's points) and the live and
// playback handlers all send what it returns. Only a non-finite number
// can fail it, and admission keeps those out of stored state.
func (f Frame) Encode() ([]byte, error) { return json.Marshal(f) }

// Frame is one WebSocket message. Only the fields of its Type are set.
type Frame struct {
	Type string `json:"type"`
	// snapshot, state, final
	Job *Job `json:"job,omitempty"`
	// snapshot (recent points), metrics, points (playback page)
	Points []Point `json:"points,omitempty"`
	// snapshot (latest sample), gpu
	GPU *GPUSample `json:"gpu,omitempty"`
	// event
	Event *Event `json:"event,omitempty"`
	// error
	Error string `json:"error,omitempty"`
}

// CloseUnknownJob is the WebSocket close code for a job that does not exist.
const CloseUnknownJob = 4404

// Duration is a time.Duration that reads "30s" or a number of seconds from
// JSON and YAML, and writes "30s".
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON accepts "1h30m" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	parsed, err := parseDuration(v)
	if err != nil {
		return err
	}
	*d = parsed
	return nil
}

// UnmarshalYAML accepts "1h30m" or a number of seconds.
func (d *Duration) UnmarshalYAML(unmarshal func(any) error) error {
	var v any
	if err := unmarshal(&v); err != nil {
		return err
	}
	parsed, err := parseDuration(v)
	if err != nil {
		return err
	}
	*d = parsed
	return nil
}

func parseDuration(v any) (Duration, error) {
	switch t := v.(type) {
	case nil:
		return 0, nil
	case string:
		if t == "" {
			return 0, nil
		}
		if secs, err := strconv.ParseFloat(t, 64); err == nil {
			return Duration(secs * float64(time.Second)), nil
		}
		dur, err := time.ParseDuration(t)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q: want e.g. \"90s\", \"2h\" or a number of seconds", t)
		}
		return Duration(dur), nil
	case float64:
		return Duration(t * float64(time.Second)), nil
	case int:
		return Duration(time.Duration(t) * time.Second), nil
	case uint64:
		return Duration(time.Duration(t) * time.Second), nil
	case int64:
		return Duration(time.Duration(t) * time.Second), nil
	}
	return 0, fmt.Errorf("invalid duration %v: want a string such as \"90s\" or a number of seconds", v)
}
