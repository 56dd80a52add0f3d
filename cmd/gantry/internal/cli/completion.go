package cli

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// completionTimeout bounds how long a shell's Tab waits for the
// controller: a completion that hangs is worse than none.
const completionTimeout = 2 * time.Second

// completionJobs asks the controller for the jobs, newest first. Any
// failure yields none, silently: completion output is parsed by the
// shell, and an error there would only garble the command line.
func (a *app) completionJobs(cmd *cobra.Command) []apiv1.Job {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, completionTimeout)
	defer cancel()
	jobs, err := a.client().Jobs(ctx)
	if err != nil {
		return nil
	}
	return newestFirst(jobs)
}

// completable reports whether s can be offered to a shell as is: the
// completion protocol is line- and tab-separated, and a value with a
// control character would be typed into the user's command line.
func completable(s string) bool {
	return s != "" && termSafe(s) == s && !strings.ContainsAny(s, "\t\n")
}

// completeJobs completes a job argument with the ids and names of the
// controller's jobs (with live, those not ended: what cancel takes), each
// described by the other and the state, newest first.
func (a *app) completeJobs(live bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp // one job per command
		}
		var out []cobra.Completion
		named := map[string]bool{}
		for _, j := range a.completionJobs(cmd) {
			if live && terminalState(j.State) {
				continue
			}
			if completable(j.ID) && strings.HasPrefix(j.ID, toComplete) {
				out = append(out, cobra.CompletionWithDesc(j.ID, orDash(termSafe(j.Name))+" "+termSafe(j.State)))
			}
			// A name means its newest job (see resolve): describe that one.
			if !named[j.Name] && completable(j.Name) && strings.HasPrefix(j.Name, toComplete) {
				named[j.Name] = true
				out = append(out, cobra.CompletionWithDesc(j.Name, "newest "+termSafe(j.ID)+" "+termSafe(j.State)))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeJobNames completes `ps --name` with the names jobs have.
func (a *app) completeJobNames(cmd *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	var out []cobra.Completion
	named := map[string]bool{}
	for _, j := range a.completionJobs(cmd) {
		if !named[j.Name] && completable(j.Name) && strings.HasPrefix(j.Name, toComplete) {
			named[j.Name] = true
			out = append(out, j.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
