// Command gantry is the command line client of a Gantry cluster: it
// submits training jobs, follows them live and inspects jobs, nodes and the
// controller cluster. The commands live in package internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/gantry-ml/gantry/cmd/gantry/internal/cli"
)

func main() {
	// Ctrl-C ends the context: an attached view detaches, the job runs on.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], cli.OSEnv())
	stop()
	os.Exit(code)
}
