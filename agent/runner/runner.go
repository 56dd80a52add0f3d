// Package runner launches one training job as a process group and manages
// its lifetime: environment, log file, graceful cancel with SIGKILL
// escalation, a maximum duration, and clean-up of whatever the job leaves
// behind in its group.
//
// The job runs in its own session (and so its own process group) so that an
// agent restart does not take it down, and so that cancel reaches every
// process the job spawned, whether /bin/sh exec'd the command or forked it.
// The group's leader is a small supervisor (see supervisor.go) that records
// the job's exit status in a file, so that an agent restarted while the job
// ran can re-adopt it (Adopt) and still report how it ended.
package runner

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gantry-ml/gantry/agent/jobcgroup"
	"github.com/gantry-ml/gantry/lifecycle"
)

// DefaultKillGrace is the SIGTERM → SIGKILL delay when Spec.KillGrace is 0.
const DefaultKillGrace = 10 * time.Second

// shell runs the job's command line.
const shell = "/bin/sh"

// pollInterval is how often the group is checked for live members while a
// cancelled job's leftovers use their grace period.
const pollInterval = 20 * time.Millisecond

// killSettle bounds how long Done waits, after the final SIGKILL, for group
// members that do not die at once (a process in uninterruptible sleep in a GPU
// driver can take seconds). Done must not hang on them forever.
const killSettle = 2 * time.Second

// Errors returned by Start.
var (
	// ErrInvalidSpec is wrapped by every error about a malformed Spec.
	ErrInvalidSpec = errors.New("runner: invalid spec")
	// ErrStart is wrapped when the job's process could not be started
	// (missing workdir, unopenable log file, exec failure).
	ErrStart = errors.New("runner: cannot start job")
)

// Errors in Result.Err when the exit status of a job is not known. Their
// text is meant for the user: it ends up as the job's error.
var (
	// ErrVanished means a re-adopted job's process was gone and its
	// supervisor had recorded no exit status.
	ErrVanished = errors.New("process vanished while the agent was down; exit status unknown")
	// ErrRebooted means the host rebooted since the job started, and its
	// exit status was not recorded before.
	ErrRebooted = errors.New("the host rebooted while the job ran; exit status unknown")
	// ErrNoStatus means the job's supervisor exited without recording the
	// job's exit status.
	ErrNoStatus = errors.New("the job's supervisor recorded no exit status; exit status unknown")
	// ErrBadStatus means the status file exists but cannot be understood.
	ErrBadStatus = errors.New("runner: unreadable exit status file")
	// ErrNoProc means /proc cannot identify the process, so it could not
	// be re-adopted after an agent restart.
	ErrNoProc = errors.New("runner: cannot identify process in /proc")
)

