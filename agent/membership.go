package agent

import (
	"strconv"

	"github.com/gantry-ml/gantry/membership"
)

// joinCluster makes the agent a serf member (role agent, its GPU count),
// so controllers see it fail and the agent finds controllers without a
// fixed list.
func (a *Agent) joinCluster() error {
	if a.cfg.SerfAddr == "" {
		return nil
	}
	m, err := membership.Start(membership.Config{
		Name: a.cfg.NodeID, BindAddr: a.cfg.SerfAddr, Advertise: a.cfg.SerfAdvertise,
		Tags: map[string]string{
			membership.TagRole: membership.RoleAgent,
			membership.TagGPUs: strconv.Itoa(len(a.gpuInfo)),
		},
		Key: a.cfg.GossipKey, Fast: a.cfg.FastGossip, Log: a.log.With("component", "serf"),
	})
	if err != nil {
		return err
	}
	a.members = m
	if _, err := m.Join(a.cfg.Join); err != nil {
		// The link retries discovery; the controllers may not be up yet.
		a.log.Warn("serf join failed; will retry", "join", a.cfg.Join, "err", err)
	}
	return nil
}

// controllerAddrs lists the QUIC addresses of alive controllers; while
// the agent knows no member yet it retries the join.
func (a *Agent) controllerAddrs() []string {
	if a.members == nil {
		return nil
	}
	ctrls := a.members.Controllers()
	if len(ctrls) == 0 && len(a.cfg.Join) > 0 {
		_, _ = a.members.Join(a.cfg.Join)
		ctrls = a.members.Controllers()
	}
	out := make([]string, 0, len(ctrls))
	for _, c := range ctrls {
		out = append(out, c.QUICAddr)
	}
	return out
}
