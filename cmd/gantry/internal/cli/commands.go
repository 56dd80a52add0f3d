package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
)

func (a *app) runCmd() *cobra.Command {
	var detach bool
	cmd := &cobra.Command{
		Use:   "run SPEC.yaml",
		Short: "Submit a job and follow it live",
		Long: "run uploads the job's code (the spec file's directory, or its code: directory;\n" +
			".gitignore and .gantryignore are honoured; code: none ships nothing), submits the\n" +
			"job described by SPEC.yaml, prints its id and, unless -d is given,\n" +
			"shows it live until it ends. The exit status follows the job: 0 when it succeeded,\n" +
			"its exit code when it failed, 1 otherwise. Ctrl-C detaches; the job keeps running.",
		Args: cobra.ExactArgs(1),
		// Specs are files: complete file names, YAML ones only.
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
			return []cobra.Completion{"yaml", "yml"}, cobra.ShellCompDirectiveFilterFileExt
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			file, err := loadSpecFile(args[0])
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			spec := file.JobSpec
			if err := spec.Validate(); err != nil {
				return &exitError{code: exitUsage, err: fmt.Errorf("spec %s: %w", args[0], err)}
			}
			c := a.client()
			rejected := func(err error) error {
				var apiErr *client.APIError
				if errors.As(err, &apiErr) && apiErr.Status == http.StatusBadRequest {
					return &exitError{code: exitUsage, err: fmt.Errorf("controller rejected spec %s: %s", args[0], apiErr.Message)}
				}
				return nil
			}
			if dir := codeDir(args[0], file); dir != "" {
				if err := checkCodeDir(dir, file.Code != nil, a.env.Getenv("HOME")); err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				// Ask first whether the job could run at all, so a spec
				// no node fits is explained before the code travels.
				// (An older controller has no such check: 404 or 405.)
				if err := c.ValidateSpec(cmd.Context(), spec); err != nil {
					var apiErr *client.APIError
					if r := rejected(err); r != nil {
						return r
					}
					if !errors.As(err, &apiErr) || (apiErr.Status != http.StatusNotFound && apiErr.Status != http.StatusMethodNotAllowed) {
						return err
					}
				}
				if spec.CodeArchive, err = a.shipCode(cmd.Context(), c, dir); err != nil {
					return err
				}
			}
			id, err := c.Submit(cmd.Context(), spec)
			if r := rejected(err); r != nil {
				return r
			}
			if err != nil {
				return err
			}
			if id != termSafe(id) {
				// It is printed and used in later requests: refuse it whole.
				return fmt.Errorf("controller answered with an unprintable job id %s", termSafe(id))
			}
			if detach {
				_, err := fmt.Fprintln(a.env.Stdout, id)
				return err
			}
			if _, err := fmt.Fprintf(a.env.Stdout, "submitted job %s\n", id); err != nil {
				return err
			}
			return a.attach(cmd.Context(), c, id)
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "print the job id and return without following the job")
	return cmd
}

func (a *app) watchCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "watch ID|NAME",
		Short:             "Follow an existing job live (exit status as for run)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeJobs(false),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.client()
			job, err := a.resolve(cmd.Context(), c, args[0], false)
			if err != nil {
				return err
			}
			return a.attach(cmd.Context(), c, job.ID)
		},
	}
}

