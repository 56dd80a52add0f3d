package tlsutil

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const testALPN = "gantry-test"

// pki is a CA directory with a controller and an agent certificate.
type pki struct {
	dir               string
	controller, agent Files
}

func newPKI(t *testing.T, agentName string) pki {
	t.Helper()
	dir := t.TempDir()
	c, a, err := EnsureDev(dir, agentName)
	if err != nil {
		t.Fatalf("EnsureDev: %v", err)
	}
	return pki{dir: dir, controller: c, agent: a}
}

// handshakeResult is what each side of a test connection saw.
type handshakeResult struct {
	serverErr, clientErr error
	server, client       tls.ConnectionState
}

// handshake runs a real TLS handshake over loopback TCP. After the handshake
// the server writes one byte and the client reads it: with TLS 1.3 the client
// finishes its handshake before the server has checked the client
// certificate, so a rejected client only learns of it on its first read.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := ln.Close(); err != nil {
			t.Error(err)
		}
	}()
	deadline := time.Now().Add(5 * time.Second)

	type serverOut struct {
		err   error
		state tls.ConnectionState
	}
	done := make(chan serverOut, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- serverOut{err: err}
			return
		}
		defer func() { _ = c.Close() }() // the test checks handshake errors, not close
		if err := c.SetDeadline(deadline); err != nil {
			done <- serverOut{err: err}
			return
		}
		s := tls.Server(c, serverCfg)
		err = s.Handshake()
		if err == nil {
			_, err = s.Write([]byte{1})
		}
		done <- serverOut{err: err, state: s.ConnectionState()}
	}()

	var res handshakeResult
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if err := c.SetDeadline(deadline); err != nil {
		t.Fatal(err)
	}
	cl := tls.Client(c, clientCfg)
	res.clientErr = cl.Handshake()
	if res.clientErr == nil {
		var b [1]byte
		_, res.clientErr = cl.Read(b[:])
	}
	res.client = cl.ConnectionState()
	out := <-done
	res.serverErr, res.server = out.err, out.state
	return res
}

func serverConfig(t *testing.T, f Files) *tls.Config {
	t.Helper()
	cfg, err := ServerConfig(f, testALPN, RoleAgent)
	if err != nil {
		t.Fatalf("ServerConfig: %v", err)
	}
	return cfg
}

func clientConfig(t *testing.T, f Files, serverName string) *tls.Config {
	t.Helper()
	cfg, err := ClientConfig(f, testALPN, serverName, Identity{Role: RoleController})
	if err != nil {
		t.Fatalf("ClientConfig: %v", err)
	}
	return cfg
}

