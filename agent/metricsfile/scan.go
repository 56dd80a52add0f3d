package metricsfile

import (
	"bytes"
	"fmt"
	"unicode/utf16"
	"unicode/utf8"
)

// A hand-written scanner for one metrics line. It does what ParseLine needs
// from encoding/json (validate the whole line, find the top-level members,
// unescape their keys) without building a map of every value: that map,
// json.Number strings for every number and boxed interfaces were most of
// the old parser's cost. It accepts exactly the lines encoding/json
// accepts and fails at the same byte, which FuzzParseLineDiff checks
// against encoding/json itself.

// maxDepth is encoding/json's nesting limit: a line nested deeper is not
// JSON for it, so not for us.
const maxDepth = 10000

// kind is what a top-level member's value is.
type kind uint8

const (
	kindNumber kind = iota
	kindNull
	kindString
	kindBool
	kindArray
	kindObject
)

// String names the kind in ErrBadStep reasons.
func (k kind) String() string {
	switch k {
	case kindNumber:
		return "number"
	case kindNull:
		return "null"
	case kindString:
		return "string"
	case kindBool:
		return "bool"
	case kindArray:
		return "array"
	default:
		return "object"
	}
}

// field is one top-level member of the line's object.
type field struct {
	// key is the unescaped key: a slice of the line when it needed no
	// unescaping, else a copy.
	key []byte
	// num is the number literal when kind is kindNumber.
	num  []byte
	val  float64 // set by ParseLine for kept metrics
	kind kind
}

// scanner walks a line; i is the next byte to read.
type scanner struct {
	b []byte
	i int
	// stack holds the open containers ('{' or '[') of a nested value
	// being skipped; reused across values.
	stack []byte
}

// scanLine checks that b is one JSON object with only JSON whitespace
// around it and appends its members to fields in order. Errors wrap
// ErrNotJSON, ErrNotObject or ErrNonFinite, classified as ParseLine's
// encoding/json reading classified them.
func scanLine(b []byte, fields []field) ([]field, error) {
	s := scanner{b: b}
	s.skipSpace()
	if s.i == len(b) {
		return nil, fmt.Errorf("%w: empty line", ErrNotJSON)
	}
	if b[s.i] != '{' {
		// encoding/json reads one complete value, then refuses to put a
		// non-object into a map; what follows the value is never looked at.
		k, err := s.value(0)
		if err != nil {
			return nil, err
		}
		if k == kindNull {
			return nil, fmt.Errorf("%w: null", ErrNotObject)
		}
		return nil, fmt.Errorf("%w: top-level %s", ErrNotObject, k)
	}
	s.i++
	s.skipSpace()
	if s.i < len(b) && b[s.i] == '}' {
		s.i++
	} else {
		for {
			if err := s.expect('"'); err != nil {
				return nil, err
			}
			key, err := s.key()
			if err != nil {
				return nil, err
			}
			s.skipSpace()
			if err := s.expect(':'); err != nil {
				return nil, err
			}
			s.skipSpace()
			start := s.i
			k, err := s.value(1)
			if err != nil {
				return nil, err
			}
			f := field{key: key, kind: k}
			if k == kindNumber {
				f.num = b[start:s.i]
			}
			fields = append(fields, f)
			s.skipSpace()
			if s.i == len(b) {
				return nil, s.unexpectedEnd()
			}
			c := b[s.i]
			s.i++
			if c == '}' {
				break
			}
			if c != ',' {
				return nil, s.syntaxError(s.i - 1)
			}
			s.skipSpace()
		}
	}
	end := s.i
	s.skipSpace()
	if s.i != len(b) {
		return nil, fmt.Errorf("%w: trailing data after the object at byte %d", ErrNotJSON, end)
	}
	return fields, nil
}

func (s *scanner) skipSpace() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// expect consumes c or fails at the byte found instead.
func (s *scanner) expect(c byte) error {
	if s.i == len(s.b) {
		return s.unexpectedEnd()
	}
	if s.b[s.i] != c {
		return s.syntaxError(s.i)
	}
	s.i++
	return nil
}

