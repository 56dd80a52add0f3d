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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

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
	// Values holds every other numeric field. Non-nil on success, possibly
	// empty. It never holds a key longer than limits.MaxMetricKeyBytes,
	// nor more than limits.MaxKeysPerPoint keys.
	Values map[string]float64
	// Dropped counts the numeric fields left out of Values by those caps.
	Dropped int
}

// ParseLine parses one line, b, given without its trailing newline. On error
// the Line is zero and the error wraps one of ErrNotJSON, ErrNotObject,
// ErrNonFinite, ErrBadStep or ErrTooLong.
//
// A step written as an integral float ("3.0", "1e3") is accepted: some
// trainers pass it through float arithmetic. "3.5", a string or a bool is
// ErrBadStep. Negative steps are accepted as written. A non-numeric "ts" is
// ignored like any other non-numeric field.
func ParseLine(b []byte) (Line, error) {
	if len(b) > MaxLineBytes {
		return Line{}, ErrTooLong
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	// json.Number keeps the literal, so a step beyond 2^53 stays exact and
	// an overflowing number is seen as such instead of failing the decode.
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return Line{}, decodeError(b, err)
	}
	if obj == nil {
		return Line{}, fmt.Errorf("%w: null", ErrNotObject)
	}
	if rest := b[dec.InputOffset():]; !isJSONSpace(rest) {
		return Line{}, fmt.Errorf("%w: trailing data after the object at byte %d", ErrNotJSON, dec.InputOffset())
	}

	l := Line{Values: make(map[string]float64, min(len(obj), limits.MaxKeysPerPoint))}
	var keys []string // numeric metric keys within the key length cap
	for k, v := range obj {
		switch k {
		case keyStep:
			step, err := parseStep(v)
			if err != nil {
				return Line{}, err
			}
			l.Step = step
		case keyTS:
			n, ok := v.(json.Number)
			if !ok {
				continue
			}
			ts, err := parseFinite(n)
			if err != nil {
				return Line{}, fmt.Errorf("%w: %q", err, k)
			}
			if limits.ValidTimestamp(ts) {
				l.TS = ts // else as if absent: the agent stamps the line itself
			}
		default:
			n, ok := v.(json.Number)
			if !ok {
				continue
			}
			if _, err := parseFinite(n); err != nil {
				return Line{}, fmt.Errorf("%w: %q", err, clip(k))
			}
			if !limits.ValidMetricKey(k) {
				// Too long, empty or with control characters: the
				// controller would refuse the whole point (or exit) for it.
				l.Dropped++
				continue
			}
			keys = append(keys, k)
		}
	}
	if len(keys) > limits.MaxKeysPerPoint {
		// Which keys survive must not depend on map order: the same
		// line always yields the same point.
		slices.Sort(keys)
		l.Dropped += len(keys) - limits.MaxKeysPerPoint
		keys = keys[:limits.MaxKeysPerPoint]
	}
	for _, k := range keys {
		f, _ := parseFinite(obj[k].(json.Number)) // checked above
		l.Values[k] = f
	}
	return l, nil
}

// clip shortens a key quoted in an error, which ends up in a job event.
func clip(k string) string {
	if len(k) <= limits.MaxMetricKeyBytes {
		return k
	}
	return strings.ToValidUTF8(k[:limits.MaxMetricKeyBytes], "") + "..."
}

// decodeError classifies a Decode failure.
func decodeError(b []byte, err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: empty line", ErrNotJSON)
	case errors.As(err, &typeErr):
		return fmt.Errorf("%w: top-level %s", ErrNotObject, typeErr.Value)
	case errors.As(err, &syntaxErr) && isNonFiniteLiteral(b, syntaxErr.Offset):
		// Worth its own reason: the fix (allow_nan=False, or filtering
		// NaN losses) is on the trainer side and not obvious from
		// "invalid character 'N'".
		return fmt.Errorf("%w: NaN or Infinity literal at byte %d (not valid JSON)", ErrNonFinite, syntaxErr.Offset-1)
	default:
		return fmt.Errorf("%w: %w", ErrNotJSON, err)
	}
}

// isNonFiniteLiteral reports whether the syntax error at offset (bytes read
// including the offending one) is a NaN, Infinity or -Infinity literal.
func isNonFiniteLiteral(b []byte, offset int64) bool {
	i := offset - 1
	if i < 0 || i >= int64(len(b)) {
		return false
	}
	rest := b[i:]
	return bytes.HasPrefix(rest, []byte("NaN")) || bytes.HasPrefix(rest, []byte("Infinity"))
}

// parseFinite converts a JSON number, rejecting values that overflow float64.
func parseFinite(n json.Number) (float64, error) {
	f, err := strconv.ParseFloat(string(n), 64)
	switch {
	case errors.Is(err, strconv.ErrRange) && math.IsInf(f, 0):
		return 0, fmt.Errorf("%w: %s overflows float64", ErrNonFinite, n)
	case err != nil:
		// The decoder validated the literal, so this is not expected;
		// underflow to zero is not an error in strconv.
		return 0, fmt.Errorf("%w: number %s: %w", ErrNotJSON, n, err)
	case math.IsInf(f, 0) || math.IsNaN(f):
		return 0, fmt.Errorf("%w: %s", ErrNonFinite, n)
	}
	return f, nil
}

// parseStep accepts an integer, or an integral float within int64; null means
// no step.
func parseStep(v any) (*int64, error) {
	n, ok := v.(json.Number)
	if !ok {
		if v == nil {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: %s", ErrBadStep, jsonKind(v))
	}
	if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		return &i, nil
	}
	f, err := strconv.ParseFloat(string(n), 64)
	// -2^63 and 2^63 are exact in float64, so these bounds admit exactly
	// the floats that convert to int64 without overflow.
	if err != nil || f != math.Trunc(f) || f < -(1<<63) || f >= 1<<63 {
		return nil, fmt.Errorf("%w: %s", ErrBadStep, n)
	}
	i := int64(f)
	return &i, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case bool:
		return "bool"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	default:
		return fmt.Sprintf("%T", v)
	}
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
