package fsm

import (
	"github.com/gantry-ml/gantry/proto/flat"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Changes is what one applied batch changed, in apply order per job. The
// messages are the FSM's own copies: observers must treat them as read-only.
type Changes struct {
	// JobOrder lists changed jobs in the order they were first touched.
	JobOrder []string
	// Jobs holds each changed job's state after the batch.
	Jobs map[string]*gantrypb.Job
	// Points holds the points stored per job, in seq order. A point in the
	// flat form (KeyIdx, Vals) indexes Keys.
	Points map[string][]*gantrypb.MetricPoint
	// Keys are the metric names flat points in Points index.
	Keys []string
	keys flat.Table
	// Events holds the events stored per job, in seq order.
	Events map[string][]*gantrypb.JobEvent
	// GPU holds the GPU samples stored per node, in seq order.
	GPU map[string][]*gantrypb.GPUSample
	// Nodes holds each changed node's state after the batch.
	Nodes map[string]*gantrypb.Node
	// Restored is set when the whole state was replaced by a snapshot.
	Restored bool
	// Alerts counts alerts appended to the outbox (the notifier wakes).
	Alerts int
}

func newChanges() *Changes {
	return &Changes{
		Jobs:   map[string]*gantrypb.Job{},
		Points: map[string][]*gantrypb.MetricPoint{},
		Events: map[string][]*gantrypb.JobEvent{},
		GPU:    map[string][]*gantrypb.GPUSample{},
		Nodes:  map[string]*gantrypb.Node{},
	}
}

func (c *Changes) empty() bool {
	return len(c.Jobs) == 0 && len(c.Points) == 0 && len(c.Events) == 0 &&
		len(c.GPU) == 0 && len(c.Nodes) == 0 && !c.Restored && c.Alerts == 0
}

func (c *Changes) touch(id string) {
	if _, ok := c.Jobs[id]; ok {
		return
	}
	if _, ok := c.Points[id]; ok {
		return
	}
	if _, ok := c.Events[id]; ok {
		return
	}
	c.JobOrder = append(c.JobOrder, id)
}

func (c *Changes) job(j *gantrypb.Job) {
	c.touch(j.Id)
	c.Jobs[j.Id] = j
}

// key returns the index of name in Keys, adding it.
func (c *Changes) key(name string) uint32 {
	i := c.keys.Intern(name)
	c.Keys = c.keys.Keys()
	return i
}

func (c *Changes) point(jobID string, p *gantrypb.MetricPoint) {
	c.touch(jobID)
	c.Points[jobID] = append(c.Points[jobID], p)
}

func (c *Changes) event(jobID string, e *gantrypb.JobEvent) {
	c.touch(jobID)
	c.Events[jobID] = append(c.Events[jobID], e)
}

func (c *Changes) gpu(nodeID string, s *gantrypb.GPUSample) {
	c.GPU[nodeID] = append(c.GPU[nodeID], s)
}

func (c *Changes) node(n *gantrypb.Node) {
	c.Nodes[n.Id] = n
}
