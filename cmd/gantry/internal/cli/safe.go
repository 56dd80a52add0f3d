package cli

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// termSafe escapes what a terminal would act on instead of showing: C0 and
// C1 controls (ESC, CR, backspace, BEL, CSI...), DEL, Unicode format
// characters such as bidi overrides, and invalid UTF-8, the way
// strconv.Quote writes them ("\x1b", "\r", "\u202e"). Newlines and tabs
// stay: multi-line log tails and tables need them, and neither can move
// the cursor over text already printed.
//
// Every string the CLI prints that came from the server (job names and
// ids, errors, events, metric keys, node ids) passes through here, via
// safe for values and safeError for errors, so a job cannot rewrite its
// viewers' terminals.
func termSafe(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !printableRune(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			b.WriteString(`\x` + strconv.FormatUint(uint64(s[i]), 16))
		case printableRune(r):
			b.WriteRune(r)
		default:
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
}

func printableRune(r rune) bool {
	return r == '\n' || r == '\t' || r == ' ' || unicode.IsPrint(r)
}

// safe returns a deep copy of v (an apiv1 value) with termSafe applied to
// every string in it, map keys included. The copy goes through JSON, the
// form these values came in, so the caller's value is left untouched.
func safe[T any](v T) T {
	b, err := json.Marshal(v)
	if err != nil {
		return v // apiv1 values always encode; keep the original rather than nothing
	}
	var out T
	if err := json.Unmarshal(b, &out); err != nil {
		return v
	}
	scrub(reflect.ValueOf(&out).Elem())
	return out
}

// scrub applies termSafe to every settable string reachable from v.
func scrub(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		if v.CanSet() {
			v.SetString(termSafe(v.String()))
		}
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			scrub(v.Elem())
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				scrub(v.Field(i))
			}
		}
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			scrub(v.Index(i))
		}
	case reflect.Map:
		if v.IsNil() {
			return
		}
		// Map entries are not addressable: rebuild the map with each key
		// and value scrubbed.
		out := reflect.MakeMapWithSize(v.Type(), v.Len())
		iter := v.MapRange()
		for iter.Next() {
			k := reflect.New(v.Type().Key()).Elem()
			k.Set(iter.Key())
			scrub(k)
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(iter.Value())
			scrub(e)
			out.SetMapIndex(k, e)
		}
		v.Set(out)
	}
}

// safeError is err's message made terminal-safe; server errors quote what
// a client sent, and the server quotes what jobs wrote.
func safeError(err error) string { return termSafe(err.Error()) }