func TestHandshake(t *testing.T) {
	good := newPKI(t, "gpu-01")
	rogue := newPKI(t, "gpu-01") // same names, another CA
	// Certificates from the rogue CA, combined with the good CA file so that
	// each side trusts the good CA but holds a rogue certificate.
	rogueAgent := Files{CA: good.agent.CA, Cert: rogue.agent.Cert, Key: rogue.agent.Key}
	rogueController := Files{CA: good.controller.CA, Cert: rogue.controller.Cert, Key: rogue.controller.Key}

	noCert := clientConfig(t, good.agent, "")
	noCert.Certificates = nil

	tests := []struct {
		name           string
		server, client *tls.Config
		wantServerErr  bool
		wantClientErr  bool
		wantPeer       string
	}{
		{
			name:     "mutual auth, any server name",
			server:   serverConfig(t, good.controller),
			client:   clientConfig(t, good.agent, ""),
			wantPeer: "gpu-01",
		},
		{
			name:     "mutual auth, server name checked",
			server:   serverConfig(t, good.controller),
			client:   clientConfig(t, good.agent, "localhost"),
			wantPeer: "gpu-01",
		},
		{
			name:          "server name not in certificate",
			server:        serverConfig(t, good.controller),
			client:        clientConfig(t, good.agent, "elsewhere.example"),
			wantServerErr: true,
			wantClientErr: true,
		},
		{
			name:          "client cert from another CA",
			server:        serverConfig(t, good.controller),
			client:        clientConfig(t, rogueAgent, ""),
			wantServerErr: true,
			wantClientErr: true,
		},
		{
			name:          "client without cert",
			server:        serverConfig(t, good.controller),
			client:        noCert,
			wantServerErr: true,
			wantClientErr: true,
		},
		{
			name:          "server cert from another CA, any server name",
			server:        serverConfig(t, rogueController),
			client:        clientConfig(t, good.agent, ""),
			wantServerErr: true,
			wantClientErr: true,
		},
		{
			name:          "server cert from another CA, server name checked",
			server:        serverConfig(t, rogueController),
			client:        clientConfig(t, good.agent, "localhost"),
			wantServerErr: true,
			wantClientErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := handshake(t, tt.server, tt.client)
			if (res.serverErr != nil) != tt.wantServerErr {
				t.Errorf("server error = %v, want error: %v", res.serverErr, tt.wantServerErr)
			}
			if (res.clientErr != nil) != tt.wantClientErr {
				t.Errorf("client error = %v, want error: %v", res.clientErr, tt.wantClientErr)
			}
			if tt.wantPeer == "" {
				return
			}
			got, err := PeerIdentity(res.server)
			if want := (Identity{Role: RoleAgent, ID: tt.wantPeer}); err != nil || got != want {
				t.Errorf("PeerIdentity(server state) = %v, %v; want %v", got, err, want)
			}
			if p := res.client.NegotiatedProtocol; p != testALPN {
				t.Errorf("negotiated ALPN %q, want %q", p, testALPN)
			}
			if v := res.client.Version; v != tls.VersionTLS13 {
				t.Errorf("TLS version %x, want 1.3", v)
			}
		})
	}
}

func TestClientAnyServerNameRejectsForeignChain(t *testing.T) {
	// The InsecureSkipVerify path must fail in our own verification, not by
	// accident elsewhere: check the error names the certificate check.
	good := newPKI(t, "gpu-01")
	rogue := newPKI(t, "gpu-01")
	res := handshake(t,
		serverConfig(t, Files{CA: good.controller.CA, Cert: rogue.controller.Cert, Key: rogue.controller.Key}),
		clientConfig(t, good.agent, ""))
	var unknown x509.UnknownAuthorityError
	if !errors.As(res.clientErr, &unknown) {
		t.Fatalf("client error = %v, want an unknown authority error", res.clientErr)
	}
}

func TestPeerIdentityNeedsVerifiedChain(t *testing.T) {
	p := newPKI(t, "gpu-01")
	leaf, err := readCert(p.agent.Cert)
	if err != nil {
		t.Fatal(err)
	}
	// A peer certificate that crypto/tls did not verify is not an identity.
	if _, err := PeerIdentity(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("PeerIdentity(unverified) = %v, want ErrNoPeer", err)
	}
}

func TestIssueCertificate(t *testing.T) {
	dir := t.TempDir()
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		hosts   []string
		wantDNS []string
		wantIPs []string
	}{
		{"default", nil, []string{"default", "localhost"}, []string{"127.0.0.1", "::1"}},
		{"ctl-1", []string{"10.0.0.5", "ctl-1.example", "fe80::1"}, []string{"ctl-1", "ctl-1.example"}, []string{"10.0.0.5", "fe80::1"}},
		{"10.1.2.3", []string{"10.1.2.3", "host"}, []string{"host"}, []string{"10.1.2.3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Issue(dir, RoleController, tt.name, tt.hosts)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if want := filepath.Join(dir, tt.name+".pem"); f.Cert != want {
				t.Errorf("Cert = %s, want %s", f.Cert, want)
			}
			if want := filepath.Join(dir, tt.name+"-key.pem"); f.Key != want {
				t.Errorf("Key = %s, want %s", f.Key, want)
			}
			if want := filepath.Join(dir, "ca.pem"); f.CA != want {
				t.Errorf("CA = %s, want %s", f.CA, want)
			}
			cert, err := readCert(f.Cert)
			if err != nil {
				t.Fatal(err)
			}
			if cert.Subject.CommonName != tt.name {
				t.Errorf("CN = %q", cert.Subject.CommonName)
			}
			if !slices.Equal(cert.DNSNames, tt.wantDNS) {
				t.Errorf("DNS SANs = %v, want %v", cert.DNSNames, tt.wantDNS)
			}
			var ips []string
			for _, ip := range cert.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tt.wantIPs) {
				t.Errorf("IP SANs = %v, want %v", ips, tt.wantIPs)
			}
			eku := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
			if !slices.Equal(cert.ExtKeyUsage, eku) {
				t.Errorf("ExtKeyUsage = %v", cert.ExtKeyUsage)
			}
			if cert.IsCA {
				t.Error("leaf certificate is a CA")
			}
			if life := cert.NotAfter.Sub(time.Now()); life < 5*365*24*time.Hour-time.Hour || life > 5*365*24*time.Hour+time.Hour {
				t.Errorf("valid for %v more, want 5 years", life)
			}
			ca, err := readCert(f.CA)
			if err != nil {
				t.Fatal(err)
			}
			if err := cert.CheckSignatureFrom(ca); err != nil {
				t.Errorf("not signed by the CA: %v", err)
			}
		})
	}
}

