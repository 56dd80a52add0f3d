// Package admission decides which agent input the controller accepts. The
// leader screens every record and hello with it before proposing them to
// Raft, so a hostile or broken agent cannot get an oversize id, key or
// value into the log. The FSM runs the same checks again when it applies
// an entry: an entry written by an older leader, or one that slipped
// through, is then skipped in the same way on every voter instead of
// failing (or crashing) the apply.
//
// The checks are pure functions of the input: they must give the same
// answer on every controller, or the voters' states would diverge.
package admission

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// ErrRejected wraps every reason a record or hello is refused.
var ErrRejected = errors.New("rejected")

func reject(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRejected, fmt.Sprintf(format, args...))
}

// CheckID reports whether s is acceptable as a job or node id: non-empty,
// at most limits.MaxIDBytes, printable ASCII without spaces or slashes
// (ids become bbolt keys and parts of composite keys).
func CheckID(what, s string) error {
	if s == "" {
		return reject("%s is empty", what)
	}
	if len(s) > limits.MaxIDBytes {
		return reject("%s is %d bytes; the limit is %d", what, len(s), limits.MaxIDBytes)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '/' {
			return reject("%s has byte 0x%02x at %d; ids are printable ASCII without spaces or '/'", what, c, i)
		}
	}
	return nil
}

// CheckJobID is CheckID for the id of a new job, which must also parse as
// its own first attempt's run id (lifecycle.RunID): no '~'.
func CheckJobID(s string) error {
	if err := CheckID("job id", s); err != nil {
		return err
	}
	if strings.Contains(s, "~") {
		return reject("job id %q has '~', which separates a job id from its attempt", s)
	}
	return nil
}

// CheckRunID is CheckID for a run id an agent names (lifecycle.RunID):
// a later attempt's "id~N" may be longer than limits.MaxIDBytes by its
// suffix, as its job id is bounded, not the run id. Any other id is
// checked as CheckID does.
func CheckRunID(what, s string) error {
	if id, n, ok := lifecycle.ParseRunID(s); ok && n > 0 {
		return CheckID(what, id)
	}
	return CheckID(what, s)
}

// checkText bounds a free-text field and requires valid UTF-8 (it is
// shown to people and sent as JSON).
func checkText(what, s string, max int) error {
	if len(s) > max {
		return reject("%s is %d bytes; the limit is %d", what, len(s), max)
	}
	if !utf8.ValidString(s) {
		return reject("%s is not valid UTF-8", what)
	}
	return nil
}

// CheckMetricKey reports whether k can be a metric name.
func CheckMetricKey(k string) error {
	if !limits.ValidMetricKey(k) {
		if len(k) > limits.MaxMetricKeyBytes {
			return reject("metric key is %d bytes; the limit is %d", len(k), limits.MaxMetricKeyBytes)
		}
		return reject("metric key %q is empty, not UTF-8 or has a control character", k)
	}
	return nil
}

