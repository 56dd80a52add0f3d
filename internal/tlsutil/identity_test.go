package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIssueRoles(t *testing.T) {
	dir := t.TempDir()
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		role    Role
		name    string
		wantURI string
		wantEKU []x509.ExtKeyUsage
	}{
		{RoleController, "ctl-1", "gantry://controller/ctl-1", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		{RoleAgent, "gpu-host-1", "gantry://agent/gpu-host-1", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
	}
	for _, tt := range tests {
		t.Run(string(tt.role), func(t *testing.T) {
			f, err := Issue(dir, tt.role, tt.name, nil)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := readCert(f.Cert)
			if err != nil {
				t.Fatal(err)
			}
			if len(cert.URIs) != 1 || cert.URIs[0].String() != tt.wantURI {
				t.Errorf("URI SANs = %v, want [%s]", cert.URIs, tt.wantURI)
			}
			if !slices.Equal(cert.ExtKeyUsage, tt.wantEKU) {
				t.Errorf("ExtKeyUsage = %v, want %v", cert.ExtKeyUsage, tt.wantEKU)
			}
			id, err := IdentityOf(cert)
			if want := (Identity{Role: tt.role, ID: tt.name}); err != nil || id != want {
				t.Errorf("IdentityOf = %v, %v; want %v", id, err, want)
			}
			if id.String() != tt.wantURI {
				t.Errorf("String = %s, want %s", id, tt.wantURI)
			}
			if got, err := LoadIdentity(f); err != nil || got != id {
				t.Errorf("LoadIdentity = %v, %v", got, err)
			}
		})
	}
}

// signLeaf signs a leaf certificate with the CA in dir from tmpl and
// returns it as a key pair with its parsed leaf: certificates that Issue
// would never make (old ones, forged ones) for the refusal tests.
func signLeaf(t *testing.T, dir string, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	tmpl.DNSNames = []string{"localhost"}
	tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// oldStyle is a certificate as Issue made them before roles: CommonName
// only, server and client usage, no URI SAN.
func oldStyle(name string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{"gantry"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
}

func TestIdentityOfRefuses(t *testing.T) {
	p := newPKI(t, "gpu-01")
	uri := func(s string) []*url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return []*url.URL{u}
	}
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	tests := []struct {
		name string
		tmpl *x509.Certificate
		want error
	}{
		{"old certificate without URI SAN", oldStyle("gpu-01"), ErrNoIdentity},
		{"other URI scheme only", &x509.Certificate{ExtKeyUsage: client, URIs: uri("spiffe://gantry/agent/gpu-01")}, ErrNoIdentity},
		{"unknown role", &x509.Certificate{ExtKeyUsage: client, URIs: uri("gantry://admin/gpu-01")}, ErrBadRole},
		{"empty id", &x509.Certificate{ExtKeyUsage: client, URIs: uri("gantry://agent/")}, ErrNoIdentity},
		{"path in id", &x509.Certificate{ExtKeyUsage: client, URIs: uri("gantry://agent/a/b")}, ErrBadName},
		{"two identities", &x509.Certificate{ExtKeyUsage: both,
			URIs: append(uri("gantry://controller/c1"), uri("gantry://agent/c1")...)}, ErrNoIdentity},
		// An agent identity with server usage could serve as a controller
		// to anything that checks only the chain.
		{"agent with server usage", &x509.Certificate{ExtKeyUsage: both, URIs: uri("gantry://agent/gpu-01")}, ErrBadRole},
		{"controller without server usage", &x509.Certificate{ExtKeyUsage: client, URIs: uri("gantry://controller/c1")}, ErrBadRole},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := signLeaf(t, p.dir, tt.tmpl)
			if id, err := IdentityOf(c.Leaf); !errors.Is(err, tt.want) {
				t.Fatalf("IdentityOf = %v, %v; want %v", id, err, tt.want)
			}
		})
	}
}