// syntaxError reports the first byte, at i, that no JSON text can have
// there. A NaN or Infinity literal gets its own reason: the fix
// (allow_nan=False, or filtering NaN losses) is on the trainer side and
// not obvious from "invalid character 'N'".
func (s *scanner) syntaxError(i int) error {
	rest := s.b[i:]
	if bytes.HasPrefix(rest, []byte("NaN")) || bytes.HasPrefix(rest, []byte("Infinity")) {
		return fmt.Errorf("%w: NaN or Infinity literal at byte %d (not valid JSON)", ErrNonFinite, i)
	}
	return fmt.Errorf("%w: invalid character %q at byte %d", ErrNotJSON, s.b[i], i)
}

func (s *scanner) unexpectedEnd() error {
	return fmt.Errorf("%w: unexpected end of line", ErrNotJSON)
}

// key reads the rest of a string whose opening quote was consumed and
// returns it unescaped as encoding/json would: escapes decoded, a lone
// surrogate or an invalid UTF-8 byte replaced by U+FFFD.
func (s *scanner) key() ([]byte, error) {
	start := s.i
	plain, err := s.skipString()
	if err != nil {
		return nil, err
	}
	raw := s.b[start : s.i-1]
	if plain {
		return raw, nil
	}
	return unquote(raw), nil
}

