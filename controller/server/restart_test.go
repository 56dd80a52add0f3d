package server_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/server"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/tlsutil"
)

// TestNoNotFoundRightAfterRestart: a controller that starts again rebuilds
// its state from its snapshot and then its log; until it has applied the
// log it had, a read of a job that exists answers 503 with Retry-After
// (which the client retries), never 404. Asked as fast as it answers from
// the moment its API is up.
func TestNoNotFoundRightAfterRestart(t *testing.T) {
	ctrl, _, err := tlsutil.EnsureDev(t.TempDir(), "agent1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	start := func() *server.Server {
		t.Helper()
		srv, err := server.Start(server.Config{NodeID: "c1", DataDir: dir, HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0",
			RaftAddr: "127.0.0.1:0", Bootstrap: true, Fast: true, TLS: ctrl, LostGrace: time.Minute, Log: logging.Discard()})
		if err != nil {
			t.Fatal(err)
		}
		return srv
	}
	srv := start()
	if err := srv.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 50 { // entries after the start's snapshot: applied only from the log
		ids = append(ids, submit(t, srv, apiv1.JobSpec{Name: "j", Run: "true"}))
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}

	srv = start()
	defer srv.Close()
	last := ids[len(ids)-1]
	url := "http://" + srv.HTTPAddr() + "/v1/jobs/" + last
	deadline := time.Now().Add(10 * time.Second)
	var unavailable int
	for {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			t.Logf("%d answers of 503 before 200", unavailable)
			if _, err := apiOf(srv).Job(t.Context(), ids[0]); err != nil {
				t.Fatalf("the first job after the restart: %v", err)
			}
			return
		case http.StatusServiceUnavailable:
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("503 without Retry-After")
			}
			unavailable++
		default:
			t.Fatalf("GET %s right after a restart: %d, want 503 or 200", url, resp.StatusCode)
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %d after 10 s", resp.StatusCode)
		}
	}
}
