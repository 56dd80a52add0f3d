package runner

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gantry-ml/gantry/agent/jobcgroup"
	"github.com/gantry-ml/gantry/lifecycle"
)

// Re-adoption.
//
// An agent that restarts finds its jobs' processes by pid, but a pid alone
// proves nothing: the job may have ended and the pid been given to another
// process, or the host may have rebooted. A process is identified by its pid
// plus its start time (field 22 of /proc/PID/stat, clock ticks after boot,
// which never changes for a process and differs for any later process with
// the same pid) plus the boot id (which changes at every boot, when start
// times start over).
//
// A re-adopted process is not our child, so waitid cannot tell when it
// ends; a pidfd can (poll reports it readable once the process exits), and
// where pidfds are missing (Linux < 5.3) /proc is polled. Its exit status
// comes from the status file its supervisor writes (supervisor.go).

// adoptPollInterval is how often /proc is checked for an adopted process's
// exit when pidfd_open is unavailable.
const adoptPollInterval = 50 * time.Millisecond

// bootIDPath holds the kernel's random id of the current boot.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// Identity tells one process apart from every other process that has had,
// or will have, the same pid on this host.
type Identity struct {
	// PID is the process id, also the job's process group id.
	PID int
	// StartTime is field 22 of /proc/PID/stat: when the process started,
	// in clock ticks after boot.
	StartTime uint64
	// BootID is /proc/sys/kernel/random/boot_id when the process ran.
	BootID string
}

// Adoption describes a job started by an earlier agent process, as that
// agent recorded it.
type Adoption struct {
	// JobID is for messages only.
	JobID string
	// Identity is Process.Identity of the job when it was started.
	Identity Identity
	// StatusFile is Process.StatusFile of the job.
	StatusFile string
	// KillGrace is the job's SIGTERM → SIGKILL delay (DefaultKillGrace
	// when 0).
	KillGrace time.Duration
	// Deadline is when the job's max_duration runs out; zero for none. A
	// deadline already past cancels the job at once.
	Deadline time.Time
	// CancelReason and CancelAt describe a cancel that had sent SIGTERM
	// before the agent restarted (as told to Spec.OnCancel): SIGTERM is not
	// sent again, SIGKILL follows at CancelAt + KillGrace, and the Result
	// carries the reason.
	CancelReason lifecycle.ExitReason
	CancelAt     time.Time
	// OnCancel is as in Spec.
	OnCancel func(reason lifecycle.ExitReason, at time.Time)
	// Cgroup is the job run's cgroup as Spec.Cgroup named it, or nil. It
	// is not created: what is left in it is killed when the job ends (or
	// at once, if it has ended), and it is removed.
	Cgroup *jobcgroup.Group
}

// Adopt takes over a job that an earlier agent process started with Start.
// If the job's process still runs, the Process watches it as Start's does:
// Done closes when it exits, Cancel signals its group with the same
// escalation, and orphans are killed. If it has ended, the Process is done
// at once, with the exit status its supervisor recorded, or with Result.Err
// wrapping ErrVanished (ErrRebooted after a reboot) when there is none.
// Either way the caller reports the job exactly once from the Result.
//
// It fails only on a malformed Adoption, or when /proc cannot be read.
func Adopt(a Adoption, onEvent func(Event)) (*Process, error) {
	switch {
	case a.Identity.PID <= 0:
		return nil, fmt.Errorf("%w: adopt %q: pid %d", ErrInvalidSpec, a.JobID, a.Identity.PID)
	case a.StatusFile == "":
		return nil, fmt.Errorf("%w: adopt %q: no status file", ErrInvalidSpec, a.JobID)
	case a.KillGrace < 0:
		return nil, fmt.Errorf("%w: adopt %q: negative kill_grace %s", ErrInvalidSpec, a.JobID, a.KillGrace)
	}
	p := newProcess(a.Identity, a.StatusFile, a.KillGrace, onEvent, a.OnCancel)
	p.cgroup = a.Cgroup
	if a.CancelReason != "" {
		p.reason = a.CancelReason
		p.killAt = a.CancelAt.Add(p.killGrace)
	}

	gone, err := a.Identity.check()
	if err != nil {
		return nil, fmt.Errorf("adopt %q: %w", a.JobID, err)
	}
	if gone != nil {
		p.endedUnwatched(gone)
		return p, nil
	}
	// Open the pidfd first and check the identity after: if the pid was
	// reused in between, the second check sees the newcomer's start time.
	pidfd, err := openPidfd(a.Identity.PID)
	if err != nil {
		return nil, fmt.Errorf("adopt %q: %w", a.JobID, err)
	}
	if gone, err = a.Identity.check(); gone != nil || err != nil {
		if pidfd != nil {
			err = errors.Join(err, pidfd.Close())
		}
		if err != nil {
			return nil, fmt.Errorf("adopt %q: %w", a.JobID, err)
		}
		p.endedUnwatched(gone)
		return p, nil
	}

	p.mu.Lock()
	if p.reason != "" {
		p.killTimer = time.AfterFunc(time.Until(p.killAt), p.escalate)
	}
	if !a.Deadline.IsZero() {
		p.maxDurTimer = time.AfterFunc(time.Until(a.Deadline), func() { p.Cancel(lifecycle.ReasonMaxDuration) })
	}
	p.mu.Unlock()
	go p.watchAdopted(pidfd)
	return p, nil
}

