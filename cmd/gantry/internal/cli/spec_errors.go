package cli

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// unknownField matches the one yaml/v3 decoder error a user most often
// causes: a key that KnownFields(true) refuses.
var unknownField = regexp.MustCompile(`^line (\d+): field (.+) not found in type (\S+)$`)

// explainSpecError rewrites yaml/v3's "field gpu not found in type
// apiv1.Resources" (Go type names, no hint) into "line 3: unknown field
// `gpu` in resources; did you mean `gpus`?". root is the type the spec was
// decoded into; the known keys are read from its yaml tags, so a field
// added to the spec (or a YAML-only key of a wrapping type) is known here
// without a list to keep in step. Other errors pass unchanged.
func explainSpecError(err error, root reflect.Type) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	sections := map[string]yamlSection{}
	collectSections(root, "", sections)
	lines := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		lines[i] = e
		m := unknownField.FindStringSubmatch(e)
		if m == nil {
			continue
		}
		sec, ok := sections[m[3]]
		if !ok {
			continue
		}
		line, key := m[1], m[2]
		where := "the spec"
		if sec.path != "" {
			where = sec.path
		}
		msg := fmt.Sprintf("line %s: unknown field `%s` in %s", line, key, where)
		if s := suggest(key, sec.fields); s != "" {
			msg += fmt.Sprintf("; did you mean `%s`?", s)
		} else {
			msg += "; known fields: " + strings.Join(sec.fields, ", ")
		}
		lines[i] = msg
	}
	return errors.New(strings.Join(lines, "\n"))
}

// yamlSection is one mapping of the spec: where it sits ("resources", ""
// for the top) and the keys it takes.
type yamlSection struct {
	path   string
	fields []string
}

// collectSections records, under the Go type name yaml/v3 reports
// (reflect's "apiv1.Resources"), the keys of t and of every struct below
// it. Inline structs add their keys to the enclosing mapping; yaml:"-"
// fields are no keys at all.
func collectSections(t reflect.Type, path string, out map[string]yamlSection) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return
	}
	sec := yamlSection{path: path}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for f := range t.Fields() {
			tag := f.Tag.Get("yaml")
			name, opts, _ := strings.Cut(tag, ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if strings.Contains(","+opts+",", ",inline,") && ft.Kind() == reflect.Struct {
				walk(ft)
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name) // yaml/v3's default key
			}
			sec.fields = append(sec.fields, name)
			if ft.Kind() == reflect.Struct && !implementsUnmarshaler(ft) {
				collectSections(ft, strings.TrimPrefix(path+"."+name, "."), out)
			}
		}
	}
	walk(t)
	out[t.String()] = sec
}

// implementsUnmarshaler reports whether t decodes itself (a duration, a
// time): its fields are no keys of the spec.
func implementsUnmarshaler(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	return p.Implements(reflect.TypeFor[yaml.Unmarshaler]()) ||
		p.Implements(reflect.TypeFor[interface{ UnmarshalYAML(func(any) error) error }]()) ||
		p.Implements(reflect.TypeFor[interface{ UnmarshalText([]byte) error }]())
}

// suggest returns the known key closest to key, if it is close enough to
// be a typo: at most two edits, and fewer than half of key's letters
// (so that "x" does not suggest "run"). Case is ignored.
func suggest(key string, known []string) string {
	best, bestDist := "", -1
	lower := strings.ToLower(key)
	for _, k := range known {
		d := editDistance(lower, strings.ToLower(k))
		if bestDist < 0 || d < bestDist {
			best, bestDist = k, d
		}
	}
	if bestDist < 0 || bestDist > 2 || 2*bestDist >= len([]rune(key)) {
		return ""
	}
	return best
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of neighbours ("nmae" →
// "name") each count one.
func editDistance(a, b string) int {
	s, t := []rune(a), []rune(b)
	d := make([][]int, len(s)+1)
	for i := range d {
		d[i] = make([]int, len(t)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(s); i++ {
		for j := 1; j <= len(t); j++ {
			cost := 1
			if s[i-1] == t[j-1] {
				cost = 0
			}
			d[i][j] = slices.Min([]int{d[i-1][j] + 1, d[i][j-1] + 1, d[i-1][j-1] + cost})
			if i > 1 && j > 1 && s[i-1] == t[j-2] && s[i-2] == t[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(s)][len(t)]
}