// TestOldCertificateRefused: a certificate from before roles is refused as
// one's own (with the way to re-issue it in the error) and as a peer's.
func TestOldCertificateRefused(t *testing.T) {
	p := newPKI(t, "gpu-01")
	old := signLeaf(t, p.dir, oldStyle("controller"))
	oldFiles := Files{CA: p.controller.CA, Cert: p.dir + "/old.pem", Key: p.dir + "/old-key.pem"}
	if err := writePEM(oldFiles.Cert, "CERTIFICATE", old.Certificate[0], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeKey(oldFiles.Key, old.PrivateKey.(*ecdsa.PrivateKey)); err != nil {
		t.Fatal(err)
	}
	for name, mk := range map[string]func() error{
		"server": func() error { _, err := ServerConfig(oldFiles, testALPN, RoleAgent); return err },
		"client": func() error {
			_, err := ClientConfig(oldFiles, testALPN, "", Identity{Role: RoleController})
			return err
		},
		"identity": func() error { _, err := LoadIdentity(oldFiles); return err },
	} {
		err := mk()
		if !errors.Is(err, ErrNoIdentity) {
			t.Errorf("%s config with an old certificate = %v, want ErrNoIdentity", name, err)
			continue
		}
		if !strings.Contains(err.Error(), "tls issue --role") || !strings.Contains(err.Error(), "Upgrading certificates") {
			t.Errorf("%s: the error does not say how to re-issue: %v", name, err)
		}
	}

	// An old certificate on the other end: a controller still running one
	// is refused by a new agent, an agent still holding one by a new
	// controller.
	oldServer := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{old}, NextProtos: []string{testALPN}}
	res := handshake(t, oldServer, clientConfig(t, p.agent, ""))
	if !errors.Is(res.clientErr, ErrNoIdentity) {
		t.Errorf("agent dialing a controller with an old certificate: client error %v, want ErrNoIdentity", res.clientErr)
	}
	oldAgent := clientConfig(t, p.agent, "")
	oldAgent.Certificates = []tls.Certificate{signLeaf(t, p.dir, oldStyle("gpu-01"))}
	res = handshake(t, serverConfig(t, p.controller), oldAgent)
	if !errors.Is(res.serverErr, ErrNoIdentity) {
		t.Errorf("old agent certificate: server error %v, want ErrNoIdentity", res.serverErr)
	}
}

// TestRoleHandshakes runs real handshakes between the roles over loopback:
// every config accepts only the peer role it names.
func TestRoleHandshakes(t *testing.T) {
	p := newPKI(t, "gpu-01")
	c2, err := Issue(p.dir, RoleController, "c2", nil)
	if err != nil {
		t.Fatal(err)
	}
	agentPair, err := tls.LoadX509KeyPair(p.agent.Cert, p.agent.Key)
	if err != nil {
		t.Fatal(err)
	}
	// A rogue controller: a process serving TLS with an agent certificate
	// from the cluster CA. ServerConfig refuses to build this, so it is
	// built by hand, as an attacker would.
	rogueServer := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{agentPair}, NextProtos: []string{testALPN}}
	// A rogue controller whose agent certificate was also given server
	// usage: the identity check refuses what the key usage check would not.
	rogueBoth := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{testALPN}, Certificates: []tls.Certificate{
		signLeaf(t, p.dir, &x509.Certificate{
			Subject:     pkix.Name{CommonName: "gpu-01"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			URIs:        []*url.URL{Identity{Role: RoleAgent, ID: "gpu-01"}.URI()},
		})}}
	server := func(f Files, peer Role) *tls.Config {
		cfg, err := ServerConfig(f, testALPN, peer)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	client := func(f Files, sn string, peer Identity) *tls.Config {
		cfg, err := ClientConfig(f, testALPN, sn, peer)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	anyController := Identity{Role: RoleController}
	tests := []struct {
		name           string
		server, client *tls.Config
		wantClientErr  error // nil: the handshake must succeed on both ends
		wantServerErr  bool
	}{
		{"agent to controller", server(p.controller, RoleAgent), client(p.agent, "", anyController), nil, false},
		{"controller to controller (raft)", server(p.controller, RoleController), client(c2, "", anyController), nil, false},
		{"controller to the controller it names", server(p.controller, RoleController),
			client(c2, "", Identity{Role: RoleController, ID: ControllerName}), nil, false},
		{"controller to another controller than it names", server(p.controller, RoleController),
			client(c2, "", Identity{Role: RoleController, ID: "c3"}), ErrWrongPeer, true},
		{"agent to a rogue controller with an agent certificate", rogueServer, client(p.agent, "", anyController), x509.CertificateInvalidError{}, true},
		{"agent to a rogue controller with an agent certificate, server name checked", rogueServer,
			client(p.agent, "localhost", anyController), x509.CertificateInvalidError{}, true},
		{"agent to a rogue agent certificate with server usage", rogueBoth, client(p.agent, "", anyController), ErrBadRole, true},
		{"controller registering as an agent", server(p.controller, RoleAgent), client(c2, "", anyController), errServerRefused, true},
		{"agent dialing raft", server(p.controller, RoleController), client(p.agent, "", anyController), errServerRefused, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := handshake(t, tt.server, tt.client)
			switch want := tt.wantClientErr; {
			case want == nil:
				if res.clientErr != nil || res.serverErr != nil {
					t.Fatalf("handshake failed: client %v, server %v", res.clientErr, res.serverErr)
				}
			case want == errServerRefused:
				if res.clientErr == nil {
					t.Fatal("the client was not refused")
				}
				if !errors.Is(res.serverErr, ErrWrongPeer) {
					t.Fatalf("server error %v, want ErrWrongPeer", res.serverErr)
				}
			default:
				var invalid x509.CertificateInvalidError
				if _, isInvalid := want.(x509.CertificateInvalidError); isInvalid {
					if !errors.As(res.clientErr, &invalid) || invalid.Reason != x509.IncompatibleUsage {
						t.Fatalf("client error %v, want incompatible key usage", res.clientErr)
					}
				} else if !errors.Is(res.clientErr, want) {
					t.Fatalf("client error %v, want %v", res.clientErr, want)
				}
				if tt.wantServerErr && res.serverErr == nil {
					t.Fatal("the server completed a handshake the client refused")
				}
			}
		})
	}
}

