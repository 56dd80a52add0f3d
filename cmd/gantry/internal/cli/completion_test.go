package cli

import (
	"strings"
	"testing"
)

// TestCompleteJobs runs the shell's side of completion (`gantry
// __complete ...`, what the scripts of `gantry completion` call).
func TestCompleteJobs(t *testing.T) {
	fc := newFakeCluster(t, treeJobs...)
	env := map[string]string{EnvAddr: fc.srv.URL}
	tests := []struct {
		args []string
		want string // stdout: one candidate a line, then the directive
	}{
		{[]string{"__complete", "status", ""},
			"0p000003\tearly cancelled\nearly\tnewest 0p000003 cancelled\n" +
				"0p000002\tbig queued\nbig\tnewest 0p000002 queued\n" +
				"0p000001\ttrain running\ntrain\tnewest 0p000001 running\n:4\n"},
		{[]string{"__complete", "logs", "0p000001"}, "0p000001\ttrain running\n:4\n"},
		{[]string{"__complete", "watch", "tr"}, "train\tnewest 0p000001 running\n:4\n"},
		// cancel offers only jobs that have not ended.
		{[]string{"__complete", "cancel", ""},
			"0p000002\tbig queued\nbig\tnewest 0p000002 queued\n0p000001\ttrain running\ntrain\tnewest 0p000001 running\n:4\n"},
		// One job per command.
		{[]string{"__complete", "status", "train", ""}, ":4\n"},
		{[]string{"__complete", "ps", "--name", "b"}, "big\n:4\n"},
		// Fixed lists go whole; the shell keeps what matches.
		{[]string{"__complete", "ps", "--state", "r"}, "queued\nassigned\nrunning\nsucceeded\nfailed\ncancelled\nlost\n:4\n"},
		{[]string{"__complete", "ps", "-o", ""}, "table\njson\nyaml\n:4\n"},
		{[]string{"__complete", "run", ""}, "yaml\nyml\n:8\n"},
	}
	for _, tt := range tests {
		r := runCLI(t, t.Context(), env, tt.args...)
		if r.code != 0 || r.stdout != tt.want {
			t.Errorf("%v: code %d stdout\n%s\nwant\n%s", tt.args, r.code, r.stdout, tt.want)
		}
	}
	// A controller that is not there: no candidates, no error, quickly.
	r := runCLI(t, t.Context(), map[string]string{EnvAddr: closedAddr(t)}, "__complete", "status", "")
	if r.code != 0 || r.stdout != ":4\n" || strings.Contains(r.stderr, "cannot reach") {
		t.Errorf("completion without a controller: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	// --addr given on the command line is the controller asked.
	r = runCLI(t, t.Context(), map[string]string{EnvAddr: closedAddr(t)}, "__complete", "--addr", fc.srv.URL, "status", "bi")
	if r.stdout != "big\tnewest 0p000002 queued\n:4\n" {
		t.Errorf("completion with --addr: stdout %q", r.stdout)
	}
}

func TestCompletionScripts(t *testing.T) {
	for shell, want := range map[string]string{"bash": "__start_gantry", "zsh": "#compdef gantry", "fish": "complete -c gantry"} {
		r := runCLI(t, t.Context(), nil, "completion", shell)
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s: code %d, output lacks %q", shell, r.code, want)
		}
	}
}
