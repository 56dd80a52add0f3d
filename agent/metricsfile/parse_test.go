package metricsfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gantry-ml/gantry/proto/limits"
)

func i64(v int64) *int64 { return &v }

func TestParseLine(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		step    *int64
		ts      float64
		values  map[string]float64
		wantErr error
	}{
		{name: "ints and floats", in: `{"step": 10, "loss": 0.25, "tokens": 4096}`,
			step: i64(10), values: map[string]float64{"loss": 0.25, "tokens": 4096}},
		{name: "ts", in: `{"step":1,"ts":1718000000.125,"lr":3e-4}`,
			step: i64(1), ts: 1718000000.125, values: map[string]float64{"lr": 3e-4}},
		{name: "exponents", in: `{"a":1E+3,"b":-2.5e-3,"c":0e0}`,
			values: map[string]float64{"a": 1000, "b": -2.5e-3, "c": 0}},
		{name: "underflow is zero", in: `{"tiny":1e-400}`, values: map[string]float64{"tiny": 0}},
		{name: "no step", in: `{"loss":1}`, values: map[string]float64{"loss": 1}},
		{name: "null step is absent", in: `{"step":null,"loss":1}`, values: map[string]float64{"loss": 1}},
		{name: "negative step", in: `{"step":-5}`, step: i64(-5), values: map[string]float64{}},
		{name: "step beyond 2^53 stays exact", in: `{"step":9007199254740993}`,
			step: i64(9007199254740993), values: map[string]float64{}},
		{name: "max int64 step", in: `{"step":9223372036854775807}`,
			step: i64(math.MaxInt64), values: map[string]float64{}},
		{name: "integral float step", in: `{"step":3.0}`, step: i64(3), values: map[string]float64{}},
		{name: "exponent step", in: `{"step":1e3}`, step: i64(1000), values: map[string]float64{}},
		{name: "fractional step", in: `{"step":3.5}`, wantErr: ErrBadStep},
		{name: "string step", in: `{"step":"3"}`, wantErr: ErrBadStep},
		{name: "bool step", in: `{"step":true}`, wantErr: ErrBadStep},
		{name: "object step", in: `{"step":{"n":1}}`, wantErr: ErrBadStep},
		{name: "step overflows int64", in: `{"step":9223372036854775808}`, wantErr: ErrBadStep},
		{name: "huge step", in: `{"step":1e999}`, wantErr: ErrBadStep},
		{name: "non-numeric fields ignored",
			in:     `{"phase":"train","ok":true,"none":null,"list":[1,2],"nested":{"x":1e999},"acc":0.5}`,
			values: map[string]float64{"acc": 0.5}},
		{name: "non-numeric ts ignored", in: `{"ts":"2024-06-10T00:00:00Z","x":1}`, values: map[string]float64{"x": 1}},
		{name: "empty object", in: `{}`, values: map[string]float64{}},
		{name: "surrounding whitespace and CR", in: " \t{\"x\":1}\r", values: map[string]float64{"x": 1}},
		{name: "duplicate key: last wins", in: `{"x":1,"x":2}`, values: map[string]float64{"x": 2}},
		{name: "unicode key", in: `{"val/acc@τ":1}`, values: map[string]float64{"val/acc@τ": 1}},

		{name: "NaN", in: `{"loss": NaN}`, wantErr: ErrNonFinite},
		{name: "Infinity", in: `{"loss": Infinity, "x": 1}`, wantErr: ErrNonFinite},
		{name: "-Infinity", in: `{"loss":-Infinity}`, wantErr: ErrNonFinite},
		{name: "overflow", in: `{"loss":1e999}`, wantErr: ErrNonFinite},
		{name: "negative overflow", in: `{"loss":-1e400}`, wantErr: ErrNonFinite},
		{name: "ts overflow", in: `{"ts":1e999}`, wantErr: ErrNonFinite},
		{name: "top-level array", in: `[{"x":1}]`, wantErr: ErrNotObject},
		{name: "top-level number", in: `42`, wantErr: ErrNotObject},
		{name: "top-level string", in: `"x"`, wantErr: ErrNotObject},
		{name: "top-level null", in: `null`, wantErr: ErrNotObject},
		{name: "plain text", in: `epoch 1 done`, wantErr: ErrNotJSON},
		{name: "empty", in: ``, wantErr: ErrNotJSON},
		{name: "truncated object", in: `{"x":1`, wantErr: ErrNotJSON},
		{name: "two objects", in: `{"x":1}{"y":2}`, wantErr: ErrNotJSON},
		{name: "trailing garbage", in: `{"x":1} x`, wantErr: ErrNotJSON},
		{name: "non-JSON space after", in: "{\"x\":1}\v", wantErr: ErrNotJSON},
		{name: "exactly the cap", in: paddedLine(MaxLineBytes), values: map[string]float64{"v": 1}},
		{name: "one over the cap", in: paddedLine(MaxLineBytes + 1), wantErr: ErrTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLine([]byte(tt.in))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if got.Step != nil || got.TS != 0 || got.Names != nil {
					t.Fatalf("line = %+v alongside an error, want zero", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if (got.Step == nil) != (tt.step == nil) || (got.Step != nil && *got.Step != *tt.step) {
				t.Errorf("step = %v, want %v", fmtStep(got.Step), fmtStep(tt.step))
			}
			if got.TS != tt.ts {
				t.Errorf("ts = %v, want %v", got.TS, tt.ts)
			}
			if got.Names == nil || !maps.Equal(got.Values(), tt.values) || len(got.Names) != len(got.Vals) {
				t.Errorf("values = %v, want %v", got.Values(), tt.values)
			}
		})
	}
}