// Spec is what the runner needs to launch one job.
type Spec struct {
	// JobID is the run id (lifecycle.RunID); the job id in it is exported
	// to the job as GANTRY_JOB_ID, the attempt as GANTRY_ATTEMPT.
	JobID string
	// Setup is optional shell run before Run in the same shell with "set -e"
	// semantics: a failing setup command fails the job and Run never runs.
	Setup string
	// Run is the job's command line, run with /bin/sh -c.
	Run string
	// JobDir is the job's own directory on the agent (logs, metrics). It is
	// the default Workdir, and a relative Workdir is resolved against it.
	JobDir string
	// Workdir is the job's working directory. Empty means JobDir, and if
	// that is empty too, the agent's own working directory.
	Workdir string
	// Env is the user's environment from the job spec. It overrides the
	// agent's environment and is overridden by the variables Gantry sets.
	Env map[string]string
	// GPUs are the NVML indices given to the job, exported as
	// CUDA_VISIBLE_DEVICES="0,3". Empty hides all GPUs
	// (CUDA_VISIBLE_DEVICES=""), never exposes all of them.
	GPUs []int
	// Rendezvous are the variables of a multi-node job's rank (MASTER_ADDR,
	// NODE_RANK, …, see agent.rendezvousEnv), set after the spec's own so
	// a spec cannot point a rank elsewhere. Empty for a single-node job.
	Rendezvous map[string]string
	// MetricsFile is exported as GANTRY_METRICS_FILE.
	MetricsFile string
	// PythonPath, when set, is appended to the job's PYTHONPATH (after
	// the spec's own, so a job can bring its own version of what is
	// there): the directory of the agent's metrics helper.
	PythonPath string
	// LogFile receives the job's stdout and stderr, appended. Empty
	// discards them.
	LogFile string
	// KillGrace is the delay between SIGTERM and SIGKILL on cancel;
	// DefaultKillGrace when 0.
	KillGrace time.Duration
	// MaxDuration cancels the job with lifecycle.ReasonMaxDuration once it has run
	// this long; 0 means no limit.
	MaxDuration time.Duration
	// StatusFile is where the job's supervisor records how the job ended.
	// Empty means StatusFileName in JobDir, or, without a JobDir, a
	// temporary file removed once read. Any old file there is removed at
	// Start. Keep it (Process.StatusFile) to re-adopt the job.
	StatusFile string
	// User is who the job runs as: its supervisor, its shell and everything
	// they start. nil runs it as the agent's own user. It takes effect
	// only when the agent runs as root, the one case where it can switch
	// users; the agent decides (see LookupUser).
	User *User
	// OnCancel, if not nil, is told when a cancel has sent SIGTERM, with
	// the reason and the time, so that the caller can persist it and a
	// later Adopt can finish the cancel. It is called once, like onEvent:
	// never concurrently with it, and before Done is closed.
	OnCancel func(reason lifecycle.ExitReason, at time.Time)
	// Cgroup, when not nil, is the job run's own cgroup: Start creates it
	// and starts the supervisor directly inside it (clone3 with
	// CLONE_INTO_CGROUP, so not even an early fork escapes), and whatever
	// is left in it when the job ends is killed and the group removed. A
	// process that leaves the job's session and group (a daemon's double
	// fork) stays in it. If it cannot be created, or the kernel cannot
	// start a process into it, the job runs without it and an
	// lifecycle.EventNoCgroup event says so.
	Cgroup *jobcgroup.Group
}

// Result is how a job ended.
type Result struct {
	// ExitCode is the main process's exit status; nil when it was killed by
	// a signal or could not be waited for.
	ExitCode *int
	// Signal names the signal that killed the main process ("SIGTERM"),
	// empty if it exited normally.
	Signal string
	// Reason is lifecycle.ReasonCancelled or ReasonMaxDuration when the agent stopped
	// the job, empty when the job ended by itself.
	Reason lifecycle.ExitReason
	// Err is set when the exit status is unknown or the job could not run:
	// waiting for the process failed (ExitCode and Signal may still be
	// valid, but the rest of the group may not have been killed), the shell
	// could not be started (wraps ErrStart), or no status was recorded
	// (ErrVanished, ErrRebooted, ErrNoStatus).
	Err error
	// EndedAt is when the job's shell ended, as its supervisor saw it; zero
	// when unknown. For a job that ended while no agent watched it, it is
	// earlier than the moment the Result is produced.
	EndedAt time.Time
}

// Event is something about the job's lifetime worth telling the user.
type Event struct {
	// Kind is lifecycle.EventKillEscalated, EventOrphansKilled or
	// EventNoCgroup.
	Kind lifecycle.EventKind
	// Message is human readable, e.g. "SIGKILL sent after kill_grace 10s".
	Message string
}

// Process is a running (or finished) job. Its methods are safe for
// concurrent use.
type Process struct {
	cmd        *exec.Cmd // nil for an adopted process, which is not our child
	pid        int
	ident      Identity
	statusFile string
	tempStatus bool // statusFile is ours to remove once read
	killGrace  time.Duration
	onEvent    func(Event)
	onCancel   func(reason lifecycle.ExitReason, at time.Time)
	// cgroup is the job run's cgroup; nil when it runs without one.
	cgroup *jobcgroup.Group

	done   chan struct{}
	result Result // written once before done is closed

	mu sync.Mutex
	// exited is set once the main process has exited and the group has been
	// cleaned up, just before it is reaped. After that its pid (and so the
	// group id) may be reused by an unrelated process, so no signal may be
	// sent once exited is true.
	exited bool
	// leaderExited is set once the main process has exited: from then on
	// the job has ended by itself and a late Cancel must not relabel it.
	leaderExited bool
	reason       lifecycle.ExitReason // first cancel reason; "" if never cancelled
	killAt       time.Time            // when a cancel escalates to SIGKILL
	escalated    bool                 // SIGKILL was sent to the group
	killTimer    *time.Timer
	maxDurTimer  *time.Timer
	// events counts event deliveries in flight from timer goroutines, so
	// that every event is delivered before Done is closed.
	events sync.WaitGroup
	evMu   sync.Mutex // serialises onEvent calls
}

