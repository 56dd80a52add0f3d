package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/agent/jobcgroup"
	"github.com/gantry-ml/gantry/agent/logtail"
	"github.com/gantry-ml/gantry/agent/metricsfile"
	"github.com/gantry-ml/gantry/agent/runner"
	"github.com/gantry-ml/gantry/agent/safefile"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/flat"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// File names inside a job's directory.
const (
	MetricsFileName = "metrics.jsonl"
	LogFileName     = "output.log"
)

// What the agent produces for one job, kept within proto/limits so that the
// controller never refuses it.
const (
	// logChunkBytes is the size of one log record's data.
	logChunkBytes = 64 << 10
	// logTailBytes is the log tail read for the exit record. Invalid UTF-8
	// becomes U+FFFD (3 bytes per bad byte), so the tail is capped again
	// at limits.MaxLogTailBytes when it is built.
	logTailBytes = 4 << 10
	// dropEventInterval spaces the events reporting dropped metric keys:
	// a job that writes a new key on every line gets one event per
	// interval with the counts, not one per line.
	dropEventInterval = 30 * time.Second
)

// drainMaxBytes and drainMaxTime bound the reading of each of a job's files
// after its process has exited: a file that keeps growing (a process that
// escaped the job's group, a huge sparse file) cannot keep the job from
// ending. Time spent waiting for a full spool does not count. Variables so
// that a test need not wait 10 s.
var (
	drainMaxBytes int64 = 64 << 20
	drainMaxTime        = 10 * time.Second
)

// jobSpoolShare is how many of a job's records may wait in the spool for
// the controller's ack before the job's tails stop reading (its data waits
// in its files meanwhile). A job that writes faster than the controller
// takes would otherwise fill the spool, and however fairly the link picks
// from the spool, what it cannot see it cannot pick: the link reads ahead
// a bounded window (24,576 records, twelve jobs' shares).
const jobSpoolShare = 2048

// The caps above must stay within the shared limits; these fail to compile
// otherwise.
var (
	_ [limits.MaxLogChunkBytes - logChunkBytes]struct{}
	_ [limits.MaxLogTailBytes - logTailBytes]struct{}
)

// job is one running job: the process, and the two tails feeding the spool.
type job struct {
	a  *Agent
	id string
	// rendezvous are a multi-node rank's variables (rendezvousEnv); nil
	// for a single-node job. Only the launch needs them: a re-adopted
	// rank is already running with them.
	rendezvous map[string]string
	final      metricsfile.Final // owned by the metrics tail, then by finish

	metrics *metricsfile.Tailer
	logs    *logtail.Follower
	// metricsDead and logsDead are set when a tail refused or failed to
	// read its file; the failure was reported and the file is not read
	// again, not even to drain it after the exit.
	metricsDead, logsDead atomic.Bool
	// owner is the uid the job's files must belong to (its directory's
	// owner, the job's user), or safefile.AnyOwner; set by follow.
	owner int

	// dropMu guards the metric keys dropped and not reported yet.
	dropMu       sync.Mutex
	dropped      uint64
	lastDropSent time.Time

	// stMu guards state, and serialises every spool write that carries it,
	// so that the state stored with a batch of records is exactly what
	// those records and the ones before them cover.
	stMu  sync.Mutex
	state *gantrypb.AgentJob
	// spoolWait is the time, in nanoseconds, spent waiting for the spool
	// to take a write.
	spoolWait atomic.Int64
	// holding is true while the job's tails wait for its share of the
	// spool (waitShare).
	holding atomic.Bool

	// healthMu guards health, the job's health monitor while it runs
	// (nil before and after, or with the checks disabled).
	healthMu sync.Mutex
	health   *jobHealth
	// faultsTold are the GPUs whose fault the job was told of.
	faultsTold map[uint32]bool
	// procTrack is the job's GPU process attribution (procattr.go).
	procTrack *procTracker
	// seen is what the GPU sampler's checks read of the job: published
	// whenever its state changes, read without stMu. commit holds stMu
	// while the job waits for its spool share (a flood), and the sampler,
	// which runs for every job of the host, must never wait for that.
	seen atomic.Pointer[jobSeen]
	// resumed: the job was re-adopted after an agent restart.
	resumed bool

	mu        sync.Mutex
	proc      *runner.Process
	cg        *jobcgroup.Group // the run's cgroup (jobCgroups.group), nil without
	cancelled bool             // a cancel arrived, possibly before the process started
}