// errServerRefused marks cases where the server must refuse the client.
var errServerRefused = errors.New("server refuses")

func TestRequirePeerNeedsVerification(t *testing.T) {
	if _, err := RequirePeer(&tls.Config{InsecureSkipVerify: true}, Identity{Role: RoleController}); err == nil {
		t.Error("RequirePeer accepted a config that verifies nothing")
	}
	if _, err := RequirePeer(&tls.Config{}, Identity{Role: "root"}); !errors.Is(err, ErrBadRole) {
		t.Errorf("RequirePeer with an unknown role = %v, want ErrBadRole", err)
	}
}

func TestEnsureDevUpgradesOldCertificates(t *testing.T) {
	p := newPKI(t, "gpu-01")
	old := signLeaf(t, p.dir, oldStyle(ControllerName))
	if err := writePEM(p.controller.Cert, "CERTIFICATE", old.Certificate[0], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeKey(p.controller.Key, old.PrivateKey.(*ecdsa.PrivateKey)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(p.controller); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("setup: the old certificate has an identity: %v", err)
	}
	c, a, err := EnsureDev(p.dir, "gpu-01")
	if err != nil {
		t.Fatal(err)
	}
	if id, err := LoadIdentity(c); err != nil || id != (Identity{Role: RoleController, ID: ControllerName}) {
		t.Fatalf("dev controller after EnsureDev: %v, %v", id, err)
	}
	if id, err := LoadIdentity(a); err != nil || id != (Identity{Role: RoleAgent, ID: "gpu-01"}) {
		t.Fatalf("dev agent after EnsureDev: %v, %v", id, err)
	}
	if _, _, err := EnsureDev(p.dir, ControllerName); !errors.Is(err, ErrBadName) {
		t.Fatalf("EnsureDev with the agent named like the controller = %v, want ErrBadName", err)
	}
}

func TestCheck(t *testing.T) {
	p := newPKI(t, "gpu-01")
	if err := Check(p.dir, RoleAgent, "gpu-01"); err != nil {
		t.Fatalf("Check(agent gpu-01) = %v", err)
	}
	if err := Check(p.dir, RoleController, ControllerName); err != nil {
		t.Fatalf("Check(controller) = %v", err)
	}
	if err := Check(p.dir, RoleController, "gpu-01"); !errors.Is(err, ErrWrongPeer) {
		t.Errorf("Check(agent certificate as controller) = %v, want ErrWrongPeer", err)
	}
	if err := Check(p.dir, RoleAgent, "gpu-02"); err == nil {
		t.Error("Check of a missing certificate succeeded")
	}
	// A certificate from before roles, as an old secrets directory has.
	old := signLeaf(t, p.dir, oldStyle("gpu-01"))
	if err := writePEM(p.agent.Cert, "CERTIFICATE", old.Certificate[0], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeKey(p.agent.Key, old.PrivateKey.(*ecdsa.PrivateKey)); err != nil {
		t.Fatal(err)
	}
	if err := Check(p.dir, RoleAgent, "gpu-01"); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("Check(old certificate) = %v, want ErrNoIdentity", err)
	}
	// A certificate of another CA.
	other := newPKI(t, "gpu-01")
	if err := os.Rename(other.agent.Cert, p.agent.Cert); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other.agent.Key, p.agent.Key); err != nil {
		t.Fatal(err)
	}
	if err := Check(p.dir, RoleAgent, "gpu-01"); err == nil {
		t.Error("Check accepted a certificate of another CA")
	}
}