// Start launches the job and returns at once. onEvent (may be nil) receives
// lifetime events; it is called from the runner's goroutines, never
// concurrently with itself, and always before Done is closed; it should
// return quickly.
func Start(spec Spec, onEvent func(Event)) (*Process, error) {
	if err := validate(spec); err != nil {
		return nil, err
	}
	statusFile, tempStatus, err := prepareStatusFile(spec)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrStart, spec.JobID, err)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("%w %q: %w", ErrStart, spec.JobID, err), removeTemp(statusFile, tempStatus))
	}
	defer readyR.Close() // read-only; its close error means nothing
	newCmd := func() *exec.Cmd {
		cmd := exec.Command(selfExe)
		cmd.Args = []string{supervisorName, supervisorArg, statusFile, strconv.Itoa(readyFD),
			shell, "-c", script(spec.Setup, spec.Run)}
		cmd.ExtraFiles = []*os.File{readyW} // becomes readyFD
		cmd.Dir = workdir(spec)
		cmd.Env = buildEnv(spec)
		// Setsid makes the supervisor, and so the job, a session and
		// process-group leader: an agent restart (SIGHUP/SIGTERM to the
		// agent's group) does not reach it, and cancel can signal every
		// process of the job through the group.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: spec.User.credential()}
		return cmd
	}
	cmd := newCmd()

	var logFile *os.File
	if spec.LogFile != "" {
		logFile, err = openLog(spec.LogFile, spec.User)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("%w %q: open log file: %w", ErrStart, spec.JobID, err),
				removeTemp(statusFile, tempStatus))
		}
		// The child gets the file itself, not a pipe: with a pipe, Wait
		// would block until every grandchild holding its write end exits,
		// and the job would die of SIGPIPE once the agent restarted.
		cmd.Stdout = logFile
		cmd.Stderr = logFile
	}

	cgroup, cgErr := spec.Cgroup, error(nil)
	if cgroup != nil {
		cgErr = startInCgroup(cmd, cgroup)
		if cgErr != nil {
			// Run it as it ran before cgroups: the job matters more
			// than the means to find its escapees.
			cgroup = nil
			out := cmd.Stdout
			cmd = newCmd()
			cmd.Stdout, cmd.Stderr = out, out
			err = startCmd(cmd)
		}
	} else {
		err = startCmd(cmd)
	}
	if logFile != nil {
		// The child has its own descriptor now. Nothing was ever written
		// through ours, so closing it cannot lose data and its error has
		// nothing to report.
		_ = logFile.Close()
	}
	// Ours must go, or the read below would never see EOF.
	_ = readyW.Close()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("%w %q: %w", ErrStart, spec.JobID, err),
			removeTemp(statusFile, tempStatus))
	}

	pid := cmd.Process.Pid
	if err := awaitReady(readyR); err != nil {
		killGroup(pid, unix.SIGKILL)
		return nil, errors.Join(fmt.Errorf("%w %q: %w", ErrStart, spec.JobID, err), reap(cmd),
			removeCgroup(cgroup), removeTemp(statusFile, tempStatus))
	}
	// The child is not reaped before wait() runs, so /proc/PID is ours to
	// read even if it has exited already.
	ident, err := identify(pid)
	if err != nil {
		// Without an identity the job could not be told apart from a
		// later process with its pid after an agent restart; do not run
		// what cannot be tracked.
		killGroup(pid, unix.SIGKILL)
		return nil, errors.Join(fmt.Errorf("%w %q: %w", ErrStart, spec.JobID, err), reap(cmd),
			removeCgroup(cgroup), removeTemp(statusFile, tempStatus))
	}

	p := newProcess(ident, statusFile, spec.KillGrace, onEvent, spec.OnCancel)
	p.cmd = cmd
	p.tempStatus = tempStatus
	p.cgroup = cgroup
	if cgErr != nil {
		p.emit(Event{Kind: lifecycle.EventNoCgroup, Message: fmt.Sprintf(
			"the job runs without its own cgroup (%v): a process of it that leaves its session survives its end", cgErr)})
	}
	if spec.MaxDuration > 0 {
		p.mu.Lock()
		p.maxDurTimer = time.AfterFunc(spec.MaxDuration, func() { p.Cancel(lifecycle.ReasonMaxDuration) })
		p.mu.Unlock()
	}
	go p.wait()
	return p, nil
}

