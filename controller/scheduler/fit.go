package scheduler

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// ErrNeverFits marks a spec that no registered node could run even with
// every one of its GPUs free. The submit handler refuses such a job (400)
// instead of queueing it forever.
var ErrNeverFits = errors.New("the job can never be placed")

// listCap bounds how many node ids or GPU names one message lists, so a
// refusal or a reason stays one readable line on a large fleet.
const listCap = 8

// CheckFit reports whether spec could ever be placed on the registered
// nodes, counting every GPU of a node as free. Nodes in every state count:
// a node that is down (rebooting, cut off) comes back under the same id and
// nodes are never deregistered, so refusing a job because its only fitting
// host is down would refuse what will run later; the job's reason says what
// it waits for instead, and queue_timeout bounds the wait. With no nodes at
// all it returns nil: agents joining a fresh cluster after the first submit
// is normal. Otherwise a job that cannot fit gets an error wrapping
// ErrNeverFits whose text names the largest fit, e.g. "no node has 8 GPUs
// of type H100: the largest fit is 4 (gpu-host-2, 4× NVIDIA H100 80GB)".
// It is a pure function: it reads only its arguments.
func CheckFit(spec *gantrypb.JobSpec, nodes []*gantrypb.Node) error {
	if len(nodes) == 0 {
		return nil
	}
	if msg := unfit(spec, nodes); msg != "" {
		return fmt.Errorf("%w: %s", ErrNeverFits, msg)
	}
	return nil
}

// unfit is CheckFit's text without the sentinel ("" when the job fits or
// there are no nodes).
func unfit(spec *gantrypb.JobSpec, nodes []*gantrypb.Node) string {
	if len(nodes) == 0 {
		return ""
	}
	if lifecycle.IsGang(spec) {
		return unfitGang(spec, nodes)
	}
	want := int(spec.GetResources().GetGpus())
	gpuType := spec.GetResources().GetGpuType()
	if pin := spec.GetNode(); pin != "" {
		n := findNode(nodes, pin)
		if n == nil {
			return fmt.Sprintf("node %q is not registered; nodes: %s", pin, nodeIDs(nodes))
		}
		if have := countType(n, gpuType); have < want {
			return fmt.Sprintf("node %s has %d %s, fewer than the %d requested (%s)",
				n.Id, have, gpuNoun(have, gpuType), want, describeGPUs(n))
		}
		return ""
	}
	var best *gantrypb.Node
	bestHave := -1
	for _, n := range nodes {
		have := countType(n, gpuType)
		if have >= want {
			return ""
		}
		if have > bestHave || (have == bestHave && n.Id < best.Id) {
			best, bestHave = n, have
		}
	}
	if bestHave == 0 && gpuType != "" {
		return fmt.Sprintf("no node has GPUs of type %s; the GPUs registered are %s", gpuType, gpuNames(nodes))
	}
	return fmt.Sprintf("no node has %d %s: the largest fit is %d (%s, %s)",
		want, gpuNoun(want, gpuType), bestHave, best.Id, describeGPUs(best))
}

// Fleet is the cluster as queue reasons see it: every registered node, the
// GPUs held by assigned and running jobs, and the queued jobs in creation
// order. Build it once per request from one store read; it is read-only
// afterwards, so one Fleet serves every job of a list.
type Fleet struct {
	nodes   []*gantrypb.Node
	used    map[string]map[uint32]bool
	reasons map[string]string
	// nowMs and reserveAfter replay the scheduler's reservations for
	// multi-node jobs that waited long (ReserveGang); reserveAfter 0 (as
	// NewFleet) replays none.
	nowMs        int64
	reserveAfter time.Duration
}

// NewFleet computes the reason of every queued job among jobs, which must
// hold every non-terminal job (terminal ones are ignored) in creation order,
// the order in which the scheduler considers them. It replays no
// reservations (NewFleetAt does).
func NewFleet(nodes []*gantrypb.Node, jobs []*gantrypb.Job) *Fleet {
	return NewFleetAt(nodes, jobs, 0, 0)
}

// NewFleetAt is NewFleet that also replays the reservations of multi-node
// jobs queued at least reserveAfter before nowMs (the scheduler's
// ReserveAfter), so a job that waits because its GPUs are reserved says
// so. It is a pure function of its arguments.
func NewFleetAt(nodes []*gantrypb.Node, jobs []*gantrypb.Job, nowMs int64, reserveAfter time.Duration) *Fleet {
	f := &Fleet{nodes: append([]*gantrypb.Node(nil), nodes...), used: map[string]map[uint32]bool{},
		reasons: map[string]string{}, nowMs: nowMs, reserveAfter: reserveAfter}
	sort.Slice(f.nodes, func(a, b int) bool { return f.nodes[a].Id < f.nodes[b].Id })
	var queued []*gantrypb.Job
	for _, j := range jobs {
		switch {
		case lifecycle.HoldsGPUs(j.State):
			lifecycle.MarkHoldings(f.used, j, true)
		case j.State == gantrypb.JobState_JOB_STATE_QUEUED:
			queued = append(queued, j)
		}
	}
	f.explain(queued)
	return f
}