func checkTS(what string, ts float64) error {
	if !limits.ValidTimestamp(ts) {
		return reject("%s ts %v is not a time between 1970 and 9999", what, ts)
	}
	return nil
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// CheckRecord checks one record's shape and sizes. It does not know who
// owns the record's job: that is the caller's check.
func CheckRecord(rec *gantrypb.Record) error { return CheckRecordIn(rec, 0) }

// CheckRecordIn is CheckRecord for a record of a batch (or Raft entry)
// whose key table (CheckKeyTable) has nkeys names: a flat point may index
// only those.
func CheckRecordIn(rec *gantrypb.Record, nkeys int) error {
	if rec == nil {
		return reject("nil record")
	}
	if rec.Seq == 0 {
		return reject("record has seq 0; seqs start at 1")
	}
	if rec.JobId == "" {
		// Node-level stream: only GPU samples belong there.
		g := rec.GetGpu()
		if g == nil {
			return reject("node record (no job id) of type %T; only GPU samples are node records", rec.Body)
		}
		return checkGPUSample(g)
	}
	if err := CheckRunID("job id", rec.JobId); err != nil {
		return err
	}
	switch body := rec.Body.(type) {
	case *gantrypb.Record_Point:
		return checkPoint(body.Point, nkeys)
	case *gantrypb.Record_Event:
		return checkEvent(body.Event)
	case *gantrypb.Record_Log:
		if body.Log == nil {
			return reject("empty log record")
		}
		if n := len(body.Log.Data); n > limits.MaxLogChunkBytes {
			return reject("log chunk is %d bytes; the limit is %d", n, limits.MaxLogChunkBytes)
		}
		if body.Log.Offset > math.MaxInt64-uint64(len(body.Log.Data)) {
			return reject("log offset %d is out of range", body.Log.Offset)
		}
		return nil
	case *gantrypb.Record_Started:
		if body.Started == nil {
			return reject("empty started record")
		}
		if err := checkTS("started", body.Started.Ts); err != nil {
			return err
		}
		return nil
	case *gantrypb.Record_Exit:
		return checkExit(body.Exit)
	case *gantrypb.Record_Condition:
		return checkCondition(body.Condition)
	case *gantrypb.Record_Gpu:
		return reject("GPU sample under job %q; GPU samples are node records", rec.JobId)
	case nil:
		return reject("record without a body")
	}
	return reject("record of unknown type %T", rec.Body)
}

func checkPoint(p *gantrypb.MetricPoint, nkeys int) error {
	if p == nil {
		return reject("empty metric point")
	}
	if err := checkTS("metric point", p.Ts); err != nil {
		return err
	}
	if len(p.Names) > 0 {
		return reject("metric point in the agent's spool form (names); the link sends points flat")
	}
	if len(p.KeyIdx) == 0 && len(p.Vals) == 0 {
		return checkValues(p.Values, limits.MaxKeysPerPoint, "metric point has %d keys; the limit is %d", "metric")
	}
	// The flat form: indexes into the batch's key table, which
	// CheckKeyTable has checked once for every point.
	switch {
	case len(p.Values) > 0:
		return reject("metric point has both values and flat values")
	case len(p.KeyIdx) != len(p.Vals):
		return reject("metric point has %d key indexes for %d values", len(p.KeyIdx), len(p.Vals))
	case len(p.KeyIdx) > limits.MaxKeysPerPoint:
		return reject("metric point has %d keys; the limit is %d", len(p.KeyIdx), limits.MaxKeysPerPoint)
	}
	var seen [limits.MaxBatchKeys / 64]uint64
	for i, k := range p.KeyIdx {
		if int(k) >= nkeys {
			return reject("metric point indexes key %d of a table of %d", k, nkeys)
		}
		if seen[k/64]&(1<<(k%64)) != 0 {
			return reject("metric point has key %d twice", k)
		}
		seen[k/64] |= 1 << (k % 64)
		if !finite(p.Vals[i]) {
			return reject("metric %d is not a finite number", k)
		}
	}
	return nil
}

// CheckKeyTable checks the metric names a batch's or a Raft entry's flat
// points index: at most limits.MaxBatchKeys, each a valid metric key,
// none twice.
func CheckKeyTable(keys []string) error {
	if len(keys) > limits.MaxBatchKeys {
		return reject("key table has %d names; the limit is %d", len(keys), limits.MaxBatchKeys)
	}
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if err := CheckMetricKey(k); err != nil {
			return err
		}
		if seen[k] {
			return reject("key table lists %q twice", k)
		}
		seen[k] = true
	}
	return nil
}

// checkValues bounds a map of metric values: at most limit keys (else
// tooMany, a format of the count and the limit), each key valid, each
// value finite (else an error naming the key as a name).
func checkValues(values map[string]float64, limit int, tooMany, name string) error {
	if n := len(values); n > limit {
		return reject(tooMany, n, limit)
	}
	for k, v := range values {
		if err := CheckMetricKey(k); err != nil {
			return err
		}
		if !finite(v) {
			return reject("%s %q is not a finite number", name, k)
		}
	}
	return nil
}