func (j *job) cancel() {
	j.mu.Lock()
	j.cancelled = true
	proc := j.proc
	j.mu.Unlock()
	if proc != nil {
		proc.Cancel(lifecycle.ReasonCancelled)
	}
}

// start launches a job the controller assigned. Duplicate starts (the
// leader re-sends after a reconnect) are ignored: a job id runs once.
func (a *Agent) start(m *gantrypb.StartJob) {
	a.mu.Lock()
	if _, ok := a.jobs[m.JobId]; ok {
		a.mu.Unlock()
		return
	}
	saved, err := a.spool.Jobs()
	if err == nil {
		if _, ok := saved[m.JobId]; ok {
			a.mu.Unlock()
			return
		}
	}
	j := &job{a: a, id: m.JobId, state: &gantrypb.AgentJob{JobId: m.JobId, Spec: m.Spec, Gpus: m.Gpus},
		rendezvous: rendezvousEnv(m)}
	j.publish()
	a.jobs[m.JobId] = j
	ctx := a.ctx
	a.mu.Unlock()
	if err != nil {
		a.log.Error("read job state", "err", err)
	}

	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		j.run(ctx)
	}()
}

// run owns a job this agent launches, from launch to its exit record.
func (j *job) run(ctx context.Context) {
	a := j.a
	log := a.log.With("job", j.id)
	spec := j.state.Spec
	dir := jobDir(a.cfg.DataDir, j.id)

	if err := a.makeJobDir(dir); err != nil {
		j.fail(fmt.Sprintf("cannot create the job directory: %v", err))
		return
	}
	gpus := make([]int, len(j.state.Gpus))
	for i, g := range j.state.Gpus {
		gpus[i] = int(g)
	}
	// Save before launching: if the agent dies right after, its successor
	// knows the job existed and reports it instead of forgetting it.
	j.stMu.Lock()
	j.state.StartedAt = now()
	j.state.StatusFile = filepath.Join(dir, runner.StatusFileName)
	err := a.saveJob(j.state)
	j.stMu.Unlock()
	if err != nil {
		log.Error("save job state", "err", err)
	}
	workdir, env := spec.GetWorkdir(), spec.GetEnv()
	if digest := spec.GetCodeArchive(); digest != "" {
		codeDir, summary, err := j.fetchCode(ctx, a.link, dir, digest)
		if err != nil {
			log.Warn("job's code archive could not be unpacked", "err", err)
			j.fail(fmt.Sprintf("code archive: %v", err))
			return
		}
		j.codeEvent(summary)
		workdir = workdirWithCode(codeDir, workdir)
		// The spec cannot set GANTRY_ variables (apiv1 validation), so
		// this one is the agent's word.
		env = maps.Clone(env)
		if env == nil {
			env = map[string]string{}
		}
		env["GANTRY_CODE_DIR"] = codeDir
	}
	if j.rendezvous != nil && j.rendezvous["NODE_RANK"] == "0" {
		// Rank 0 hosts the rendezvous: say plainly when its port is
		// taken, rather than leave every rank to time out in torchrun.
		if err := checkPortFree(j.rendezvous["MASTER_PORT"]); err != nil {
			j.fail(fmt.Sprintf("rank 0 cannot host the rendezvous: %v", err))
			return
		}
	}
	proc, err := runner.Start(runner.Spec{
		JobID: j.id, Setup: spec.GetSetup(), Run: spec.GetRun(), JobDir: dir, Workdir: workdir,
		Env: env, GPUs: gpus, Rendezvous: j.rendezvous, MetricsFile: filepath.Join(dir, MetricsFileName), PythonPath: a.pythonDir,
		LogFile:     filepath.Join(dir, LogFileName),
		KillGrace:   time.Duration(spec.GetKillGraceMs()) * time.Millisecond,
		MaxDuration: time.Duration(spec.GetMaxDurationMs()) * time.Millisecond,
		StatusFile:  j.state.StatusFile,
		OnCancel:    j.cancelling,
		User:        a.jobUser,
		Cgroup:      a.cgroups.group(j, j.state.StartedAt),
	}, j.runnerEvent)
	if err != nil {
		log.Warn("job failed to start", "err", err)
		j.fail(fmt.Sprintf("failed to start: %v", err))
		return
	}
	// The process identity and the started record are stored together:
	// a successor that finds the pid also finds the job reported running.
	// (Between Start and this write, a crash of the agent leaves a job
	// with no pid, which its successor reports as failed while it may
	// run on: a window of one spool write.)
	id := proc.Identity()
	j.commit(func(st *gantrypb.AgentJob) {
		st.Pid, st.StartTime, st.BootId = int64(id.PID), id.StartTime, id.BootID
	}, false, &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{
		Pid: int64(id.PID), Ts: j.state.StartedAt}}})
	log.Info("job started", "pid", id.PID, "gpus", gpus)
	j.follow(ctx, proc)
}

