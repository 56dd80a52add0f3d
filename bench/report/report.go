// Package report collects a benchmark run's figures, each beside the raw
// limit or peer it is measured against, and writes them as a Markdown
// table (results.md) and as JSON (results.json).
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Figure is one measured value and what it is compared with.
type Figure struct {
	// Stage is the benchmark stage that measured it ("ingest", …).
	Stage string `json:"stage"`
	// Name says what was measured.
	Name string `json:"name"`
	// Value is the measurement, in Unit.
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Against names the raw limit or peer ("" when there is none).
	Against string `json:"against,omitempty"`
	// AgainstValue is the reference's measurement, in the same unit.
	AgainstValue float64 `json:"against_value,omitempty"`
	// Ratio is Value / AgainstValue (0 when there is no reference).
	Ratio float64 `json:"ratio,omitempty"`
	// Goal is the target for this figure, for reference only.
	Goal string `json:"goal,omitempty"`
	// Note qualifies the figure (sample count, conditions).
	Note string `json:"note,omitempty"`
}

// Profile is the top of a CPU profile taken during a stage.
type Profile struct {
	Title string `json:"title"`
	// Path is the saved profile, for `go tool pprof`.
	Path string `json:"path"`
	// Top is `go tool pprof -top` output, trimmed.
	Top string `json:"top"`
}

// Report is everything a run produced.
type Report struct {
	Started  time.Time         `json:"started"`
	Duration time.Duration     `json:"duration_ns"`
	Env      map[string]string `json:"env"`
	Figures  []Figure          `json:"figures"`
	Profiles []Profile         `json:"profiles,omitempty"`
	// Failures lists stages that could not finish, with why.
	Failures []string `json:"failures,omitempty"`

	mu sync.Mutex
}

// New returns an empty report started now.
func New(env map[string]string) *Report {
	return &Report{Started: time.Now(), Env: env}
}

// Add records a figure, computing its ratio.
func (r *Report) Add(f Figure) {
	if f.AgainstValue != 0 {
		f.Ratio = f.Value / f.AgainstValue
	}
	r.mu.Lock()
	r.Figures = append(r.Figures, f)
	r.mu.Unlock()
}

// AddProfile records a profile summary.
func (r *Report) AddProfile(p Profile) {
	r.mu.Lock()
	r.Profiles = append(r.Profiles, p)
	r.mu.Unlock()
}

// Fail records a stage that did not finish.
func (r *Report) Fail(stage string, err error) {
	r.mu.Lock()
	r.Failures = append(r.Failures, fmt.Sprintf("%s: %v", stage, err))
	r.mu.Unlock()
}

// WriteFiles writes results.md and results.json into dir.
func (r *Report) WriteFiles(dir string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Duration = time.Since(r.Started)
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("report: encode json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	var md strings.Builder
	r.markdown(&md)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

// Markdown writes the report as Markdown to w.
func (r *Report) Markdown(w io.Writer) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	r.markdown(&b)
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "# Gantry benchmark results\n\n")
	fmt.Fprintf(b, "Run %s, took %s. Ratio = value ÷ reference value (for rates higher is better, for latencies and sizes lower is better).\n\n",
		r.Started.UTC().Format(time.RFC3339), r.Duration.Round(time.Second))
	if len(r.Env) > 0 {
		keys := sortedKeys(r.Env)
		for _, k := range keys {
			fmt.Fprintf(b, "- %s: %s\n", k, r.Env[k])
		}
		b.WriteString("\n")
	}
	if len(r.Failures) > 0 {
		b.WriteString("**Stages that did not finish:**\n\n")
		for _, f := range r.Failures {
			fmt.Fprintf(b, "- %s\n", oneLine(f))
		}
		b.WriteString("\n")
	}
	b.WriteString("| stage | figure | value | reference (raw limit or peer) | reference value | ratio | goal | note |\n")
	b.WriteString("|---|---|---:|---|---:|---:|---|---|\n")
	for _, f := range r.Figures {
		ref, refVal, ratio := "—", "—", "—"
		if f.Against != "" {
			ref = f.Against
			refVal = FormatValue(f.AgainstValue, f.Unit)
		}
		if f.Ratio != 0 {
			ratio = fmt.Sprintf("%.3g×", f.Ratio)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n",
			f.Stage, cell(f.Name), FormatValue(f.Value, f.Unit), cell(ref), refVal, ratio, cell(f.Goal), cell(f.Note))
	}
	for _, p := range r.Profiles {
		fmt.Fprintf(b, "\n## Profile: %s\n\nSaved as `%s` (`go tool pprof -top %s`).\n\n```\n%s\n```\n",
			p.Title, p.Path, p.Path, strings.TrimRight(p.Top, "\n"))
	}
}

// FormatValue prints v with its unit, with a precision suited to its size.
func FormatValue(v float64, unit string) string {
	var s string
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		s = fmt.Sprint(v)
	case math.Abs(v) >= 1e4:
		s = groupThousands(int64(math.Round(v)))
	case math.Abs(v) >= 100:
		s = fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		s = fmt.Sprintf("%.1f", v)
	default:
		s = fmt.Sprintf("%.3g", v)
	}
	if unit == "" {
		return s
	}
	return s + " " + unit
}

func groupThousands(n int64) string {
	neg := n < 0
	if neg {
		n = -n
	}
	s := fmt.Sprint(n)
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func cell(s string) string { return strings.ReplaceAll(oneLine(s), "|", "\\|") }

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}