func (a *app) psCmd() *cobra.Command {
	var f client.JobFilter
	var output string
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List jobs, newest first",
		Long: "ps lists jobs, newest first, with the step each has reached and, for a queued job,\n" +
			"why it is not running yet. The filters are applied by the controller.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if f.Limit < 0 {
				return &exitError{code: exitUsage, err: fmt.Errorf("--limit %d: want a positive number (0: no limit)", f.Limit)}
			}
			jobs, err := a.client().ListJobs(cmd.Context(), f)
			var apiErr *client.APIError
			if errors.As(err, &apiErr) && apiErr.Status == http.StatusBadRequest {
				return &exitError{code: exitUsage, err: fmt.Errorf("ps: %s", termSafe(apiErr.Message))}
			}
			if err != nil {
				return err
			}
			jobs = newestFirst(jobs)
			if output != outTable {
				return writeData(a.env.Stdout, output, apiv1.JobList{Jobs: jobs})
			}
			return WriteJobsTable(a.env.Stdout, jobs, a.env.Now())
		},
	}
	cmd.Flags().StringVar(&f.State, "state", "", "only jobs in this state ("+strings.Join(jobStateNames, ", ")+")")
	cmd.Flags().StringVar(&f.Name, "name", "", "only jobs of this name")
	cmd.Flags().StringVar(&f.Node, "node", "", "only jobs placed on this node")
	cmd.Flags().IntVarP(&f.Limit, "limit", "n", 0, "only the newest N jobs (0: all)")
	addOutputFlag(cmd, &output, "the API's job objects")
	_ = cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions(jobStateNames, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("name", a.completeJobNames)
	return cmd
}

// jobStateNames are the states `ps --state` takes, in lifecycle order.
var jobStateNames = []string{apiv1.StateQueued, apiv1.StateAssigned, apiv1.StateRunning,
	apiv1.StateSucceeded, apiv1.StateFailed, apiv1.StateCancelled, apiv1.StateLost}

// alreadyEnded answers a cancel of a job that has ended. It is not an
// error (exit 0): what the user wanted, the job not running, holds, and
// scripts that cancel "whatever is left" need not special-case it.
func (a *app) alreadyEnded(j apiv1.Job) error {
	_, err := fmt.Fprintf(a.env.Stdout, "job %s already %s; nothing to cancel\n", termSafe(j.ID), termSafe(j.State))
	return err
}

func terminalState(s string) bool {
	switch s {
	case apiv1.StateSucceeded, apiv1.StateFailed, apiv1.StateCancelled, apiv1.StateLost:
		return true
	}
	return false
}

// listCmd is a command without arguments that fetches a value from the
// controller and writes it as a table (write) or, with -o, as data.
func listCmd[T any](a *app, use, short string, fetch func(*client.Client, context.Context) (T, error),
	write func(io.Writer, T, time.Time) error, data func(T) any) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			v, err := fetch(a.client(), cmd.Context())
			if err != nil {
				return err
			}
			if output != outTable {
				return writeData(a.env.Stdout, output, data(v))
			}
			return write(a.env.Stdout, v, a.env.Now())
		},
	}
	addOutputFlag(cmd, &output, "as the API answers")
	return cmd
}

func (a *app) statusCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:               "status ID|NAME",
		Short:             "Show every field of a job, its final metrics and events",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeJobs(false),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c := a.client()
			job, err := a.resolve(cmd.Context(), c, args[0], false)
			if err != nil {
				return err
			}
			if output != outTable {
				return writeData(a.env.Stdout, output, job)
			}
			events, err := jobEvents(cmd.Context(), c, job.ID)
			if err != nil {
				return err
			}
			var nodes []apiv1.Node
			if job.State == apiv1.StateRunning {
				// Only for the Throttled row: a status without it beats
				// none, so a failure here is not the command's.
				nodes, _ = c.Nodes(cmd.Context())
			}
			return WriteJobStatusNodes(a.env.Stdout, job, events, nodes, a.env.Now())
		},
	}
	addOutputFlag(cmd, &output, "the API's job object")
	return cmd
}

// logText is `logs -o`'s default: the log's bytes as the job wrote them.
const logText = "text"

