// Package runner launches one training job as a process group and manages
// its lifetime: environment, log file, graceful cancel with SIGKILL
// escalation, a maximum duration, and clean-up of whatever the job leaves
// behind in its group.
//
// The job runs in its own session (and so its own process group) so that an
// agent restart does not take it down, and so that cancel reaches every
// process the job spawned, whether /bin/sh exec'd the command or forked it.
package runner

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reasons a job was stopped by the agent rather than by itself.
const (
	// ReasonCancelled is a user (or controller) cancel.
	ReasonCancelled = "cancelled"
	// ReasonMaxDuration is the spec's max_duration running out.
	ReasonMaxDuration = "max_duration"
)

// Event kinds passed to the onEvent callback of Start.
const (
	// EventKillEscalated means processes outlived kill_grace after SIGTERM
	// and were sent SIGKILL.
	EventKillEscalated = "kill_escalated"
	// EventOrphansKilled means the job's main process exited while other
	// processes of its group were still running; they were sent SIGKILL so
	// that they do not keep GPUs busy.
	EventOrphansKilled = "orphans_killed"
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

// Spec is what the runner needs to launch one job.
type Spec struct {
	// JobID is exported to the job as GANTRY_JOB_ID.
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
	// MetricsFile is exported as GANTRY_METRICS_FILE.
	MetricsFile string
	// LogFile receives the job's stdout and stderr, appended. Empty
	// discards them.
	LogFile string
	// KillGrace is the delay between SIGTERM and SIGKILL on cancel;
	// DefaultKillGrace when 0.
	KillGrace time.Duration
	// MaxDuration cancels the job with ReasonMaxDuration once it has run
	// this long; 0 means no limit.
	MaxDuration time.Duration
}

// Result is how a job ended.
type Result struct {
	// ExitCode is the main process's exit status; nil when it was killed by
	// a signal or could not be waited for.
	ExitCode *int
	// Signal names the signal that killed the main process ("SIGTERM"),
	// empty if it exited normally.
	Signal string
	// Reason is ReasonCancelled or ReasonMaxDuration when the agent stopped
	// the job, empty when the job ended by itself.
	Reason string
	// Err is set only when waiting for the process failed. ExitCode and
	// Signal may still be valid, but the rest of the group may not have
	// been killed.
	Err error
}

// Event is something about the job's lifetime worth telling the user.
type Event struct {
	// Kind is one of the Event* constants.
	Kind string
	// Message is human readable, e.g. "SIGKILL sent after kill_grace 10s".
	Message string
}

// Process is a running (or finished) job. Its methods are safe for
// concurrent use.
type Process struct {
	cmd       *exec.Cmd
	pid       int
	killGrace time.Duration
	onEvent   func(Event)

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
	reason       string    // first cancel reason; "" if never cancelled
	killAt       time.Time // when a cancel escalates to SIGKILL
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
	cmd := exec.Command(shell, "-c", script(spec.Setup, spec.Run))
	cmd.Dir = workdir(spec)
	cmd.Env = buildEnv(os.Environ(), spec)
	// Setsid makes the job a session and process-group leader: an agent
	// restart (SIGHUP/SIGTERM to the agent's group) does not reach it, and
	// cancel can signal every process of the job through the group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}

	var logFile *os.File
	if spec.LogFile != "" {
		var err error
		logFile, err = os.OpenFile(spec.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("%w %q: open log file: %w", ErrStart, spec.JobID, err)
		}
		// The child gets the file itself, not a pipe: with a pipe, Wait
		// would block until every grandchild holding its write end exits.
		cmd.Stdout = logFile
		cmd.Stderr = logFile
	}

	err := cmd.Start()
	if logFile != nil {
		// The child has its own descriptor now. Nothing was ever written
		// through ours, so closing it cannot lose data and its error has
		// nothing to report.
		_ = logFile.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrStart, spec.JobID, err)
	}

	p := &Process{
		cmd:       cmd,
		pid:       cmd.Process.Pid,
		killGrace: spec.KillGrace,
		onEvent:   onEvent,
		done:      make(chan struct{}),
	}
	if p.killGrace == 0 {
		p.killGrace = DefaultKillGrace
	}
	if spec.MaxDuration > 0 {
		p.mu.Lock()
		p.maxDurTimer = time.AfterFunc(spec.MaxDuration, func() { p.Cancel(ReasonMaxDuration) })
		p.mu.Unlock()
	}
	go p.wait()
	return p, nil
}