// runnerEvent spools an event of the job's runner.
func (j *job) runnerEvent(ev runner.Event) {
	j.append(j.event(ev.Kind, ev.Message, 0))
}

// event is a job event record, with its kind and message cut to the
// limits and made valid UTF-8 (a protobuf string must be).
func (j *job) event(kind lifecycle.EventKind, msg string, count uint64) *gantrypb.Record {
	return &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{
		Ts: now(), Kind: clip(string(kind), limits.MaxEventKindBytes), Message: clip(msg, limits.MaxEventMessageBytes),
		Count: count}}}
}

// clip cuts s to at most n bytes of valid UTF-8, marking a cut with "...".
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	const mark = "..."
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// cancelling persists a cancel that has sent SIGTERM, so that an agent
// restarted before the job ends still escalates and reports it cancelled.
func (j *job) cancelling(reason lifecycle.ExitReason, at time.Time) {
	j.stMu.Lock()
	defer j.stMu.Unlock()
	if j.state.ExitIndex != 0 {
		return // reported already; the state may be gone with the ack
	}
	j.state.CancelReason = string(reason)
	j.state.CancelAt = float64(at.UnixNano()) / 1e9
	if err := j.a.saveJob(j.state); err != nil {
		j.a.log.Error("save cancel", "job", j.id, "err", err)
	}
}

// setProc publishes the job's process to cancel, and passes on a cancel
// that arrived before it existed.
func (j *job) setProc(proc *runner.Process) {
	j.mu.Lock()
	j.proc = proc
	cancelled := j.cancelled
	j.mu.Unlock()
	if cancelled {
		proc.Cancel(lifecycle.ReasonCancelled)
	}
}

// follow tails the job's metrics and log files into the spool from the
// offsets in its state until the process exits, then reports the exit. It
// serves jobs this agent launched and jobs it re-adopted alike.
func (j *job) follow(ctx context.Context, proc *runner.Process) {
	log := j.a.log.With("job", j.id)
	j.setProc(proc)
	dir := jobDir(j.a.cfg.DataDir, j.id)
	logPath := filepath.Join(dir, LogFileName)
	j.stMu.Lock()
	metricsOffset, logOffset := j.state.MetricsOffset, j.state.LogOffset
	j.stMu.Unlock()
	j.metrics = metricsfile.NewTailer(filepath.Join(dir, MetricsFileName), metricsOffset)
	j.logs = logtail.NewFollower(logPath, logOffset, logChunkBytes)
	// The job's files are the job's: a file there that its user does not
	// own (a hard link to someone else's) is not read.
	j.owner = safefile.AnyOwner
	if owner, err := dirOwner(dir); err == nil {
		j.owner = owner
		j.metrics.RequireOwner(owner)
		j.logs.RequireOwner(owner)
	} else {
		log.Warn("job directory", "err", err)
	}
	defer j.metrics.Close()
	defer j.logs.Close()

	// The tails follow the files while the process runs and stop when it
	// exits; the drain below then takes what is left, within bounds.
	tailCtx, stopTails := context.WithCancel(context.Background())
	// The health checks run while the process does.
	healthCtx, stopHealth := context.WithCancel(ctx)
	healthDone := j.startHealth(healthCtx, j.resumed)
	defer func() {
		stopHealth()
		healthDone()
	}()
	var tails sync.WaitGroup
	tails.Add(2)
	go func() {
		defer tails.Done()
		for {
			b, err := j.metrics.Next(tailCtx)
			if err != nil {
				if !errors.Is(err, context.Canceled) {
					j.tailFailed(&j.metricsDead, "metrics file", err)
				}
				return
			}
			j.commitMetrics(b)
		}
	}()
	go func() {
		defer tails.Done()
		for {
			chunks, err := j.logs.Next(tailCtx)
			if err != nil {
				if !errors.Is(err, context.Canceled) {
					j.tailFailed(&j.logsDead, "log file", err)
				}
				return
			}
			end := j.logs.Offset()
			j.commit(func(st *gantrypb.AgentJob) { st.LogOffset = end }, false, j.logRecords(chunks)...)
		}
	}()

	select {
	case <-proc.Done():
		// No verdict about a job that has ended.
		stopHealth()
	case <-ctx.Done():
		// The agent is stopping; the job runs on in its own session, and
		// the next agent re-adopts it from the offsets stored with the
		// records already spooled.
		stopTails()
		tails.Wait()
		return
	}
	stopTails()
	tails.Wait()
	metricsCut := j.drain(ctx, &j.metricsDead, j.metrics.ReadPos(), j.metrics.Size, func() (int64, bool, error) {
		b, err := j.metrics.Poll()
		got := len(b.Lines) > 0 || len(b.Bad) > 0 || b.Truncated
		if got {
			j.commitMetrics(b)
		}
		return j.metrics.ReadPos(), got, err
	})
	logsCut := j.drain(ctx, &j.logsDead, j.logs.Offset(), j.logs.Size, func() (int64, bool, error) {
		chunks, err := j.logs.Poll()
		if len(chunks) > 0 {
			end := j.logs.Offset()
			j.commit(func(st *gantrypb.AgentJob) { st.LogOffset = end }, false, j.logRecords(chunks)...)
		}
		return j.logs.Offset(), len(chunks) > 0, err
	})
	if ctx.Err() != nil {
		return // as above: the next agent finishes the job
	}
	j.finish(proc.Result(), logPath, metricsCut, logsCut)
}

