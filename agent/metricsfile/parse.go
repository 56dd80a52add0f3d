// Package metricsfile reads the JSONL metrics file a training process writes.
//
// The contract (docs/ARCHITECTURE.md, "Metrics file"): one JSON object per line; "step"
// (an integer) and "ts" (unix seconds) are special, every other numeric field
// is a metric, other fields are ignored. A bad line is skipped and reported,
// never fatal: the trainer is someone else's code, and one stray print must
// not cost the rest of a run's metrics. A partial last line waits for its
// newline while the trainer runs and is taken when it has exited (Drain):
// that last line is the one invariant I2 promises in the final metrics.
package metricsfile

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/gantry-ml/gantry/proto/limits"
)

// MaxLineBytes caps one line (without its newline). Longer lines are skipped
// without being held in memory whole, so a runaway print cannot grow the
// agent without bound.
const MaxLineBytes = 1 << 20

// Reserved keys; every other numeric key is a metric.
const (
	keyStep = "step"
	keyTS   = "ts"
)

var (
	// ErrNotJSON: the line is not a single JSON value.
	ErrNotJSON = errors.New("not JSON")
	// ErrNotObject: the line is JSON but not an object.
	ErrNotObject = errors.New("not a JSON object")
	// ErrNonFinite: a number overflows float64, or the line uses NaN or
	// Infinity (which Python's json module writes although JSON has no
	// such literals).
	ErrNonFinite = errors.New("non-finite number")
	// ErrBadStep: "step" is present but not an integer.
	ErrBadStep = errors.New("step is not an integer")
	// ErrTooLong: the line is longer than MaxLineBytes. Its text is the
	// reason reported for such lines.
	ErrTooLong = errors.New("line longer than 1 MiB")
	// ErrBadOffset: a Tailer was asked to start at a negative offset.
	ErrBadOffset = errors.New("negative start offset")
	// ErrClosed: the Tailer was used after Close.
	ErrClosed = errors.New("metrics tailer closed")
)

// Line is one parsed metrics line.
type Line struct {
	// Step is the line's "step", nil when absent (or null).
	Step *int64
	// TS is the line's "ts" in unix seconds, 0 when absent or not a number.
	TS float64
	// Names and Vals hold every other numeric field: Names[i] is the name
	// of Vals[i], each name once, in no particular order. They are non-nil
	// on success, possibly empty, and never hold a key longer than
	// limits.MaxMetricKeyBytes nor more than limits.MaxKeysPerPoint keys.
	// (Slices, not a map: the agent spools the point in this form, which
	// marshals without the reflection a protobuf map costs.)
	Names []string
	Vals  []float64
	// Dropped counts the numeric fields left out by those caps.
	Dropped int
}

// Values returns the line's metrics as a map.
func (l Line) Values() map[string]float64 {
	if l.Names == nil {
		return nil
	}
	out := make(map[string]float64, len(l.Names))
	for i, k := range l.Names {
		out[k] = l.Vals[i]
	}
	return out
}

// ParseLine parses one line, b, given without its trailing newline. On error
// the Line is zero and the error wraps one of ErrNotJSON, ErrNotObject,
// ErrNonFinite, ErrBadStep or ErrTooLong.
//
// A step written as an integral float ("3.0", "1e3") is accepted: some
// trainers pass it through float arithmetic. "3.5", a string or a bool is
// ErrBadStep. Negative steps are accepted as written. A non-numeric "ts" is
// ignored like any other non-numeric field.
//
// The line is read as encoding/json would read it into a map[string]any
// (the test file keeps that reading as the reference, and FuzzParseLineDiff
// holds the two equal): keys are unescaped, invalid UTF-8 in them becomes
// U+FFFD, a duplicate key's last value wins, nesting deeper than 10,000 is
// not JSON, and a NaN or Infinity literal is told apart where the first
// syntax error is. When a line has several semantic faults (a bad step and
// an overflowing metric), the first in the line is reported. ParseLine
// keeps no reference to b.
func ParseLine(b []byte) (Line, error) {
	if len(b) > MaxLineBytes {
		return Line{}, ErrTooLong
	}
	var buf [32]field // most lines fit, so scanning allocates nothing
	fields, err := scanLine(b, buf[:0])
	if err != nil {
		return Line{}, err
	}
	shadowed := shadowedFields(fields)

	var l Line
	kept := 0 // numeric metric fields with valid keys, in fields[:kept] after compaction
	for i := range fields {
		f := fields[i]
		if shadowed != nil && shadowed[i] {
			continue // a later duplicate key wins
		}
		switch string(f.key) {
		case keyStep:
			step, err := parseStep(f)
			if err != nil {
				return Line{}, err
			}
			l.Step = step
		case keyTS:
			if f.kind != kindNumber {
				continue
			}
			ts, err := parseFinite(f.num)
			if err != nil {
				return Line{}, fmt.Errorf("%w: %q", err, keyTS)
			}
			if limits.ValidTimestamp(ts) {
				l.TS = ts // else as if absent: the agent stamps the line itself
			}
		default:
			if f.kind != kindNumber {
				continue
			}
			v, err := parseFinite(f.num)
			if err != nil {
				return Line{}, fmt.Errorf("%w: %q", err, clip(string(f.key)))
			}
			if !validMetricKey(f.key) {
				// Too long, empty or with control characters: the
				// controller would refuse the whole point (or exit) for it.
				l.Dropped++
				continue
			}
			f.val = v
			fields[kept] = f // kept <= i: compaction in place
			kept++
		}
	}
	metrics := fields[:kept]
	if kept > limits.MaxKeysPerPoint {
		// Which keys survive must not depend on the order in the line
		// beyond the keys themselves: the same set of keys always yields
		// the same point.
		slices.SortFunc(metrics, func(a, b field) int { return bytes.Compare(a.key, b.key) })
		l.Dropped += kept - limits.MaxKeysPerPoint
		metrics = metrics[:limits.MaxKeysPerPoint]
	}
	l.Names = make([]string, len(metrics))
	l.Vals = make([]float64, len(metrics))
	for i, f := range metrics {
		l.Names[i], l.Vals[i] = string(f.key), f.val
	}
	return l, nil
}

