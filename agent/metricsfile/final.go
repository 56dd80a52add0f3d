package metricsfile

import (
	"maps"
	"slices"
	"strings"

	"github.com/gantry-ml/gantry/proto/limits"
)

// MaxJobKeys caps a job's distinct metric keys. It is one below
// limits.MaxKeysPerJob so that the final metrics, which add "step", stay
// within that limit.
const MaxJobKeys = limits.MaxKeysPerJob - 1

// Final accumulates a run's final metrics (docs/ARCHITECTURE.md): for every metric key
// its last value, plus "step" = the last step seen. The zero value is ready to
// use. It is not safe for concurrent use.
type Final struct {
	values  map[string]float64
	step    int64
	hasStep bool
}

// Observe folds one line in. Lines must be observed in file order: "last"
// means last written, not largest.
//
// The keys seen so far are the job's keys, capped at MaxJobKeys:
// once that many are known, a new key is dropped (removed from the line,
// so the point sent for it carries only the job's keys) and counted in the
// return value. This bounds the final metrics, and so the exit record,
// whatever the job writes.
func (f *Final) Observe(l *Line) (dropped int) {
	const max = MaxJobKeys
	if len(l.Names) > 0 && f.values == nil {
		f.values = make(map[string]float64, len(l.Names))
	}
	if len(f.values)+len(l.Names) <= max {
		for i, k := range l.Names {
			f.values[k] = l.Vals[i]
		}
	} else {
		// Near the cap, which new keys get in must not depend on the
		// order in the line: sorted, so a replay after a restart admits
		// the same.
		order := make([]int, len(l.Names))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(a, b int) int { return strings.Compare(l.Names[a], l.Names[b]) })
		keep := make([]bool, len(l.Names))
		for _, i := range order {
			k := l.Names[i]
			if _, known := f.values[k]; !known && len(f.values) >= max {
				dropped++
				continue
			}
			keep[i] = true
			f.values[k] = l.Vals[i]
		}
		n := 0
		for i := range l.Names {
			if keep[i] {
				l.Names[n], l.Vals[n] = l.Names[i], l.Vals[i]
				n++
			}
		}
		l.Names, l.Vals = l.Names[:n], l.Vals[:n]
	}
	if l.Step != nil {
		f.step = *l.Step
		f.hasStep = true
	}
	return dropped
}

// Keys returns how many distinct metric keys the job has.
func (f *Final) Keys() int { return len(f.values) }

// Step returns the last step seen, and false when no line had one.
func (f *Final) Step() (int64, bool) {
	return f.step, f.hasStep
}

// Metrics returns a copy of the final metrics, never nil. "step" is present
// only when some line had one; as a float64 it is exact up to 2^53.
func (f *Final) Metrics() map[string]float64 {
	m := make(map[string]float64, len(f.values)+1)
	maps.Copy(m, f.values)
	if f.hasStep {
		m[keyStep] = float64(f.step)
	}
	return m
}
