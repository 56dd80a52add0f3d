package cluster_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/tlsutil"
)

// controllerTLS makes a CA in dir, if there is none, and a controller
// certificate for id signed by it.
func controllerTLS(t *testing.T, dir, id string) tlsutil.Files {
	t.Helper()
	if err := tlsutil.InitCA(dir); err != nil && !errors.Is(err, tlsutil.ErrExists) {
		t.Fatal(err)
	}
	f, err := tlsutil.Issue(dir, tlsutil.RoleController, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// openTLS starts a Raft node named id with the given certificate.
func openTLS(t *testing.T, id string, f tlsutil.Files, bootstrap bool) *cluster.Node {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := cluster.Open(cluster.Config{
		NodeID: id, DataDir: t.TempDir(), BindAddr: "127.0.0.1:0", Bootstrap: bootstrap, Fast: true,
		Log: logging.Discard(), TLS: f,
	}, fsm.New(st, nil, logging.Discard()))
	if err != nil {
		st.Close()
		t.Fatalf("cluster.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close raft: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return n
}

// dialLayer is a client-only raft.StreamLayer that dials with a given TLS
// config: a Raft peer as anyone holding those certificates could build it.
type dialLayer struct {
	net.Listener
	cfg *tls.Config
}

func (d dialLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(addr), d.cfg)
}

// appendEntries sends one AppendEntries with term 0 over trans: a real
// leader answers it (refusing the stale term) without changing anything.
func appendEntries(trans raft.Transport, target string) (*raft.AppendEntriesResponse, error) {
	var resp raft.AppendEntriesResponse
	err := trans.AppendEntries("c1", raft.ServerAddress(target), &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("probe"), Addr: []byte("probe")},
	}, &resp)
	return &resp, err
}

// tlsClient is a Raft transport that dials with f's certificate, trusting
// trustCA (the cluster's), as a peer holding f would.
func tlsClient(t *testing.T, f tlsutil.Files, trustCA string) raft.Transport {
	t.Helper()
	f.CA = trustCA
	cfg, err := tlsutil.ClientConfig(f, cluster.ALPN, "", tlsutil.Identity{Role: tlsutil.RoleController})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransport(dialLayer{Listener: ln, cfg: cfg}, 1, 2*time.Second, io.Discard)
	t.Cleanup(func() { _ = trans.Close() })
	return trans
}

// TestRaftPortNeedsControllerCertificate: the Raft port answers only a
// client holding a controller certificate of the cluster CA. Plain TCP, a
// certificate from another CA (as a controller started with its own fresh
// CA holds) and an agent certificate of the cluster CA are all refused.
func TestRaftPortNeedsControllerCertificate(t *testing.T) {
	caDir := t.TempDir()
	n := openTLS(t, "c1", controllerTLS(t, caDir, "c1"), true)
	waitLeader(t, &node{Node: n})
	addr := n.Addr()
	clusterCA := filepath.Join(caDir, "ca.pem")

	// The control: another controller of the cluster CA talks Raft.
	resp, err := appendEntries(tlsClient(t, controllerTLS(t, caDir, "c2"), clusterCA), addr)
	if err != nil {
		t.Fatalf("a controller of the cluster CA could not talk to the raft port: %v", err)
	}
	if resp.Term == 0 || resp.Success {
		t.Fatalf("the leader's answer to a stale AppendEntries: %+v", resp)
	}

	plain, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plain.Close() })
	if _, err := appendEntries(plain, addr); err == nil {
		t.Error("plain TCP talked to the raft port")
	}

	foreign := controllerTLS(t, t.TempDir(), "c1")
	if _, err := appendEntries(tlsClient(t, foreign, clusterCA), addr); err == nil {
		t.Error("a controller certificate from another CA talked to the raft port")
	}

	agent, err := tlsutil.Issue(caDir, tlsutil.RoleAgent, "gpu-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := appendEntries(tlsClient(t, agent, clusterCA), addr); err == nil {
		t.Error("an agent certificate of the cluster CA talked to the raft port")
	}

	if err := n.VerifyPeer("c1", addr, 5*time.Second); err != nil {
		t.Errorf("the node could not verify itself: %v", err)
	}
}

// TestVerifyPeer: a controller is verified under its own id only, and only
// with a certificate of the cluster CA.
func TestVerifyPeer(t *testing.T) {
	caDir := t.TempDir()
	leader := openTLS(t, "c1", controllerTLS(t, caDir, "c1"), true)
	peer := openTLS(t, "c2", controllerTLS(t, caDir, "c2"), false)
	rogue := openTLS(t, "c3", controllerTLS(t, t.TempDir(), "c3"), false)

	if err := leader.VerifyPeer("c2", peer.Addr(), 5*time.Second); err != nil {
		t.Fatalf("c2 of the cluster CA not verified: %v", err)
	}
	if err := leader.VerifyPeer("c3", peer.Addr(), 5*time.Second); !errors.Is(err, tlsutil.ErrWrongPeer) {
		t.Errorf("c2 verified as c3: %v, want ErrWrongPeer", err)
	}
	var unknown x509.UnknownAuthorityError
	if err := leader.VerifyPeer("c3", rogue.Addr(), 5*time.Second); !errors.As(err, &unknown) {
		t.Errorf("a controller of another CA: %v, want an unknown authority error", err)
	}
	if err := leader.VerifyPeer("c9", "127.0.0.1:1", time.Second); err == nil {
		t.Error("verified a controller at an address where nothing listens")
	}
}
