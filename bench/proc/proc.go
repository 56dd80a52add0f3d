// Package proc starts and owns the processes a benchmark run needs
// (controllers, agents, etcd, Mosquitto) and reads their resource use from
// /proc. Every process started through a Group is stopped by Group.Stop,
// which the driver defers and also runs on Ctrl-C, so a failed or
// interrupted run leaves nothing behind.
package proc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// Sentinel errors.
var (
	// ErrExited means a process ended while it was expected to run.
	ErrExited = errors.New("proc: process exited")
	// ErrBadStat means /proc/PID/stat could not be parsed.
	ErrBadStat = errors.New("proc: unparsable /proc stat")
	// ErrStopped means Start was called after Stop.
	ErrStopped = errors.New("proc: group already stopped")
)

// Process is one child process of a Group.
type Process struct {
	// Name labels the process in progress lines and errors.
	Name string
	// LogPath is the file that holds its stdout and stderr.
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Alive reports whether the process is still running.
func (p *Process) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Err returns why the process ended (nil while it runs or after a clean
// exit).
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Tail returns the last n bytes of the process's log, for error messages.
func (p *Process) Tail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Group is a set of child processes stopped together.
type Group struct {
	logDir string

	mu      sync.Mutex
	procs   []*Process
	stopped bool
}

// NewGroup returns a group whose processes log into logDir.
func NewGroup(logDir string) *Group { return &Group{logDir: logDir} }

// Start runs name (a binary path) with args. The child gets its own process
// group, so Stop can signal it and whatever it spawned, and is sent SIGKILL
// by the kernel if the driver dies without running Stop (Pdeathsig).
func (g *Group) Start(label, name string, args ...string) (*Process, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return nil, ErrStopped
	}
	logPath := filepath.Join(g.logDir, label+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("proc: %s log: %w", label, err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("proc: start %s: %w", label, err)
	}
	p := &Process{Name: label, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	g.procs = append(g.procs, p)
	return p, nil
}

// Stop ends every process: SIGTERM to each process group, then SIGKILL to
// whatever is left after grace. Later Starts fail. It is safe to call more
// than once.
func (g *Group) Stop(grace time.Duration) {
	g.mu.Lock()
	g.stopped = true
	procs := append([]*Process(nil), g.procs...)
	g.mu.Unlock()

	for _, p := range procs {
		if p.Alive() {
			_ = syscall.Kill(-p.PID(), syscall.SIGTERM)
		}
	}
	// One deadline for all: a channel that stays closed, so that every
	// process still running after it moves on at once (a time.After value
	// would be received by the first waiter only).
	expired := make(chan struct{})
	timer := time.AfterFunc(grace, func() { close(expired) })
	defer timer.Stop()
	for _, p := range procs {
		select {
		case <-p.done:
		case <-expired:
		}
	}
	for _, p := range procs {
		if p.Alive() {
			_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
			<-p.done
		}
	}
}

// Stop ends one process the same way Group.Stop does.
func (p *Process) Stop(grace time.Duration) {
	if !p.Alive() {
		return
	}
	_ = syscall.Kill(-p.PID(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
		<-p.done
	}
}

// CPU is the user+system CPU time a process has used so far.
func CPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("proc: cpu of %d: %w", pid, err)
	}
	return parseStatCPU(b)
}

// parseStatCPU reads utime and stime (fields 14 and 15) from a
// /proc/PID/stat line. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from its last ')'.
func parseStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, ErrBadStat
	}
	f := strings.Fields(string(b[i+1:]))
	// After ')' come field 3 (state) onwards: utime is field 14, index 11.
	if len(f) < 13 {
		return 0, fmt.Errorf("%w: %d fields", ErrBadStat, len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrBadStat, err)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// RSS returns a process's resident set size in bytes (VmRSS).
func RSS(pid int) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("proc: rss of %d: %w", pid, err)
	}
	defer f.Close()
	return parseVmRSS(f)
}

func parseVmRSS(f *os.File) (uint64, error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "VmRSS:") {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) < 2 {
			break
		}
		kb, err := strconv.ParseUint(fs[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: %w", ErrBadStat, err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("proc: read status: %w", err)
	}
	return 0, fmt.Errorf("%w: no VmRSS line", ErrBadStat)
}

// RaiseNoFile raises this process's open-file limit to its hard limit (or
// want, if lower), so that ten thousand WebSocket and MQTT clients fit.
// Children started afterwards inherit it. It returns the new soft limit.
func RaiseNoFile(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("proc: getrlimit: %w", err)
	}
	if lim.Max < want && os.Geteuid() == 0 {
		// Root may raise the hard limit too (up to fs.nr_open).
		raised := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			return want, nil
		}
	}
	lim.Cur = min(want, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("proc: setrlimit: %w", err)
	}
	return lim.Cur, nil
}

// Alive reports whether pid exists (signal 0 succeeds or is refused).
func Alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