// endedUnwatched finishes a Process whose job ended while no agent watched
// it: the status file says how, or gone says why we cannot know.
func (p *Process) endedUnwatched(gone error) {
	// What the job left running in its cgroup outlived it unwatched.
	p.killEscapees()
	p.dropCgroup()
	reason := p.markExited()
	res := Result{Err: gone}
	if st, err := readStatus(p.statusFile); err == nil {
		res = st.result()
	} else if !errors.Is(err, fs.ErrNotExist) {
		res.Err = errors.Join(gone, err)
	}
	res.Reason = reason
	p.finish(res)
}

// watchAdopted waits for an adopted job's leader to exit and produces the
// Result.
func (p *Process) watchAdopted(pidfd *os.File) {
	var waitErr error
	if pidfd != nil {
		waitErr = waitPidfd(pidfd)
		if cerr := pidfd.Close(); cerr != nil {
			waitErr = joinErr(waitErr, fmt.Errorf("close pidfd: %w", cerr))
		}
	}
	if pidfd == nil || waitErr != nil {
		// Without a working pidfd, /proc still tells.
		for {
			if gone, err := p.ident.check(); gone != nil || err != nil {
				waitErr = joinErr(waitErr, err)
				break
			}
			time.Sleep(adoptPollInterval)
		}
	}
	p.cleanGroup(false)

	p.mu.Lock()
	escalated := p.escalated
	p.mu.Unlock()
	reason := p.markExited()
	p.dropCgroup()
	var res Result
	st, err := readStatus(p.statusFile)
	switch {
	case err == nil:
		res = st.result()
	case escalated:
		// We sent SIGKILL to the group and the supervisor died of it
		// before it could write: the job was killed with it.
		res = Result{Signal: unix.SignalName(unix.SIGKILL)}
	default:
		res = Result{Err: fmt.Errorf("%w: %w", ErrNoStatus, err)}
	}
	res.Err = joinErr(waitErr, res.Err)
	res.Reason = reason
	p.finish(res)
}

// openPidfd returns a pollable pidfd for pid, or nil when the kernel has no
// pidfd_open (the caller polls /proc instead). A process that is already
// gone yields a nil file too: the identity check that follows says so.
func openPidfd(pid int) (*os.File, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.ESRCH), errors.Is(err, unix.EPERM):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// Non-blocking, os.NewFile hands the fd to the runtime's poller, so
	// waiting for it parks a goroutine instead of a thread.
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, errors.Join(fmt.Errorf("pidfd of %d: set non-blocking: %w", pid, err), unix.Close(fd))
	}
	return os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid)), nil
}

// waitPidfd blocks until the pidfd's process has exited.
func waitPidfd(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("pidfd: %w", err)
	}
	var pollErr error
	err = rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		switch {
		case errors.Is(err, unix.EINTR):
			return false
		case err != nil:
			pollErr = fmt.Errorf("poll pidfd: %w", err)
			return true
		}
		// Readable means exited; the poller wakes us when that changes.
		return n > 0 && fds[0].Revents != 0
	})
	if err != nil {
		return fmt.Errorf("pidfd: %w", err)
	}
	return pollErr
}

// identify reads the identity of a process that runs now.
func identify(pid int) (Identity, error) {
	boot, err := bootID()
	if err != nil {
		return Identity{}, err
	}
	st, err := readProcStart(pid)
	if err != nil {
		return Identity{}, err
	}
	return Identity{PID: pid, StartTime: st.startTime, BootID: boot}, nil
}

