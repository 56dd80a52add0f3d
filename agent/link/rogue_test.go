package link_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/gantry-ml/gantry/agent/link"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/wire"
)

// rogue is a process posing as a controller on the agent link: it accepts
// any client, answers the hello and sends StartJob at once, as an attacker
// who wants to run a command on the agent's host would.
type rogue struct {
	addr   string
	hellos atomic.Int64
}

func startRogue(t *testing.T, cert tls.Certificate) *rogue {
	t.Helper()
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		NextProtos: []string{wire.ALPN}, ClientAuth: tls.RequireAnyClientCert,
	}, wire.QUICConfig())
	if err != nil {
		t.Fatal(err)
	}
	r := &rogue{addr: ln.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			go r.serve(ctx, conn)
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = ln.Close()
		<-done
	})
	return r
}

func (r *rogue) serve(ctx context.Context, conn *quic.Conn) {
	defer conn.CloseWithError(wire.CodeOK, "rogue done")
	qs, err := conn.AcceptStream(ctx)
	if err != nil {
		return
	}
	_, ctrl, err := wire.Accept(qs, 5*time.Second)
	if err != nil {
		return
	}
	var m gantrypb.ControlMessage
	if err := ctrl.Read(&m, 5*time.Second); err != nil || m.GetHello() == nil {
		return
	}
	r.hellos.Add(1)
	_ = ctrl.Write(&gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_HelloReply{HelloReply: &gantrypb.HelloReply{Ok: true}}})
	_ = ctrl.Write(&gantrypb.ControlMessage{Msg: &gantrypb.ControlMessage_Start{Start: &gantrypb.StartJob{
		JobId: "pwned", Spec: &gantrypb.JobSpec{Run: "id"}}}})
	<-conn.Context().Done()
}

// signOldStyle signs, with the CA in dir, a certificate as every Gantry
// certificate was before roles: server and client usage, no identity.
func signOldStyle(t *testing.T, dir, name string) tls.Certificate {
	t.Helper()
	readPEM := func(file string) []byte {
		data, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(data)
		if b == nil {
			t.Fatalf("%s: no PEM block", file)
		}
		return b.Bytes
	}
	ca, err := x509.ParseCertificate(readPEM("ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := x509.ParsePKCS8PrivateKey(readPEM("ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestRogueControllerRefused: a real agent link never says hello to, and so
// never takes StartJob from, a server that is not a controller of its CA.
func TestRogueControllerRefused(t *testing.T) {
	c := startController(t)
	dir := filepath.Dir(c.ctrlTLS.CA)
	agentFiles, err := tlsutil.Issue(dir, tlsutil.RoleAgent, "agent2", nil)
	if err != nil {
		t.Fatal(err)
	}
	agentCert, err := tls.LoadX509KeyPair(agentFiles.Cert, agentFiles.Key)
	if err != nil {
		t.Fatal(err)
	}
	// A client config that checks only the chain and the host name, as
	// agents did before roles: the link must refuse on its own.
	caPEM, err := os.ReadFile(c.ctrlTLS.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	own, err := tls.LoadX509KeyPair(filepath.Join(dir, "agent1.pem"), filepath.Join(dir, "agent1-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	chainOnly := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{own},
		NextProtos: []string{wire.ALPN}, ServerName: "localhost"}

	tests := []struct {
		name   string
		cert   tls.Certificate
		client *tls.Config
		reason string // in the agent's log
	}{
		{"agent certificate, agent's config", agentCert, c.agentTLS, "incompatible key usage"},
		{"agent certificate, chain-only config", agentCert, chainOnly, "incompatible key usage"},
		{"pre-roles certificate, agent's config", signOldStyle(t, dir, "controller"), c.agentTLS, "no gantry identity"},
		{"pre-roles certificate, chain-only config", signOldStyle(t, dir, "controller"), chainOnly, "no gantry identity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startRogue(t, tt.cert)
			logs := &testutil.SyncBuffer{}
			h := &handler{nodeID: "agent1"}
			l := runLink(t, link.Options{Addrs: []string{r.addr}, TLS: tt.client, Spool: openSpool(t, filepath.Join(t.TempDir(), "spool.db")),
				Handler: h, Log: slog.New(slog.NewTextHandler(logs, nil))})
			testutil.WaitFor(t, waitLong, func() bool { return strings.Count(logs.String(), "controller link down") >= 2 },
				"the agent to try the rogue twice")
			if n := r.hellos.Load(); n != 0 {
				t.Fatalf("the agent said hello to the rogue controller %d times", n)
			}
			h.mu.Lock()
			starts := append([]string(nil), h.starts...)
			h.mu.Unlock()
			if len(starts) != 0 || l.Connects() != 0 {
				t.Fatalf("the agent took StartJob %v from the rogue (%d sessions)", starts, l.Connects())
			}
			if !strings.Contains(logs.String(), tt.reason) {
				t.Fatalf("the agent's log does not say why (%q):\n%s", tt.reason, logs)
			}
		})
	}

	// The control: the same agent config reaches the real controller.
	l := runLink(t, link.Options{Addrs: []string{c.QUICAddr()}, TLS: c.agentTLS,
		Spool: openSpool(t, filepath.Join(t.TempDir(), "spool.db")), Handler: &handler{nodeID: "agent1"}})
	testutil.WaitFor(t, waitLong, l.Connected, "the agent to connect to the real controller")
}

func TestLinkRefusesUnverifiedTLS(t *testing.T) {
	r := runLink(t, link.Options{Addrs: []string{"127.0.0.1:1"}, TLS: &tls.Config{InsecureSkipVerify: true},
		Spool: openSpool(t, filepath.Join(t.TempDir(), "spool.db")), Handler: &handler{nodeID: "agent1"}})
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run kept going with a TLS config that verifies nothing")
	}
	if r.err == nil || !strings.Contains(r.err.Error(), "does not verify") {
		t.Fatalf("Run = %v, want a refusal of the TLS config", r.err)
	}
}
