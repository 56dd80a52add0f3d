package server_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/membership"
)

// TestRequeueNeedsEveryVoter: while a voter's release cannot requeue
// (its serf features lack it, as an older controller's do), a spec with
// the requeue policy gets a 409 saying why, since that voter would apply
// the job's exit differently; other specs go through. Once the voter has
// the feature, the spec is taken.
func TestRequeueNeedsEveryVoter(t *testing.T) {
	c := newTestCluster(t, 3)
	leader := c.waitLeader()
	older := c.follower()
	if err := older.Members().SetTag(membership.TagFeatures, membership.FeatureFlatPoints); err != nil {
		t.Fatal(err)
	}
	spec := apiv1.JobSpec{Name: "rq", Run: "true", Health: &apiv1.HealthSpec{OnIdle: "requeue"}}
	var err error
	testutil.WaitFor(t, 10*time.Second, func() bool {
		_, err = apiOf(leader).Submit(context.Background(), spec)
		var apiErr *client.APIError
		return errors.As(err, &apiErr) && apiErr.Status == http.StatusConflict
	}, "the leader to refuse requeue while a voter is older")
	if !strings.Contains(err.Error(), "older release that cannot requeue") {
		t.Errorf("refusal %q does not say why", err)
	}
	submit(t, leader, apiv1.JobSpec{Name: "plain", Run: "true", Health: &apiv1.HealthSpec{OnIdle: "cancel"}})

	if err := older.Members().SetTag(membership.TagFeatures, membership.FeatureFlatPoints+","+membership.FeatureRequeue); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool {
		_, err = apiOf(leader).Submit(context.Background(), spec)
		return err == nil
	}, "the leader to take requeue once every voter can")
}
