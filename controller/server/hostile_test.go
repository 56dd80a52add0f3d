package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Entries that no leader should ever propose, committed anyway (an older
// or buggy leader, a forged log): every voter skips them, keeps running,
// comes back after a restart that replays them, and the cluster still
// takes jobs. Before, one such entry (a record with a 40,000-byte job id)
// crash-looped every controller for good.
func TestCommittedHostileEntriesDoNotCrashVoters(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	leader := c.waitLeader()
	huge := strings.Repeat("x", 40000)
	resp, err := leader.Raft().Apply(&gantrypb.IngestCmd{NodeId: "agent1", Records: []*gantrypb.Record{{JobId: huge, Seq: 1,
		Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Values: map[string]float64{"loss": 1}}}}}})
	if r, ok := resp.(fsm.IngestResult); err != nil || !ok || r.Rejected != 1 {
		t.Fatalf("ingest of a 40,000-byte job id = %v, %v; want the record rejected", resp, err)
	}
	entries := []proto.Message{
		&gantrypb.SubmitJobCmd{JobId: huge, Spec: &gantrypb.JobSpec{Run: "true"}},
		&gantrypb.NodeUpCmd{},
		&gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "n", Hostname: huge}},
		&gantrypb.IngestCmd{NodeId: huge},
	}
	for _, e := range entries {
		_, err := leader.Raft().Apply(e)
		if err == nil || !strings.Contains(err.Error(), "skipped") {
			t.Fatalf("apply %T = %v, want the entry skipped", e, err)
		}
	}
	want, err := apiOf(leader).Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range c.nodes {
		testutil.WaitFor(t, 10*time.Second, func() bool {
			st, err := apiOf(s).Cluster(ctx)
			return err == nil && st.AppliedIndex >= want.AppliedIndex
		}, "every voter to apply past the hostile entries")
	}

	// A restarted follower replays the same entries from its log.
	victim := -1
	for i, s := range c.nodes {
		if !s.Raft().IsLeader() {
			victim = i
			break
		}
	}
	raftAddr, serfAddr := c.nodes[victim].Raft().Addr(), c.nodes[victim].Members().LocalAddr()
	c.nodes[victim].Close()
	c.nodes[victim] = startControllerAt(t, c, victim, []string{leader.Members().LocalAddr()}, 3, raftAddr, serfAddr)
	testutil.WaitFor(t, 20*time.Second, func() bool {
		st, err := apiOf(c.nodes[victim]).Cluster(ctx)
		return err == nil && st.AppliedIndex >= want.AppliedIndex
	}, "the restarted voter to replay the hostile entries")

	id := submit(t, c.nodes[victim], apiv1.JobSpec{Name: "after", Run: "true"})
	for _, s := range c.nodes {
		testutil.WaitFor(t, 10*time.Second, func() bool {
			_, err := apiOf(s).Job(ctx, id)
			return err == nil
		}, "the job submitted afterwards on every controller")
	}
}