// startCmd starts a command; tests replace it to make a start fail.
var startCmd = (*exec.Cmd).Start

// startInCgroup creates the job's cgroup and starts cmd directly inside it.
// On failure the group is removed again, and the error says why; the
// command returned then is unusable (the caller starts a fresh one).
func startInCgroup(cmd *exec.Cmd, g *jobcgroup.Group) error {
	dir, err := g.Create(time.Now().Add(killSettle))
	if err != nil {
		return err
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(dir.Fd())
	err = startCmd(cmd)
	// The child is in the group, or was never created: the descriptor
	// is not needed any more; a read-only directory's close loses nothing.
	_ = dir.Close()
	if err != nil {
		// clone3 or CLONE_INTO_CGROUP unsupported (Linux < 5.7), or the
		// start failed for a reason the plain start will report again.
		return errors.Join(fmt.Errorf("start in cgroup %s: %w", g.Name(), err),
			g.Remove(time.Now().Add(killSettle)))
	}
	return nil
}

// removeCgroup kills what is in a job's cgroup and removes it; nil is none.
func removeCgroup(g *jobcgroup.Group) error {
	if g == nil {
		return nil
	}
	return g.Remove(time.Now().Add(killSettle))
}

// readyTimeout bounds the wait for the supervisor to start the job's shell;
// it takes milliseconds, but a loaded host must not fail jobs spuriously.
const readyTimeout = 30 * time.Second

// awaitReady waits for the supervisor's word that the job's shell runs.
func awaitReady(r *os.File) error {
	if err := r.SetReadDeadline(time.Now().Add(readyTimeout)); err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	msg, err := io.ReadAll(io.LimitReader(r, 4096))
	switch {
	case err != nil:
		return fmt.Errorf("supervisor did not start the job: %w", err)
	case string(msg) == readyOK:
		return nil
	case len(msg) == 0:
		return errors.New("supervisor exited before starting the job")
	}
	return errors.New(string(msg))
}

// reap waits for a supervisor that was killed or failed during Start.
func reap(cmd *exec.Cmd) error {
	err := cmd.Wait()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return nil // it ended as expected; Start reports why
	}
	return err
}

// newProcess returns a Process for a job that is running now.
func newProcess(ident Identity, statusFile string, killGrace time.Duration, onEvent func(Event),
	onCancel func(lifecycle.ExitReason, time.Time)) *Process {
	if killGrace == 0 {
		killGrace = DefaultKillGrace
	}
	return &Process{
		pid:        ident.PID,
		ident:      ident,
		statusFile: statusFile,
		killGrace:  killGrace,
		onEvent:    onEvent,
		onCancel:   onCancel,
		done:       make(chan struct{}),
	}
}

