// Package lineparse holds the library candidate that was measured against
// agent/metricsfile's hand-written scanner for parsing metrics lines: the
// metrics-line contract (docs/ARCHITECTURE.md, "Metrics file") mapped onto
// github.com/valyala/fastjson. It lives in the bench module so that the
// library stays out of the product's build graph; the product uses the
// scanner, which was both faster and, unlike this variant, equal to the
// encoding/json reading the contract is defined by (see the tests here for
// where fastjson parts from it).
package lineparse

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/valyala/fastjson"

	"github.com/gantry-ml/gantry/agent/metricsfile"
	"github.com/gantry-ml/gantry/proto/limits"
)

var parsers fastjson.ParserPool

// FastJSONParseLine is metricsfile.ParseLine written on fastjson: the same
// caps, step and ts rules, last duplicate wins, errors wrapping the same
// sentinels.
func FastJSONParseLine(b []byte) (metricsfile.Line, error) {
	if len(b) > metricsfile.MaxLineBytes {
		return metricsfile.Line{}, metricsfile.ErrTooLong
	}
	p := parsers.Get()
	defer parsers.Put(p)
	v, err := p.ParseBytes(b)
	if err != nil {
		// fastjson does not say where its error is, so a NaN anywhere
		// stands for the reason.
		if strings.Contains(err.Error(), "NaN") || strings.Contains(err.Error(), "Inf") {
			return metricsfile.Line{}, fmt.Errorf("%w: %w", metricsfile.ErrNonFinite, err)
		}
		return metricsfile.Line{}, fmt.Errorf("%w: %w", metricsfile.ErrNotJSON, err)
	}
	o, err := v.Object()
	if err != nil {
		return metricsfile.Line{}, fmt.Errorf("%w: %w", metricsfile.ErrNotObject, err)
	}
	type member struct {
		key string
		v   *fastjson.Value
	}
	// Visit shows duplicates; the last one wins, as in encoding/json.
	last := make(map[string]int, o.Len())
	members := make([]member, 0, o.Len())
	o.Visit(func(k []byte, v *fastjson.Value) {
		if i, dup := last[string(k)]; dup {
			members[i].v = v
			return
		}
		last[string(k)] = len(members)
		members = append(members, member{string(k), v})
	})

	var l metricsfile.Line
	var keys []string
	vals := make(map[string]float64, len(members))
	for _, m := range members {
		switch m.key {
		case "step":
			switch m.v.Type() {
			case fastjson.TypeNull:
				continue
			case fastjson.TypeNumber:
			default:
				return metricsfile.Line{}, fmt.Errorf("%w: %s", metricsfile.ErrBadStep, m.v.Type())
			}
			if i, err := m.v.Int64(); err == nil {
				l.Step = &i
				continue
			}
			f, err := m.v.Float64()
			if err != nil || f != math.Trunc(f) || f < -(1<<63) || f >= 1<<63 {
				return metricsfile.Line{}, fmt.Errorf("%w: %s", metricsfile.ErrBadStep, m.v)
			}
			i := int64(f)
			l.Step = &i
		default:
			if m.v.Type() != fastjson.TypeNumber {
				continue
			}
			f, err := m.v.Float64()
			if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
				return metricsfile.Line{}, errors.Join(metricsfile.ErrNonFinite, err)
			}
			if m.key == "ts" {
				if limits.ValidTimestamp(f) {
					l.TS = f
				}
				continue
			}
			if !limits.ValidMetricKey(m.key) {
				l.Dropped++
				continue
			}
			keys = append(keys, m.key)
			vals[m.key] = f
		}
	}
	if len(keys) > limits.MaxKeysPerPoint {
		slices.Sort(keys)
		l.Dropped += len(keys) - limits.MaxKeysPerPoint
		for _, k := range keys[limits.MaxKeysPerPoint:] {
			delete(vals, k)
		}
	}
	l.Names = make([]string, 0, len(vals))
	l.Vals = make([]float64, 0, len(vals))
	for k, v := range vals {
		l.Names, l.Vals = append(l.Names, k), append(l.Vals, v)
	}
	return l, nil
}