// validMetricKey is limits.ValidMetricKey without converting the key to a
// string first; plain printable ASCII, the usual case, is checked inline.
func validMetricKey(k []byte) bool {
	if len(k) == 0 || len(k) > limits.MaxMetricKeyBytes {
		return false
	}
	for _, c := range k {
		if c < ' ' || c >= 0x7f {
			return limits.ValidMetricKey(string(k))
		}
	}
	return true
}

// shadowedFields marks the fields whose key appears again later in the
// line: encoding/json, which defines the contract, keeps a duplicate key's
// last value. It returns nil when no key repeats, the usual case.
func shadowedFields(fields []field) []bool {
	var shadowed []bool
	mark := func(i int) {
		if shadowed == nil {
			shadowed = make([]bool, len(fields))
		}
		shadowed[i] = true
	}
	if len(fields) <= 32 {
		for i := range fields {
			for j := i + 1; j < len(fields); j++ {
				if bytes.Equal(fields[i].key, fields[j].key) {
					mark(i)
					break
				}
			}
		}
		return shadowed
	}
	// Many fields (a hostile line can hold ~100,000): sort indexes by
	// key, then by position, so that each run of equal keys ends with
	// the one that wins.
	idx := make([]int32, len(fields))
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(a, b int32) int {
		if c := bytes.Compare(fields[a].key, fields[b].key); c != 0 {
			return c
		}
		return int(a - b)
	})
	for n := 0; n+1 < len(idx); n++ {
		if bytes.Equal(fields[idx[n]].key, fields[idx[n+1]].key) {
			mark(int(idx[n]))
		}
	}
	return shadowed
}

// clip shortens a key quoted in an error, which ends up in a job event.
func clip(k string) string {
	if len(k) <= limits.MaxMetricKeyBytes {
		return k
	}
	return strings.ToValidUTF8(k[:limits.MaxMetricKeyBytes], "") + "..."
}

// clipLiteral shortens a number quoted in an error: a hostile line can
// hold a million-digit literal.
func clipLiteral(n []byte) string {
	const max = 40
	if len(n) <= max {
		return string(n)
	}
	return string(n[:max]) + "..."
}

// parseFinite converts a JSON number literal (already checked against the
// JSON grammar by the scanner), rejecting values that overflow float64.
func parseFinite(n []byte) (float64, error) {
	// The string shares n's bytes only for the call: strconv copies what
	// it keeps in its errors, and n is not written to meanwhile.
	f, err := strconv.ParseFloat(unsafe.String(unsafe.SliceData(n), len(n)), 64)
	switch {
	case errors.Is(err, strconv.ErrRange) && math.IsInf(f, 0):
		return 0, fmt.Errorf("%w: %s overflows float64", ErrNonFinite, clipLiteral(n))
	case err != nil:
		// The scanner validated the literal, so this is not expected;
		// underflow to zero is not an error in strconv.
		return 0, fmt.Errorf("%w: number %s: %w", ErrNotJSON, clipLiteral(n), err)
	case math.IsInf(f, 0) || math.IsNaN(f):
		return 0, fmt.Errorf("%w: %s", ErrNonFinite, clipLiteral(n))
	}
	return f, nil
}

// parseStep accepts an integer, or an integral float within int64; null means
// no step.
func parseStep(f field) (*int64, error) {
	switch f.kind {
	case kindNull:
		return nil, nil
	case kindNumber:
	default:
		return nil, fmt.Errorf("%w: %s", ErrBadStep, f.kind)
	}
	s := unsafe.String(unsafe.SliceData(f.num), len(f.num)) // as in parseFinite
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return &i, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	// -2^63 and 2^63 are exact in float64, so these bounds admit exactly
	// the floats that convert to int64 without overflow.
	if err != nil || v != math.Trunc(v) || v < -(1<<63) || v >= 1<<63 {
		return nil, fmt.Errorf("%w: %s", ErrBadStep, clipLiteral(f.num))
	}
	i := int64(v)
	return &i, nil
}

// isJSONSpace reports whether b holds only JSON whitespace. Stricter than
// bytes.TrimSpace, which also accepts Unicode spaces JSON does not.
func isJSONSpace(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
		default:
			return false
		}
	}
	return true
}