func (a *app) logsCmd() *cobra.Command {
	var follow bool
	var output string
	var rank, attempt int
	cmd := &cobra.Command{
		Use:               "logs ID|NAME",
		Short:             "Print a job's log (-f follows it until the job ends)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeJobs(false),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case output != logText && output != outJSON && output != outYAML:
				return &exitError{code: exitUsage, err: fmt.Errorf("--output %q: want text, json or yaml", output)}
			case rank < 0:
				return &exitError{code: exitUsage, err: fmt.Errorf("--rank %d: want a rank of the job, 0 or more", rank)}
			case attempt < 0 || (attempt > 0 && rank == 0):
				// Rank 0's log is the job's, every attempt in order.
				return &exitError{code: exitUsage, err: fmt.Errorf("--attempt %d: give it with --rank K > 0 (rank 0's log holds every attempt)", attempt)}
			case follow && output != logText:
				// One object cannot be written before the log ends.
				return &exitError{code: exitUsage, err: fmt.Errorf("--output %s cannot be followed: drop -f, or use -o text", output)}
			}
			c := a.client()
			job, err := a.resolve(cmd.Context(), c, args[0], false)
			if err != nil {
				return err
			}
			out := a.env.Stdout
			var buf strings.Builder
			if output != logText {
				out = &buf
			}
			if attempt > job.Attempt {
				return &exitError{code: exitUsage, err: fmt.Errorf("--attempt %d: job %s has had %d", attempt, job.ID, job.Attempt)}
			}
			if ranks := len(job.Ranks); attempt == 0 && rank > 0 && rank >= ranks {
				n := max(ranks, 1)
				return &exitError{code: exitUsage, err: fmt.Errorf("--rank %d: job %s has %d rank%s", rank, job.ID, n, plural(n))}
			}
			l, err := a.copyLogs(cmd.Context(), c, job.ID, rank, attempt, follow, out)
			if err != nil && cmd.Context().Err() != nil {
				return &exitError{code: exitDetached}
			}
			if errors.Is(err, client.ErrNotFound) {
				return errNoJob(job.ID)
			}
			if err != nil {
				return err
			}
			if output != logText {
				l.Offset, l.Data = 0, buf.String()
				if err := writeData(a.env.Stdout, output, l); err != nil {
					return err
				}
			}
			if l.Next > 0 {
				return nil
			}
			if follow {
				// Its state now, not when the follow began.
				if job, err = c.Job(cmd.Context(), job.ID); err != nil {
					return err
				}
			}
			return a.explainNoLogs(job)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the job ends")
	cmd.Flags().IntVar(&rank, "rank", 0, "a multi-node job's rank whose log to print (0, the default, is the job's own)")
	cmd.Flags().IntVar(&attempt, "attempt", 0, "with --rank: an earlier attempt of a requeued job (numbered from 1; default the current)")
	cmd.Flags().StringVarP(&output, "output", "o", logText, "text, json or yaml (one API log object holding the whole log)")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(
		[]string{logText, outJSON, outYAML}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// explainNoLogs says on stderr why a job has no log at all, rather than
// printing nothing as if it had run silently. A job that ended without
// starting (cancelled or timed out while queued) will never have one:
// exit 1, since what was asked for does not exist. One not started yet
// may: exit 0.
func (a *app) explainNoLogs(j apiv1.Job) error {
	id, state := termSafe(j.ID), termSafe(j.State)
	switch {
	case j.StartedAt != nil:
		return nil // it ran and wrote nothing
	case terminalState(j.State):
		fmt.Fprintf(a.env.Stderr, "job %s was %s before it started; it has no logs\n", id, state)
		return &exitError{code: exitFailure}
	default:
		fmt.Fprintf(a.env.Stderr, "job %s is %s and has not started; it has no logs yet (gantry logs -f %s waits for them)\n", id, state, id)
		return nil
	}
}

// copyLogs writes the log from offset 0 to out. Without follow it stops
// once caught up; with follow it polls until the server says the log is
// complete (the job is terminal and every byte stored). It returns the
// last page, with Next the offset past every byte written.
func (a *app) copyLogs(ctx context.Context, c *client.Client, id string, rank, attempt int, follow bool, out io.Writer) (apiv1.Logs, error) {
	var offset uint64
	t := time.NewTicker(a.env.PollInterval)
	defer t.Stop()
	for {
		var l apiv1.Logs
		var err error
		if rank > 0 {
			l, err = c.AttemptRankLogs(ctx, id, rank, attempt, offset)
		} else {
			l, err = c.Logs(ctx, id, offset)
		}
		if err != nil {
			return apiv1.Logs{}, err
		}
		if _, err := io.WriteString(out, l.Data); err != nil {
			return apiv1.Logs{}, fmt.Errorf("write log: %w", err)
		}
		progressed := l.Next > offset
		if l.Next > offset {
			offset = l.Next
		}
		l.Next = offset
		switch {
		case l.Complete && !progressed:
			return l, nil
		case progressed:
			// More may be waiting right away: a page may be capped.
			continue
		case !follow:
			return l, nil
		}
		select {
		case <-ctx.Done():
			return apiv1.Logs{}, ctx.Err()
		case <-t.C:
		}
	}
}

func (a *app) cancelCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "cancel ID|NAME",
		Short:             "Cancel a job gracefully (SIGTERM, then SIGKILL after its kill_grace)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeJobs(true),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.client()
			job, err := a.resolve(cmd.Context(), c, args[0], true)
			if err != nil {
				return err
			}
			if terminalState(job.State) {
				return a.alreadyEnded(job)
			}
			err = c.Cancel(cmd.Context(), job.ID)
			var apiErr *client.APIError
			if errors.As(err, &apiErr) && apiErr.Status == http.StatusConflict {
				// It ended between our read and the cancel: say how.
				if j, gerr := c.Job(cmd.Context(), job.ID); gerr == nil && terminalState(j.State) {
					j.ID = job.ID
					return a.alreadyEnded(j)
				}
			}
			if errors.Is(err, client.ErrNotFound) {
				return errNoJob(job.ID)
			}
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.env.Stdout, "cancel requested for job %s\n", job.ID)
			return err
		},
	}
}

