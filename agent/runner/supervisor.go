package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gantry-ml/gantry/agent/safefile"
)

// The supervisor.
//
// A restarted agent can find its jobs again (pid, start time, boot id) and
// watch them, but it is not their parent, so it cannot wait for them: the
// exit status of a process goes to its parent only, and once the old agent
// is gone the orphan is reparented to init, which reaps it and throws the
// status away. So every job runs under a tiny supervisor that outlives the
// agent, waits for the job's shell, and writes how it ended to a status file
// in the job's directory. Whoever watches the job then, the agent that
// started it or one that re-adopted it, reads the truth from that file.
//
// The supervisor is the agent's own binary, re-executed through
// /proc/self/exe (which still works after an upgrade replaced the file on
// disk) with supervisorArg as its first argument. The init function below
// catches that before main runs, so every binary that links the runner (the
// agent, the dev-mode controller, test binaries) can supervise without its
// main knowing. A shell wrapper ("cmd; echo $? > file") was rejected: the
// shell dies on the SIGTERM that cancel sends to the group before it can
// write anything, trapping the signal changes what the job inherits, and
// "$?" cannot tell exit 143 from death by SIGTERM.
//
// Layout of the job's process group, whose id is the supervisor's pid:
//
//	supervisor (session and group leader; ignores group-wide signals)
//	└── /bin/sh -c "setup; run" (same group)
//	    └── the trainer and whatever it spawns (same group)

// supervisorArg marks a re-executed binary as a job supervisor. It is not a
// flag any command parses, so it cannot collide with real arguments.
const supervisorArg = "__gantry-job-supervisor__"

// supervisorName is the supervisor's argv[0], what ps shows.
const supervisorName = "gantry-job-supervisor"

// selfExe is the running binary; the kernel resolves it to the executable
// this process was started from even if that file has since been replaced.
const selfExe = "/proc/self/exe"

// StatusFileName is the status file's name in Spec.JobDir when
// Spec.StatusFile is empty.
const StatusFileName = ".gantry-exit-status.json"

// statusVersion is the layout of the status file. A newer agent must read
// files written by an older supervisor (still running across an upgrade),
// so fields are only ever added.
const statusVersion = 1

// supervisorFailed is the supervisor's exit code when it could not start
// the job's shell (the shell's own convention for "command not found").
const supervisorFailed = 127

// readyFD is the descriptor on which the supervisor tells Start that the
// job's shell has been started (readyOK) or why it could not be. Until then
// the job's group holds only the supervisor: a signal sent to the group
// then (a cancel, max_duration) would never reach the job, so Start does not
// return, and nothing can signal the job, before the shell exists. It also
// keeps start failures synchronous, as they were without a supervisor.
const readyFD = 3

// readyOK is the supervisor's message on readyFD when the shell runs.
const readyOK = "ok"

// noReadyFD stands for readyFD in the supervisor's arguments when nobody
// waits for the message.
const noReadyFD = "-"

func init() {
	if len(os.Args) > 1 && os.Args[1] == supervisorArg {
		// syscall.Exit, not os.Exit: the supervisor has nothing to flush,
		// and in a race-enabled binary (tests) os.Exit would sleep a second
		// in the race detector's exit hook before the job's end is seen.
		syscall.Exit(supervise(os.Args[2:]))
	}
}

// statusRecord is what the status file holds.
type statusRecord struct {
	Version int `json:"version"`
	// ExitCode is set when the shell exited normally.
	ExitCode *int `json:"exit_code,omitempty"`
	// Signal names the signal that killed the shell ("SIGTERM").
	Signal     string `json:"signal,omitempty"`
	CoreDumped bool   `json:"core_dumped,omitempty"`
	// Error is set when the shell could not be started at all.
	Error string `json:"error,omitempty"`
	// EndedAt is when the supervisor saw the shell end.
	EndedAt time.Time `json:"ended_at"`
}

