package metricsfile

// The reference for the metrics-line contract: ParseLine as it was written
// on encoding/json (a map[string]any with json.Number), kept here so that
// FuzzParseLineDiff can hold the hand-written scanner to it.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"

	"github.com/gantry-ml/gantry/proto/limits"
)

// refParseLine reads b as the encoding/json parser did. On failure it
// returns every error that parser could have returned (it picked among
// several faults in map order), else the line.
// refLine is what the reference parser returns: Line as it was, with a map.
type refLine struct {
	Step    *int64
	TS      float64
	Values  map[string]float64
	Dropped int
}

func refParseLine(b []byte) (refLine, []error) {
	if len(b) > MaxLineBytes {
		return refLine{}, []error{ErrTooLong}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	// json.Number keeps the literal, so a step beyond 2^53 stays exact and
	// an overflowing number is seen as such instead of failing the decode.
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return refLine{}, []error{refDecodeError(b, err)}
	}
	if obj == nil {
		return refLine{}, []error{fmt.Errorf("%w: null", ErrNotObject)}
	}
	if rest := b[dec.InputOffset():]; !isJSONSpace(rest) {
		return refLine{}, []error{fmt.Errorf("%w: trailing data after the object at byte %d", ErrNotJSON, dec.InputOffset())}
	}

	l := refLine{Values: make(map[string]float64, min(len(obj), limits.MaxKeysPerPoint))}
	var keys []string // numeric metric keys within the key length cap
	// Which fault of several the old parser reported depended on map
	// order, so every fault found is an acceptable answer.
	var errs []error
	for k, v := range obj {
		switch k {
		case keyStep:
			step, err := refParseStep(v)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			l.Step = step
		case keyTS:
			n, ok := v.(json.Number)
			if !ok {
				continue
			}
			ts, err := refParseFinite(n)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if limits.ValidTimestamp(ts) {
				l.TS = ts // else as if absent: the agent stamps the line itself
			}
		default:
			n, ok := v.(json.Number)
			if !ok {
				continue
			}
			if _, err := refParseFinite(n); err != nil {
				errs = append(errs, err)
				continue
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
	if len(errs) > 0 {
		return refLine{}, errs
	}
	if len(keys) > limits.MaxKeysPerPoint {
		// Which keys survive must not depend on map order: the same
		// line always yields the same point.
		slices.Sort(keys)
		l.Dropped += len(keys) - limits.MaxKeysPerPoint
		keys = keys[:limits.MaxKeysPerPoint]
	}
	for _, k := range keys {
		f, _ := refParseFinite(obj[k].(json.Number)) // checked above
		l.Values[k] = f
	}
	return l, nil
}

// refDecodeError classifies a Decode failure.
func refDecodeError(b []byte, err error) error {
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

// refParseFinite converts a JSON number, rejecting values that overflow float64.
func refParseFinite(n json.Number) (float64, error) {
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

// refParseStep accepts an integer, or an integral float within int64; null means
// no step.
func refParseStep(v any) (*int64, error) {
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
