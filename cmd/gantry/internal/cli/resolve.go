package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
)

// errNoJob is the one "not found" of the CLI, whichever way the job was
// asked for and whichever command asked, so that users (and scripts
// reading stderr) see one wording; it exits with exitNotFound.
func errNoJob(arg string) error {
	return &exitError{code: exitNotFound,
		err: fmt.Errorf("no job with id, id prefix or name %q (gantry ps lists jobs)", termSafe(arg))}
}

// maxCandidates bounds the jobs an ambiguity error lists: enough to spot
// the one meant, not a screenful for a one-letter prefix.
const maxCandidates = 10

// errAmbiguous lists the jobs arg could mean, newest first, as
// "ID  NAME  STATE" lines, and asks for more of the id.
func errAmbiguous(what string, jobs []apiv1.Job) error {
	jobs = newestFirst(safe(jobs))
	var b strings.Builder
	b.WriteString(what + "\n")
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for i, j := range jobs {
		if i == maxCandidates {
			fmt.Fprintf(tw, "  … and %d more\n", len(jobs)-i)
			break
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", j.ID, orDash(j.Name), j.State)
	}
	_ = tw.Flush() // a strings.Builder does not fail
	return &exitError{code: exitUsage, err: errors.New(strings.TrimRight(b.String(), "\n"))}
}

// newestFirst sorts jobs by id, descending: ids sort by creation time.
func newestFirst(jobs []apiv1.Job) []apiv1.Job {
	slices.SortStableFunc(jobs, func(x, y apiv1.Job) int { return strings.Compare(y.ID, x.ID) })
	return jobs
}

// resolve turns what the user typed into a job, trying in turn:
//
//  1. a job id, exactly;
//  2. a job name: the most recent job of that name, said on stderr when
//     several share it. Names beat id prefixes because a user chose them;
//  3. a prefix of one job's id; a prefix several ids share is an error
//     listing them, since guessing could act on the wrong job.
//
// With live (cancel), a name means the job of that name that has not
// ended, and several such jobs are an error rather than the newest:
// cancelling the wrong run cannot be undone. A name whose jobs have all
// ended still resolves (to the newest), so that cancel can say it ended.
//
// The job returned is as the controller answered just now.
func (a *app) resolve(ctx context.Context, c *client.Client, arg string, live bool) (apiv1.Job, error) {
	if arg == "" {
		// Every id starts with "": it would be a prefix of them all.
		return apiv1.Job{}, &exitError{code: exitUsage, err: errors.New("the job id or name is empty")}
	}
	job, err := c.Job(ctx, arg)
	if err == nil {
		job.ID = arg // the id asked for is the one to use from here on
		return job, nil
	}
	if !errors.Is(err, client.ErrNotFound) {
		return apiv1.Job{}, err
	}
	// The name first, filtered by the controller: most lookups end here
	// without listing the whole history. The filter is applied here too,
	// since a controller older than ?name= ignores it and lists every job.
	jobs, err := c.ListJobs(ctx, client.JobFilter{Name: arg})
	if err != nil {
		return apiv1.Job{}, err
	}
	var named, namedLive, prefixed []apiv1.Job
	for _, j := range newestFirst(jobs) {
		if j.Name == arg {
			named = append(named, j)
			if !terminalState(j.State) {
				namedLive = append(namedLive, j)
			}
		}
	}
	if len(named) == 0 {
		if jobs, err = c.Jobs(ctx); err != nil {
			return apiv1.Job{}, err
		}
		for _, j := range newestFirst(jobs) {
			if strings.HasPrefix(j.ID, arg) {
				prefixed = append(prefixed, j)
			}
		}
	}
	switch {
	case live && len(namedLive) > 1:
		return apiv1.Job{}, errAmbiguous(fmt.Sprintf("%d jobs named %q have not ended; give an id (or a unique id prefix) of one:",
			len(namedLive), termSafe(arg)), namedLive)
	case live && len(namedLive) == 1:
		return namedLive[0], nil
	case len(named) > 1:
		fmt.Fprintf(a.env.Stderr, "%d jobs are named %q; using the most recent, %s\n", len(named), termSafe(arg), termSafe(named[0].ID))
		fallthrough
	case len(named) == 1:
		return named[0], nil
	case len(prefixed) == 1:
		return prefixed[0], nil
	case len(prefixed) > 1:
		return apiv1.Job{}, errAmbiguous(fmt.Sprintf("id prefix %q matches %d jobs; give more of the id:",
			termSafe(arg), len(prefixed)), prefixed)
	}
	return apiv1.Job{}, errNoJob(arg)
}