// Reason says why the queued job id is not running yet; "" for a job that
// was not queued when the fleet was built.
func (f *Fleet) Reason(id string) string { return f.reasons[id] }

// explain replays one scheduler pass over the queued jobs: in creation
// order each takes free GPUs on up nodes by Place, exactly as Reconcile
// would. That is how a job that fits the free GPUs now can still wait: an
// earlier job takes them first. Followers answer the same as the leader,
// except that the leader also skips up nodes whose agent is not connected
// to it, which the store does not record.
func (f *Fleet) explain(queued []*gantrypb.Job) {
	if len(queued) == 0 {
		return
	}
	// now is the free capacity as it stands; sim is what is left once
	// earlier queued jobs have taken their share.
	var now, sim []Candidate
	for _, n := range f.nodes {
		if n.State != gantrypb.NodeState_NODE_STATE_UP {
			continue
		}
		held := f.used[n.Id]
		taken := make(map[uint32]bool, len(held))
		for g := range held {
			taken[g] = true
		}
		now = append(now, NodeCandidate(n, held))
		sim = append(sim, NodeCandidate(n, taken))
	}
	simIndex := map[string]int{}
	for i, c := range sim {
		simIndex[c.ID] = i
	}
	placed := map[string]int{} // earlier queued jobs the pass places, per node
	var reservers []string     // multi-node jobs holding GPUs back, in order
	for _, j := range queued {
		if len(f.nodes) == 0 {
			f.reasons[j.Id] = "no agent connected yet: waiting for a node to register"
			continue
		}
		if msg := unfit(j.Spec, f.nodes); msg != "" {
			// Submitted before a node that could fit registered; it
			// waits until one does (or its queue_timeout).
			f.reasons[j.Id] = msg + "; waiting for a node that fits to register"
			continue
		}
		if lifecycle.IsGang(j.Spec) {
			if ranks, ok := PlaceGang(j.Spec, sim); ok {
				var on []string
				for _, r := range ranks {
					for _, g := range r.GPUs {
						sim[simIndex[r.Node]].Used[g] = true
					}
					placed[r.Node]++
					on = append(on, r.Node)
				}
				f.reasons[j.Id] = "fits now on " + capList(on) + "; waiting for the scheduler to assign it"
				continue
			}
			reason := gangWaitingFor(j.Spec, now)
			if _, ok := PlaceGang(j.Spec, now); ok {
				reason = "waiting behind earlier jobs that take the free GPUs first"
			}
			if f.reserveAfter > 0 && time.Duration(f.nowMs-j.CreatedAtMs)*time.Millisecond >= f.reserveAfter {
				if res := ReserveGang(j.Spec, sim); len(res) > 0 {
					nodes := make([]string, 0, len(res))
					for node, gpus := range res {
						for _, g := range gpus {
							sim[simIndex[node]].Used[g] = true
						}
						nodes = append(nodes, node)
					}
					sort.Strings(nodes)
					reservers = append(reservers, j.Id)
					reason += "; queued longer than " + f.reserveAfter.String() + ", it holds back GPUs on " + capList(nodes) + " from later jobs"
				}
			}
			f.reasons[j.Id] = reason
			continue
		}
		if node, gpus, ok := Place(j.Spec, sim); ok {
			for _, g := range gpus {
				sim[simIndex[node]].Used[g] = true
			}
			placed[node]++
			f.reasons[j.Id] = "fits now on " + node + "; waiting for the scheduler to assign it"
			continue
		}
		if _, _, ok := Place(j.Spec, now); ok {
			// Count only the earlier jobs that take GPUs this one could
			// have used, not every job placed anywhere.
			ahead := 0
			for _, c := range now {
				if _, _, fits := Place(j.Spec, []Candidate{c}); fits {
					ahead += placed[c.ID]
				}
			}
			switch held := fmt.Sprintf("held back for multi-node %s %s, queued longest", plural(len(reservers), "job", "jobs"), capList(reservers)); {
			case len(reservers) > 0 && ahead == 0:
				f.reasons[j.Id] = "the free GPUs it fits are " + held
			case len(reservers) > 0:
				f.reasons[j.Id] = fmt.Sprintf("waiting behind %d earlier %s that take the free GPUs first; others are %s", ahead, plural(ahead, "job", "jobs"), held)
			default:
				f.reasons[j.Id] = fmt.Sprintf("waiting behind %d earlier %s that take the free GPUs first", ahead, plural(ahead, "job", "jobs"))
			}
			continue
		}
		f.reasons[j.Id] = f.waitingFor(j.Spec, now)
	}
}

