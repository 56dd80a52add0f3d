package lineparse

import (
	"encoding/json"
	"errors"
	"maps"
	"testing"

	"github.com/gantry-ml/gantry/agent/metricsfile"
)

// benchLine is agent/metricsfile's BenchmarkParseLine line, byte for byte,
// so the figures compare.
const benchLine = `{"step": 123456, "ts": 1718000123.456789, "loss": 2.3456789, "val_loss": 2.5012345, ` +
	`"lr": 0.00029999, "grad_norm": 1.2345, "tokens_per_s": 183456.7, "samples_per_s": 89.25, ` +
	`"train/acc": 0.61234, "val/acc": 0.59876, "ppl": 10.4393, "epoch": 3, "mfu": 0.4123, ` +
	`"gpu_mem_gb": 71.25, "loss_scale": 65536, "weight_decay": 0.1, "dropout": 0.0, ` +
	`"phase": "train", "run": "llama-7b-sweep-12", "aux_loss": 0.0123}`

func sameLine(a, b metricsfile.Line) bool {
	return (a.Step == nil) == (b.Step == nil) && (a.Step == nil || *a.Step == *b.Step) &&
		a.TS == b.TS && a.Dropped == b.Dropped && maps.Equal(a.Values(), b.Values())
}

// TestFastJSONAgreesOnOrdinaryLines: on what trainers write, the variant
// reads what metricsfile.ParseLine reads, so its benchmark measures the
// same work.
func TestFastJSONAgreesOnOrdinaryLines(t *testing.T) {
	for _, s := range []string{
		benchLine,
		`{"step":3.0,"loss":1e-3,"x":{"y":[1,2]},"ok":true,"none":null}`,
		`{"step":1,"x":1,"x":2}`,
		`{}`,
	} {
		want, err := metricsfile.ParseLine([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		got, err := FastJSONParseLine([]byte(s))
		if err != nil || !sameLine(got, want) {
			t.Fatalf("%s: fastjson %+v, %v; ParseLine %+v", s, got, err, want)
		}
	}
}

// TestFastJSONPartsFromTheContract records why the library was not chosen:
// on these lines it reads something else than encoding/json, which defines
// the contract (and which metricsfile.ParseLine matches, FuzzParseLineDiff).
// Each case must still part: if fastjson changes, this says so.
func TestFastJSONPartsFromTheContract(t *testing.T) {
	for _, tc := range []struct{ why, line string }{
		{"invalid UTF-8 in a key is kept, not made U+FFFD (so the key is dropped)", "{\"a\xff\":1}"},
		{"a lone surrogate escape is kept as CESU bytes, not U+FFFD", `{"\ud800":1}`},
		{"nesting limit of 300, not 10,000", `{"a":` + repeat("[", 301) + repeat("]", 301) + `,"b":1}`},
		{"control characters inside strings are accepted", "{\"a\":\"\x01\",\"b\":1}"},
		{"a number literal is not checked against the JSON grammar", `{"a":01}`},
	} {
		got, gotErr := FastJSONParseLine([]byte(tc.line))
		want, wantErr := metricsfile.ParseLine([]byte(tc.line))
		var m map[string]any
		refErr := json.Unmarshal([]byte(tc.line), &m)
		if (wantErr == nil) != (refErr == nil) {
			t.Fatalf("%s: ParseLine error %v, encoding/json %v", tc.why, wantErr, refErr)
		}
		if (gotErr == nil) == (wantErr == nil) && (wantErr != nil && sameKind(gotErr, wantErr) || wantErr == nil && sameLine(got, want)) {
			t.Errorf("%s: fastjson now agrees (%+v, %v): update the package doc and this list", tc.why, got, gotErr)
		}
	}
}

func sameKind(a, b error) bool {
	for _, s := range []error{metricsfile.ErrNotJSON, metricsfile.ErrNotObject, metricsfile.ErrNonFinite, metricsfile.ErrBadStep} {
		if errors.Is(a, s) && errors.Is(b, s) {
			return true
		}
	}
	return false
}

func repeat(s string, n int) string {
	b := make([]byte, 0, len(s)*n)
	for range n {
		b = append(b, s...)
	}
	return string(b)
}

// BenchmarkFastJSONParseLine is the library candidate on the line
// metricsfile's BenchmarkParseLine parses.
func BenchmarkFastJSONParseLine(b *testing.B) {
	line := []byte(benchLine)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := FastJSONParseLine(line); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScannerParseLine is metricsfile.ParseLine in this process, for a
// side-by-side run.
func BenchmarkScannerParseLine(b *testing.B) {
	line := []byte(benchLine)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := metricsfile.ParseLine(line); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJSONUnmarshalMap is encoding/json into map[string]any on the
// same line: the bar the parsers are held to (at most half its time).
func BenchmarkJSONUnmarshalMap(b *testing.B) {
	line := []byte(benchLine)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			b.Fatal(err)
		}
	}
}
