package metricsfile

import "maps"

// Final accumulates a run's final metrics (DESIGN.md): for every metric key
// its last value, plus "step" = the last step seen. The zero value is ready to
// use. It is not safe for concurrent use.
type Final struct {
	values  map[string]float64
	step    int64
	hasStep bool
}

// Observe folds one line in. Lines must be observed in file order: "last"
// means last written, not largest.
func (f *Final) Observe(l Line) {
	if len(l.Values) > 0 && f.values == nil {
		f.values = make(map[string]float64, len(l.Values))
	}
	maps.Copy(f.values, l.Values)
	if l.Step != nil {
		f.step = *l.Step
		f.hasStep = true
	}
}

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
