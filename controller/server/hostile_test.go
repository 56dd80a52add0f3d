package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/wire"
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

// A hostile agent with a valid certificate talks to the leader's real QUIC
// endpoint of a 3-node cluster: ids bbolt cannot store, keys over every
// limit, records for jobs it does not run, garbage framing. Every
// controller keeps running and the cluster still takes jobs.
func TestHostileAgentAgainstCluster(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	leader := c.waitLeader()
	// Pinned to a node that is not the hostile agent: never its job.
	other := submit(t, leader, apiv1.JobSpec{Name: "not-yours", Run: "true", Node: "gpu-host-2"})

	tlsConf, err := tlsutil.ClientConfig(c.agent, wire.ALPN, "", tlsutil.Identity{Role: tlsutil.RoleController})
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(dctx, leader.QUICAddr(), tlsConf, wire.QUICConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(wire.CodeOK, "done")
	qs, err := conn.OpenStreamSync(dctx)
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := wire.Open(qs, wire.StreamControl)
	if err != nil {
		t.Fatal(err)
	}
	if err := ctrl.Write(&gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_Hello{Hello: &gantrypb.Hello{NodeId: "agent1"}}}); err != nil {
		t.Fatal(err)
	}
	var reply gantrypb.ControlMessage
	if err := ctrl.Read(&reply, 10*time.Second); err != nil || !reply.GetHelloReply().GetOk() {
		t.Fatalf("hello: %v %v", &reply, err)
	}
	rqs, err := conn.OpenStreamSync(dctx)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := wire.Open(rqs, wire.StreamRecords)
	if err != nil {
		t.Fatal(err)
	}
	huge := strings.Repeat("x", 40000)
	point := func(job string, seq uint64, vals map[string]float64) *gantrypb.Record {
		return &gantrypb.Record{JobId: job, Seq: seq, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Values: vals}}}
	}
	batch := &gantrypb.RecordBatch{BatchId: 1, Records: []*gantrypb.Record{
		point(huge, 1, map[string]float64{"loss": 1}),
		point(other, 1, map[string]float64{huge: 1}),
		point(other, 2, map[string]float64{"loss": 666}),
		{JobId: other, Seq: 3, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: new(int32)}}},
		{Seq: 1, Body: &gantrypb.Record_Gpu{Gpu: &gantrypb.GPUSample{Gpus: make([]*gantrypb.GPUStat, 1000)}}},
	}}
	if err := rs.Write(batch); err != nil {
		t.Fatal(err)
	}
	var ack gantrypb.BatchAck
	if err := rs.Read(&ack, 10*time.Second); err != nil || ack.BatchId != 1 {
		t.Fatalf("ack: %v %v", &ack, err)
	}
	// Then framing that is not protobuf at all: the session ends.
	if _, err := rqs.Write([]byte{0x05, 0xff, 0xff, 0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-conn.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the leader kept a session that sent garbage")
	}

	for _, s := range c.nodes {
		st, err := apiOf(s).Cluster(ctx)
		if err != nil || st.Leader == "" {
			t.Fatalf("%s after the hostile agent: %v %+v", s.HTTPAddr(), err, st)
		}
	}
	id := submit(t, c.follower(), apiv1.JobSpec{Name: "after", Run: "true"})
	for _, s := range c.nodes {
		testutil.WaitFor(t, 10*time.Second, func() bool {
			j, err := apiOf(s).Job(ctx, id)
			return err == nil && j.ID == id
		}, "the next job on every controller")
		j, err := apiOf(s).Job(ctx, other)
		if err != nil {
			t.Fatal(err)
		}
		if j.State != "queued" || j.Points != 0 || len(j.LatestMetrics) != 0 {
			t.Fatalf("the hostile agent wrote into a job: %+v", j)
		}
	}
}
