package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// TestValidateSpec: POST /v1/jobs/validate answers what a submit would,
// and stores nothing.
func TestValidateSpec(t *testing.T) {
	e := newEnv(t, "")
	e.raftApply(t, &gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "gpu-host-1", Hostname: "h1", Gpus: a100s(2)}, AtMs: 1})
	for _, tt := range []struct {
		name, body string
		status     int
		reason     string
	}{
		{"fits", `{"run": "true", "resources": {"gpus": 2}}`, http.StatusOK, ""},
		{"never fits", `{"run": "true", "resources": {"gpus": 8}}`, http.StatusBadRequest, "largest fit is 2"},
		{"invalid", `{"run": ""}`, http.StatusBadRequest, "spec.run is required"},
		{"unknown field", `{"run": "true", "gpu": 1}`, http.StatusBadRequest, "unknown field"},
	} {
		status, body := e.do(http.MethodPost, "/v1/jobs/validate", strings.NewReader(tt.body), true)
		if status != tt.status {
			t.Errorf("%s: %d %s, want %d", tt.name, status, body, tt.status)
			continue
		}
		if tt.status == http.StatusOK {
			var v apiv1.Validation
			if err := json.Unmarshal(body, &v); err != nil || !v.OK {
				t.Errorf("%s: answer %s", tt.name, body)
			}
		} else if msg := errorBody(t, body); !strings.Contains(msg, tt.reason) {
			t.Errorf("%s: %q lacks %q", tt.name, msg, tt.reason)
		}
	}
	status, body := e.do(http.MethodGet, "/v1/jobs", nil, true)
	var list apiv1.JobList
	if status != http.StatusOK || json.Unmarshal(body, &list) != nil || len(list.Jobs) != 0 {
		t.Fatalf("validating stored something: %d %s", status, body)
	}
}
