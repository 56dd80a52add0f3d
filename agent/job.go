package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/agent/logtail"
	"github.com/gantry-ml/gantry/agent/metricsfile"
	"github.com/gantry-ml/gantry/agent/runner"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	protolink "github.com/gantry-ml/gantry/proto/link"
)

// File names inside a job's directory.
const (
	MetricsFileName = "metrics.jsonl"
	LogFileName     = "output.log"
	logChunkBytes   = 64 << 10
	logTailBytes    = 4 << 10
)

// job is one running job: the process, and the two tails feeding the spool.
type job struct {
	a     *Agent
	id    string
	final metricsfile.Final // owned by the metrics tail, then by finish

	metrics *metricsfile.Tailer
	logs    *logtail.Follower

	// stMu guards state, and serialises every spool write that carries it,
	// so that the state stored with a batch of records is exactly what
	// those records and the ones before them cover.
	stMu  sync.Mutex
	state *gantrypb.AgentJob

	mu        sync.Mutex
	proc      *runner.Process
	cancelled bool // a cancel arrived, possibly before the process started
}

func (j *job) cancel() {
	j.mu.Lock()
	j.cancelled = true
	proc := j.proc
	j.mu.Unlock()
	if proc != nil {
		proc.Cancel(runner.ReasonCancelled)
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
	j := &job{a: a, id: m.JobId, state: &gantrypb.AgentJob{JobId: m.JobId, Spec: m.Spec, Gpus: m.Gpus}}
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

	if err := os.MkdirAll(dir, 0o750); err != nil {
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
	proc, err := runner.Start(runner.Spec{
		JobID: j.id, Setup: spec.GetSetup(), Run: spec.GetRun(), JobDir: dir, Workdir: spec.GetWorkdir(),
		Env: spec.GetEnv(), GPUs: gpus, MetricsFile: filepath.Join(dir, MetricsFileName),
		LogFile:     filepath.Join(dir, LogFileName),
		KillGrace:   time.Duration(spec.GetKillGraceMs()) * time.Millisecond,
		MaxDuration: time.Duration(spec.GetMaxDurationMs()) * time.Millisecond,
		StatusFile:  j.state.StatusFile,
		OnCancel:    j.cancelling,
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
	j.append(&gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{
		Ts: now(), Kind: ev.Kind, Message: ev.Message}}})
}

// cancelling persists a cancel that has sent SIGTERM, so that an agent
// restarted before the job ends still escalates and reports it cancelled.
func (j *job) cancelling(reason string, at time.Time) {
	j.stMu.Lock()
	defer j.stMu.Unlock()
	if j.state.ExitIndex != 0 {
		return // reported already; the state may be gone with the ack
	}
	j.state.CancelReason = reason
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
		proc.Cancel(runner.ReasonCancelled)
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
	defer j.metrics.Close()
	defer j.logs.Close()

	// The tails follow the files while the process runs and stop when it
	// exits; the drain below then takes everything left.
	tailCtx, stopTails := context.WithCancel(context.Background())
	var tails sync.WaitGroup
	tails.Add(2)
	go func() {
		defer tails.Done()
		for {
			b, err := j.metrics.Next(tailCtx)
			if err != nil {
				if !errors.Is(err, context.Canceled) {
					log.Error("metrics tail", "err", err)
				}
				return
			}
			j.commit(func(st *gantrypb.AgentJob) { st.MetricsOffset = b.Offset }, false, j.metricRecords(b)...)
		}
	}()
	go func() {
		defer tails.Done()
		for {
			chunks, err := j.logs.Next(tailCtx)
			if err != nil {
				if !errors.Is(err, context.Canceled) {
					log.Error("log tail", "err", err)
				}
				return
			}
			end := j.logs.Offset()
			j.commit(func(st *gantrypb.AgentJob) { st.LogOffset = end }, false, j.logRecords(chunks)...)
		}
	}()

	select {
	case <-proc.Done():
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
	j.finish(proc.Result(), logPath)
}

// finish drains both files to EOF and spools the last points, the last log
// bytes and the exit record in one append, in that order: whoever reads
// the terminal state reads the final metrics with it (invariant I2).
func (j *job) finish(res runner.Result, logPath string) {
	log := j.a.log.With("job", j.id)
	var recs []*gantrypb.Record
	var drainErrs []error
	b, err := j.metrics.Drain()
	if err != nil {
		drainErrs = append(drainErrs, fmt.Errorf("metrics file: %w", err))
	}
	recs = append(recs, j.metricRecords(b)...)
	chunks, err := j.logs.Drain()
	if err != nil {
		drainErrs = append(drainErrs, fmt.Errorf("log file: %w", err))
	}
	recs = append(recs, j.logRecords(chunks)...)
	tail, err := logtail.Tail(logPath, logTailBytes)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		drainErrs = append(drainErrs, fmt.Errorf("log tail: %w", err))
	}
	exit := &gantrypb.JobExit{
		Signal: res.Signal, Ts: now(), FinalMetrics: j.final.Metrics(), LogTail: tail, Reason: res.Reason,
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
		exit.Error = exitError(res.Err)
	}
	for _, e := range drainErrs {
		// Reading the files failed after exit: the user must hear of it.
		recs = append(recs, &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{
			Ts: now(), Kind: protolink.EventReadError, Message: e.Error()}}})
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
		Ts: now(), Error: reason, FinalMetrics: map[string]float64{}}}})
}

