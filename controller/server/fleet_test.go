package server_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// TestFleetMetricsOnFollower: a follower's /metrics/fleet serves, from
// its replicated store, the GPU an agent linked to the leader reports,
// held by a job, with the job's metrics; only the leader, which holds
// the agent's link, exports gantry_node_connected.
func TestFleetMetricsOnFollower(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	leader := c.waitLeader()
	follower := c.follower()

	l, sp, _ := c.agentLink(t, []string{leader.QUICAddr()})
	testutil.WaitFor(t, 10*time.Second, l.Connected, "agent connected")

	job := submit(t, leader, apiv1.JobSpec{Name: "fleet", Run: "true", Resources: apiv1.Resources{GPUs: 1}})
	testutil.WaitFor(t, 10*time.Second, func() bool {
		j, err := apiOf(follower).Job(ctx, job)
		return err == nil && j.State == apiv1.StateAssigned
	}, "job assigned, seen on the follower")
	step := int64(7)
	if _, err := sp.Append(
		&gantrypb.Record{JobId: job, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Step: &step, Ts: 1, Values: map[string]float64{"loss": 0.25}}}},
		&gantrypb.Record{Body: &gantrypb.Record_Gpu{Gpu: &gantrypb.GPUSample{Ts: float64(time.Now().UnixNano()) / 1e9,
			Gpus: []*gantrypb.GPUStat{{Index: 0, Name: "Mock A100", UtilizationPct: 75, PowerW: 300}}}}},
	); err != nil {
		t.Fatal(err)
	}

	held := `gantry_gpu_utilization_ratio{gpu="0",job_id="` + job + `",job_name="fleet",model="Mock A100",node="agent1",uuid=""} 0.75`
	loss := `gantry_job_metric{job_id="` + job + `",job_name="fleet",key="loss"} 0.25`
	var onFollower string
	testutil.WaitFor(t, 10*time.Second, func() bool {
		onFollower = scrapeFleet(t, follower.HTTPAddr())
		return strings.Contains(onFollower, held) && strings.Contains(onFollower, loss)
	}, "the follower's /metrics/fleet to show the held GPU and the job's loss")
	if strings.Contains(onFollower, "gantry_node_connected{") {
		t.Errorf("a follower exported gantry_node_connected:\n%s", onFollower)
	}
	if !strings.Contains(onFollower, `gantry_node_up{node="agent1"} 1`) {
		t.Errorf("the follower lacks gantry_node_up:\n%s", onFollower)
	}
	if got := scrapeFleet(t, leader.HTTPAddr()); !strings.Contains(got, `gantry_node_connected{node="agent1"} 1`) {
		t.Errorf("the leader lacks gantry_node_connected 1:\n%s", got)
	}
}

func scrapeFleet(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics/fleet")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics/fleet on %s: %d %v\n%s", addr, resp.StatusCode, err, b)
	}
	return string(b)
}

// TestGPUThrottleReasons: a GPU sample's clocks event reasons mask comes
// out of the API decoded: every bit named in the node's samples, the
// throughput-costing ones on the node's GPU too, and the raw mask kept.
func TestGPUThrottleReasons(t *testing.T) {
	c := newTestCluster(t, 1)
	ctx := context.Background()
	leader := c.waitLeader()
	l, sp, _ := c.agentLink(t, []string{leader.QUICAddr()})
	testutil.WaitFor(t, 10*time.Second, l.Connected, "agent connected")
	const mask = 0x1 | 0x40 | 0x1000 // gpu_idle, hw_thermal_slowdown, an unknown bit
	if _, err := sp.Append(&gantrypb.Record{Body: &gantrypb.Record_Gpu{Gpu: &gantrypb.GPUSample{Ts: float64(time.Now().UnixNano()) / 1e9,
		Gpus: []*gantrypb.GPUStat{{Index: 0, Name: "Mock A100", UtilizationPct: 75, ThrottleReasons: mask}}}}}); err != nil {
		t.Fatal(err)
	}
	api := apiOf(leader)
	var samples []apiv1.GPUSample
	testutil.WaitFor(t, 10*time.Second, func() bool {
		var err error
		samples, err = api.GPUs(ctx, "agent1")
		return err == nil && len(samples) > 0
	}, "the GPU sample stored")
	g := samples[len(samples)-1].GPUs[0]
	if g.ThrottleReasons != mask ||
		strings.Join(g.ThrottleReasonNames, ",") != "gpu_idle,hw_thermal_slowdown,unknown_0x1000" ||
		strings.Join(g.ThrottledBy, ",") != "hw_thermal_slowdown" {
		t.Errorf("GPU stat = %+v", g)
	}
	nodes, err := api.Nodes(ctx)
	if err != nil || len(nodes) != 1 || len(nodes[0].GPUs) != 1 {
		t.Fatalf("nodes = %+v, %v", nodes, err)
	}
	if got := nodes[0].GPUs[0].ThrottledBy; strings.Join(got, ",") != "hw_thermal_slowdown" {
		t.Errorf("node GPU throttled_by = %q", got)
	}
}
