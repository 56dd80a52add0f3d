package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
	"github.com/gantry-ml/gantry/lifecycle"
)

// errDetached reports that the user left the live view; the job goes on.
var errDetached = errors.New("detached")

// pollPoints is how many of the newest points the polling fallback fetches
// per round: enough to refresh the status line, no matter how far behind.
const pollPoints = 8

// attach follows job id live until it ends, prints its result and turns
// the job's end into the exit status. Ctrl-C (ctx ending) detaches without
// cancelling the job.
func (a *app) attach(ctx context.Context, c *client.Client, id string) error {
	job, err := a.follow(ctx, c, id)
	if errors.Is(err, errDetached) {
		fmt.Fprintf(a.env.Stderr, "\ndetached from job %s; it keeps running.\n"+
			"  re-attach: gantry watch %s\n  cancel:    gantry cancel %s\n", id, id, id)
		return &exitError{code: exitDetached}
	}
	if err != nil {
		return err
	}
	if err := WriteResult(a.env.Stdout, job); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	if code := JobExitCode(job); code != exitOK {
		return &exitError{code: code}
	}
	return nil
}

// follow shows the job live and returns it once terminal. The live stream
// is preferred; if it drops before the "final" frame, polling takes over so
// the final metrics are still shown.
func (a *app) follow(ctx context.Context, c *client.Client, id string) (apiv1.Job, error) {
	v := newLiveView(a.env)
	defer v.startTicker()()
	var final bool
	werr := c.Watch(ctx, id, func(f apiv1.Frame) error {
		v.frame(f)
		if f.Type == apiv1.FrameFinal {
			final = true
		}
		return nil
	})
	switch {
	case final && lifecycle.IsTerminalName(v.current().State):
		v.finish()
		return v.current(), v.error()
	case ctx.Err() != nil:
		v.leave()
		return apiv1.Job{}, errDetached
	case errors.Is(werr, client.ErrUnknownJob):
		v.breakLine()
		return apiv1.Job{}, errNoJob(id)
	}
	v.breakLine()
	reason := "the server closed it before the job ended"
	if werr != nil {
		reason = safeError(werr)
	}
	if !final {
		fmt.Fprintf(a.env.Stderr, "gantry: live stream lost (%s); polling until the job ends\n", reason)
	}
	job, err := a.poll(ctx, c, id, v)
	if err != nil {
		return apiv1.Job{}, err
	}
	v.finish()
	return job, v.error()
}

// poll reads the job every PollInterval until it is terminal, refreshing
// the view with its newest points. Transient failures (a leader change, a
// restarting controller) are reported once each and retried; a 4xx answer
// ends the wait, since asking again will not change it.
func (a *app) poll(ctx context.Context, c *client.Client, id string, v *liveView) (apiv1.Job, error) {
	var lastErr string
	t := time.NewTicker(a.env.PollInterval)
	defer t.Stop()
	for {
		job, err := c.Job(ctx, id)
		if err == nil {
			err = a.pollPoints(ctx, c, job, v)
		}
		var apiErr *client.APIError
		switch {
		case ctx.Err() != nil:
			v.leave()
			return apiv1.Job{}, errDetached
		case errors.Is(err, client.ErrNotFound):
			v.breakLine()
			return apiv1.Job{}, errNoJob(id) // gone while we watched
		case errors.As(err, &apiErr) && apiErr.Status < http.StatusInternalServerError:
			return apiv1.Job{}, err
		case err != nil:
			if msg := a.describe(ctx, err); msg != lastErr {
				v.breakLine()
				fmt.Fprintf(a.env.Stderr, "gantry: %s (retrying)\n", msg)
				lastErr = msg
			}
		default:
			v.job(job)
			if lifecycle.IsTerminalName(job.State) {
				return job, nil
			}
		}
		select {
		case <-ctx.Done():
			v.leave()
			return apiv1.Job{}, errDetached
		case <-t.C:
		}
	}
}

// pollPoints fetches the newest few points the view has not seen.
func (a *app) pollPoints(ctx context.Context, c *client.Client, job apiv1.Job, v *liveView) error {
	seen := v.lastSeq()
	if job.LastSeq <= seen {
		return nil
	}
	after := seen
	if job.LastSeq-seen > pollPoints {
		after = job.LastSeq - pollPoints
	}
	page, err := c.Metrics(ctx, job.ID, after, pollPoints)
	if err != nil {
		return err
	}
	v.points(page.Points)
	return nil
}
