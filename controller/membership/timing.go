package membership

import (
	"time"

	"github.com/hashicorp/memberlist"
)

func memberlistLAN() *memberlist.Config {
	return memberlist.DefaultLANConfig()
}

// memberlistFast detects failures in about a second (tests).
func memberlistFast() *memberlist.Config {
	c := memberlist.DefaultLocalConfig()
	c.ProbeInterval = 200 * time.Millisecond
	c.ProbeTimeout = 100 * time.Millisecond
	c.GossipInterval = 50 * time.Millisecond
	c.SuspicionMult = 2
	c.PushPullInterval = 2 * time.Second
	return c
}
