package cli

import (
	"reflect"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

func TestSpecUnknownFieldSuggestions(t *testing.T) {
	tests := []struct {
		yaml, want string
	}{
		{"run: x\nresources:\n  gpu: 2\n", "line 3: unknown field `gpu` in resources; did you mean `gpus`?"},
		{"run: x\nmax_durration: 1h\n", "line 2: unknown field `max_durration` in the spec; did you mean `max_duration`?"},
		{"run: x\nnmae: y\n", "line 2: unknown field `nmae` in the spec; did you mean `name`?"},                   // transposed
		{"run: x\nKill_Grace: 5\n", "line 2: unknown field `Kill_Grace` in the spec; did you mean `kill_grace`?"}, // case
		{"run: x\nresources:\n  gpus_type: A100\n", "did you mean `gpu_type`?"},
		// Nothing close: the keys that exist instead of a guess.
		{"run: x\ncolour: red\n", "line 2: unknown field `colour` in the spec; known fields: name, run, setup, env, workdir, resources, node, nodes, max_duration, kill_grace, queue_timeout"},
		{"run: x\nresources:\n  x: 1\n", "unknown field `x` in resources; known fields: gpus, gpu_type, nodes"},
		// code_archive is yaml:"-": the API's, never a spec key.
		{"run: x\ncode_archive: sha256:00\n", "unknown field `code_archive` in the spec; known fields:"},
	}
	for _, tt := range tests {
		_, err := ParseSpec([]byte(tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseSpec(%q) = %v, want %q", tt.yaml, err, tt.want)
		}
	}
	// Several at once: each explained, on its own line.
	_, err := ParseSpec([]byte("run: x\nresources:\n  gpu: 2\nnmae: y\n"))
	if err == nil || err.Error() != "line 3: unknown field `gpu` in resources; did you mean `gpus`?\nline 4: unknown field `nmae` in the spec; did you mean `name`?" {
		t.Errorf("two unknown fields: %v", err)
	}
	// Other decode errors are yaml's own.
	if _, err := ParseSpec([]byte("run: x\nresources:\n  gpus: two\n")); err == nil || !strings.Contains(err.Error(), "cannot unmarshal") {
		t.Errorf("a wrong type: %v", err)
	}
}

// A type wrapping the spec with YAML-only keys (inline) has its keys and
// the spec's known, under the wrapper's type name.
func TestSpecErrorsFollowInlineWrappers(t *testing.T) {
	type specFile struct {
		apiv1.JobSpec `yaml:",inline"`
		Code          string `yaml:"code"`
	}
	sections := map[string]yamlSection{}
	collectSections(reflect.TypeFor[specFile](), "", sections)
	top := sections[reflect.TypeFor[specFile]().String()]
	if !strings.Contains(strings.Join(top.fields, ","), "name,run,") || top.fields[len(top.fields)-1] != "code" || top.path != "" {
		t.Errorf("wrapper section = %+v", top)
	}
	if got := suggest("cod", top.fields); got != "code" {
		t.Errorf("suggest(cod) = %q", got)
	}
	if sections["apiv1.Resources"].path != "resources" {
		t.Errorf("resources section = %+v", sections["apiv1.Resources"])
	}
}

func TestEditDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"gpu", "gpus", 1}, {"nmae", "name", 1}, {"kitten", "sitting", 3}, {"", "abc", 3}, {"ab", "ba", 1}} {
		if d := editDistance(tt.a, tt.b); d != tt.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, d, tt.d)
		}
	}
	if s := suggest("x", []string{"run", "env"}); s != "" {
		t.Errorf("a one-letter key got suggestion %q", s)
	}
}

// The suggestion reaches the user through `gantry run`, as a usage error.
func TestRunUnknownFieldIsUsage(t *testing.T) {
	r := runCLI(t, t.Context(), nil, "run", writeSpec(t, "run: x\nresources:\n  gpu: 1\n"))
	if r.code != exitUsage || !strings.Contains(r.stderr, "demo.yaml: line 3: unknown field `gpu` in resources; did you mean `gpus`?") {
		t.Errorf("code %d stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, t.Context(), nil, "run", "/nonexistent/train.yaml")
	if r.code != exitUsage || r.stderr != "gantry: spec file /nonexistent/train.yaml: no such file\n" {
		t.Errorf("missing spec file: code %d stderr %q", r.code, r.stderr)
	}
}