// prepareStatusFile picks the status file and removes a stale one, so that
// the status read at the end is this run's.
func prepareStatusFile(spec Spec) (path string, temp bool, err error) {
	switch {
	case spec.StatusFile != "":
		path = spec.StatusFile
	case spec.JobDir != "":
		path = filepath.Join(spec.JobDir, StatusFileName)
	default:
		f, err := os.CreateTemp("", "gantry-exit-status-*.json")
		if err != nil {
			return "", false, fmt.Errorf("status file: %w", err)
		}
		path, temp = f.Name(), true
		if err := f.Close(); err != nil {
			return "", false, errors.Join(fmt.Errorf("status file: %w", err), os.Remove(path))
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", false, fmt.Errorf("remove old status file: %w", err)
	}
	return path, temp, nil
}

// removeTemp removes a temporary status file; it is a no-op otherwise.
func removeTemp(path string, temp bool) error {
	if !temp {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove status file: %w", err)
	}
	return nil
}

// PID is the job's main process id (its supervisor's), which is also its
// process group id and session id.
func (p *Process) PID() int { return p.pid }

// Identity identifies the job's main process for a later Adopt.
func (p *Process) Identity() Identity { return p.ident }

// StatusFile is where the job's exit status is recorded, for a later Adopt.
func (p *Process) StatusFile() string { return p.statusFile }

// Cgroup is the job run's cgroup; nil when it runs without one.
func (p *Process) Cgroup() *jobcgroup.Group { return p.cgroup }

// Done is closed when the job has ended, its group has been cleaned up, and
// every event has been delivered.
func (p *Process) Done() <-chan struct{} { return p.done }

// Result is how the job ended. It blocks until Done is closed.
func (p *Process) Result() Result {
	<-p.done
	return p.result
}

// Cancel stops the job: SIGTERM to its whole process group, then SIGKILL to
// the group if anything of it is still alive after KillGrace. reason is
// reported in Result.Reason (lifecycle.ReasonCancelled when empty). The first call
// wins; later calls, and calls after the job has exited, do nothing.
func (p *Process) Cancel(reason lifecycle.ExitReason) {
	if reason == "" {
		reason = lifecycle.ReasonCancelled
	}
	p.mu.Lock()
	if p.leaderExited || p.reason != "" {
		p.mu.Unlock()
		return
	}
	at := time.Now()
	p.reason = reason
	p.killAt = at.Add(p.killGrace)
	p.signalGroup(unix.SIGTERM)
	p.killTimer = time.AfterFunc(p.killGrace, p.escalate)
	if p.onCancel == nil {
		p.mu.Unlock()
		return
	}
	// Registered under mu while the leader runs, like escalate's event:
	// the callback is over before Done.
	p.events.Add(1)
	p.mu.Unlock()

	defer p.events.Done()
	p.evMu.Lock()
	defer p.evMu.Unlock()
	p.onCancel(reason, at)
}

// escalate sends SIGKILL to a cancelled job's group once its grace is over.
func (p *Process) escalate() {
	p.mu.Lock()
	if p.exited {
		p.mu.Unlock()
		return
	}
	p.signalGroup(unix.SIGKILL)
	p.escalated = true
	// Registered under mu while !exited, so wait() cannot have passed its
	// events.Wait yet: the event is delivered before Done.
	p.events.Add(1)
	p.mu.Unlock()

	defer p.events.Done()
	p.emit(Event{
		Kind:    lifecycle.EventKillEscalated,
		Message: fmt.Sprintf("SIGKILL sent after kill_grace %s", p.killGrace),
	})
}

// wait runs for the life of a job we started and produces its Result.
func (p *Process) wait() {
	// Wait for the supervisor to exit without reaping it: while it is a
	// zombie its pid, and so the group id, cannot be reused, which makes
	// signalling the group safe until we reap it below.
	waitErr := waitExited(p.pid)
	if waitErr == nil {
		p.cleanGroup(true)
	}
	// Without waitid the group cannot be signalled safely any more (the
	// leader may already be reaped); the error is reported in Result.Err.

	reason := p.markExited()
	err := p.cmd.Wait()
	var res Result
	var exitErr *exec.ExitError
	if err == nil || errors.As(err, &exitErr) {
		res = p.statusResult(p.cmd.ProcessState)
		res.Err = joinErr(waitErr, res.Err)
	} else {
		res.Err = errors.Join(waitErr, fmt.Errorf("runner: wait for pid %d: %w", p.pid, err))
	}
	if err := removeTemp(p.statusFile, p.tempStatus); err != nil {
		res.Err = joinErr(res.Err, err)
	}
	p.dropCgroup()
	res.Reason = reason
	p.finish(res)
}

// killEscapees sends SIGKILL to whatever is left in the job's cgroup once its
// process group has been dealt with: processes that left the group (a
// daemon's double fork and setsid) but could not leave the cgroup. It says
// which it found, so the user learns that the job spawned them.
func (p *Process) killEscapees() {
	if p.cgroup == nil {
		return
	}
	pids, err := p.cgroup.Procs()
	var escaped []int
	for _, pid := range pids {
		state, pgrp, ok := procStat(pid)
		if ok && pgrp != p.pid && state != 'Z' && state != 'X' {
			escaped = append(escaped, pid)
		}
	}
	if kerr := p.cgroup.Kill(); kerr != nil {
		err = joinErr(err, kerr)
	}
	switch {
	case err != nil:
		p.emit(Event{Kind: lifecycle.EventOrphansKilled,
			Message: fmt.Sprintf("could not kill what is left in the job's cgroup: %v", err)})
	case len(escaped) > 0:
		p.emit(Event{Kind: lifecycle.EventOrphansKilled,
			Message: fmt.Sprintf("SIGKILL sent to %d process(es) that had left the job's process group but not its cgroup: %v",
				len(escaped), escaped)})
	}
}

// dropCgroup removes the job's cgroup once its processes are gone, killing
// any still there, within killSettle. A group that cannot be removed (a
// process stuck in the kernel) is reported; the next agent start sweeps it.
func (p *Process) dropCgroup() {
	if err := removeCgroup(p.cgroup); err != nil {
		p.emit(Event{Kind: lifecycle.EventOrphansKilled,
			Message: fmt.Sprintf("the job's cgroup could not be removed: %v", err)})
	}
}

// markExited records that the leader is gone for good (no signal may be
// sent any more), stops the timers and returns the cancel reason.
func (p *Process) markExited() lifecycle.ExitReason {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.leaderExited = true
	p.exited = true
	if p.killTimer != nil {
		p.killTimer.Stop()
	}
	if p.maxDurTimer != nil {
		p.maxDurTimer.Stop()
	}
	return p.reason
}

// finish publishes res once every event has been delivered.
func (p *Process) finish(res Result) {
	p.events.Wait()
	p.result = res
	close(p.done)
}

// statusResult is how the job ended according to its status file. ps is the
// supervisor's own end, used when the file is missing: a supervisor killed
// by a signal (the SIGKILL of a cancel's escalation, sent to the whole
// group) died with the job; one that exited without writing the file
// mirrored the job's status as a shell would, which is worth reporting
// along with the error.
func (p *Process) statusResult(ps *os.ProcessState) Result {
	st, err := readStatus(p.statusFile)
	if err == nil {
		return st.result()
	}
	code, sig := exitStatus(ps)
	if sig != "" {
		return Result{Signal: sig}
	}
	return Result{ExitCode: code, Err: fmt.Errorf("%w: %w", ErrNoStatus, err)}
}

// joinErr is errors.Join that keeps a single error unwrapped.
func joinErr(a, b error) error {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return errors.Join(a, b)
}

// cleanGroup deals with the rest of the group once the main process has
// exited. If a cancel is in progress, the remaining processes keep their
// grace period: with "sh -c" forking the trainer, sh dies on SIGTERM at once
// while the trainer may be saving a checkpoint. Otherwise the leftovers are
// orphans and are killed at once.
//
// leaderHeld says the leader is our unreaped zombie, which keeps the group
// id from being reused, so the group may be signalled blindly. For an
// adopted job the leader was reaped by init: the group id stays reserved
// only while a member lives, so it is signalled only when /proc shows one.
func (p *Process) cleanGroup(leaderHeld bool) {
	p.mu.Lock()
	p.leaderExited = true
	cancelling := p.reason != ""
	killAt := p.killAt
	p.mu.Unlock()
	// Last, either way: what left the group is still in the job's cgroup.
	defer p.killEscapees()

	if cancelling {
		// The escalate timer sends SIGKILL at killAt; here we only wait
		// for the group to empty, bounded so Done cannot hang.
		deadline := killAt.Add(killSettle)
		for time.Now().Before(deadline) {
			if len(liveGroupMembers(p.pid)) == 0 {
				break
			}
			time.Sleep(pollInterval)
		}
		if leaderHeld || len(liveGroupMembers(p.pid)) > 0 {
			killGroup(p.pid, unix.SIGKILL)
		}
		return
	}

	left := liveGroupMembers(p.pid)
	if leaderHeld || len(left) > 0 {
		killGroup(p.pid, unix.SIGKILL)
	}
	if len(left) > 0 {
		p.emit(Event{
			Kind: lifecycle.EventOrphansKilled,
			Message: fmt.Sprintf("main process exited; SIGKILL sent to %d leftover process(es) of its group: %v",
				len(left), left),
		})
	}
}

func (p *Process) emit(ev Event) {
	if p.onEvent == nil {
		return
	}
	p.evMu.Lock()
	defer p.evMu.Unlock()
	p.onEvent(ev)
}

// signalGroup signals the job's group while its leader has not been seen to
// exit (the caller holds mu and has checked). A leader we started is our
// unreaped child, which keeps the group id reserved. An adopted leader may
// have exited and been reaped by init a moment ago; then the group id stays
// reserved only while some member lives, so the group is signalled only
// when /proc shows one.
func (p *Process) signalGroup(sig unix.Signal) {
	if p.cmd == nil && len(liveGroupMembers(p.pid)) == 0 {
		return
	}
	killGroup(p.pid, sig)
}

// killGroup signals every process of group pgid. ESRCH (nobody left) is the
// expected outcome near the end of a job and not an error; nothing else can
// fail for a group we created and whose leader we have not reaped.
func killGroup(pgid int, sig unix.Signal) {
	_ = unix.Kill(-pgid, sig)
}

// waitExited blocks until process pid has exited, leaving it unreaped.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil {
			return nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return fmt.Errorf("runner: waitid pid %d: %w", pid, err)
	}
}

