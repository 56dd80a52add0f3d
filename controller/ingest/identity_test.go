package ingest_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/gantry-ml/gantry/controller/ingest"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/wire"
)

// registerAs dials addr with f's certificate and says hello as nodeID. It
// returns the error that ended the attempt: the dial's, or the hello's.
func (e *env) registerAs(addr string, f tlsutil.Files, nodeID string) error {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, addr, e.clientTLS(f), wire.QUICConfig())
	if err != nil {
		return err
	}
	defer conn.CloseWithError(wire.CodeOK, "test done")
	qs, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	ctrl, err := wire.Open(qs, wire.StreamControl)
	if err != nil {
		return err
	}
	a := &agentConn{conn: conn, ctrl: ctrl}
	reply, err := a.hello(&gantrypb.Hello{NodeId: nodeID, Hostname: "h"})
	if err != nil {
		return err
	}
	if !reply.Ok {
		return errors.New(reply.Error)
	}
	return nil
}

// TestControllerCertificateCannotRegisterAsAgent: a controller certificate
// of the cluster CA never registers an agent node, whether the TLS config
// stops it (as the real controller's does) or, should a config ever let it
// through, the handshake does.
func TestControllerCertificateCannotRegisterAsAgent(t *testing.T) {
	e := newEnv(t, nil, nil)
	c2, err := tlsutil.Issue(e.tlsDir, tlsutil.RoleController, "c2", nil)
	if err != nil {
		t.Fatal(err)
	}
	assertNotRegistered := func(t *testing.T, id string) {
		t.Helper()
		if _, err := e.node(id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("node %q registered with a controller certificate: %v", id, err)
		}
		if c, _ := e.events.counts(); c != 0 {
			t.Fatal("AgentConnected for a controller certificate")
		}
	}

	t.Run("agent-link TLS config", func(t *testing.T) {
		err := e.registerAs(e.srv.Addr().String(), c2, "c2")
		if err == nil {
			t.Fatal("a controller certificate registered as agent c2")
		}
		// The handshake fails on the controller, which tells the client
		// with a TLS alert (a QUIC crypto error).
		var te *quic.TransportError
		if !errors.As(err, &te) || !te.ErrorCode.IsCryptoError() {
			t.Fatalf("err = %v, want a TLS handshake failure", err)
		}
		assertNotRegistered(t, "c2")
		if e.srv.Connected("c2") {
			t.Fatal("a session for the controller certificate")
		}
	})

	t.Run("handshake", func(t *testing.T) {
		// A server whose TLS config checks only the chain: the handshake
		// itself must refuse the controller identity.
		cert, err := tls.LoadX509KeyPair(filepath.Join(e.tlsDir, "controller.pem"), filepath.Join(e.tlsDir, "controller-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		caPEM, err := os.ReadFile(filepath.Join(e.tlsDir, "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			t.Fatal("no CA certificate")
		}
		chainOnly := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, NextProtos: []string{wire.ALPN}}
		srv, err := ingest.Listen(ingest.Options{Addr: "127.0.0.1:0", TLS: chainOnly, Raft: e.raft, Events: e.events,
			Log: logging.Discard(), Version: "test"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ctx) }()
		defer func() {
			cancel()
			if err := srv.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			<-served
		}()

		for _, id := range []string{"c2", "agent1"} {
			err := e.registerAs(srv.Addr().String(), c2, id)
			var appErr *quic.ApplicationError
			if !errors.As(err, &appErr) || appErr.ErrorCode != wire.CodeProtocol || !strings.Contains(appErr.ErrorMessage, "only an agent certificate") {
				t.Fatalf("hello as %q with a controller certificate: err = %v, want a protocol close naming the role", id, err)
			}
			assertNotRegistered(t, id)
		}
		// The control: the agent's own certificate registers through the
		// same server.
		if err := e.registerAs(srv.Addr().String(), e.agent1, "agent1"); err != nil {
			t.Fatalf("agent1 with its agent certificate: %v", err)
		}
	})
}
