package server_test

import (
	"bufio"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/server"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/membership"
)

// scrapeCounter returns a counter's value from s's /metrics, -1 if absent.
func scrapeCounter(t *testing.T, s *server.Server, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatalf("%s: %v", sc.Text(), err)
			}
			return v
		}
	}
	return -1
}

// TestGossipKeyAloneNeverMakesAVoter: a controller that holds the stolen
// gossip key but only a controller certificate of its own fresh CA joins
// serf and is seen by the leader, but never becomes a Raft voter; killing
// it leaves the real one-node cluster with its leader.
func TestGossipKeyAloneNeverMakesAVoter(t *testing.T) {
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	caDir := t.TempDir()
	if err := tlsutil.InitCA(caDir); err != nil {
		t.Fatal(err)
	}
	realTLS, err := tlsutil.Issue(caDir, tlsutil.RoleController, "c0", nil)
	if err != nil {
		t.Fatal(err)
	}
	start := func(id string, f tlsutil.Files, join []string, expect int) *server.Server {
		t.Helper()
		srv, err := server.Start(server.Config{
			NodeID: id, DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
			SerfAddr: "127.0.0.1:0", Join: join, BootstrapExpect: expect, GossipKey: key, TLS: f, Fast: true,
			LostGrace: time.Minute, Log: testLog(t),
		})
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		return srv
	}
	good := start("c0", realTLS, nil, 1)
	t.Cleanup(func() { good.Close() })
	testutil.WaitFor(t, 15*time.Second, good.Raft().IsLeader, "the real controller to lead")

	// The rogue: the same gossip key, a CA of its own.
	rogueDir := t.TempDir()
	if err := tlsutil.InitCA(rogueDir); err != nil {
		t.Fatal(err)
	}
	rogueTLS, err := tlsutil.Issue(rogueDir, tlsutil.RoleController, "c9", nil)
	if err != nil {
		t.Fatal(err)
	}
	rogue := start("c9", rogueTLS, []string{good.Members().LocalAddr()}, 0)
	rogueClosed := false
	t.Cleanup(func() {
		if !rogueClosed {
			rogue.Close()
		}
	})

	// The leader sees the rogue in serf and refuses it, more than once:
	// the membership loop reconciles every second.
	testutil.WaitFor(t, 15*time.Second, func() bool {
		m, ok := good.Members().Member("c9")
		return ok && m.Status == membership.StatusAlive && m.Role == membership.RoleController
	}, "the leader to see the rogue controller in serf")
	var servers []raft.Server
	testutil.WaitFor(t, 15*time.Second, func() bool {
		servers, err = good.Raft().Servers()
		if err != nil {
			t.Fatal(err)
		}
		return len(servers) != 1 || scrapeCounter(t, good, "gantry_raft_voters_refused_total") >= 2
	}, "the leader to refuse the rogue as a voter twice, or to add it")
	if len(servers) != 1 || servers[0].ID != "c0" {
		t.Fatalf("raft configuration %v, want c0 alone", servers)
	}

	rogue.Close()
	rogueClosed = true
	// The real cluster still has its leader and takes writes.
	submit(t, good, apiv1.JobSpec{Name: "after-rogue", Run: "true"})
	if !good.Raft().IsLeader() {
		t.Fatal("the real controller lost its leadership")
	}
	if servers, err := good.Raft().Servers(); err != nil || len(servers) != 1 {
		t.Fatalf("raft configuration %v, %v; want c0 alone", servers, err)
	}
}

// TestControllerNeedsItsOwnIdentity: with clustering, a controller whose
// certificate names another node id, or is an agent's, does not start.
func TestControllerNeedsItsOwnIdentity(t *testing.T) {
	dir := t.TempDir()
	if err := tlsutil.InitCA(dir); err != nil {
		t.Fatal(err)
	}
	other, err := tlsutil.Issue(dir, tlsutil.RoleController, "c1", nil)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := tlsutil.Issue(dir, tlsutil.RoleAgent, "c0", nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]tlsutil.Files{"another controller's": other, "an agent's": agent} {
		srv, err := server.Start(server.Config{
			NodeID: "c0", DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
			SerfAddr: "127.0.0.1:0", BootstrapExpect: 1, TLS: f, Fast: true, Log: testLog(t),
		})
		if err == nil {
			srv.Close()
			t.Errorf("controller c0 started with %s certificate", name)
		}
	}
}
