package httpapi_test

import (
	"strings"
	"testing"
)

// TestFleetMetricsEndpoint: /metrics/fleet serves the fleet (a running
// job's series) and /metrics does not, while /metrics carries the
// exporter's own gauges; the fleet takes the API's token, which /metrics
// does not, and without a token answers only to allowed hosts.
func TestFleetMetricsEndpoint(t *testing.T) {
	e := newEnv(t, "")
	e.runningJob(t, "j", 3)
	status, fleet := e.do("GET", "/metrics/fleet", nil, false)
	if status != 200 {
		t.Fatalf("/metrics/fleet: %d %s", status, fleet)
	}
	for _, want := range []string{
		`gantry_job_state{job_id="j",job_name="j",state="running"} 1`,
		`gantry_job_points{job_id="j",job_name="j"} 3`,
		`gantry_job_step{job_id="j",job_name="j"} 4`,
		"# TYPE gantry_job_last_metric_age_seconds gauge",
	} {
		if !strings.Contains(string(fleet), want) {
			t.Errorf("/metrics/fleet lacks %q:\n%s", want, fleet)
		}
	}
	if strings.Contains(string(fleet), "go_goroutines") {
		t.Error("/metrics/fleet carries process metrics")
	}
	_, proc := e.do("GET", "/metrics", nil, false)
	if strings.Contains(string(proc), "gantry_job_state") {
		t.Error("/metrics carries the fleet's series")
	}
	if !strings.Contains(string(proc), "gantry_fleet_series ") || !strings.Contains(string(proc), "gantry_fleet_collect_seconds ") {
		t.Errorf("/metrics lacks the exporter's own gauges:\n%s", proc)
	}

	if status, _, body := raw(t, "GET", e.base+"/metrics/fleet", "evil.example:7480", nil, ""); status != 403 {
		t.Errorf("tokenless /metrics/fleet under a foreign Host: %d %s, want 403", status, body)
	}

	et := newEnv(t, "s3cret")
	if status, _ := et.do("GET", "/metrics/fleet", nil, false); status != 401 {
		t.Errorf("/metrics/fleet without the token: %d, want 401", status)
	}
	if status, _ := et.do("GET", "/metrics/fleet", nil, true); status != 200 {
		t.Errorf("/metrics/fleet with the token: %d, want 200", status)
	}
	if status, _ := et.do("GET", "/metrics", nil, false); status != 200 {
		t.Errorf("/metrics without the token: %d, want 200", status)
	}
}
