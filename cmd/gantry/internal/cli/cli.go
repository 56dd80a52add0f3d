// Package cli implements the gantry command line: job submission with a
// live view, job and node listings, logs and cluster status. Commands talk
// to a controller through controller/client; rendering lives in plain
// functions (render.go) so it is tested without a terminal.
package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/gantry-ml/gantry/controller/client"
)

// Environment variables the CLI reads.
const (
	EnvAddr  = "GANTRY_ADDR"
	EnvToken = "GANTRY_TOKEN"
	// DefaultAddr is the controller's default HTTP address (docs/ARCHITECTURE.md).
	DefaultAddr = "http://127.0.0.1:7480"
)

// Exit codes besides a job's own (`gantry run` and `watch` exit with the
// job's status once it ends). They are documented in `gantry --help`
// (exitCodesHelp) and README.md; scripts depend on them, so a change here
// is a breaking change.
const (
	exitOK          = 0
	exitFailure     = 1   // the job failed, or any failure not listed below
	exitUsage       = 2   // bad command line or spec, ambiguous job
	exitNotFound    = 3   // no job with that id, id prefix or name
	exitUnavailable = 4   // controller unreachable, or answering 5xx after the client's retries
	exitDetached    = 130 // Ctrl-C, as shells report SIGINT
)

// exitCodesHelp is the exit status table of `gantry --help`.
const exitCodesHelp = `Exit status:
  0    success
  1    the job failed (run and watch exit with the job's own code), or another failure
  2    usage: a bad command line or spec, or an ambiguous job id prefix or name
  3    not found: no job with that id, id prefix or name
  4    the controller is unreachable or unavailable (network error, 5xx)
  130  interrupted (Ctrl-C); a job being watched keeps running`

// watchIdleTimeout makes a silent live stream count as lost, so the
// attached view falls back to polling instead of hanging on a half-open
// connection to a dead controller.
const watchIdleTimeout = 2 * time.Minute

// Env is the process environment the CLI runs in; tests substitute buffers
// and fake clocks.
type Env struct {
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
	// TTY makes the live view redraw one status line instead of printing
	// plain lines.
	TTY bool
	// Width returns the terminal width in columns, 0 when unknown.
	Width func() int
	// Height returns the terminal height in lines, 0 when unknown; the
	// live panel never grows taller, since it could not be redrawn.
	Height func() int
	// Now is the clock for ages and output pacing.
	Now func() time.Time
	// PollInterval paces `logs -f` and the live view's polling fallback.
	PollInterval time.Duration
}

// OSEnv is the Env of a real process.
func OSEnv() Env {
	_, _, tty := termSize(os.Stdout)
	return Env{
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		Getenv: os.Getenv,
		TTY:    tty && os.Getenv("TERM") != "dumb",
		// Asked on every redraw, so that a resized window is followed.
		Width: func() int {
			cols, _, _ := termSize(os.Stdout)
			return cols
		},
		Height: func() int {
			_, rows, _ := termSize(os.Stdout)
			return rows
		},
		Now:          time.Now,
		PollInterval: time.Second,
	}
}

func (e Env) withDefaults() Env {
	if e.Stdout == nil {
		e.Stdout = io.Discard
	}
	if e.Stderr == nil {
		e.Stderr = io.Discard
	}
	if e.Getenv == nil {
		e.Getenv = func(string) string { return "" }
	}
	if e.Width == nil {
		e.Width = func() int { return 0 }
	}
	if e.Height == nil {
		e.Height = func() int { return 0 }
	}
	if e.Now == nil {
		e.Now = time.Now
	}
	if e.PollInterval <= 0 {
		e.PollInterval = time.Second
	}
	return e
}

// exitError carries an exit status; a nil err means the message was
// already printed.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// app is one invocation's state, shared by the commands.
type app struct {
	env     Env
	addr    string
	started bool // a command's RunE began: later errors are not usage errors
}