func fmtStep(p *int64) string {
	if p == nil {
		return "<nil>"
	}
	return fmt.Sprint(*p)
}

// paddedLine returns a valid metrics line of exactly n bytes.
func paddedLine(n int) string {
	const head, tail = `{"pad":"`, `","v":1}`
	return head + strings.Repeat("a", n-len(head)-len(tail)) + tail
}

func TestParseLineNaNReasonNamesTheLiteral(t *testing.T) {
	_, err := ParseLine([]byte(`{"loss": NaN}`))
	if err == nil || !strings.Contains(err.Error(), "NaN or Infinity") {
		t.Fatalf("err = %v, want a reason that names NaN/Infinity", err)
	}
}

func FuzzParseLine(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ParseLine(b)
		if err != nil {
			if l.Step != nil || l.TS != 0 || l.Names != nil {
				t.Fatalf("error %v with non-zero line %+v", err, l)
			}
			known := false
			for _, s := range []error{ErrNotJSON, ErrNotObject, ErrNonFinite, ErrBadStep, ErrTooLong} {
				known = known || errors.Is(err, s)
			}
			if !known {
				t.Fatalf("error %v wraps no sentinel", err)
			}
			return
		}
		if l.Names == nil || l.Vals == nil {
			t.Fatal("nil Names or Vals without an error")
		}
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		if math.IsNaN(l.TS) || math.IsInf(l.TS, 0) {
			t.Fatalf("non-finite ts %v", l.TS)
		}
		for k, v := range l.Values() {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("non-finite value %s=%v", k, v)
			}
			if k == keyStep || k == keyTS {
				t.Fatalf("reserved key %q among values", k)
			}
			// Keys go into protobuf map<string,double>, which rejects
			// invalid UTF-8 at marshal time.
			if !utf8.ValidString(k) {
				t.Fatalf("invalid UTF-8 key %q", k)
			}
		}
	})
}

// benchLine is a realistic trainer line: ~20 keys, mostly metrics, a few
// strings the parser must skip.
const benchLine = `{"step": 123456, "ts": 1718000123.456789, "loss": 2.3456789, "val_loss": 2.5012345, ` +
	`"lr": 0.00029999, "grad_norm": 1.2345, "tokens_per_s": 183456.7, "samples_per_s": 89.25, ` +
	`"train/acc": 0.61234, "val/acc": 0.59876, "ppl": 10.4393, "epoch": 3, "mfu": 0.4123, ` +
	`"gpu_mem_gb": 71.25, "loss_scale": 65536, "weight_decay": 0.1, "dropout": 0.0, ` +
	`"phase": "train", "run": "llama-7b-sweep-12", "aux_loss": 0.0123}`

func BenchmarkParseLine(b *testing.B) {
	line := []byte(benchLine)
	if _, err := ParseLine(line); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseLine(line); err != nil {
			b.Fatal(err)
		}
	}
}

// TestParseLineCaps: a line with too many keys or over-long keys keeps at
// most MaxKeysPerPoint keys, always the same ones, and counts the rest.
func TestParseLineCaps(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"step": 3`)
	const n = 3 * limits.MaxKeysPerPoint
	for i := range n {
		fmt.Fprintf(&b, `, "k%05d": %d`, i, i)
	}
	long := strings.Repeat("x", limits.MaxMetricKeyBytes+1)
	fmt.Fprintf(&b, `, %q: 1, "name": "text"}`, long)
	for range 3 {
		l, err := ParseLine([]byte(b.String()))
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Names) != limits.MaxKeysPerPoint || l.Dropped != n-limits.MaxKeysPerPoint+1 {
			t.Fatalf("%d values, %d dropped; want %d and %d", len(l.Names), l.Dropped,
				limits.MaxKeysPerPoint, n-limits.MaxKeysPerPoint+1)
		}
		for i := range limits.MaxKeysPerPoint {
			if _, ok := l.Values()[fmt.Sprintf("k%05d", i)]; !ok {
				t.Fatalf("k%05d missing: the kept keys must be the first in order", i)
			}
		}
		if l.Step == nil || *l.Step != 3 {
			t.Fatalf("step lost: %v", l.Step)
		}
	}
	if _, err := ParseLine([]byte(`{"` + long + `": NaN}`)); err == nil || len(err.Error()) > 2*limits.MaxMetricKeyBytes {
		t.Fatalf("error quoting a long key: %v", err)
	}
}

// Keys the controller would refuse (empty, control characters) are
// dropped here, counted, never sent: one such key in the final metrics
// would otherwise cost the job its exit record. A ts no JSON time can show
// is ignored, as if the line had none.
func TestParseLineDropsKeysTheControllerRefuses(t *testing.T) {
	l, err := ParseLine([]byte(`{"": 1, "loss\tval": 2, "bell\u0007": 3, "loss": 0.5, "ts": 1e15}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Names) != 1 || l.Values()["loss"] != 0.5 || l.Dropped != 3 {
		t.Fatalf("values %v, dropped %d; want only loss and 3 dropped", l.Values(), l.Dropped)
	}
	if l.TS != 0 {
		t.Fatalf("ts = %v, want 0 (out of range, ignored)", l.TS)
	}
}
