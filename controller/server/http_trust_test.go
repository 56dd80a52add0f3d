package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
	"github.com/gantry-ml/gantry/controller/server"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/internal/tlsutil"
)

// startHTTPCluster starts three clustered controllers; mod adjusts each
// one's configuration (i is its index).
func startHTTPCluster(t *testing.T, mod func(i int, c *server.Config)) []*server.Server {
	t.Helper()
	tlsDir := t.TempDir()
	if _, _, err := tlsutil.EnsureDev(tlsDir, "agent1"); err != nil {
		t.Fatal(err)
	}
	var nodes []*server.Server
	var join []string
	for i := 0; i < 3; i++ {
		ctrlTLS, err := tlsutil.Issue(tlsDir, tlsutil.RoleController, fmt.Sprintf("c%d", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := server.Config{
			NodeID: fmt.Sprintf("c%d", i), DataDir: t.TempDir(),
			HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", SerfAddr: "127.0.0.1:0",
			Join: join, BootstrapExpect: 3, TLS: ctrlTLS, Fast: true, LostGrace: time.Minute, Log: testLog(t),
		}
		mod(i, &cfg)
		srv, err := server.Start(cfg)
		if err != nil {
			t.Fatalf("start c%d: %v", i, err)
		}
		t.Cleanup(func() { _ = srv.Close() })
		nodes = append(nodes, srv)
		if i == 0 {
			join = []string{srv.Members().LocalAddr()}
		}
	}
	testutil.WaitFor(t, 20*time.Second, func() bool {
		n := 0
		for _, s := range nodes {
			if s.Raft().IsLeader() {
				n++
			}
		}
		return n == 1
	}, "one leader")
	return nodes
}

func followerOf(t *testing.T, nodes []*server.Server) (int, *server.Server) {
	t.Helper()
	for i, s := range nodes {
		if !s.Raft().IsLeader() {
			return i, s
		}
	}
	t.Fatal("no follower")
	return 0, nil
}

// submitVia posts a spec with Host set to host, retrying 503s while an
// election settles.
func submitVia(t *testing.T, base, host string, hdr http.Header, hc *http.Client) {
	t.Helper()
	var status int
	var body string
	testutil.WaitFor(t, 20*time.Second, func() bool {
		req, err := http.NewRequest("POST", base+"/v1/jobs", strings.NewReader(`{"name":"forwarded","run":"true"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		req.Header = hdr.Clone()
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("submit: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		status, body = resp.StatusCode, string(b)
		return status != http.StatusServiceUnavailable
	}, "a leader to take the forwarded submit")
	if status != http.StatusCreated {
		t.Fatalf("submit through a follower: %d %s, want 201", status, body)
	}
}

// A follower forwards writes to the leader's advertised address under
// that address as Host, so a tokenless leader accepts them even when the
// client used a name only the follower allows.
func TestForwardingAcceptedByTokenlessLeader(t *testing.T) {
	nodes := startHTTPCluster(t, func(i int, c *server.Config) {
		c.HTTPAllowedHosts = []string{fmt.Sprintf("c%d.example", i)}
	})
	i, f := followerOf(t, nodes)
	submitVia(t, "http://"+f.HTTPAddr(), fmt.Sprintf("c%d.example", i), http.Header{}, http.DefaultClient)
}

// With HTTPS and a token, forwarding and the peer status queries go over
// https, trusting GANTRY_CA, and carry the token.
func TestForwardingOverHTTPSWithToken(t *testing.T) {
	ca, cert, key := testutil.WriteServerPKI(t)
	t.Setenv(client.EnvCA, ca)
	nodes := startHTTPCluster(t, func(i int, c *server.Config) {
		c.Token, c.HTTPTLSCert, c.HTTPTLSKey = "s3cret", cert, key
	})
	_, f := followerOf(t, nodes)
	api := client.New("https://"+f.HTTPAddr(), client.WithToken("s3cret"))
	var err error
	testutil.WaitFor(t, 20*time.Second, func() bool {
		_, err = api.Submit(context.Background(), apiv1.JobSpec{Name: "forwarded", Run: "true"})
		var apiErr *client.APIError
		return !errors.As(err, &apiErr) || apiErr.Status != http.StatusServiceUnavailable
	}, "a leader to take the forwarded submit")
	if err != nil {
		t.Fatalf("submit through a follower over HTTPS: %v", err)
	}
	if _, err := client.New("https://" + f.HTTPAddr()).Jobs(context.Background()); err == nil {
		t.Fatal("no token: listed jobs, want 401")
	}
	var cl apiv1.Cluster
	testutil.WaitFor(t, 10*time.Second, func() bool {
		cl, err = api.Cluster(context.Background())
		if err != nil || len(cl.Peers) != 3 {
			return false
		}
		for _, p := range cl.Peers {
			if !p.Reachable {
				return false
			}
		}
		return true
	}, "every peer reachable over https")
}
