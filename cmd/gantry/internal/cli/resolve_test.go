package cli

import (
	"regexp"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// Jobs of the addressing tests. Ids sort by creation, as the
// controller's do: 0m… is older than 0n….
var addressed = []apiv1.Job{
	{ID: "0maaaa11", Name: "tiny-lm", State: apiv1.StateSucceeded},
	{ID: "0maaaa22", Name: "tiny-lm", State: apiv1.StateRunning},
	{ID: "0mbbbb11", Name: "solo", State: apiv1.StateRunning},
	{ID: "0nc00001", Name: "twin", State: apiv1.StateRunning},
	{ID: "0nc00002", Name: "twin", State: apiv1.StateQueued},
	{ID: "0nd00001", Name: "done", State: apiv1.StateSucceeded},
	{ID: "0nd00002", Name: "0maaaa", State: apiv1.StateFailed}, // a name that is also an id prefix
}

func TestResolveAddressing(t *testing.T) {
	tests := []struct {
		name, arg string
		wantCode  int
		wantOut   string // in stdout (status's "ID:" row)
		wantErr   []string
	}{
		{"exact id", "0mbbbb11", 0, "0mbbbb11", nil},
		{"unique prefix", "0mb", 0, "0mbbbb11", nil},
		{"prefix shared by two", "0nd0000", exitUsage, "", []string{`id prefix "0nd0000" matches 2 jobs`}},
		{"name, the most recent wins", "tiny-lm", 0, "0maaaa22", []string{"2 jobs are named \"tiny-lm\"; using the most recent, 0maaaa22"}},
		{"name beats prefix", "0maaaa", 0, "0nd00002", nil},
		{"ambiguous prefix lists candidates newest first", "0n", exitUsage, "",
			[]string{`id prefix "0n" matches 4 jobs; give more of the id:`, "  0nd00002  0maaaa  failed\n  0nd00001  done    succeeded\n  0nc00002  twin    queued\n  0nc00001  twin    running"}},
		{"nothing", "zz", exitNotFound, "", []string{`gantry: no job with id, id prefix or name "zz" (gantry ps lists jobs)`}},
		{"empty", "", exitUsage, "", []string{"empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := newFakeCluster(t, addressed...)
			r := runCLI(t, t.Context(), map[string]string{EnvAddr: fc.srv.URL}, "status", tt.arg)
			if r.code != tt.wantCode {
				t.Fatalf("code %d, want %d\nstdout %s\nstderr %s", r.code, tt.wantCode, r.stdout, r.stderr)
			}
			if tt.wantOut != "" && !regexp.MustCompile(`(?m)^ID: +`+tt.wantOut+`$`).MatchString(r.stdout) {
				t.Errorf("stdout is not job %s:\n%s", tt.wantOut, r.stdout)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
		})
	}
}

// The same addressing applies to every command taking a job.
func TestResolveAppliesToEveryJobCommand(t *testing.T) {
	for _, cmd := range []string{"status", "logs", "watch", "cancel"} {
		t.Run(cmd, func(t *testing.T) {
			fc := newFakeCluster(t, addressed...)
			env := map[string]string{EnvAddr: fc.srv.URL}
			if r := runCLI(t, t.Context(), env, cmd, "zz"); r.code != exitNotFound || !strings.Contains(r.stderr, `no job with id, id prefix or name "zz"`) {
				t.Errorf("%s zz: code %d stderr %q", cmd, r.code, r.stderr)
			}
			if r := runCLI(t, t.Context(), env, cmd, "0n"); r.code != exitUsage || !strings.Contains(r.stderr, "0nc00001  twin    running") {
				t.Errorf("%s 0n: code %d stderr %q", cmd, r.code, r.stderr)
			}
		})
	}
}

func TestCancelAddressing(t *testing.T) {
	fc := newFakeCluster(t, addressed...)
	env := map[string]string{EnvAddr: fc.srv.URL}
	// The one tiny-lm not ended; a unique prefix.
	for _, c := range []struct{ arg, want string }{{"tiny-lm", "0maaaa22"}, {"0mbb", "0mbbbb11"}} {
		if r := runCLI(t, t.Context(), env, "cancel", c.arg); r.code != 0 || r.stdout != "cancel requested for job "+c.want+"\n" {
			t.Errorf("cancel %s: code %d stdout %q stderr %q", c.arg, r.code, r.stdout, r.stderr)
		}
	}
	// Two twins still live: which one is meant is not guessed.
	r := runCLI(t, t.Context(), env, "cancel", "twin")
	if r.code != exitUsage || !strings.Contains(r.stderr, "2 jobs named \"twin\" have not ended") ||
		!strings.Contains(r.stderr, "0nc00002  twin  queued\n  0nc00001  twin  running") {
		t.Errorf("cancel twin: code %d stderr %q", r.code, r.stderr)
	}
	// Ended: said as such, by id and by name.
	for _, arg := range []string{"0nd00001", "done"} {
		if r := runCLI(t, t.Context(), env, "cancel", arg); r.code != 0 || r.stdout != "job 0nd00001 already succeeded; nothing to cancel\n" {
			t.Errorf("cancel %s: code %d stdout %q stderr %q", arg, r.code, r.stdout, r.stderr)
		}
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if strings.Join(fc.cancelled, ",") != "0maaaa22,0mbbbb11" {
		t.Errorf("cancelled %v", fc.cancelled)
	}
}

// A name is looked up with the controller's ?name= filter; the whole
// list is only fetched for an id prefix.
func TestResolveAsksByNameFirst(t *testing.T) {
	fc := newFakeCluster(t, addressed...)
	env := map[string]string{EnvAddr: fc.srv.URL}
	queries := func() []string {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		var out []string
		for _, q := range fc.listQuery {
			out = append(out, q.Encode())
		}
		fc.listQuery = nil
		return out
	}
	if r := runCLI(t, t.Context(), env, "status", "solo"); r.code != 0 {
		t.Fatalf("status solo: %d %s", r.code, r.stderr)
	}
	if q := queries(); strings.Join(q, "|") != "name=solo" {
		t.Errorf("status solo listed %q, want only name=solo", q)
	}
	if r := runCLI(t, t.Context(), env, "status", "0mb"); r.code != 0 {
		t.Fatalf("status 0mb: %d %s", r.code, r.stderr)
	}
	if q := queries(); strings.Join(q, "|") != "name=0mb|" {
		t.Errorf("status 0mb listed %q, want name=0mb then everything", q)
	}
}
