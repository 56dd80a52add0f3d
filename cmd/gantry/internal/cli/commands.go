package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
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
		Long: "run submits the job described by SPEC.yaml, prints its id and, unless -d is given,\n" +
			"shows it live until it ends. The exit status follows the job: 0 when it succeeded,\n" +
			"its exit code when it failed, 1 otherwise. Ctrl-C detaches; the job keeps running.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := LoadSpec(args[0])
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			if err := spec.Validate(); err != nil {
				return &exitError{code: exitUsage, err: fmt.Errorf("spec %s: %w", args[0], err)}
			}
			c := a.client()
			id, err := c.Submit(cmd.Context(), spec)
			var apiErr *client.APIError
			if errors.As(err, &apiErr) && apiErr.Status == http.StatusBadRequest {
				return &exitError{code: exitUsage, err: fmt.Errorf("controller rejected spec %s: %s", args[0], apiErr.Message)}
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
		Use:   "watch ID|NAME",
		Short: "Follow an existing job live (exit status as for run)",
		Args:  cobra.ExactArgs(1),
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
	var state, output string
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List jobs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return &exitError{code: exitUsage, err: fmt.Errorf("--output %q: want table or json", output)}
			}
			jobs, err := a.client().JobsIn(cmd.Context(), state)
			var apiErr *client.APIError
			if errors.As(err, &apiErr) && apiErr.Status == http.StatusBadRequest {
				return &exitError{code: exitUsage, err: fmt.Errorf("ps: %s", apiErr.Message)}
			}
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(a.env.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(apiv1.JobList{Jobs: jobs})
			}
			return WriteJobsTable(a.env.Stdout, jobs, a.env.Now())
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only jobs in this state (queued, assigned, running, succeeded, failed, cancelled, lost)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, or json (the API's job objects)")
	return cmd
}

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

// tableCmd is a command without arguments that fetches a list from the
// controller and writes it as a table.
func tableCmd[T any](a *app, use, short string, fetch func(*client.Client, context.Context) (T, error),
	write func(io.Writer, T, time.Time) error) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := fetch(a.client(), cmd.Context())
			if err != nil {
				return err
			}
			return write(a.env.Stdout, list, a.env.Now())
		},
	}
}

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status ID|NAME",
		Short: "Show every field of a job, its final metrics and events",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.client()
			job, err := a.resolve(cmd.Context(), c, args[0], false)
			if err != nil {
				return err
			}
			events, err := c.Events(cmd.Context(), job.ID)
			if err != nil {
				return err
			}
			return WriteJobStatus(a.env.Stdout, job, events, a.env.Now())
		},
	}
}

func (a *app) logsCmd() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs ID|NAME",
		Short: "Print a job's log (-f follows it until the job ends)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.client()
			job, err := a.resolve(cmd.Context(), c, args[0], false)
			if err != nil {
				return err
			}
			err = a.copyLogs(cmd.Context(), c, job.ID, follow)
			if err != nil && cmd.Context().Err() != nil {
				return &exitError{code: exitDetached}
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the job ends")
	return cmd
}

// copyLogs prints the log from offset 0. Without follow it stops once
// caught up; with follow it polls until the server says the log is
// complete (the job is terminal and every byte stored).
func (a *app) copyLogs(ctx context.Context, c *client.Client, id string, follow bool) error {
	var offset uint64
	t := time.NewTicker(a.env.PollInterval)
	defer t.Stop()
	for {
		l, err := c.Logs(ctx, id, offset)
		if err != nil {
			return err
		}
		if _, err := io.WriteString(a.env.Stdout, l.Data); err != nil {
			return fmt.Errorf("write log: %w", err)
		}
		progressed := l.Next > offset
		if l.Next > offset {
			offset = l.Next
		}
		switch {
		case l.Complete && !progressed:
			return nil
		case progressed:
			// More may be waiting right away: a page may be capped.
			continue
		case !follow:
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (a *app) cancelCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID|NAME",
		Short: "Cancel a job gracefully (SIGTERM, then SIGKILL after its kill_grace)",
		Args:  cobra.ExactArgs(1),
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
	return tableCmd(a, "nodes", "List GPU nodes with free and total GPUs", (*client.Client).Nodes, WriteNodesTable)
}

func (a *app) clusterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Controller cluster commands",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show the Raft leader, peers, term and indexes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client().Cluster(cmd.Context())
			if err != nil {
				return err
			}
			return WriteCluster(a.env.Stdout, cl)
		},
	})
	return cmd
}