// tailFailed reports once that one of the job's files cannot be read
// (refused by safefile, or a read error) and stops reading it: the job
// still runs and ends normally, without what that file would have given.
func (j *job) tailFailed(dead *atomic.Bool, what string, err error) {
	if dead.Swap(true) {
		return
	}
	j.a.log.Warn("not reading a job file", "job", j.id, "file", what, "err", err)
	j.append(j.event(lifecycle.EventReadError, fmt.Sprintf("%s not read: %v", what, err), 0))
}

// drain reads what is left of one file after the process exited, by
// repeated non-blocking polls (each committing what it read to the spool)
// until one reads nothing at all: first is the read position before the
// first poll, size the file's size (taken right after the first poll,
// which opens a file the tail had not opened yet), and poll returns the
// position after it and whether it produced records. It stops early, and
// returns a reason, once drainMaxBytes have been read, or once it has
// spent drainMaxTime reading bytes written after the exit (past size),
// not counting time spent waiting for the spool. What the file held at the
// exit is the job's output, read to the end however long that takes
// (within drainMaxBytes); only a file that keeps growing is cut off by
// time. A dead tail is not drained.
func (j *job) drain(ctx context.Context, dead *atomic.Bool, first int64, size func() (int64, error), poll func() (pos int64, got bool, err error)) string {
	if dead.Load() {
		return ""
	}
	// The file's size at the exit, taken after the first poll: a job that
	// wrote and exited before its tail first looked has its file opened
	// by that poll.
	atExit := int64(-1)
	var start time.Time // when the drain got past what was there at the exit
	var waitedAtStart int64
	var read int64   // bytes read, summed over truncations
	changed := false // the file shrank or was replaced: written after the exit
	last := first
	for ctx.Err() == nil {
		pos, got, err := poll()
		if err == nil && atExit < 0 {
			atExit, err = size()
		}
		if err != nil {
			j.tailFailed(dead, "job file after exit", err)
			return ""
		}
		if !got && pos == last {
			return "" // the end: nothing read, not even part of a line
		}
		if pos >= last {
			read += pos - last
		} else {
			read += pos // a truncation restarted at 0
			changed = true
		}
		last = pos
		if read >= drainMaxBytes {
			return fmt.Sprintf("more than %d MiB were still unread when the process exited", drainMaxBytes>>20)
		}
		if pos <= atExit && !changed {
			continue
		}
		if start.IsZero() {
			start, waitedAtStart = time.Now(), j.spoolWait.Load()
		}
		if spent := time.Since(start) - time.Duration(j.spoolWait.Load()-waitedAtStart); spent >= drainMaxTime {
			return fmt.Sprintf("the file was still being written %s after the process exited", drainMaxTime)
		}
	}
	return ""
}

