package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

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
	state *gantrypb.AgentJob
	proc  *runner.Process
	final metricsfile.Final

	metrics *metricsfile.Tailer
	logs    *logtail.Follower

	mu        sync.Mutex
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

// run owns the job from launch to its exit record.
func (j *job) run(ctx context.Context) {
	a := j.a
	log := a.log.With("job", j.id)
	spec := j.state.Spec
	dir := jobDir(a.cfg.DataDir, j.id)
	metricsPath := filepath.Join(dir, MetricsFileName)
	logPath := filepath.Join(dir, LogFileName)

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
	j.state.StartedAt = now()
	if err := a.saveJob(j.state); err != nil {
		log.Error("save job state", "err", err)
	}
	proc, err := runner.Start(runner.Spec{
		JobID: j.id, Setup: spec.GetSetup(), Run: spec.GetRun(), JobDir: dir, Workdir: spec.GetWorkdir(),
		Env: spec.GetEnv(), GPUs: gpus, MetricsFile: metricsPath, LogFile: logPath,
		KillGrace:   time.Duration(spec.GetKillGraceMs()) * time.Millisecond,
		MaxDuration: time.Duration(spec.GetMaxDurationMs()) * time.Millisecond,
	}, func(ev runner.Event) {
		j.append(&gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{
			Ts: now(), Kind: ev.Kind, Message: ev.Message}}})
	})
	if err != nil {
		log.Warn("job failed to start", "err", err)
		j.fail(fmt.Sprintf("failed to start: %v", err))
		return
	}
	j.mu.Lock()
	j.proc = proc
	cancelled := j.cancelled
	j.mu.Unlock()
	if cancelled {
		proc.Cancel(runner.ReasonCancelled)
	}
	j.state.Pid = int64(proc.PID())
	if err := a.saveJob(j.state); err != nil {
		log.Error("save job state", "err", err)
	}
	log.Info("job started", "pid", proc.PID(), "gpus", gpus)
	j.append(&gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Started{Started: &gantrypb.JobStarted{
		Pid: int64(proc.PID()), Ts: j.state.StartedAt}}})

	j.metrics = metricsfile.NewTailer(metricsPath, 0)
	j.logs = logtail.NewFollower(logPath, 0, logChunkBytes)
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
			j.append(j.metricRecords(b)...)
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
			j.append(j.logRecords(chunks)...)
		}
	}()

	select {
	case <-proc.Done():
	case <-ctx.Done():
		// The agent is stopping; the job runs on in its own session.
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
	if res.ExitCode != nil {
		code := int32(*res.ExitCode)
		exit.ExitCode = &code
	}
	if res.Err != nil {
		exit.Error = fmt.Sprintf("waiting for the process failed: %v", res.Err)
	}
	for _, e := range drainErrs {
		// Reading the files failed after exit: the user must hear of it.
		recs = append(recs, &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{
			Ts: now(), Kind: protolink.EventReadError, Message: e.Error()}}})
		log.Error("draining job files after exit", "err", e)
	}
	recs = append(recs, &gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Exit{Exit: exit}})
	idx := j.append(recs...)
	code := "none"
	if res.ExitCode != nil {
		code = fmt.Sprint(*res.ExitCode)
	}
	log.Info("job exited", "exit_code", code, "signal", res.Signal, "reason", res.Reason)
	if idx > 0 {
		j.state.ExitIndex = idx
		if err := j.a.saveJob(j.state); err != nil {
			log.Error("save job state", "err", err)
		}
	}
}

// fail reports a job that never ran.
func (j *job) fail(reason string) {
	idx := j.append(&gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{
		Ts: now(), Error: reason, FinalMetrics: map[string]float64{}}}})
	j.state.ExitIndex = idx
	if err := j.a.saveJob(j.state); err != nil {
		j.a.log.Error("save job state", "job", j.id, "err", err)
	}
}

// append spools records and returns the index of the last one (0 on error,
// which is logged: the spool is the agent's disk, and a full disk must be
// loud).
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
