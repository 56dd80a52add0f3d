// Package feed turns what the FSM applied into hub messages: each change is
// encoded once as a WebSocket frame and published to its job or node topic.
// It runs on the Raft apply goroutine after the write transaction has
// committed, so it must stay cheap and never block.
package feed

import (
	"log/slog"
	"sync"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/hub"
	"github.com/gantry-ml/gantry/controller/view"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Feed implements fsm.Observer.
type Feed struct {
	hub *hub.Hub
	log *slog.Logger
	// onSchedule is called when a change may let the scheduler act
	// (a job queued, assigned, cancelled or ended; a node changed).
	onSchedule func()

	mu sync.Mutex
	// shown is the last state frame published per live job, so that a
	// batch of points does not produce a state frame each time.
	shown map[string]stateKey
}

type stateKey struct {
	state     gantrypb.JobState
	node      string
	cancel    bool
	startedAt int64
	// ranks is a multi-node job's rank states, one byte each (bounded by
	// the 64 ranks a job may have), so a rank starting or ending is a
	// state frame too.
	ranks string
	// conditions are the job's health condition kinds, so that a
	// condition set or cleared sends a state frame.
	conditions string
}

// rankStates encodes a job's rank states for stateKey.
func rankStates(j *gantrypb.Job) string {
	if len(j.Ranks) == 0 {
		return ""
	}
	b := make([]byte, len(j.Ranks))
	for i, r := range j.Ranks {
		b[i] = byte(r.State)
	}
	return string(b)
}

// conditionKinds joins the kinds of the job's current conditions.
func conditionKinds(j *gantrypb.Job) string {
	var s string
	for _, c := range j.Conditions {
		s += c.Kind + ","
	}
	return s
}

// New returns a feed publishing to h.
func New(h *hub.Hub, log *slog.Logger, onSchedule func()) *Feed {
	return &Feed{hub: h, log: log, onSchedule: onSchedule, shown: map[string]stateKey{}}
}

// Applied publishes one batch's changes: per job its points, events, then
// its state and final frames, so a watcher always sees the last points
// before the final frame.
func (f *Feed) Applied(c *fsm.Changes) {
	schedule := len(c.Nodes) > 0 || c.Restored
	if c.Restored {
		// The whole state was replaced: what was shown says nothing now.
		f.mu.Lock()
		f.shown = map[string]stateKey{}
		f.mu.Unlock()
	}
	for _, id := range c.JobOrder {
		topic := hub.JobTopic(id)
		if pts := c.Points[id]; len(pts) > 0 && f.hub.Has(topic) {
			points := view.PointsIn(pts, c.Keys)
			f.publish(topic, hub.Message{Kind: apiv1.FrameMetrics, MaxSeq: pts[len(pts)-1].Seq, Points: points},
				apiv1.Frame{Type: apiv1.FrameMetrics, Points: points})
		}
		for _, e := range c.Events[id] {
			ev := view.Event(e)
			f.publish(topic, hub.Message{Kind: apiv1.FrameEvent}, apiv1.Frame{Type: apiv1.FrameEvent, Event: &ev})
		}
		job := c.Jobs[id]
		if job == nil {
			continue
		}
		key := stateKey{state: job.State, node: job.Node, cancel: job.CancelRequested, startedAt: job.StartedAtMs,
			ranks: rankStates(job), conditions: conditionKinds(job)}
		f.mu.Lock()
		prev, seen := f.shown[id]
		changed := !seen || prev != key
		terminal := lifecycle.IsTerminal(job.State)
		if terminal {
			delete(f.shown, id)
		} else {
			f.shown[id] = key
		}
		f.mu.Unlock()
		if !changed {
			continue
		}
		schedule = true
		j := view.Job(job)
		f.publish(topic, hub.Message{Kind: apiv1.FrameState, Node: job.Node}, apiv1.Frame{Type: apiv1.FrameState, Job: &j})
		if terminal {
			f.publish(topic, hub.Message{Kind: apiv1.FrameFinal, Node: job.Node, Terminal: true}, apiv1.Frame{Type: apiv1.FrameFinal, Job: &j})
		}
	}
	for node, samples := range c.GPU {
		for _, s := range samples {
			g := view.GPUSample(s)
			f.publish(hub.NodeTopic(node), hub.Message{Kind: apiv1.FrameGPU}, apiv1.Frame{Type: apiv1.FrameGPU, GPU: &g})
		}
	}
	if schedule && f.onSchedule != nil {
		f.onSchedule()
	}
}

func (f *Feed) publish(topic string, m hub.Message, frame apiv1.Frame) {
	if !f.hub.Has(topic) {
		return
	}
	data, err := frame.Encode()
	if err != nil {
		// Only a non-finite float can fail here, and the agent never sends
		// one; log rather than take the apply loop down.
		f.log.Error("feed: encode frame", "topic", topic, "type", frame.Type, "err", err)
		return
	}
	m.Data = data
	f.hub.Publish(topic, m)
}