// supervise runs as the supervisor process: args are the status file, the
// ready descriptor (or noReadyFD) and the job's argv. It returns the
// supervisor's exit code, which mirrors the job's like a shell would (code,
// or 128+signal), for anyone looking with ps or at a missing status file.
func supervise(args []string) int {
	// One thread is plenty to wait for a child; the job gets the CPUs.
	runtime.GOMAXPROCS(1)
	if len(args) < 3 {
		fmt.Fprintf(os.Stderr, "%s: usage: %s STATUS_FILE READY_FD|- ARGV...\n", supervisorName, supervisorArg)
		return supervisorFailed
	}
	statusFile, argv := args[0], args[2:]
	var ready *os.File
	if args[1] != noReadyFD {
		fd, err := strconv.Atoi(args[1])
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: bad ready descriptor %q\n", supervisorName, args[1])
			return supervisorFailed
		}
		// Inherited without close-on-exec; the job must not hold it, or
		// Start would not see it close if we died.
		unix.CloseOnExec(fd)
		ready = os.NewFile(uintptr(fd), "ready")
	}

	// Cancel signals the whole group, the supervisor included; it must
	// outlive the job to record its end. The signals are caught, not
	// ignored: an ignored disposition would be inherited through exec and
	// the job could no longer be stopped by them, while a caught one is
	// reset to the default in the child. SIGHUP or SIGINT ignored when we
	// started (nohup) stays ignored, for us and the job, as it would
	// without us (Go keeps those two ignored; signal.Ignored says so).
	var catch []os.Signal
	for _, s := range []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGABRT} {
		if !signal.Ignored(s) {
			catch = append(catch, s)
		}
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, catch...)
	go func() {
		// Nothing to do: the signal was sent to the group, so the job
		// got it too. Forwarding it would deliver it twice.
		for range sigs {
		}
	}()

	cmd := exec.Command(argv[0], argv[1:]...)
	// The job's output goes where ours goes (the log file), as the same
	// descriptors, and it stays in our process group (no Setpgid).
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	st := statusRecord{Version: statusVersion}
	code := supervisorFailed
	err := cmd.Start()
	if err != nil {
		st.Error = fmt.Sprintf("cannot start %s: %v", argv[0], err)
	}
	if ready != nil {
		msg := readyOK
		if err != nil {
			msg = st.Error
		}
		// Start reads until EOF; a failed write leaves it to see the
		// close (or our exit) and the status file.
		_, _ = ready.WriteString(msg)
		_ = ready.Close()
	}
	if err == nil {
		err := cmd.Wait()
		var exitErr *exec.ExitError
		switch {
		case err != nil && !errors.As(err, &exitErr):
			st.Error = fmt.Sprintf("waiting for %s: %v", argv[0], err)
		default:
			ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if ws.Signaled() {
				st.Signal = unix.SignalName(ws.Signal())
				st.CoreDumped = ws.CoreDump()
				code = 128 + int(ws.Signal())
			} else {
				c := ws.ExitStatus()
				st.ExitCode = &c
				code = c
			}
		}
	}
	st.EndedAt = time.Now()
	if err := writeStatus(statusFile, st); err != nil {
		// The job's log is our stderr: the user sees why the agent
		// reports an unknown exit status.
		fmt.Fprintf(os.Stderr, "%s: %v\n", supervisorName, err)
	}
	if st.Error != "" {
		fmt.Fprintf(os.Stderr, "%s: %s\n", supervisorName, st.Error)
	}
	return code
}

// writeStatus replaces path with st atomically and durably: a reader (the
// agent, possibly after a crash of the whole host) sees the old file, no
// file, or the complete new one.
func writeStatus(path string, st statusRecord) error {
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode exit status: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("write exit status: %w", err)
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return errors.Join(fmt.Errorf("write exit status %s: %w", tmp, werr), os.Remove(tmp))
	}
	if err := os.Rename(tmp, path); err != nil {
		return errors.Join(fmt.Errorf("write exit status: %w", err), os.Remove(tmp))
	}
	return syncDir(filepath.Dir(path))
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	serr := d.Sync()
	cerr := d.Close()
	if err := errors.Join(serr, cerr); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// maxStatusBytes bounds the status file read; a real one is ~150 bytes.
const maxStatusBytes = 64 << 10

// readStatus reads a status file. A missing file wraps fs.ErrNotExist.
func readStatus(path string) (statusRecord, error) {
	var st statusRecord
	// The job's user can write its directory, so the file is opened as
	// any job file is: never through a link out of it, never blocking on
	// a FIFO, and read only up to a bound.
	f, err := safefile.Open(path, safefile.AnyOwner)
	if err != nil {
		return st, fmt.Errorf("read exit status: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxStatusBytes))
	_ = f.Close() // read-only: a close error loses nothing
	if err != nil {
		return st, fmt.Errorf("read exit status: %w", err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("%w: %s: %w", ErrBadStatus, path, err)
	}
	if st.Version < 1 || (st.ExitCode == nil && st.Signal == "" && st.Error == "") {
		return st, fmt.Errorf("%w: %s holds no exit status", ErrBadStatus, path)
	}
	return st, nil
}

// result turns a status record into a Result (Reason left to the caller).
func (st statusRecord) result() Result {
	res := Result{ExitCode: st.ExitCode, Signal: st.Signal, EndedAt: st.EndedAt}
	if st.Error != "" {
		res.Err = fmt.Errorf("%w: %s", ErrStart, st.Error)
	}
	return res
}