// Main runs the CLI with args (without the program name) and returns the
// process exit status. ctx ending (Ctrl-C in main) detaches from a live
// view or stops a follow.
func Main(ctx context.Context, args []string, env Env) int {
	a := &app{env: env.withDefaults()}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(a.env.Stdout)
	root.SetErr(a.env.Stderr)
	return a.exitCode(ctx, root.ExecuteContext(ctx))
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "gantry",
		Short: "Run and watch training jobs on a Gantry cluster",
		Long: "gantry submits training jobs to a Gantry controller and shows them live.\n\n" +
			"The controller address comes from --addr, else $" + EnvAddr + ", else " + DefaultAddr +
			";\na bearer token from $" + EnvToken + "; for https:// controllers, $" + client.EnvCA +
			"\nnames a PEM CA bundle trusted besides the system roots.\n\n" +
			"A job is given by its id, a unique prefix of its id, or its name (the most recent\n" +
			"job of that name).\n\n" + exitCodesHelp,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			a.started = true
			return nil
		},
	}
	root.PersistentFlags().StringVar(&a.addr, "addr", cmp.Or(a.env.Getenv(EnvAddr), DefaultAddr),
		"controller address (env "+EnvAddr+")")
	root.AddCommand(
		a.runCmd(), a.watchCmd(), a.psCmd(), a.statusCmd(), a.eventsCmd(), a.logsCmd(),
		a.cancelCmd(), a.nodesCmd(), a.clusterCmd(),
	)
	return root
}

func (a *app) client() *client.Client {
	opts := []client.Option{client.WithWatchIdleTimeout(watchIdleTimeout)}
	if tok := a.env.Getenv(EnvToken); tok != "" {
		opts = append(opts, client.WithToken(tok))
	}
	return client.New(a.addr, opts...)
}

// exitCode prints err, if any, and picks the exit status.
func (a *app) exitCode(ctx context.Context, err error) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(a.env.Stderr, "gantry: %s\n", a.describe(ctx, ee.err))
		}
		return ee.code
	}
	if !a.started {
		fmt.Fprintf(a.env.Stderr, "gantry: %s\nRun 'gantry --help' for usage.\n", safeError(err))
		return exitUsage
	}
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		fmt.Fprintln(a.env.Stderr, "gantry: interrupted")
		return exitDetached
	}
	fmt.Fprintf(a.env.Stderr, "gantry: %s\n", a.describe(ctx, err))
	return errorExitCode(ctx, err)
}

// errorExitCode classifies an error that carries no exit status of its
// own: scripts tell "the controller is down, try later" (4) and "no such
// job" (3) apart from everything else (1).
func errorExitCode(ctx context.Context, err error) int {
	var apiErr *client.APIError
	switch {
	case errors.As(err, &apiErr) && apiErr.Status >= http.StatusInternalServerError:
		// The client already retried reads answered 503 with Retry-After.
		return exitUnavailable
	case errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound:
		return exitNotFound
	case errors.As(err, &apiErr):
		return exitFailure
	case isTransportError(err) && ctx.Err() == nil:
		return exitUnavailable
	}
	return exitFailure
}

// describe adds the controller address to transport failures, the most
// common of which is a controller that is not running where we looked.
func (a *app) describe(ctx context.Context, err error) string {
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) && isTransportError(err) && ctx.Err() == nil {
		return termSafe(fmt.Sprintf("cannot reach the controller at %s (set --addr or $%s): %v", a.addr, EnvAddr, err))
	}
	if apiErr != nil && apiErr.Status >= http.StatusInternalServerError {
		return termSafe(fmt.Sprintf("the controller at %s is unavailable, try again later: %v", a.addr, err))
	}
	// Server errors quote names and what jobs wrote.
	return safeError(err)
}

// isTransportError reports whether err is a failure to talk to the
// controller at all: what http.Client (*url.Error) and the WebSocket dial
// (*net.OpError) return. Not any net.Error: *fs.PathError has a Timeout
// method too, and a missing spec file must not read as a dead controller.
func isTransportError(err error) bool {
	var urlErr *url.Error
	var opErr *net.OpError
	var dnsErr *net.DNSError
	return errors.As(err, &urlErr) || errors.As(err, &opErr) || errors.As(err, &dnsErr)
}
