package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gantry-ml/gantry/internal/tlsutil"
)

// ALPN is the TLS application protocol of the Raft transport. It differs
// from the agent link's, so neither end mistakes one protocol for the other.
const ALPN = "gantry-raft/1"

// handshakeTimeout bounds the TLS handshake of one Raft connection, so that
// a peer that connects and says nothing holds no goroutine for long.
const handshakeTimeout = 10 * time.Second

// tlsStreamLayer is a raft.StreamLayer over mutual TLS in which both ends
// must hold a controller certificate from the cluster CA: the gossip key,
// or any other certificate of the CA, never reaches Raft.
type tlsStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	files     tlsutil.Files
	// client dials any controller: Raft dials by address and does not say
	// which server it means.
	client *tls.Config
}

// listenTLS binds addr and returns a stream layer over mutual TLS with f's
// controller certificate, for raft.NewNetworkTransportWithConfig. Like
// raft.NewTCPTransport, it refuses an advertise address (explicit or bound)
// that peers cannot dial.
func listenTLS(addr string, advertise net.Addr, f tlsutil.Files) (*tlsStreamLayer, error) {
	if f == (tlsutil.Files{}) {
		return nil, errors.New("raft needs TLS: no controller certificate configured")
	}
	id, err := tlsutil.LoadIdentity(f)
	if err != nil {
		return nil, err
	}
	if id.Role != tlsutil.RoleController {
		return nil, fmt.Errorf("raft needs a controller certificate; %s is %s", f.Cert, id)
	}
	server, err := tlsutil.ServerConfig(f, ALPN, tlsutil.RoleController)
	if err != nil {
		return nil, err
	}
	client, err := tlsutil.ClientConfig(f, ALPN, "", tlsutil.Identity{Role: tlsutil.RoleController})
	if err != nil {
		return nil, err
	}
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	layer := &tlsStreamLayer{ln: tls.NewListener(tcp, server), advertise: advertise, files: f, client: client}
	a, ok := layer.Addr().(*net.TCPAddr)
	if !ok || a.IP == nil || a.IP.IsUnspecified() {
		_ = tcp.Close() // the advertise error is the one to report
		return nil, fmt.Errorf("address %v is not advertisable: set an advertise address", layer.Addr())
	}
	return layer, nil
}

// Accept returns the next connection. Its handshake runs on its first read
// or write, on Raft's goroutine for that connection, bounded by
// handshakeTimeout: handshaking here would let one silent peer stall every
// other connection behind it.
func (l *tlsStreamLayer) Accept() (net.Conn, error) {
	c, err := l.ln.Accept()
	if err != nil {
		return nil, err
	}
	return &serverConn{Conn: c.(*tls.Conn)}, nil
}

// Close stops listening.
func (l *tlsStreamLayer) Close() error { return l.ln.Close() }

// Addr is the address advertised to peers: the advertise address if set,
// else the bound one.
func (l *tlsStreamLayer) Addr() net.Addr {
	if l.advertise != nil {
		return l.advertise
	}
	return l.ln.Addr()
}

// Dial connects to a Raft peer and completes the handshake within timeout,
// failing unless the peer is a controller of the cluster CA.
func (l *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: l.client}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.DialContext(ctx, "tcp", string(address))
}

// verify dials addr and completes a handshake that succeeds only if the
// peer there holds the controller certificate for id from the cluster CA.
func (l *tlsStreamLayer) verify(id, addr string, timeout time.Duration) error {
	cfg, err := tlsutil.ClientConfig(l.files, ALPN, "", tlsutil.Identity{Role: tlsutil.RoleController, ID: id})
	if err != nil {
		return err
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	// Only the handshake mattered; the peer sees a clean EOF.
	_ = c.Close()
	return nil
}

// serverConn is an accepted connection that completes its TLS handshake,
// with a deadline, before its first read or write.
type serverConn struct {
	*tls.Conn
	done atomic.Bool
}

func (c *serverConn) handshake() error {
	if c.done.Load() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("raft TLS handshake with %s: %w", c.RemoteAddr(), err)
	}
	c.done.Store(true)
	return nil
}

// Read completes the handshake first.
func (c *serverConn) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

// Write completes the handshake first.
func (c *serverConn) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// VerifyPeer checks that the server at addr holds the controller
// certificate for id, issued by the cluster CA, by completing a TLS
// handshake with it on its Raft address. The leader calls it before it
// makes a serf member a voter, so that gossip alone never earns a vote.
func (n *Node) VerifyPeer(id, addr string, timeout time.Duration) error {
	if err := n.stream.verify(id, addr, timeout); err != nil {
		return fmt.Errorf("cluster: verify controller %q at %s: %w", id, addr, err)
	}
	return nil
}
