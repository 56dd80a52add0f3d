package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gantry-ml/gantry/agent/health"
	"github.com/gantry-ml/gantry/agent/metricsfile"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// healthEvalEvery is how often a job's health is judged. A variable so a
// test can make it shorter; detection latency is at most this plus one
// GPU sampling interval past the condition's window.
var healthEvalEvery = time.Second

// jobHealth is a job's health monitor, fed by its metrics tail and by the
// agent's GPU sampler, judged by its own loop.
type jobHealth struct {
	mu sync.Mutex
	m  *health.Monitor
}

// startHealth builds the job's monitor and runs its loop until ctx ends
// (the job's process exited or the agent stops). resumed says the job was
// re-adopted: its monitor knows nothing of what was reported before.
func (j *job) startHealth(ctx context.Context, resumed bool) (wait func()) {
	j.stMu.Lock()
	spec, gpus := j.state.GetSpec(), j.state.GetGpus()
	j.stMu.Unlock()
	cfg := health.ConfigWith(spec.GetHealth(), j.a.cfg.Health)
	if cfg.Disabled {
		return func() {}
	}
	h := &jobHealth{m: health.New(cfg, gpus, time.Now(), resumed)}
	j.healthMu.Lock()
	j.health = h
	j.healthMu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(healthEvalEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				h.mu.Lock()
				verdicts := h.m.Eval(now)
				events := h.m.Events(now)
				h.mu.Unlock()
				for _, v := range verdicts {
					j.reportCondition(v)
				}
				for _, e := range events {
					j.reportHealthEvent(e)
				}
			}
		}
	}()
	return func() {
		<-done
		j.healthMu.Lock()
		j.health = nil
		j.healthMu.Unlock()
	}
}

// healthLines tells the monitor of metric lines just spooled.
func (j *job) healthLines(b metricsfile.Batch) {
	j.healthMu.Lock()
	h := j.health
	j.healthMu.Unlock()
	if h == nil || len(b.Lines) == 0 {
		return
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range b.Lines {
		h.m.Line(b.Lines[i].Step, now)
	}
}

// healthSample hands a GPU sample to every running job's monitor, and
// tells each job once of a fault on one of its GPUs.
func (a *Agent) healthSample(s *gantrypb.GPUSample) {
	now := time.Now()
	faulty := map[uint32]string{}
	for _, g := range s.GetGpus() {
		if g.GetFault() != "" {
			faulty[g.GetIndex()] = g.GetFault()
		}
	}
	a.mu.Lock()
	var hs []*jobHealth
	var tell []*job
	for _, j := range a.jobs {
		j.healthMu.Lock()
		if j.health != nil {
			hs = append(hs, j.health)
		}
		j.healthMu.Unlock()
		if len(faulty) > 0 {
			tell = append(tell, j)
		}
	}
	a.mu.Unlock()
	for _, j := range tell {
		j.gpuFaults(faulty)
	}
	for _, h := range hs {
		h.mu.Lock()
		h.m.Sample(s, now)
		h.mu.Unlock()
	}
}

// reportCondition spools a condition record: it travels in the job's
// stream like any other record (exactly once, in order with its points).
func (j *job) reportCondition(v health.Verdict) {
	gpus := v.GPUs
	if len(gpus) > limits.MaxConditionGPUs {
		gpus = gpus[:limits.MaxConditionGPUs]
	}
	state := "cleared"
	if v.Active {
		state = "began"
	}
	j.a.log.Info("job health condition "+state, "job", j.id, "condition", v.Kind, "signal", v.Signal, "evidence", v.Evidence)
	j.append(&gantrypb.Record{JobId: j.id, Body: &gantrypb.Record_Condition{Condition: &gantrypb.HealthCondition{
		Ts: float64(v.At.UnixNano()) / 1e9, Kind: v.Kind, Active: v.Active,
		Evidence: clip(v.Evidence, limits.MaxEventMessageBytes), Gpus: gpus,
		Signal: clip(v.Signal, limits.MaxEventKindBytes)}}})
}

// reportHealthEvent spools a job event the monitor concluded (a GPU
// throttled, or no longer): information in the job's stream, which no
// policy acts on.
func (j *job) reportHealthEvent(e health.Event) {
	j.a.log.Info("job GPU event", "job", j.id, "kind", e.Kind, "gpu", e.GPU, "message", e.Message)
	j.append(j.event(e.Kind, e.Message, e.Count))
}

// gpuFaults reports, once per GPU, a fault on a GPU the job was given:
// the job's results may be wrong and it may hang or die.
func (j *job) gpuFaults(faulty map[uint32]string) {
	s := j.seenState()
	gpus, ended := s.gpus, s.ended
	if ended {
		return
	}
	for _, g := range gpus {
		fault, ok := faulty[g]
		if !ok {
			continue
		}
		j.healthMu.Lock()
		told := j.faultsTold[g]
		if j.faultsTold == nil {
			j.faultsTold = map[uint32]bool{}
		}
		j.faultsTold[g] = true
		j.healthMu.Unlock()
		if told {
			continue
		}
		j.a.log.Error("a GPU of a running job is failing", "job", j.id, "gpu", g, "fault", fault)
		j.append(j.event(lifecycle.EventGPUUnhealthy, fmt.Sprintf("GPU %d of this job is failing: %s; "+
			"the scheduler places nothing more on it", g, fault), 0))
	}
}
