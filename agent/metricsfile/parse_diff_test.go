package metricsfile

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

// fuzzSeeds are FuzzParseLine's seeds: both fuzz targets start from them.
var fuzzSeeds = []string{
	`{"step":1,"ts":1718000000.5,"loss":0.25}`,
	`{"step":3.0}`,
	`{"step":-1,"x":1e308}`,
	`{"loss":NaN}`,
	`{"loss":-Infinity}`,
	`{"x":1e999}`,
	`{"a":{"b":[1,2,{"c":null}]},"d":"s","e":true}`,
	`[1,2]`,
	`null`,
	`{}`,
	`{"x":1} {"y":2}`,
	"{\"\xff\":1}",
	``,
	`{"step":"7"}`,
}

// nastyLines are lines where a JSON reader can easily part from
// encoding/json: escapes, duplicates, number forms, where a syntax error
// falls, nesting. TestParseLineMatchesReference runs them every time;
// FuzzParseLineDiff starts from them.
var nastyLines = []string{
	// Keys: escapes, surrogates, invalid UTF-8, reserved names escaped.
	`{"\u0073tep":5,"\u0074s":1718000000,"a\u00e9":1}`,
	`{"\ud83d\ude00":1,"\ud83d":2,"\ude00x":3,"\ud83d\u0041":4,"\uD83D\uDE00":5}`,
	`{"\ud800\ud800":1,"\udfff":2}`,
	"{\"a\xffb\":1,\"\xc3\":2,\"\xe2\x82\":3,\"\xef\xbf\xbd\":4}",
	"{\"\xed\xa0\x80\":1}",
	`{"a\"b":1,"a\\b":2,"a\/b":3,"\b\f\n\r\t":4}`,
	`{"\u0000":1,"\u001f":2,"\u007f":3,"\u0085":4,"\u00a0":5}`,
	`{"":1," ":2}`,
	`{"` + strings.Repeat("k", 128) + `":1,"` + strings.Repeat("k", 129) + `":2}`,
	`{"` + strings.Repeat("é", 64) + `":1,"` + strings.Repeat("é", 65) + `":2}`,
	`{"a\x":1}`, `{"a\u12":1}`, `{"a\u12g4":1}`, "{\"a\x01\":1}", `{"a`, `{"a\`, `{"a\u00`,
	// Duplicates: the last value wins, whatever it is.
	`{"x":1,"x":2}`, `{"x":1e999,"x":1}`, `{"x":1,"x":1e999}`, `{"x":1,"x":"s"}`,
	`{"step":"a","step":2}`, `{"step":2,"step":null}`, `{"step":1,"step":1.5}`,
	`{"ts":1e999,"ts":"now"}`, `{"ts":5,"ts":6}`, `{"x":1,"\u0078":2}`,
	// Numbers.
	`{"a":-0,"b":-0.0,"c":0e-5,"d":-0E+0,"e":1E400,"f":-1e-400,"g":4.9e-324,"h":2e-324}`,
	`{"a":1.7976931348623157e308,"b":1.7976931348623159e308,"c":123456789012345678901234567890}`,
	`{"step":-0}`, `{"step":-9223372036854775808}`, `{"step":-9223372036854775809}`,
	`{"step":9.223372036854775807e18}`, `{"step":9223372036854775807.0}`, `{"step":1e-0}`,
	`{"step":10000000000000000000000}`, `{"step":0.0000001e7}`, `{"step":[1]}`, `{"step":{}}`,
	`{"step":false}`,
	`{"a":01}`, `{"a":-}`, `{"a":1.}`, `{"a":.5}`, `{"a":1e}`, `{"a":1e+}`, `{"a":+1}`,
	`{"a":0x10}`, `{"a":1.5.3}`, `{"a":1ee3}`, `{"a":--1}`, `{"a":-a}`, `{"a":1_000}`,
	// Where the syntax error is decides NaN versus not JSON.
	`{"a":-NaN}`, `{"a":-Infinity1}`, `{NaN:1}`, `{"a":1 NaN}`, `{"a":1,NaN}`, `{"a":nan}`,
	`{"a":Inf}`, `{"a":tNaN}`, `{"a":nuNaN}`, `[NaN]`, `NaN`, `-Infinity`, `{"a":[1,NaN]}`,
	`{"step":"x","a":NaN}`, `{"a":1e999,"b":NaN}`, `{"a":"NaN"}`, `{"a":NaN`,
	// Faults of several kinds in one line: any of them is a right answer.
	`{"step":"x","a":1e999}`, `{"ts":1e999,"step":true}`,
	// Top level.
	`42`, `42x`, `01`, `-`, `1.`, `"x"`, `"x`, `true`, `tru`, `truex`, `nul`, `nullx`,
	`[1,2] x`, `[1,2`, `[}`, ` `, "\t\r\n", "\xef\xbb\xbf{}", `{}}`, `{} `, "{}\n", `{},`,
	// Structure.
	`{"a":1,}`, `{,}`, `{"a" 1}`, `{"a":}`, `{"a":1 "b":2}`, `{"a":[1,]}`, `{"a":[,1]}`,
	`{"a":{"b":1,}}`, `{"a":{"b"}}`, `{"a":{1:2}}`, `{"a":[1}`, `{"a":{]}`, `{"a":[]}`,
	`{"a":{}}`, `{ "a" : [ [ ] , { } , "s" , true , false , null , -1.5e3 ] , "b" : 2 }`,
	"{\"a\":\"\x7f\xff\"}", "{\"a\":\"\x00\"}", `{"a":"\q"}`,
	`{"a":[` + strings.Repeat("[", 9998) + strings.Repeat("]", 9998) + `],"b":1}`,
	`{"a":[` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `],"b":1}`,
	strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	`{"a":` + strings.Repeat(`{"b":`, 9998) + `1` + strings.Repeat(`}`, 9998) + `}`,
	`{"a":` + strings.Repeat(`{"b":`, 9999) + `1` + strings.Repeat(`}`, 9999) + `}`,
}

func init() {
	// Caps: many keys, many duplicates, the cap with invalid keys among them.
	var b strings.Builder
	b.WriteString(`{"step":1`)
	for i := range 300 {
		fmt.Fprintf(&b, `,"k%03d":%d,"":1`, 299-i, i)
	}
	b.WriteString(`}`)
	nastyLines = append(nastyLines, b.String())
	b.Reset()
	b.WriteString(`{`)
	for i := range 600 {
		fmt.Fprintf(&b, `"d%d":%d,`, i%7, i)
	}
	b.WriteString(`"d3":"last"}`)
	nastyLines = append(nastyLines, b.String())
}

// checkAgainstReference fails t unless ParseLine(b) is what the
// encoding/json reference makes of b: the same line, or an error of a kind
// the reference could have reported.
func checkAgainstReference(t *testing.T, b []byte) {
	t.Helper()
	got, err := ParseLine(b)
	want, wantErrs := refParseLine(b)
	if wantErrs != nil {
		if err == nil {
			t.Fatalf("%q: accepted %+v, reference refused it: %v", clipQ(b), got, wantErrs)
		}
		ok := false
		for _, w := range wantErrs {
			for _, s := range []error{ErrNotJSON, ErrNotObject, ErrNonFinite, ErrBadStep, ErrTooLong} {
				ok = ok || errors.Is(w, s) && errors.Is(err, s)
			}
		}
		if !ok {
			t.Fatalf("%q: error %v, reference %v", clipQ(b), err, wantErrs)
		}
		if got.Step != nil || got.TS != 0 || got.Names != nil || got.Dropped != 0 {
			t.Fatalf("%q: error %v with non-zero line %+v", clipQ(b), err, got)
		}
		return
	}
	if err != nil {
		t.Fatalf("%q: error %v, reference accepted %+v", clipQ(b), err, want)
	}
	if (got.Step == nil) != (want.Step == nil) || got.Step != nil && *got.Step != *want.Step {
		t.Fatalf("%q: step %s, reference %s", clipQ(b), fmtStep(got.Step), fmtStep(want.Step))
	}
	if math.Float64bits(got.TS) != math.Float64bits(want.TS) {
		t.Fatalf("%q: ts %v, reference %v", clipQ(b), got.TS, want.TS)
	}
	if got.Dropped != want.Dropped {
		t.Fatalf("%q: dropped %d, reference %d", clipQ(b), got.Dropped, want.Dropped)
	}
	gotValues := got.Values()
	if got.Names == nil || len(got.Names) != len(want.Values) || len(gotValues) != len(got.Names) {
		t.Fatalf("%q: values %v, reference %v", clipQ(b), gotValues, want.Values)
	}
	for k, w := range want.Values {
		// Bits, not ==: -0 must stay -0.
		if g, ok := gotValues[k]; !ok || math.Float64bits(g) != math.Float64bits(w) {
			t.Fatalf("%q: values %v, reference %v (key %q)", clipQ(b), gotValues, want.Values, k)
		}
	}
}

func clipQ(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

func TestParseLineMatchesReference(t *testing.T) {
	for _, s := range append(append([]string{}, fuzzSeeds...), nastyLines...) {
		checkAgainstReference(t, []byte(s))
	}
	checkAgainstReference(t, []byte(paddedLine(MaxLineBytes)))
	checkAgainstReference(t, []byte(paddedLine(MaxLineBytes+1)))
}

// FuzzParseLineDiff holds ParseLine to the encoding/json reference.
func FuzzParseLineDiff(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	for _, s := range nastyLines {
		if len(s) < 4096 { // the deep ones slow every mutation down
			f.Add([]byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkAgainstReference(t, b)
	})
}

// BenchmarkParseLineReference is the encoding/json parser ParseLine
// replaced, on BenchmarkParseLine's line.
func BenchmarkParseLineReference(b *testing.B) {
	line := []byte(benchLine)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if _, errs := refParseLine(line); errs != nil {
			b.Fatal(errs)
		}
	}
}