func (a *app) nodesCmd() *cobra.Command {
	cmd := listCmd(a, "nodes", "List GPU nodes with free and total GPUs", (*client.Client).Nodes, WriteNodesTable,
		func(n []apiv1.Node) any { return apiv1.NodeList{Nodes: n} })
	cmd.AddCommand(a.drainCmd(false), a.drainCmd(true))
	return cmd
}

// drainCmd is `gantry nodes drain NODE [--gpu N]...` and `undrain`.
func (a *app) drainCmd(undrain bool) *cobra.Command {
	var gpus []int
	use, short := "drain NODE", "Place nothing new on a node, or with --gpu on some of its GPUs (running jobs go on)"
	if undrain {
		use, short = "undrain NODE", "Place jobs on a node again, or with --gpu on GPUs (also clears their failing marks)"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := a.client().Drain(cmd.Context(), args[0], gpus, undrain)
			if err != nil {
				return err
			}
			return WriteNodesTable(a.env.Stdout, []apiv1.Node{n}, a.env.Now())
		},
	}
	cmd.Flags().IntSliceVar(&gpus, "gpu", nil, "GPU index (repeat, or comma-separate, for several); none: the whole node")
	return cmd
}

func (a *app) clusterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Controller cluster commands",
	}
	cmd.AddCommand(listCmd(a, "status", "Show the Raft leader, peers, term and indexes", (*client.Client).Cluster,
		func(w io.Writer, c apiv1.Cluster, _ time.Time) error { return WriteCluster(w, c) },
		func(c apiv1.Cluster) any { return c }))
	return cmd
}

// jobEvents reads a job's events; a job gone since it was resolved is
// errNoJob.
func jobEvents(ctx context.Context, c *client.Client, id string) ([]apiv1.Event, error) {
	events, err := c.Events(ctx, id)
	if errors.Is(err, client.ErrNotFound) {
		return nil, errNoJob(id) // gone since we read it
	}
	return events, err
}

func (a *app) eventsCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:               "events ID|NAME",
		Short:             "List a job's events (health conditions, bad lines, kills, ...)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeJobs(false),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c := a.client()
			job, err := a.resolve(cmd.Context(), c, args[0], false)
			if err != nil {
				return err
			}
			events, err := jobEvents(cmd.Context(), c, job.ID)
			if err != nil {
				return err
			}
			if output != outTable {
				return writeData(a.env.Stdout, output, apiv1.EventList{Events: safe(events)})
			}
			return WriteEvents(a.env.Stdout, events, a.env.Now())
		},
	}
	addOutputFlag(cmd, &output, "the API's event list")
	return cmd
}