// commitMetrics spools one batch of metric lines with its offset.
func (j *job) commitMetrics(b metricsfile.Batch) {
	recs := j.metricRecords(b)
	j.commit(func(st *gantrypb.AgentJob) { st.MetricsOffset = b.Offset }, false, recs...)
	j.healthLines(b)
}

// finish spools the last points, the last log bytes and the exit record in
// one append, in that order: whoever reads the terminal state reads the
// final metrics with it (invariant I2). metricsCut and logsCut say why
// reading a file after the exit stopped early ("" when it reached the end).
func (j *job) finish(res runner.Result, logPath, metricsCut, logsCut string) {
	log := j.a.log.With("job", j.id)
	var recs []*gantrypb.Record
	var drainErrs []error
	var b metricsfile.Batch
	b.Offset = j.metrics.Offset()
	if !j.metricsDead.Load() && metricsCut == "" {
		// Only the partial last line is left: the polls reached the end.
		var err error
		b, err = j.metrics.Drain()
		if err != nil {
			drainErrs = append(drainErrs, fmt.Errorf("metrics file: %w", err))
		}
		recs = append(recs, j.metricRecords(b)...)
	}
	if !j.logsDead.Load() && logsCut == "" {
		chunks, err := j.logs.Drain()
		if err != nil {
			drainErrs = append(drainErrs, fmt.Errorf("log file: %w", err))
		}
		recs = append(recs, j.logRecords(chunks)...)
	}
	if rec := j.dropEvent(true); rec != nil {
		recs = append(recs, rec)
	}
	for _, c := range []struct{ what, cut string }{{"metrics file", metricsCut}, {"log file", logsCut}} {
		if c.cut != "" {
			recs = append(recs, j.event(lifecycle.EventReadError,
				fmt.Sprintf("stopped reading the %s: %s; the rest of it is not reported", c.what, c.cut), 0))
		}
	}
	var tail string
	if !j.logsDead.Load() {
		var err error
		tail, err = logtail.TailOwned(logPath, logTailBytes, j.owner)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			drainErrs = append(drainErrs, fmt.Errorf("log tail: %w", err))
		}
	}
	exit := &gantrypb.JobExit{
		Signal: clip(res.Signal, limits.MaxSignalBytes), Ts: now(), FinalMetrics: j.final.Metrics(),
		LogTail: clip(tail, limits.MaxLogTailBytes), Reason: clip(string(res.Reason), limits.MaxEventKindBytes),
	}
	if !res.EndedAt.IsZero() {
		// The supervisor saw the end; for a job that ended while the
		// agent was down, that is earlier than now.
		exit.Ts = float64(res.EndedAt.UnixNano()) / 1e9
	}
	if res.ExitCode != nil {
		code := int32(*res.ExitCode)
		exit.ExitCode = &code
	}
	if res.Err != nil {
		exit.Error = clip(exitError(res.Err), limits.MaxExitErrorBytes)
	}
	for _, e := range drainErrs {
		// Reading the files failed after exit: the user must hear of it.
		recs = append(recs, j.event(lifecycle.EventReadError, e.Error(), 0))
		log.Error("draining job files after exit", "err", e)
	}
	recs = append(recs, &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Exit{Exit: exit}})
	metricsOffset, logOffset := b.Offset, j.logs.Offset()
	j.commit(func(st *gantrypb.AgentJob) {
		st.MetricsOffset, st.LogOffset = metricsOffset, logOffset
	}, true, recs...)
	code := "none"
	if res.ExitCode != nil {
		code = fmt.Sprint(*res.ExitCode)
	}
	log.Info("job exited", "exit_code", code, "signal", res.Signal, "reason", res.Reason, "error", exit.Error)
}

// exitError is the job's error for a Result.Err. The runner's own verdicts
// are worded for the user already; anything else is a failed wait.
func exitError(err error) string {
	for _, known := range []error{runner.ErrVanished, runner.ErrRebooted, runner.ErrNoStatus, runner.ErrStart} {
		if errors.Is(err, known) {
			return err.Error()
		}
	}
	return fmt.Sprintf("waiting for the process failed: %v", err)
}