// exitStatus turns a finished process's state into an exit code or a signal
// name.
func exitStatus(ps *os.ProcessState) (*int, string) {
	if ps == nil {
		return nil, ""
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return nil, unix.SignalName(ws.Signal())
	}
	code := ps.ExitCode()
	return &code, ""
}

// liveGroupMembers lists the processes of group pgid that are not zombies.
// It reads /proc rather than probing with kill(-pgid, 0), which succeeds as
// long as the unreaped leader (or any zombie) is in the group.
func liveGroupMembers(pgid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		// Without /proc we cannot tell; assume none so callers fall
		// through to SIGKILL rather than wait out the whole grace.
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, pgrp, ok := procStat(pid)
		if !ok || pgrp != pgid || state == 'Z' || state == 'X' {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// procStat reads the state and process group of pid from /proc/pid/stat.
// ok is false if the process is gone or the file is unreadable.
func procStat(pid int) (state byte, pgrp int, ok bool) {
	data, err := os.ReadFile(statPath(pid))
	if err != nil {
		return 0, 0, false
	}
	return parseProcStat(data)
}

// parseProcStat extracts the state and process group from the contents of a
// /proc/pid/stat file.
func parseProcStat(data []byte) (state byte, pgrp int, ok bool) {
	fields, err := statFields(data, statPgrp+1)
	if err != nil {
		return 0, 0, false
	}
	pgrp, err = strconv.Atoi(fields[statPgrp])
	if err != nil {
		return 0, 0, false
	}
	return fields[statState][0], pgrp, true
}

// validate rejects specs the runner cannot run faithfully.
func validate(spec Spec) error {
	if strings.TrimSpace(spec.Run) == "" {
		return fmt.Errorf("%w: empty run command", ErrInvalidSpec)
	}
	if spec.KillGrace < 0 {
		return fmt.Errorf("%w: negative kill_grace %s", ErrInvalidSpec, spec.KillGrace)
	}
	if spec.MaxDuration < 0 {
		return fmt.Errorf("%w: negative max_duration %s", ErrInvalidSpec, spec.MaxDuration)
	}
	for _, g := range spec.GPUs {
		if g < 0 {
			return fmt.Errorf("%w: negative GPU index %d", ErrInvalidSpec, g)
		}
	}
	for k, v := range spec.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return fmt.Errorf("%w: bad environment variable %q", ErrInvalidSpec, k)
		}
	}
	return nil
}

