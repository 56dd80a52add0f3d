// Package limits holds the caps that both ends of the agent link enforce.
// The agent keeps what it produces inside them (so it never sends a batch
// the controller will refuse), and the controller's leader checks every
// record against them before it proposes it to Raft (so no committed entry
// can be too large to apply). Change a value only in a way that keeps an
// older agent's records acceptable to a newer controller.
package limits

import "unicode/utf8"

// Identifiers.
const (
	// MaxIDBytes caps a job id or node id. bbolt keys built from ids must
	// stay far below its own key limit.
	MaxIDBytes = 128
)

// Metrics.
const (
	// MaxMetricKeyBytes caps one metric name.
	MaxMetricKeyBytes = 128
	// MaxKeysPerPoint caps the metric keys on one metrics-file line.
	MaxKeysPerPoint = 256
	// MaxKeysPerJob caps the distinct metric keys of one job, and so the
	// size of its latest and final metrics. Keys beyond it are dropped
	// and reported as an event.
	MaxKeysPerJob = 1024
)

// Events, logs and exits.
const (
	// MaxEventKindBytes caps an event's kind.
	MaxEventKindBytes = 64
	// MaxEventMessageBytes caps an event's message.
	MaxEventMessageBytes = 4 << 10
	// MaxLogChunkBytes caps the bytes of one log record.
	MaxLogChunkBytes = 256 << 10
	// MaxLogTailBytes caps the log tail carried by an exit record.
	MaxLogTailBytes = 16 << 10
	// MaxExitErrorBytes caps the error text of an exit record.
	MaxExitErrorBytes = 4 << 10
	// MaxSignalBytes caps the signal name of an exit record.
	MaxSignalBytes = 32
)

// Health conditions.
const (
	// MaxConditionGPUs caps the GPUs a condition record names.
	MaxConditionGPUs = MaxGPUsPerNode
	// MaxJobConditions caps the conditions held on one job (one per kind
	// in practice; the cap keeps a bug from growing a job without bound).
	MaxJobConditions = 8
)

// GPU samples.
const (
	// MaxGPUsPerNode caps the GPUs in one sample or hello.
	MaxGPUsPerNode = 64
	// MaxNodesPerJob bounds a multi-node job's resources.nodes (and the
	// pins in nodes): a gang is one Raft entry and one start message per
	// rank, and a typo (nodes: 1000) should fail at submit.
	MaxNodesPerJob = 64
	// MaxGPUStringBytes caps a GPU's uuid and name.
	MaxGPUStringBytes = 256
)

// Batches.
const (
	// MaxRecordsPerBatch caps the records in one batch.
	MaxRecordsPerBatch = 4096
	// MaxBatchBytes caps the encoded size of one batch the agent sends.
	// It is well below the link's frame limit, so a batch that respects
	// every per-record cap always fits in one frame.
	MaxBatchBytes = 4 << 20
	// MaxActiveJobs caps the active job ids an agent reports in its hello.
	MaxActiveJobs = 4096
	// MaxBatchKeys caps the metric names one batch (or Raft entry) lists
	// for its flat points; an agent starts a new batch rather than go
	// past it.
	MaxBatchKeys = 4096
)

// Timestamps.
const (
	// MaxTimestamp is the latest instant a record may carry, in unix
	// seconds: the end of year 9999, the last one JSON times can show.
	// Larger values would also convert to milliseconds differently on
	// different CPUs, and voters must agree.
	MaxTimestamp = 253402300799
)

// ValidTimestamp reports whether ts (unix seconds; 0 means "not given")
// is finite and within [0, MaxTimestamp].
func ValidTimestamp(ts float64) bool {
	return ts >= 0 && ts <= MaxTimestamp // false for NaN too
}

// ValidMetricKey reports whether k may name a metric: 1 to
// MaxMetricKeyBytes bytes of UTF-8 without control characters (keys are
// shown in terminals and become JSON object keys).
func ValidMetricKey(k string) bool {
	if k == "" || len(k) > MaxMetricKeyBytes || !utf8.ValidString(k) {
		return false
	}
	for _, r := range k {
		if r < ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}