// fail reports a job that never ran, or that this agent cannot follow.
func (j *job) fail(reason string) {
	j.commit(nil, true, &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{
		Ts: now(), Error: clip(reason, limits.MaxExitErrorBytes), FinalMetrics: map[string]float64{}}}})
}

// commit spools recs and the job's state, changed by update (may be nil), in
// one spool transaction (spool.AppendWithJob): the read offsets stored are
// exactly those the spooled records cover, so a restarted agent neither
// loses nor repeats a line whenever it was stopped. With exit, recs end with
// the exit record and its index is stored as the state's ExitIndex. It
// returns the index of the last record.
//
// A failed write (a full disk, above all) is retried with backoff until it
// succeeds: meanwhile the caller, a tail, reads nothing more, so the job's
// data waits in its files and nothing is lost. Only the agent stopping ends
// the retries (then 0 is returned and the state is unchanged, so the next
// agent reads those lines again).
func (j *job) commit(update func(*gantrypb.AgentJob), exit bool, recs ...*gantrypb.Record) uint64 {
	j.stMu.Lock()
	defer j.stMu.Unlock()
	next := proto.CloneOf(j.state)
	if update != nil {
		update(next)
	}
	if !exit {
		// The exit record never waits: it ends the job, and nothing of
		// the job comes after it.
		if err := j.waitShare(); err != nil {
			return 0
		}
	}
	var idx uint64
	err := j.retrySpool(len(recs), func() error {
		var err error
		idx, err = j.a.spool.AppendWithJob(j.id, func(last uint64) ([]byte, error) {
			if exit {
				next.ExitIndex = last
			}
			return proto.Marshal(next)
		}, recs...)
		return err
	})
	if err != nil {
		return 0
	}
	j.state = next
	j.publish()
	return idx
}

// waitShare waits while the job has jobSpoolShare records unacked in the
// spool, or until the agent stops (then the next agent reads those lines
// again). The time waited counts as spool waiting (see drain).
//
// Only while the link is up: the share keeps the link's picks fair, and
// with no link nothing is picked. During a cut the spool is the outbox it
// always was (a job's records, its exit above all, are safe there, not
// left to a file the job may still change); a backlog built up then is
// sent in turn with the other jobs' records after the reconnect, as far as
// the link's read-ahead sees.
func (j *job) waitShare() error {
	if j.a.linkUp == nil || !j.a.linkUp() || j.a.spool.StreamPending(j.id) < jobSpoolShare {
		return nil
	}
	start := time.Now()
	j.holding.Store(true)
	defer func() {
		j.holding.Store(false)
		j.spoolWait.Add(int64(time.Since(start)))
	}()
	// No acks come while the link is down: the wait ends then too, and
	// the job spools everything until it is back.
	ctx, cancel := context.WithCancel(j.a.runCtx())
	defer cancel()
	go func() {
		tick := time.NewTicker(linkCheckEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if !j.a.linkUp() {
					cancel()
					return
				}
			}
		}
	}()
	if err := j.a.spool.WaitStreamBelow(ctx, j.id, jobSpoolShare); err != nil {
		if j.a.runCtx().Err() == nil {
			return nil // the link went down
		}
		j.a.log.Warn("agent stopping while the job's records wait for acks; the next agent reads them again", "job", j.id, "err", err)
		return err
	}
	return nil
}

// linkCheckEvery is how often a job held to its share of the spool checks
// that the link is still up.
const linkCheckEvery = 100 * time.Millisecond

// append spools records that move no offset (events) and returns the index
// of the last one. Like commit, it retries until the spool takes them.
func (j *job) append(recs ...*gantrypb.Record) uint64 {
	if len(recs) == 0 {
		return 0
	}
	var idx uint64
	err := j.retrySpool(len(recs), func() error {
		var err error
		idx, err = j.a.spool.Append(recs...)
		return err
	})
	if err != nil {
		return 0
	}
	return idx
}

// Backoff of the retries of a failed spool write.
const (
	spoolRetryMin = 50 * time.Millisecond
	spoolRetryMax = 5 * time.Second
)