// skipString reads the rest of a string whose opening quote was consumed.
// plain is true when it holds only ASCII and no escapes, so its bytes are
// its value.
func (s *scanner) skipString() (plain bool, err error) {
	plain = true
	b := s.b
	for i := s.i; i < len(b); {
		c := b[i]
		switch {
		case c == '"':
			s.i = i + 1
			return plain, nil
		case c == '\\':
			plain = false
			if i+1 == len(b) {
				return false, s.unexpectedEnd()
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for j := i + 2; j < i+6; j++ {
					if j == len(b) {
						return false, s.unexpectedEnd()
					}
					if !isHex(b[j]) {
						return false, s.syntaxError(j)
					}
				}
				i += 6
			default:
				return false, s.syntaxError(i + 1)
			}
		case c < ' ':
			return false, s.syntaxError(i)
		default:
			if c >= utf8.RuneSelf {
				plain = false
			}
			i++
		}
	}
	return false, s.unexpectedEnd()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// unquote decodes a string's contents that skipString validated, the way
// encoding/json's unquoteBytes does.
func unquote(raw []byte) []byte {
	out := make([]byte, 0, len(raw)+utf8.UTFMax)
	for r := 0; r < len(raw); {
		c := raw[r]
		switch {
		case c == '\\':
			switch e := raw[r+1]; e {
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				rr := hex4(raw[r+2 : r+6])
				r += 6
				if utf16.IsSurrogate(rr) {
					if r+6 <= len(raw) && raw[r] == '\\' && raw[r+1] == 'u' {
						if dec := utf16.DecodeRune(rr, hex4(raw[r+2:r+6])); dec != utf8.RuneError {
							out = utf8.AppendRune(out, dec)
							r += 6
							continue
						}
					}
					rr = utf8.RuneError
				}
				out = utf8.AppendRune(out, rr)
				continue
			default: // '"', '\\', '/'
				out = append(out, e)
			}
			r += 2
		case c < utf8.RuneSelf:
			out = append(out, c)
			r++
		default:
			rr, size := utf8.DecodeRune(raw[r:])
			out = utf8.AppendRune(out, rr) // RuneError for a bad byte
			r += size
		}
	}
	return out
}

// hex4 decodes four hex digits that skipString validated.
func hex4(h []byte) rune {
	var r rune
	for _, c := range h {
		switch {
		case c <= '9':
			c -= '0'
		case c <= 'F':
			c -= 'A' - 10
		default:
			c -= 'a' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// value reads one JSON value starting at s.i (not at a space) inside
// depth open containers and reports its kind.
func (s *scanner) value(depth int) (kind, error) {
	if s.i == len(s.b) {
		return 0, s.unexpectedEnd()
	}
	switch c := s.b[s.i]; c {
	case '{', '[':
		k := kindObject
		if c == '[' {
			k = kindArray
		}
		return k, s.skipNested(depth)
	case '"':
		s.i++
		_, err := s.skipString()
		return kindString, err
	case 't':
		return kindBool, s.literal("true")
	case 'f':
		return kindBool, s.literal("false")
	case 'n':
		return kindNull, s.literal("null")
	default:
		return kindNumber, s.number()
	}
}

// literal consumes word, failing at its first wrong byte.
func (s *scanner) literal(word string) error {
	for j := 0; j < len(word); j++ {
		if s.i == len(s.b) {
			return s.unexpectedEnd()
		}
		if s.b[s.i] != word[j] {
			return s.syntaxError(s.i)
		}
		s.i++
	}
	return nil
}

// number consumes a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
// It stops at the first byte that cannot continue it, which the caller
// judges in its own context.
func (s *scanner) number() error {
	b := s.b
	if s.i < len(b) && b[s.i] == '-' {
		s.i++
	}
	if s.i == len(b) {
		return s.unexpectedEnd()
	}
	switch c := b[s.i]; {
	case c == '0':
		s.i++
	case '1' <= c && c <= '9':
		s.i++
		s.digits()
	default:
		return s.syntaxError(s.i)
	}
	if s.i < len(b) && b[s.i] == '.' {
		s.i++
		if err := s.someDigits(); err != nil {
			return err
		}
	}
	if s.i < len(b) && (b[s.i] == 'e' || b[s.i] == 'E') {
		s.i++
		if s.i < len(b) && (b[s.i] == '+' || b[s.i] == '-') {
			s.i++
		}
		if err := s.someDigits(); err != nil {
			return err
		}
	}
	return nil
}

func (s *scanner) digits() {
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
	}
}

// someDigits consumes one digit or more.
func (s *scanner) someDigits() error {
	if s.i == len(s.b) {
		return s.unexpectedEnd()
	}
	if c := s.b[s.i]; c < '0' || c > '9' {
		return s.syntaxError(s.i)
	}
	s.digits()
	return nil
}

// skipNested validates an object or array starting at s.i, inside depth
// open containers, without recursion: a hostile line may nest 10,000 deep.
func (s *scanner) skipNested(depth int) error {
	b := s.b
	s.stack = s.stack[:0]
	for {
		// At the start of a value.
		s.skipSpace()
		if s.i == len(b) {
			return s.unexpectedEnd()
		}
		c := b[s.i]
		if c == '{' || c == '[' {
			if depth+len(s.stack)+1 > maxDepth {
				return fmt.Errorf("%w: nested deeper than %d at byte %d", ErrNotJSON, maxDepth, s.i)
			}
			s.stack = append(s.stack, c)
			s.i++
			s.skipSpace()
			if s.i == len(b) {
				return s.unexpectedEnd()
			}
			if c == '{' {
				if b[s.i] == '}' {
					s.i++
				} else {
					if err := s.memberKey(); err != nil {
						return err
					}
					continue // to the member's value
				}
			} else if b[s.i] == ']' {
				s.i++
			} else {
				continue // to the first element
			}
			s.stack = s.stack[:len(s.stack)-1] // an empty container
		} else if _, err := s.value(depth + len(s.stack)); err != nil {
			return err
		}
		// After a value: close containers until one continues.
		for {
			if len(s.stack) == 0 {
				return nil
			}
			s.skipSpace()
			if s.i == len(b) {
				return s.unexpectedEnd()
			}
			top := s.stack[len(s.stack)-1]
			c := b[s.i]
			s.i++
			switch {
			case c == ',' && top == '{':
				s.skipSpace()
				if err := s.memberKey(); err != nil {
					return err
				}
			case c == ',':
			case c == '}' && top == '{', c == ']' && top == '[':
				s.stack = s.stack[:len(s.stack)-1]
				continue
			default:
				return s.syntaxError(s.i - 1)
			}
			break // to the next value
		}
	}
}

// memberKey consumes `"key" :` inside a skipped object.
func (s *scanner) memberKey() error {
	if err := s.expect('"'); err != nil {
		return err
	}
	if _, err := s.skipString(); err != nil {
		return err
	}
	s.skipSpace()
	return s.expect(':')
}