// commit spools recs and the job's state, changed by update (may be nil), in
// one spool transaction (spool.AppendWithJob): the read offsets stored are
// exactly those the spooled records cover, so a restarted agent neither
// loses nor repeats a line whenever it was stopped. With exit, recs end with
// the exit record and its index is stored as the state's ExitIndex. It
// returns the index of the last record, 0 on error (logged: the spool is
// the agent's disk, and a full disk must be loud).
func (j *job) commit(update func(*gantrypb.AgentJob), exit bool, recs ...*gantrypb.Record) uint64 {
	j.stMu.Lock()
	defer j.stMu.Unlock()
	next := proto.CloneOf(j.state)
	if update != nil {
		update(next)
	}
	idx, err := j.a.spool.AppendWithJob(j.id, func(last uint64) ([]byte, error) {
		if exit {
			next.ExitIndex = last
		}
		return proto.Marshal(next)
	}, recs...)
	if err != nil {
		j.a.log.Error("spool append failed: records lost", "job", j.id, "records", len(recs), "err", err)
		return 0
	}
	j.state = next
	return idx
}

// append spools records that move no offset (events) and returns the index
// of the last one (0 on error, which is logged).
func (j *job) append(recs ...*gantrypb.Record) uint64 {
	if len(recs) == 0 {
		return 0
	}
	idx, err := j.a.spool.Append(recs...)
	if err != nil {
		j.a.log.Error("spool append failed: records lost", "job", j.id, "records", len(recs), "err", err)
		return 0
	}
	return idx
}

func (j *job) metricRecords(b metricsfile.Batch) []*gantrypb.Record {
	recs := make([]*gantrypb.Record, 0, len(b.Lines)+2)
	if b.Truncated {
		recs = append(recs, &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{
			Ts: now(), Kind: protolink.EventMetricsTruncated, Message: "the metrics file shrank or was replaced; reading restarted from its beginning"}}})
	}
	for _, l := range b.Lines {
		j.final.Observe(l)
		ts := l.TS
		if ts == 0 {
			ts = now()
		}
		recs = append(recs, &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{
			Step: l.Step, Ts: ts, Values: l.Values}}})
	}
	if len(b.Bad) > 0 {
		first := b.Bad[0]
		msg := fmt.Sprintf("skipped %d bad metrics line(s); first at byte %d: %s", len(b.Bad), first.Offset, first.Reason)
		recs = append(recs, &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{
			Ts: now(), Kind: protolink.EventBadMetricLines, Message: msg, Count: uint64(len(b.Bad))}}})
	}
	return recs
}

func (j *job) logRecords(chunks []logtail.Chunk) []*gantrypb.Record {
	recs := make([]*gantrypb.Record, len(chunks))
	for i, c := range chunks {
		recs[i] = &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Log{Log: &gantrypb.LogChunk{
			Offset: uint64(c.Offset), Data: c.Data}}}
	}
	return recs
}