// PID is the job's main process id, which is also its process group id.
func (p *Process) PID() int { return p.pid }

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
// reported in Result.Reason (ReasonCancelled when empty). The first call
// wins; later calls, and calls after the job has exited, do nothing.
func (p *Process) Cancel(reason string) {
	if reason == "" {
		reason = ReasonCancelled
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.leaderExited || p.reason != "" {
		return
	}
	p.reason = reason
	p.killAt = time.Now().Add(p.killGrace)
	killGroup(p.pid, unix.SIGTERM)
	p.killTimer = time.AfterFunc(p.killGrace, p.escalate)
}

// escalate sends SIGKILL to a cancelled job's group once its grace is over.
func (p *Process) escalate() {
	p.mu.Lock()
	if p.exited {
		p.mu.Unlock()
		return
	}
	killGroup(p.pid, unix.SIGKILL)
	// Registered under mu while !exited, so wait() cannot have passed its
	// events.Wait yet: the event is delivered before Done.
	p.events.Add(1)
	p.mu.Unlock()

	defer p.events.Done()
	p.emit(Event{
		Kind:    EventKillEscalated,
		Message: fmt.Sprintf("SIGKILL sent after kill_grace %s", p.killGrace),
	})
}

// wait runs for the life of the job and produces its Result.
func (p *Process) wait() {
	// Wait for the main process to exit without reaping it: while it is a
	// zombie its pid, and so the group id, cannot be reused, which makes
	// signalling the group safe until we reap it below.
	waitErr := waitExited(p.pid)
	if waitErr == nil {
		p.cleanGroup()
	}
	// Without waitid the group cannot be signalled safely any more (the
	// leader may already be reaped); the error is reported in Result.Err.

	p.mu.Lock()
	p.exited = true
	if p.killTimer != nil {
		p.killTimer.Stop()
	}
	if p.maxDurTimer != nil {
		p.maxDurTimer.Stop()
	}
	reason := p.reason
	p.mu.Unlock()

	err := p.cmd.Wait()
	res := Result{Reason: reason, Err: waitErr}
	var exitErr *exec.ExitError
	if err == nil || errors.As(err, &exitErr) {
		res.ExitCode, res.Signal = exitStatus(p.cmd.ProcessState)
	} else {
		res.Err = errors.Join(waitErr, fmt.Errorf("runner: wait for pid %d: %w", p.pid, err))
	}

	p.events.Wait()
	p.result = res
	close(p.done)
}

// cleanGroup deals with the rest of the group once the main process has
// exited (and is still an unreaped zombie). If a cancel is in progress, the
// remaining processes keep their grace period: with "sh -c" forking the
// trainer, sh dies on SIGTERM at once while the trainer may be saving a
// checkpoint. Otherwise the leftovers are orphans and are killed at once.
func (p *Process) cleanGroup() {
	p.mu.Lock()
	p.leaderExited = true
	cancelling := p.reason != ""
	killAt := p.killAt
	p.mu.Unlock()

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
		killGroup(p.pid, unix.SIGKILL)
		return
	}

	left := liveGroupMembers(p.pid)
	killGroup(p.pid, unix.SIGKILL)
	if len(left) > 0 {
		p.emit(Event{
			Kind: EventOrphansKilled,
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
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, false
	}
	return parseProcStat(data)
}

// parseProcStat extracts the state and process group from the contents of a
// /proc/pid/stat file.
func parseProcStat(data []byte) (state byte, pgrp int, ok bool) {
	// "pid (comm) state ppid pgrp ...": comm may hold spaces and parens,
	// so split after the last ')'.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, 0, false
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 3 || len(fields[0]) != 1 {
		return 0, 0, false
	}
	pgrp, err := strconv.Atoi(fields[2])
	if err != nil {
		return 0, 0, false
	}
	return fields[0][0], pgrp, true
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

// buildEnv layers the job's environment: the agent's, then the user's, then
// Gantry's own variables, which always win so a spec cannot escape its GPU
// assignment. Later duplicates replace earlier ones in place.
func buildEnv(base []string, spec Spec) []string {
	env := make([]string, 0, len(base)+len(spec.Env)+4)
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
	for _, kv := range base {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue // malformed entries cannot be passed on faithfully
		}
		set(k, v)
	}
	keys := make([]string, 0, len(spec.Env))
	for k := range spec.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		set(k, spec.Env[k])
	}
	set("CUDA_VISIBLE_DEVICES", cudaVisibleDevices(spec.GPUs))
	set("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
	set("GANTRY_JOB_ID", spec.JobID)
	set("GANTRY_METRICS_FILE", spec.MetricsFile)
	return env
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
