// Package cmdutil holds what the gantry-agent and gantry-controller mains
// share in reading their flags, so that both parse alike.
package cmdutil

import "strings"

// SplitList splits a comma-separated flag value, trimming spaces and
// dropping empty items: "a, b,,c" is [a b c] and "" is nil.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
