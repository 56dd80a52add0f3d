package fsm

import (
	"errors"
	"fmt"
	"slices"

	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// gpuFaults marks the GPUs a sample reports failing as unhealthy on the
// node (once each: the mark stays until an operator undrains the GPU),
// with an alert. Only GPUs the node offers are marked, so a hostile
// agent can grow the list no further than its hello's GPUs.
func (f *FSM) gpuFaults(tx *store.Tx, nodeID string, s *gantrypb.GPUSample, atMs int64, ch *Changes) error {
	var faulty []*gantrypb.GPUStat
	for _, g := range s.Gpus {
		if g.Fault != "" {
			faulty = append(faulty, g)
		}
	}
	if len(faulty) == 0 {
		return nil
	}
	node, err := tx.Node(nodeID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	changed := false
	for _, g := range faulty {
		offered := slices.ContainsFunc(node.Gpus, func(i *gantrypb.GPUInfo) bool { return i.Index == g.Index })
		marked := slices.ContainsFunc(node.UnhealthyGpus, func(h *gantrypb.GPUHealth) bool { return h.Index == g.Index })
		if !offered || marked || len(node.UnhealthyGpus) >= limits.MaxGPUsPerNode {
			continue
		}
		node.UnhealthyGpus = append(node.UnhealthyGpus, &gantrypb.GPUHealth{Index: g.Index, Reason: g.Fault, SinceMs: atMs})
		changed = true
		if err := f.alert(tx, &gantrypb.Alert{AtMs: atMs, Kind: lifecycle.AlertGPUUnhealthy, Node: nodeID, Gpus: []uint32{g.Index},
			Evidence: g.Fault, Text: fmt.Sprintf("Gantry: GPU %d of node %s is failing: %s; nothing more is placed on it", g.Index, nodeID, g.Fault)}, ch); err != nil {
			return err
		}
	}
	if !changed {
		return nil
	}
	if err := tx.PutNode(node); err != nil {
		return err
	}
	ch.node(node)
	return nil
}

// drain stops or resumes placement on a node or some of its GPUs.
// Undraining GPUs also clears their unhealthy marks; undraining the node
// clears its drain only.
func (f *FSM) drain(tx *store.Tx, m *gantrypb.DrainCmd, ch *Changes) error {
	node, err := tx.Node(m.NodeId)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s", lifecycle.ErrNodeNotFound, m.NodeId)
	}
	if err != nil {
		return err
	}
	switch {
	case len(m.Gpus) == 0:
		node.Drained = !m.Undrain
	case m.Undrain:
		node.DrainedGpus = slices.DeleteFunc(node.DrainedGpus, func(g uint32) bool { return slices.Contains(m.Gpus, g) })
		node.UnhealthyGpus = slices.DeleteFunc(node.UnhealthyGpus, func(h *gantrypb.GPUHealth) bool { return slices.Contains(m.Gpus, h.Index) })
	default:
		for _, g := range m.Gpus {
			if !slices.Contains(node.DrainedGpus, g) && len(node.DrainedGpus) < limits.MaxGPUsPerNode {
				node.DrainedGpus = append(node.DrainedGpus, g)
			}
		}
		slices.Sort(node.DrainedGpus)
	}
	if err := tx.PutNode(node); err != nil {
		return err
	}
	ch.node(node)
	return nil
}