// check reports whether the identified process has ended: gone is nil while
// it runs, and otherwise says why it is not there (wrapping ErrVanished or
// ErrRebooted). A zombie has ended. err is for /proc being unreadable.
func (id Identity) check() (gone, err error) {
	boot, err := bootID()
	if err != nil {
		return nil, err
	}
	if boot != id.BootID {
		return fmt.Errorf("%w (pid %d started under boot %s, this is boot %s)", ErrRebooted, id.PID, id.BootID, boot), nil
	}
	st, err := readProcStart(id.PID)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w (pid %d is gone)", ErrVanished, id.PID), nil
	case err != nil:
		return nil, err
	case st.startTime != id.StartTime:
		return fmt.Errorf("%w (pid %d now belongs to another process)", ErrVanished, id.PID), nil
	case st.state == 'Z' || st.state == 'X':
		return fmt.Errorf("%w (pid %d has exited)", ErrVanished, id.PID), nil
	}
	return nil, nil
}

// procStart is what re-adoption needs from /proc/PID/stat.
type procStart struct {
	state     byte
	startTime uint64
}

// readProcStart reads /proc/PID/stat. A process that does not exist wraps
// fs.ErrNotExist.
func readProcStart(pid int) (procStart, error) {
	data, err := os.ReadFile(statPath(pid))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		// ESRCH: the process died between open and read.
		return procStart{}, fmt.Errorf("pid %d: %w", pid, fs.ErrNotExist)
	}
	if err != nil {
		return procStart{}, fmt.Errorf("%w: %w", ErrNoProc, err)
	}
	st, err := parseProcStart(data)
	if err != nil {
		return procStart{}, fmt.Errorf("%w: pid %d: %w", ErrNoProc, pid, err)
	}
	return st, nil
}

// parseProcStart extracts the state and the start time from the contents of
// a /proc/PID/stat file.
func parseProcStart(data []byte) (procStart, error) {
	fields, err := statFields(data, statStartTime+1)
	if err != nil {
		return procStart{}, err
	}
	start, err := strconv.ParseUint(fields[statStartTime], 10, 64)
	if err != nil {
		return procStart{}, fmt.Errorf("stat: starttime: %w", err)
	}
	return procStart{state: fields[statState][0], startTime: start}, nil
}

// statPath is the /proc/PID/stat file of pid.
func statPath(pid int) string { return filepath.Join("/proc", strconv.Itoa(pid), "stat") }

// Indexes of /proc/PID/stat fields in what statFields returns: state is
// field 3 of the whole line, pgrp field 5, starttime field 22.
const (
	statState     = 0
	statPpid      = 1
	statPgrp      = 2
	statSession   = 3
	statStartTime = 19
)

// ProcParent reads pid's parent, session and command name from
// /proc/PID/stat: what GPU process attribution follows to find a
// process's job.
func ProcParent(pid int) (ppid, sid int, comm string, err error) {
	data, err := os.ReadFile(statPath(pid))
	if err != nil {
		return 0, 0, "", err
	}
	fields, err := statFields(data, statSession+1)
	if err != nil {
		return 0, 0, "", fmt.Errorf("pid %d: %w", pid, err)
	}
	ppid, err1 := strconv.Atoi(fields[statPpid])
	sid, err2 := strconv.Atoi(fields[statSession])
	if err1 != nil || err2 != nil {
		return 0, 0, "", fmt.Errorf("pid %d: bad stat", pid)
	}
	// statFields found the last ')'; the name starts after the first '('.
	open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return 0, 0, "", fmt.Errorf("pid %d: stat has no command name", pid)
	}
	return ppid, sid, string(data[open+1 : end]), nil
}

// statFields is the one parser of a /proc/PID/stat line: it returns the
// fields after the command name, at least want of them, the first being a
// one-letter state. The line is "pid (comm) state ppid pgrp ...", and comm
// may hold spaces and parens, so the fields are counted after the last ')'.
func statFields(data []byte, want int) ([]string, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return nil, errors.New("stat: no command name")
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < max(want, 1) || len(fields[statState]) != 1 {
		return nil, fmt.Errorf("stat: %d fields after the command name, want at least %d", len(fields), want)
	}
	return fields, nil
}

// bootID is read once: it cannot change while this process runs.
var bootID = sync.OnceValues(func() (string, error) {
	data, err := os.ReadFile(bootIDPath)
	if err != nil {
		return "", fmt.Errorf("%w: boot id: %w", ErrNoProc, err)
	}
	id := strings.TrimSpace(string(data))
	if id == "" {
		return "", fmt.Errorf("%w: boot id: %s is empty", ErrNoProc, bootIDPath)
	}
	return id, nil
})