func checkEvent(e *gantrypb.JobEvent) error {
	if e == nil {
		return reject("empty event")
	}
	if err := checkTS("event", e.Ts); err != nil {
		return err
	}
	if err := checkText("event kind", e.Kind, limits.MaxEventKindBytes); err != nil {
		return err
	}
	return checkText("event message", e.Message, limits.MaxEventMessageBytes)
}

// checkCondition checks a health condition record: a known kind, bounded
// text, and GPU indices a node could have. Whether the GPUs are the job's
// is not checked: the evidence is the agent's word, shown as such.
func checkCondition(c *gantrypb.HealthCondition) error {
	if c == nil {
		return reject("empty condition record")
	}
	if err := checkTS("condition", c.Ts); err != nil {
		return err
	}
	if !lifecycle.IsCondition(c.Kind) {
		return reject("condition kind %q is not one of %v", clipEnd(c.Kind, 64), lifecycle.Conditions)
	}
	if err := checkText("condition evidence", c.Evidence, limits.MaxEventMessageBytes); err != nil {
		return err
	}
	if err := checkText("condition signal", c.Signal, limits.MaxEventKindBytes); err != nil {
		return err
	}
	if n := len(c.Gpus); n > limits.MaxConditionGPUs {
		return reject("condition names %d GPUs; the limit is %d", n, limits.MaxConditionGPUs)
	}
	for _, g := range c.Gpus {
		if g >= limits.MaxGPUsPerNode {
			return reject("condition names GPU %d; a node has at most %d", g, limits.MaxGPUsPerNode)
		}
	}
	return nil
}

func checkExit(x *gantrypb.JobExit) error {
	if x == nil {
		return reject("empty exit record")
	}
	if err := checkTS("exit", x.Ts); err != nil {
		return err
	}
	if err := checkValues(x.FinalMetrics, limits.MaxKeysPerJob, "exit carries %d final metrics; the limit is %d", "final metric"); err != nil {
		return err
	}
	if err := checkText("exit log tail", x.LogTail, limits.MaxLogTailBytes); err != nil {
		return err
	}
	if err := checkText("exit error", x.Error, limits.MaxExitErrorBytes); err != nil {
		return err
	}
	if err := checkText("exit signal", x.Signal, limits.MaxSignalBytes); err != nil {
		return err
	}
	return checkText("exit reason", x.Reason, limits.MaxEventKindBytes)
}

func checkGPUSample(s *gantrypb.GPUSample) error {
	if err := checkTS("GPU sample", s.Ts); err != nil {
		return err
	}
	if n := len(s.Gpus); n > limits.MaxGPUsPerNode {
		return reject("GPU sample has %d GPUs; the limit is %d", n, limits.MaxGPUsPerNode)
	}
	for _, g := range s.Gpus {
		if g == nil {
			return reject("GPU sample has an empty entry")
		}
		if err := checkGPUStrings(g.Uuid, g.Name); err != nil {
			return err
		}
		if !finite(g.UtilizationPct) || !finite(g.TemperatureC) || !finite(g.PowerW) || !finite(g.PowerLimitW) {
			return reject("GPU %d reading is not a finite number", g.Index)
		}
		if err := checkText("GPU fault", g.Fault, limits.MaxGPUStringBytes); err != nil {
			return err
		}
	}
	return nil
}

// checkGPUStrings bounds a GPU's uuid and name, in samples and hellos
// alike.
func checkGPUStrings(uuid, name string) error {
	if err := checkText("GPU uuid", uuid, limits.MaxGPUStringBytes); err != nil {
		return err
	}
	return checkText("GPU name", name, limits.MaxGPUStringBytes)
}

