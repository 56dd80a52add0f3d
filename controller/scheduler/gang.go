package scheduler

import (
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"time"

	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// RankPlacement is where one rank of a multi-node job runs.
type RankPlacement struct {
	Node string
	GPUs []uint32
}

// DefaultReserveAfter is how long a multi-node job waits before it
// reserves the GPUs it needs (Scheduler.ReserveAfter, Fleet reasons).
const DefaultReserveAfter = 2 * time.Minute

// MaxNodesPerJob bounds resources.nodes (limits.MaxNodesPerJob).
const MaxNodesPerJob = limits.MaxNodesPerJob

// Rendezvous ports: the leader gives each multi-node job a MASTER_PORT in
// [MasterPortBase, MasterPortBase+MasterPortSpan), starting from a hash of
// the job id and skipping ports other live gangs with rank 0 on the same
// node hold. Rank 0's agent checks the port is free before it starts the
// job (and fails the rank, naming the port, when it is not).
const (
	MasterPortBase = 29500
	MasterPortSpan = 2000
)

// gangFree returns the free GPUs of the requested type on c, sorted.
func gangFree(c Candidate, gpuType string) []uint32 {
	if c.Drained {
		return nil // a drained node takes nothing new, a rank neither
	}
	var free []uint32
	for _, g := range c.GPUs {
		if c.Used[g.Index] || c.Unusable[g.Index] || (gpuType != "" && !matchesType(g.Name, gpuType)) {
			continue
		}
		free = append(free, g.Index)
	}
	slices.Sort(free)
	return free
}

// pinned reports whether a multi-node spec allows node (no pins: any).
func pinned(spec *gantrypb.JobSpec, node string) bool {
	pins := spec.GetNodes()
	return len(pins) == 0 || slices.Contains(pins, node)
}

// PlaceGang places every rank of a multi-node job at once, or none
// (ok=false: the job stays queued, holding nothing). Each rank takes
// resources.gpus GPUs of the requested type on its own node, one rank per
// node: the controller tells a rank's records apart by their node, and
// torchrun's one-agent-per-node model wants it so. Among the nodes with
// room it prefers those with the fewest free GPUs that still fit (best
// fit, as Place does), so big holes stay whole for big jobs; ties go to
// the lowest id. Gantry has no network topology, so every node is as
// close as every other and "fewer nodes" is exactly resources.nodes.
// Ranks are numbered in node id order, so rank 0 is the lowest id chosen.
// It is a pure function of its arguments.
func PlaceGang(spec *gantrypb.JobSpec, candidates []Candidate) ([]RankPlacement, bool) {
	n := int(spec.GetResources().GetNodes())
	want := int(spec.GetResources().GetGpus())
	gpuType := spec.GetResources().GetGpuType()
	if n < 1 || n > MaxNodesPerJob {
		return nil, false
	}
	type fit struct {
		id   string
		free []uint32
	}
	var fits []fit
	seen := map[string]bool{}
	for _, c := range candidates {
		if seen[c.ID] || !pinned(spec, c.ID) {
			continue
		}
		seen[c.ID] = true
		if free := gangFree(c, gpuType); len(free) >= want {
			fits = append(fits, fit{c.ID, free})
		}
	}
	if len(fits) < n {
		return nil, false
	}
	sort.Slice(fits, func(a, b int) bool {
		if len(fits[a].free) != len(fits[b].free) {
			return len(fits[a].free) < len(fits[b].free)
		}
		return fits[a].id < fits[b].id
	})
	fits = fits[:n]
	sort.Slice(fits, func(a, b int) bool { return fits[a].id < fits[b].id })
	out := make([]RankPlacement, n)
	for i, f := range fits {
		out[i] = RankPlacement{Node: f.id, GPUs: append([]uint32(nil), f.free[:want]...)}
	}
	return out, true
}

// ReserveGang names the GPUs a multi-node job that has waited too long
// holds back from later jobs (the anti-starvation rule): on the
// resources.nodes nodes that could hold a rank with all their GPUs free
// and have the most of them free now (closest to fitting; ties to the
// lowest id), up to resources.gpus of the free GPUs of the requested type
// each. A later, smaller job may still use the free GPUs beyond those, so
// the reservation costs the fleet no more than the waiting job needs; as
// running jobs end, the reserved nodes fill up to the gang's size and
// the gang is placed. It returns node → reserved GPU indices, nil when no
// set of nodes could ever hold the job. It is a pure function.
func ReserveGang(spec *gantrypb.JobSpec, candidates []Candidate) map[string][]uint32 {
	n := int(spec.GetResources().GetNodes())
	want := int(spec.GetResources().GetGpus())
	gpuType := spec.GetResources().GetGpuType()
	type fit struct {
		id   string
		free []uint32
	}
	var fits []fit
	seen := map[string]bool{}
	for _, c := range candidates {
		if seen[c.ID] || !pinned(spec, c.ID) {
			continue
		}
		seen[c.ID] = true
		if c.Drained {
			continue // holds no rank until undrained: nothing to wait for here
		}
		total := 0
		for _, g := range c.GPUs {
			if !c.Unusable[g.Index] && (gpuType == "" || matchesType(g.Name, gpuType)) {
				total++
			}
		}
		if total >= want {
			fits = append(fits, fit{c.ID, gangFree(c, gpuType)})
		}
	}
	if n < 1 || len(fits) < n {
		return nil
	}
	sort.Slice(fits, func(a, b int) bool {
		if len(fits[a].free) != len(fits[b].free) {
			return len(fits[a].free) > len(fits[b].free)
		}
		return fits[a].id < fits[b].id
	})
	out := make(map[string][]uint32, n)
	for _, f := range fits[:n] {
		out[f.id] = append([]uint32(nil), f.free[:min(want, len(f.free))]...)
	}
	return out
}

// MasterPort picks a gang's rendezvous port: the first port from a hash of
// the job id, within the range, that taken does not hold (ports of live
// gangs whose rank 0 is on the same node). It is a pure function.
func MasterPort(jobID string, taken map[uint32]bool) uint32 {
	h := fnv.New32a()
	h.Write([]byte(jobID))
	start := h.Sum32() % MasterPortSpan
	for i := uint32(0); i < MasterPortSpan; i++ {
		p := MasterPortBase + (start+i)%MasterPortSpan
		if !taken[p] {
			return p
		}
	}
	return MasterPortBase + start
}

// unfitGang is CheckFit's text for a multi-node spec ("" when some set of
// nodes could hold it with every GPU free).
func unfitGang(spec *gantrypb.JobSpec, nodes []*gantrypb.Node) string {
	n := int(spec.GetResources().GetNodes())
	want := int(spec.GetResources().GetGpus())
	gpuType := spec.GetResources().GetGpuType()
	for _, pin := range spec.GetNodes() {
		if findNode(nodes, pin) == nil {
			return fmt.Sprintf("node %q is not registered; nodes: %s", pin, nodeIDs(nodes))
		}
	}
	var ok []string
	for _, nd := range nodes {
		if pinned(spec, nd.Id) && countType(nd, gpuType) >= want {
			ok = append(ok, nd.Id)
		}
	}
	if len(ok) >= n {
		return ""
	}
	sort.Strings(ok)
	where := "none does"
	if len(ok) > 0 {
		where = fmt.Sprintf("only %d %s (%s)", len(ok), plural(len(ok), "does", "do"), capList(ok))
	}
	among := ""
	if len(spec.GetNodes()) > 0 {
		among = " among the pinned nodes"
	}
	return fmt.Sprintf("the job needs %d nodes with %d %s each (one rank per node)%s: %s",
		n, want, gpuNoun(want, gpuType), among, where)
}

// gangWaitingFor explains a queued multi-node job that fits the fleet but
// not the free GPUs of the up nodes now.
func gangWaitingFor(spec *gantrypb.JobSpec, up []Candidate) string {
	n := int(spec.GetResources().GetNodes())
	want := int(spec.GetResources().GetGpus())
	gpuType := spec.GetResources().GetGpuType()
	var room []string
	for _, c := range up {
		if pinned(spec, c.ID) && len(gangFree(c, gpuType)) >= want {
			room = append(room, c.ID)
		}
	}
	sort.Strings(room)
	have := "none"
	if len(room) > 0 {
		have = fmt.Sprintf("%d (%s)", len(room), capList(room))
	}
	return fmt.Sprintf("waiting for %d up nodes with %d free %s each; nodes with room now: %s",
		n, want, gpuNoun(want, gpuType), have)
}
