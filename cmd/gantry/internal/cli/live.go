package cli

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/lifecycle"
)

// Output pacing. A terminal panel is cheap to redraw but flickers above
// ~10 Hz; plain lines end up in CI logs, where one a second is plenty.
const (
	ttyRedrawEvery = 100 * time.Millisecond
	plainLineEvery = time.Second
	// ttyClockEvery refreshes a quiet panel so that its elapsed time moves.
	ttyClockEvery = time.Second
)

// ANSI control sequences of the live panel.
const (
	ansiEraseLine = "\033[K" // erase to the end of the line
	ansiEraseDown = "\033[J" // erase from the cursor to the end of the screen
)

// ansiUp moves the cursor up n lines.
func ansiUp(n int) string { return fmt.Sprintf("\033[%dA", n) }

// liveView turns frames into terminal output: a multi-line panel redrawn in
// place on a TTY (see Panel), plain lines otherwise. Non-terminal state
// changes always get a line of their own, above the panel.
//
// Frames arrive on the watch goroutine while a ticker redraws a quiet
// panel, so every method takes mu.
type liveView struct {
	out    io.Writer
	tty    bool
	width  func() int
	height func() int
	now    func() time.Time

	mu        sync.Mutex
	p         Progress
	lastDraw  time.Time
	lastPlain string
	dirty     bool // the panel on screen is older than p
	// panelLines is how many lines of panel sit above the cursor, which is
	// always at the start of the line below the panel.
	panelLines int
	err        error
}

func newLiveView(env Env) *liveView {
	env = env.withDefaults()
	return &liveView{out: env.Stdout, tty: env.TTY, width: env.Width, height: env.Height, now: env.Now}
}

// frame folds one frame in and updates the output.
func (v *liveView) frame(f apiv1.Frame) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.update(v.p.Apply(f))
}

// job folds in a polled job record.
func (v *liveView) job(j apiv1.Job) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.update(v.p.SetJob(j))
}

// points folds in polled points.
func (v *liveView) points(pts []apiv1.Point) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.p.AddPoints(pts)
	v.update(false)
}

// current returns the job as the view knows it.
func (v *liveView) current() apiv1.Job {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.p.Job
}

// lastSeq is the newest point seq the view has.
func (v *liveView) lastSeq() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.p.LastSeq()
}

// tick redraws a TTY panel whose last update was held back by the rate
// limit, and once a second a running job's panel for its clock.
func (v *liveView) tick() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.tty {
		return
	}
	since := v.now().Sub(v.lastDraw)
	if (v.dirty && since >= ttyRedrawEvery) ||
		(v.panelLines > 0 && since >= ttyClockEvery && !lifecycle.IsTerminalName(v.p.Job.State)) {
		v.redraw()
	}
}

func (v *liveView) update(stateChanged bool) {
	now := v.now()
	// A terminal state is announced by the result that follows.
	if stateChanged && !lifecycle.IsTerminalName(v.p.Job.State) {
		v.erasePanel()
		v.printf("%s\n", stateLine(v.p.Job))
	}
	if v.tty {
		v.dirty = true
		if stateChanged || now.Sub(v.lastDraw) >= ttyRedrawEvery {
			v.redraw()
		}
		return
	}
	if now.Sub(v.lastDraw) < plainLineEvery {
		return
	}
	// The result follows a terminal state.
	if lifecycle.IsTerminalName(v.p.Job.State) {
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

// redraw replaces the panel on screen with a fresh one, in one write so
// that the terminal never shows half a panel. Lines are rewritten over the
// old ones rather than erased first, which avoids flicker; the tail of a
// longer old line and any old lines below are erased.
func (v *liveView) redraw() {
	var b strings.Builder
	if v.panelLines > 0 {
		b.WriteString(ansiUp(v.panelLines))
	}
	lines := Panel(&v.p, v.width(), v.height(), v.now())
	for _, l := range lines {
		b.WriteString("\r" + l + ansiEraseLine + "\n")
	}
	b.WriteString(ansiEraseDown)
	v.printf("%s", b.String())
	v.panelLines = len(lines)
	v.lastDraw = v.now()
	v.dirty = false
}

// erasePanel removes the panel, so that a message can be printed where it
// was; the next update draws the panel again below the message.
func (v *liveView) erasePanel() {
	if v.panelLines > 0 {
		v.printf("%s\r%s", ansiUp(v.panelLines), ansiEraseDown)
		v.panelLines = 0
	}
}

// breakLine clears the way for a message from outside the view (a lost
// stream, a retry): the panel is erased and comes back with the next update.
func (v *liveView) breakLine() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.erasePanel()
}

// leave ends the view and leaves the last panel on screen, above whatever
// is printed next (the detach notice).
func (v *liveView) leave() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.panelLines = 0
}

// finish draws the panel one last time, with the final values, and leaves
// it on screen above the result.
func (v *liveView) finish() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.tty && v.dirty {
		v.redraw()
	}
	v.panelLines = 0
}

// startTicker starts the redraws of a quiet TTY panel (see tick) and
// returns the func that stops them, which waits until they have.
func (v *liveView) startTicker() (stop func()) {
	if !v.tty {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(ttyRedrawEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				v.tick()
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// error is the first write error of the view.
func (v *liveView) error() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
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
