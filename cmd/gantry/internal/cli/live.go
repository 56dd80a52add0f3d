package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// Output pacing. A terminal line is cheap to redraw but flickers above
// ~10 Hz; plain lines end up in CI logs, where one a second is plenty.
const (
	ttyRedrawEvery = 100 * time.Millisecond
	plainLineEvery = time.Second
)

// liveView turns frames into terminal output: a redrawn status line on a
// TTY, plain lines otherwise. State changes always get a line of their own.
type liveView struct {
	out   io.Writer
	tty   bool
	width func() int
	now   func() time.Time

	p         Progress
	lastDraw  time.Time
	lastPlain string
	onScreen  bool // a TTY status line is drawn and the cursor sits after it
	err       error
}

func newLiveView(env Env) *liveView {
	return &liveView{out: env.Stdout, tty: env.TTY, width: env.Width, now: env.Now}
}

// frame folds one frame in and updates the output.
func (v *liveView) frame(f apiv1.Frame) {
	v.update(v.p.Apply(f))
}

// job folds in a polled job record.
func (v *liveView) job(j apiv1.Job) {
	v.update(v.p.SetJob(j))
}

// points folds in polled points.
func (v *liveView) points(pts []apiv1.Point) {
	v.p.AddPoints(pts)
	v.update(false)
}

func (v *liveView) update(stateChanged bool) {
	now := v.now()
	// A terminal state is announced by the result that follows.
	if stateChanged && !apiv1.IsTerminal(v.p.Job.State) {
		v.breakLine()
		v.printf("%s\n", stateLine(v.p.Job))
	}
	if v.tty {
		if stateChanged || now.Sub(v.lastDraw) >= ttyRedrawEvery {
			v.redraw()
			v.lastDraw = now
		}
		return
	}
	if now.Sub(v.lastDraw) < plainLineEvery {
		return
	}
	// The result follows a terminal state.
	if apiv1.IsTerminal(v.p.Job.State) {
		return
	}
	line := ProgressLine(&v.p, 0, false)
	if line == v.lastPlain || line == v.p.Job.State {
		return
	}
	v.printf("%s\n", line)
	v.lastPlain = line
	v.lastDraw = now
}

func (v *liveView) redraw() {
	v.printf("\r\033[K%s", ProgressLine(&v.p, v.width(), true))
	v.onScreen = true
}

// breakLine ends a drawn status line, so that what follows (a message, the
// result) starts on a line of its own.
func (v *liveView) breakLine() {
	if v.onScreen {
		v.printf("\n")
		v.onScreen = false
	}
}

// finish draws the last status line for good.
func (v *liveView) finish() {
	if v.tty && v.onScreen {
		v.redraw()
	}
	v.breakLine()
}

func (v *liveView) printf(format string, args ...any) {
	if v.err != nil {
		return
	}
	_, v.err = fmt.Fprintf(v.out, format, args...)
}

// stateLine announces a state: "job j-1 running on gpu-a (GPUs 0,1)".
func stateLine(j apiv1.Job) string {
	s := fmt.Sprintf("job %s %s", j.ID, j.State)
	if j.Node != "" {
		s += " on " + j.Node
		if len(j.GPUs) > 0 {
			s += " (GPUs " + joinInts(j.GPUs) + ")"
		}
	}
	return s
}