// CheckHello checks an agent's hello: its node id, GPUs and active jobs.
func CheckHello(h *gantrypb.Hello) error {
	if h == nil {
		return reject("empty hello")
	}
	if err := CheckID("node id", h.NodeId); err != nil {
		return err
	}
	if err := checkText("hostname", h.Hostname, limits.MaxGPUStringBytes); err != nil {
		return err
	}
	if err := checkText("version", h.Version, limits.MaxGPUStringBytes); err != nil {
		return err
	}
	if err := checkText("advertise address", h.AdvertiseAddr, limits.MaxGPUStringBytes); err != nil {
		return err
	}
	if strings.ContainsAny(h.AdvertiseAddr, " \t\n/") {
		return reject("advertise address %q is not a host or IP", h.AdvertiseAddr)
	}
	if n := len(h.Gpus); n > limits.MaxGPUsPerNode {
		return reject("hello offers %d GPUs; the limit is %d", n, limits.MaxGPUsPerNode)
	}
	for _, g := range h.Gpus {
		if g == nil {
			return reject("hello has an empty GPU entry")
		}
		if err := checkGPUStrings(g.Uuid, g.Name); err != nil {
			return err
		}
	}
	if n := len(h.ActiveJobs); n > limits.MaxActiveJobs {
		return reject("hello lists %d active jobs; the limit is %d", n, limits.MaxActiveJobs)
	}
	for _, id := range h.ActiveJobs {
		if err := CheckRunID("active job id", id); err != nil {
			return err
		}
	}
	return nil
}

// Repair makes a started or exit record acceptable instead of refusing
// it: a job's lifecycle hangs on these two, and refusing an exit would
// leave the job running forever on the controller while its agent has
// forgotten it. Final metrics with bad keys or values are dropped (by
// sorted key past the cap, so every voter drops the same ones), texts are
// clipped to their caps on a rune boundary, and a bad ts becomes 0 (the
// controller's own time is used). It reports whether it changed anything;
// other records are left as they are.
func Repair(rec *gantrypb.Record) bool {
	changed := false
	switch body := rec.GetBody().(type) {
	case *gantrypb.Record_Started:
		if body.Started == nil {
			body.Started = &gantrypb.JobStarted{}
			changed = true
		}
		if !limits.ValidTimestamp(body.Started.Ts) {
			body.Started.Ts, changed = 0, true
		}
	case *gantrypb.Record_Exit:
		x := body.Exit
		if x == nil {
			x = &gantrypb.JobExit{}
			body.Exit, changed = x, true
		}
		if !limits.ValidTimestamp(x.Ts) {
			x.Ts, changed = 0, true
		}
		for k, v := range x.FinalMetrics {
			if !limits.ValidMetricKey(k) || !finite(v) {
				delete(x.FinalMetrics, k)
				changed = true
			}
		}
		if len(x.FinalMetrics) > limits.MaxKeysPerJob {
			keys := make([]string, 0, len(x.FinalMetrics))
			for k := range x.FinalMetrics {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys[limits.MaxKeysPerJob:] {
				delete(x.FinalMetrics, k)
			}
			changed = true
		}
		// The end of a log tail is the part worth keeping; of the rest,
		// the start.
		if c := clipEnd(x.LogTail, limits.MaxLogTailBytes); c != x.LogTail {
			x.LogTail, changed = c, true
		}
		for _, f := range []struct {
			s   *string
			max int
		}{{&x.Error, limits.MaxExitErrorBytes}, {&x.Signal, limits.MaxSignalBytes}, {&x.Reason, limits.MaxEventKindBytes}} {
			if c := clipStart(*f.s, f.max); c != *f.s {
				*f.s, changed = c, true
			}
		}
	}
	return changed
}

// clipEnd returns the last at most max bytes of s as valid UTF-8, cut on
// a rune boundary.
func clipEnd(s string, max int) string {
	return ClipTail(strings.ToValidUTF8(s, "\uFFFD"), max)
}

// clipStart returns the first at most max bytes of s as valid UTF-8, cut
// on a rune boundary.
func clipStart(s string, max int) string {
	return Clip(strings.ToValidUTF8(s, "\uFFFD"), max)
}

// Clip returns the first at most max bytes of s, cut on a rune boundary.
// It repairs nothing: s is valid UTF-8 already (what the FSM applies must
// not depend on a repair older voters did not make).
func Clip(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// ClipTail returns the last at most max bytes of s, cut on a rune
// boundary; like Clip it repairs nothing.
func ClipTail(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := len(s) - max
	for cut < len(s) && !utf8.RuneStart(s[cut]) {
		cut++
	}
	return s[cut:]
}
