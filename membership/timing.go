package membership

import (
	"time"

	"github.com/hashicorp/memberlist"
)

func memberlistLAN() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	// A host that died and comes back under the same name at a new address
	// (a replaced machine, a restart on another port) is accepted after this.
	c.DeadNodeReclaimTime = 30 * time.Second
	return c
}

// memberlistFast detects failures in about a second (tests).
func memberlistFast() *memberlist.Config {
	c := memberlist.DefaultLocalConfig()
	c.ProbeInterval = 200 * time.Millisecond
	c.ProbeTimeout = 100 * time.Millisecond
	c.GossipInterval = 50 * time.Millisecond
	c.SuspicionMult = 2
	c.PushPullInterval = 2 * time.Second
	c.DeadNodeReclaimTime = 500 * time.Millisecond
	return c
}