// waitingFor explains a job that fits some registered node but not the
// free GPUs of the up ones.
func (f *Fleet) waitingFor(spec *gantrypb.JobSpec, up []Candidate) string {
	want := int(spec.GetResources().GetGpus())
	gpuType := spec.GetResources().GetGpuType()
	upSet := make(map[string]bool, len(up))
	for _, c := range up {
		upSet[c.ID] = true
	}
	// Nodes that could run the job with all their GPUs free.
	var fitUp, fitDown []*gantrypb.Node
	for _, n := range f.nodes {
		if spec.GetNode() != "" && n.Id != spec.GetNode() {
			continue
		}
		if countType(n, gpuType) < want {
			continue
		}
		if upSet[n.Id] {
			fitUp = append(fitUp, n)
		} else {
			fitDown = append(fitDown, n)
		}
	}
	if len(fitUp) == 0 {
		ids := make([]string, 0, len(fitDown))
		for _, n := range fitDown {
			ids = append(ids, n.Id)
		}
		if len(ids) == 1 {
			return "waiting for node " + ids[0] + " (down)"
		}
		return "waiting for a node that fits to come back; down: " + capList(ids)
	}
	most, mostNode := -1, ""
	for _, n := range fitUp {
		// Free as placement sees it: failing and drained GPUs, and a
		// drained node's, are not free.
		c := NodeCandidate(n, f.used[n.Id])
		free := 0
		for _, g := range n.Gpus {
			if !c.Drained && !c.Used[g.Index] && !c.Unusable[g.Index] && (gpuType == "" || matchesType(g.Name, gpuType)) {
				free++
			}
		}
		if free > most {
			most, mostNode = free, n.Id
		}
	}
	what := fmt.Sprintf("%d free %s", want, gpuNoun(want, gpuType))
	if spec.GetNode() != "" {
		what += " on " + spec.GetNode()
		return fmt.Sprintf("waiting for %s; free there now: %d", what, most)
	}
	return fmt.Sprintf("waiting for %s; most free now: %d on %s", what, most, mostNode)
}

func findNode(nodes []*gantrypb.Node, id string) *gantrypb.Node {
	for _, n := range nodes {
		if n.Id == id {
			return n
		}
	}
	return nil
}

// countType counts a node's GPUs of the requested type (all of them when
// gpuType is empty), as Place matches them.
func countType(n *gantrypb.Node, gpuType string) int {
	if gpuType == "" {
		return len(n.Gpus)
	}
	c := 0
	for _, g := range n.Gpus {
		if matchesType(g.Name, gpuType) {
			c++
		}
	}
	return c
}

// gpuNoun is "GPU"/"GPUs", with " of type T" when a type was asked for.
func gpuNoun(n int, gpuType string) string {
	s := plural(n, "GPU", "GPUs")
	if gpuType != "" {
		s += " of type " + gpuType
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// describeGPUs groups a node's GPUs by name: "4× NVIDIA A100-SXM4-40GB",
// or "no GPUs".
func describeGPUs(n *gantrypb.Node) string {
	if len(n.Gpus) == 0 {
		return "no GPUs"
	}
	count := map[string]int{}
	var names []string
	for _, g := range n.Gpus {
		if count[g.Name] == 0 {
			names = append(names, g.Name)
		}
		count[g.Name]++
	}
	sort.Slice(names, func(a, b int) bool {
		if count[names[a]] != count[names[b]] {
			return count[names[a]] > count[names[b]]
		}
		return names[a] < names[b]
	})
	parts := make([]string, len(names))
	for i, name := range names {
		parts[i] = strconv.Itoa(count[name]) + "× " + name
	}
	return capList(parts)
}

// gpuNames lists the distinct GPU names of the fleet, sorted.
func gpuNames(nodes []*gantrypb.Node) string {
	seen := map[string]bool{}
	var names []string
	for _, n := range nodes {
		for _, g := range n.Gpus {
			if !seen[g.Name] {
				seen[g.Name] = true
				names = append(names, g.Name)
			}
		}
	}
	if len(names) == 0 {
		return "none (no node has a GPU)"
	}
	sort.Strings(names)
	return capList(names)
}

func nodeIDs(nodes []*gantrypb.Node) string {
	ids := make([]string, len(nodes))
	for i, n := range nodes {
		ids[i] = n.Id
	}
	sort.Strings(ids)
	return capList(ids)
}

// capList joins at most listCap items and says how many it left out.
func capList(items []string) string {
	if len(items) <= listCap {
		return strings.Join(items, ", ")
	}
	return strings.Join(items[:listCap], ", ") + fmt.Sprintf(" and %d more", len(items)-listCap)
}