// retrySpool runs write until it succeeds or the agent stops, and returns
// its last error only in the latter case. The failure and the recovery are
// logged once each, not once per attempt; time spent here is added to
// spoolWait so that the bounded drain after exit does not count it.
func (j *job) retrySpool(n int, write func() error) error {
	err := write()
	if err == nil {
		return nil
	}
	ctx := j.a.runCtx()
	log := j.a.log.With("job", j.id)
	log.Error("spool write failed: holding back the job's records (they stay in its files) and retrying",
		"records", n, "err", err)
	start := time.Now()
	defer func() { j.spoolWait.Add(int64(time.Since(start))) }()
	backoff := spoolRetryMin
	for {
		select {
		case <-ctx.Done():
			log.Warn("agent stopping while the spool is not writable; the next agent reads those records again",
				"records", n, "err", err)
			return err
		case <-time.After(backoff):
		}
		if err = write(); err == nil {
			log.Info("spool writable again; resuming", "after", time.Since(start).Round(time.Millisecond))
			return nil
		}
		backoff = min(2*backoff, spoolRetryMax)
	}
}

func (j *job) metricRecords(b metricsfile.Batch) []*gantrypb.Record {
	recs := make([]*gantrypb.Record, 0, len(b.Lines)+2)
	if b.Truncated {
		recs = append(recs, j.event(lifecycle.EventMetricsTruncated,
			"the metrics file shrank or was replaced; reading restarted from its beginning", 0))
	}
	var dropped int
	for i := range b.Lines {
		l := &b.Lines[i]
		dropped += l.Dropped + j.final.Observe(l)
		ts := l.TS
		if ts == 0 {
			ts = now()
		}
		// The named form: what the spool stores, and the link flattens.
		p := flat.Named(l.Names, l.Vals)
		p.Step, p.Ts = l.Step, ts
		recs = append(recs, &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Point{Point: p}})
	}
	if len(b.Bad) > 0 {
		first := b.Bad[0]
		msg := fmt.Sprintf("skipped %d bad metrics line(s); first at byte %d: %s", len(b.Bad), first.Offset, first.Reason)
		recs = append(recs, j.event(lifecycle.EventBadMetricLines, msg, uint64(len(b.Bad))))
	}
	if dropped > 0 {
		j.dropMu.Lock()
		j.dropped += uint64(dropped)
		j.dropMu.Unlock()
	}
	if rec := j.dropEvent(false); rec != nil {
		recs = append(recs, rec)
	}
	return recs
}

// dropEvent reports the metric values dropped by the key caps since the
// last report: at most once per dropEventInterval, or now with final
// (the exit). nil when there is nothing to report yet.
func (j *job) dropEvent(final bool) *gantrypb.Record {
	j.dropMu.Lock()
	defer j.dropMu.Unlock()
	if j.dropped == 0 || (!final && time.Since(j.lastDropSent) < dropEventInterval) {
		return nil
	}
	n := j.dropped
	j.dropped, j.lastDropSent = 0, time.Now()
	return j.event(lifecycle.EventMetricKeysDropped, fmt.Sprintf("dropped %d metric value(s): a job keeps at most %d distinct "+
		"metric keys, %d per line, each at most %d bytes long", n, metricsfile.MaxJobKeys, limits.MaxKeysPerPoint,
		limits.MaxMetricKeyBytes), n)
}

func (j *job) logRecords(chunks []logtail.Chunk) []*gantrypb.Record {
	recs := make([]*gantrypb.Record, len(chunks))
	for i, c := range chunks {
		recs[i] = &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Log{Log: &gantrypb.LogChunk{
			Offset: uint64(c.Offset), Data: c.Data}}}
	}
	return recs
}

// jobSeen is the part of a job's state the GPU sampler's checks read.
type jobSeen struct {
	pid   int
	ended bool // its exit record is spooled
	gpus  []uint32
}

// publish makes the job's current state visible to seenState. Call it
// wherever j.state is replaced (with stMu held, or before the job is
// shared).
func (j *job) publish() {
	j.seen.Store(&jobSeen{pid: int(j.state.GetPid()), ended: j.state.GetExitIndex() != 0,
		gpus: slices.Clone(j.state.GetGpus())})
}

// seenState is the job's last published state, never nil once the job
// exists.
func (j *job) seenState() *jobSeen {
	if s := j.seen.Load(); s != nil {
		return s
	}
	return &jobSeen{}
}