func TestIssueRejects(t *testing.T) {
	dir := t.TempDir()
	if _, err := Issue(dir, RoleAgent, "agent", nil); !errors.Is(err, ErrNoCA) {
		t.Fatalf("Issue without CA = %v, want ErrNoCA", err)
	}
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	caBefore := readFiles(t, dir)
	for _, name := range []string{"", "ca", "ca-key", "x-key", "../evil", "a/b", ".hidden", "sp ace"} {
		if _, err := Issue(dir, RoleAgent, name, nil); !errors.Is(err, ErrBadName) {
			t.Errorf("Issue(%q) = %v, want ErrBadName", name, err)
		}
	}
	for _, hosts := range [][]string{{""}, {"  "}, {"a b"}, {"a/b"}} {
		if _, err := Issue(dir, RoleAgent, "agent", hosts); !errors.Is(err, ErrBadHost) {
			t.Errorf("Issue(hosts %q) = %v, want ErrBadHost", hosts, err)
		}
	}
	for _, role := range []Role{"", "admin", "Controller"} {
		if _, err := Issue(dir, role, "x", nil); !errors.Is(err, ErrBadRole) {
			t.Errorf("Issue(role %q) = %v, want ErrBadRole", role, err)
		}
	}
	if after := readFiles(t, dir); !equalFiles(caBefore, after) {
		t.Fatalf("rejected Issue calls changed the directory: %v → %v", keys(caBefore), keys(after))
	}
}

func TestFileModes(t *testing.T) {
	p := newPKI(t, "gpu-01")
	for _, f := range []string{filepath.Join(p.dir, "ca-key.pem"), p.controller.Key, p.agent.Key} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Errorf("%s has mode %o, want 600", filepath.Base(f), m)
		}
	}
	for _, f := range []string{p.controller.CA, p.controller.Cert, p.agent.Cert} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m&0o022 != 0 {
			t.Errorf("%s is writable by others: %o", filepath.Base(f), m)
		}
	}
	// No temporary files are left behind.
	for name := range readFiles(t, p.dir) {
		if strings.HasPrefix(name, ".") {
			t.Errorf("leftover file %s", name)
		}
	}
}