// script joins Setup and Run into one shell script. set -e covers only the
// setup lines; Run gets the shell's ordinary semantics. A subshell such as
// "(set -e; setup) || exit" would not do: set -e is ignored inside a command
// whose status is tested by ||.
func script(setup, run string) string {
	if strings.TrimSpace(setup) == "" {
		return run
	}
	return "set -e\n" + setup + "\nset +e\n" + run
}

// workdir resolves the job's working directory.
func workdir(spec Spec) string {
	switch {
	case spec.Workdir == "":
		return spec.JobDir
	case filepath.IsAbs(spec.Workdir) || spec.JobDir == "":
		return spec.Workdir
	default:
		return filepath.Join(spec.JobDir, spec.Workdir)
	}
}

// passedEnv are the agent's variables a job gets: what a shell needs to
// find programs and format text, nothing that could carry a secret (the
// agent's token, gossip key or cloud credentials stay with the agent).
var passedEnv = []string{"PATH", "LANG", "TZ"}

// defaultPath is the job's PATH when the agent has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// buildEnv is the job's whole environment: PATH, LANG and TZ from the
// agent, HOME, then the user's variables from the spec, then Gantry's own,
// which always win so a spec cannot escape its GPU assignment. The agent's
// other variables are never passed on: a job is untrusted code.
func buildEnv(spec Spec) []string {
	env := make([]string, 0, len(passedEnv)+len(spec.Env)+5)
	index := make(map[string]int, cap(env))
	set := func(k, v string) {
		kv := k + "=" + v
		if i, ok := index[k]; ok {
			env[i] = kv
			return
		}
		index[k] = len(env)
		env = append(env, kv)
	}
	for _, k := range passedEnv {
		if v, ok := os.LookupEnv(k); ok {
			set(k, v)
		}
	}
	if _, ok := index["PATH"]; !ok {
		set("PATH", defaultPath)
	}
	set("HOME", home(spec))
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		set(k, spec.Env[k])
	}
	if spec.PythonPath != "" {
		pp := spec.PythonPath
		if own := spec.Env["PYTHONPATH"]; own != "" {
			pp = own + ":" + pp
		}
		set("PYTHONPATH", pp)
	}
	set("CUDA_VISIBLE_DEVICES", cudaVisibleDevices(spec.GPUs))
	set("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
	// JobID is a run id (lifecycle.RunID): the job sees its job id, and
	// which attempt this is (1 for the first; a requeue starts the next),
	// so a trainer can resume from its checkpoint when it is not 1.
	jobID, attempt, ok := lifecycle.ParseRunID(spec.JobID)
	if !ok {
		jobID, attempt = spec.JobID, 0
	}
	set("GANTRY_JOB_ID", jobID)
	set("GANTRY_ATTEMPT", strconv.FormatUint(uint64(attempt)+1, 10))
	set("GANTRY_METRICS_FILE", spec.MetricsFile)
	for _, k := range slices.Sorted(maps.Keys(spec.Rendezvous)) {
		set(k, spec.Rendezvous[k])
	}
	return env
}

// home is the job's HOME: its user's home directory when that exists,
// else the job's directory (system users often have /nonexistent), else
// the agent's own HOME for a job run as the agent's user.
func home(spec Spec) string {
	if spec.User != nil {
		if spec.User.Home != "" {
			if fi, err := os.Stat(spec.User.Home); err == nil && fi.IsDir() {
				return spec.User.Home
			}
		}
		if spec.JobDir != "" {
			return spec.JobDir
		}
		return "/"
	}
	if h := os.Getenv("HOME"); h != "" {
		return h
	}
	if spec.JobDir != "" {
		return spec.JobDir
	}
	return "/"
}

// cudaVisibleDevices formats GPU indices for CUDA_VISIBLE_DEVICES. With
// CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA's numbering matches NVML's.
func cudaVisibleDevices(gpus []int) string {
	parts := make([]string, len(gpus))
	for i, g := range gpus {
		parts[i] = strconv.Itoa(g)
	}
	return strings.Join(parts, ",")
}