func TestInitCATwice(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "certs")
	if err := InitCA(dir); err != nil {
		t.Fatalf("InitCA: %v", err)
	}
	before := readFiles(t, dir)
	if err := InitCA(dir); !errors.Is(err, ErrExists) {
		t.Fatalf("second InitCA = %v, want ErrExists", err)
	}
	if after := readFiles(t, dir); !equalFiles(before, after) {
		t.Fatal("second InitCA changed the CA")
	}
	// Half a CA also counts as existing.
	if err := os.Remove(filepath.Join(dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	if err := InitCA(dir); !errors.Is(err, ErrExists) {
		t.Fatalf("InitCA over a lone key = %v, want ErrExists", err)
	}
	if _, _, err := EnsureDev(dir, "gpu-01"); !errors.Is(err, ErrNoCA) {
		t.Fatalf("EnsureDev over half a CA = %v, want ErrNoCA", err)
	}
}

func TestEnsureDevIdempotent(t *testing.T) {
	dir := t.TempDir()
	c1, a1, err := EnsureDev(dir, "gpu-01")
	if err != nil {
		t.Fatal(err)
	}
	before := readFiles(t, dir)
	if want := []string{"ca-key.pem", "ca.pem", "controller-key.pem", "controller.pem", "gpu-01-key.pem", "gpu-01.pem"}; !slices.Equal(keys(before), want) {
		t.Fatalf("files = %v, want %v", keys(before), want)
	}
	c2, a2, err := EnsureDev(dir, "gpu-01")
	if err != nil {
		t.Fatal(err)
	}
	if c1 != c2 || a1 != a2 {
		t.Fatalf("second call returned other files: %v %v vs %v %v", c1, a1, c2, a2)
	}
	if after := readFiles(t, dir); !equalFiles(before, after) {
		t.Fatal("second EnsureDev changed files")
	}

	// A second agent in the same dir gets its own certificate from the
	// same CA; the existing ones stay.
	_, a3, err := EnsureDev(dir, "gpu-02")
	if err != nil {
		t.Fatal(err)
	}
	after := readFiles(t, dir)
	for name, data := range before {
		if !bytes.Equal(after[name], data) {
			t.Errorf("%s changed", name)
		}
	}
	res := handshake(t, serverConfig(t, c1), clientConfig(t, a3, ""))
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("handshake with second agent: server %v, client %v", res.serverErr, res.clientErr)
	}
	if got, err := PeerIdentity(res.server); err != nil || got != (Identity{Role: RoleAgent, ID: "gpu-02"}) {
		t.Fatalf("PeerIdentity = %v, %v", got, err)
	}

	// A missing key is reissued.
	if err := os.Remove(a1.Key); err != nil {
		t.Fatal(err)
	}
	if _, _, err := EnsureDev(dir, "gpu-01"); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(a1.Cert, a1.Key); err != nil {
		t.Fatalf("reissued pair does not match: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	p := newPKI(t, "gpu-01")
	if _, err := ServerConfig(p.controller, "", RoleAgent); !errors.Is(err, ErrNoALPN) {
		t.Errorf("ServerConfig without ALPN = %v", err)
	}
	if _, err := ClientConfig(p.agent, "", "", Identity{Role: RoleController}); !errors.Is(err, ErrNoALPN) {
		t.Errorf("ClientConfig without ALPN = %v", err)
	}
	missing := p.agent
	missing.CA = filepath.Join(p.dir, "nope.pem")
	if _, err := ClientConfig(missing, testALPN, "", Identity{Role: RoleController}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ClientConfig with missing CA = %v", err)
	}
	// A key file is not a certificate.
	wrong := p.controller
	wrong.CA = p.controller.Key
	if _, err := ServerConfig(wrong, testALPN, RoleAgent); !errors.Is(err, ErrBadPEM) {
		t.Errorf("ServerConfig with a key as CA = %v", err)
	}
	mismatched := Files{CA: p.agent.CA, Cert: p.agent.Cert, Key: p.controller.Key}
	if _, err := ServerConfig(mismatched, testALPN, RoleAgent); err == nil {
		t.Error("ServerConfig with mismatched key succeeded")
	}
	// Only controllers serve: an agent certificate makes no server config.
	if _, err := ServerConfig(p.agent, testALPN, RoleAgent); !errors.Is(err, ErrBadRole) {
		t.Errorf("ServerConfig with an agent certificate = %v, want ErrBadRole", err)
	}
	if _, err := ServerConfig(p.controller, testALPN, "admin"); !errors.Is(err, ErrBadRole) {
		t.Errorf("ServerConfig requiring an unknown role = %v, want ErrBadRole", err)
	}
}

func readFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = data
	}
	return out
}

func equalFiles(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(b[k], v) {
			return false
		}
	}
	return true
}

func keys(m map[string][]byte) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
