// Package tlsutil makes and loads the certificates for mutual TLS between
// agents and controllers (QUIC), all signed by one cluster CA.
//
// Every identity (the CA, each controller, each agent) is a pair of PEM
// files in one directory: NAME.pem holds the certificate and NAME-key.pem
// the ECDSA P-256 private key (PKCS #8, mode 0600).
//
// Each leaf certificate has a role and an ID, carried as one SPIFFE-style
// URI SAN: gantry://controller/ID (the controller's Raft node id) or
// gantry://agent/ID (the agent's node id). The extended key usage matches
// the role: a controller certificate is for TLS servers and clients
// (controllers serve agents and dial each other over Raft), an agent
// certificate for TLS clients only. Every config this package makes names
// the role it accepts from the peer, so an agent certificate can never pose
// as a controller, nor a controller certificate register as an agent node.
package tlsutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside a certificate directory.
const (
	caCertFile = "ca.pem"
	caKeyFile  = "ca-key.pem"
)

// ControllerName is the certificate name (and controller ID) EnsureDev uses
// for the dev-mode controller.
const ControllerName = "controller"

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	certValidity = 5 * 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so that a host whose clock is a little
	// behind the issuer's accepts a fresh certificate.
	clockSkew = time.Hour
)

// Sentinel errors.
var (
	// ErrExists means InitCA found a CA already in the directory.
	ErrExists = errors.New("tlsutil: CA already exists")
	// ErrNoCA means a directory has no (or only half a) CA.
	ErrNoCA = errors.New("tlsutil: no CA")
	// ErrBadName means a certificate name is empty, not a plain file name,
	// or would collide with the CA's files.
	ErrBadName = errors.New("tlsutil: bad certificate name")
	// ErrBadHost means a host given to Issue is empty or not an IP address
	// or DNS name.
	ErrBadHost = errors.New("tlsutil: bad host")
	// ErrNoALPN means a config was asked for without an ALPN protocol, which
	// QUIC requires.
	ErrNoALPN = errors.New("tlsutil: empty ALPN protocol")
	// ErrNoPeer means a connection has no verified peer certificate.
	ErrNoPeer = errors.New("tlsutil: no verified peer certificate")
	// ErrBadPEM means a file did not hold the expected PEM block.
	ErrBadPEM = errors.New("tlsutil: bad PEM file")
)

// Files names the PEM files of one identity.
type Files struct {
	// CA is the cluster CA certificate that peers are verified against.
	CA string
	// Cert is this identity's certificate.
	Cert string
	// Key is this identity's private key.
	Key string
}

// FilesIn returns the paths of the CA certificate and of name's certificate
// and key in the certificate directory dir, as InitCA, Issue and EnsureDev
// write them: the one place that knows the file names.
func FilesIn(dir, name string) Files {
	return Files{
		CA:   filepath.Join(dir, caCertFile),
		Cert: filepath.Join(dir, name+".pem"),
		Key:  filepath.Join(dir, name+"-key.pem"),
	}
}

// InitCA creates a new cluster CA in dir: dir/ca.pem and dir/ca-key.pem
// (0600). It refuses to overwrite an existing CA, even half of one, because
// replacing it would silently invalidate every certificate in the cluster.
func InitCA(dir string) error {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	for _, p := range []string{certPath, keyPath} {
		exists, err := fileExists(p)
		if err != nil {
			return fmt.Errorf("tlsutil: init CA: %w", err)
		}
		if exists {
			return fmt.Errorf("%w: %s", ErrExists, p)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tlsutil: init CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("tlsutil: init CA: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return fmt.Errorf("tlsutil: init CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "gantry cluster CA", Organization: []string{"gantry"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs leaf certificates only.
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("tlsutil: init CA: create certificate: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return fmt.Errorf("tlsutil: init CA: %w", err)
	}
	if err := writePEM(certPath, "CERTIFICATE", der, 0o644); err != nil {
		// Remove the lone key: nothing was signed with it, and leaving it
		// would make every retry fail with ErrExists.
		if rerr := os.Remove(keyPath); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return fmt.Errorf("tlsutil: init CA: %w", err)
	}
	return nil
}

// Issue signs, with the CA in dir, a certificate for role and name and
// writes dir/<name>.pem and dir/<name>-key.pem (0600), replacing any
// previous ones.
//
// The identity is the URI SAN gantry://<role>/<name>; CommonName is name.
// The DNS and IP SANs are name plus hosts, each taken as an IP address if
// it parses as one and as a DNS name otherwise; with no hosts, "localhost",
// 127.0.0.1 and ::1 are used so that a local dev setup verifies. The
// certificate is valid for 5 years; a controller's for TLS servers and
// clients, an agent's for TLS clients only.
func Issue(dir string, role Role, name string, hosts []string) (Files, error) {
	if _, err := ParseRole(string(role)); err != nil {
		return Files{}, err
	}
	if err := checkName(name); err != nil {
		return Files{}, err
	}
	for _, h := range hosts {
		if strings.TrimSpace(h) == "" || strings.ContainsAny(h, " /") {
			return Files{}, fmt.Errorf("%w: %q for %q", ErrBadHost, h, name)
		}
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return Files{}, fmt.Errorf("tlsutil: issue %q: %w", name, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, fmt.Errorf("tlsutil: issue %q: generate key: %w", name, err)
	}
	serial, err := newSerial()
	if err != nil {
		return Files{}, fmt.Errorf("tlsutil: issue %q: %w", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"gantry"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           extKeyUsage(role),
		URIs:                  []*url.URL{Identity{Role: role, ID: name}.URI()},
		BasicConstraintsValid: true,
	}
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	addSAN(tmpl, name)
	for _, h := range hosts {
		addSAN(tmpl, h)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return Files{}, fmt.Errorf("tlsutil: issue %q: create certificate: %w", name, err)
	}
	f := FilesIn(dir, name)
	if err := writeKey(f.Key, key); err != nil {
		return Files{}, fmt.Errorf("tlsutil: issue %q: %w", name, err)
	}
	if err := writePEM(f.Cert, "CERTIFICATE", der, 0o644); err != nil {
		return Files{}, fmt.Errorf("tlsutil: issue %q: %w", name, err)
	}
	return f, nil
}

// EnsureDev makes, where missing, a CA and certificates for the controller
// (named ControllerName, role controller) and for an agent named agentName
// (role agent) in dir, for dev mode and tests. Existing files with the
// right identity are left untouched, so calling it again changes nothing;
// a certificate from before roles existed, or of another identity, is
// re-issued, which upgrades an old dev directory in place.
func EnsureDev(dir, agentName string) (controller, agent Files, err error) {
	if err := checkName(agentName); err != nil {
		return Files{}, Files{}, err
	}
	if agentName == ControllerName {
		return Files{}, Files{}, fmt.Errorf("%w: the agent cannot be named %q, the dev controller's name", ErrBadName, agentName)
	}
	hasCert, err := fileExists(filepath.Join(dir, caCertFile))
	if err != nil {
		return Files{}, Files{}, fmt.Errorf("tlsutil: ensure dev: %w", err)
	}
	hasKey, err := fileExists(filepath.Join(dir, caKeyFile))
	if err != nil {
		return Files{}, Files{}, fmt.Errorf("tlsutil: ensure dev: %w", err)
	}
	switch {
	case hasCert && hasKey:
	case !hasCert && !hasKey:
		if err := InitCA(dir); err != nil {
			return Files{}, Files{}, fmt.Errorf("tlsutil: ensure dev: %w", err)
		}
	default:
		// Half a CA: making a new one would orphan whatever it signed.
		return Files{}, Files{}, fmt.Errorf("tlsutil: ensure dev: %w: only one of %s and %s exists in %s",
			ErrNoCA, caCertFile, caKeyFile, dir)
	}
	ensure := func(role Role, name string) (Files, error) {
		f := FilesIn(dir, name)
		hasCert, err := fileExists(f.Cert)
		if err != nil {
			return Files{}, err
		}
		hasKey, err := fileExists(f.Key)
		if err != nil {
			return Files{}, err
		}
		if hasCert && hasKey {
			if id, err := LoadIdentity(f); err == nil && id == (Identity{Role: role, ID: name}) {
				return f, nil
			}
		}
		return Issue(dir, role, name, nil)
	}
	if controller, err = ensure(RoleController, ControllerName); err != nil {
		return Files{}, Files{}, fmt.Errorf("tlsutil: ensure dev: %w", err)
	}
	if agent, err = ensure(RoleAgent, agentName); err != nil {
		return Files{}, Files{}, fmt.Errorf("tlsutil: ensure dev: %w", err)
	}
	return controller, agent, nil
}

// ServerConfig returns a TLS 1.3 server config that presents f's
// certificate, which must be a controller's (only controllers serve), and
// requires a client certificate signed by f's CA with the given role.
func ServerConfig(f Files, alpn string, peer Role) (*tls.Config, error) {
	if alpn == "" {
		return nil, fmt.Errorf("tlsutil: server config: %w", ErrNoALPN)
	}
	cert, pool, err := load(f, RoleController)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: server config: %w", err)
	}
	cfg, err := RequirePeer(&tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		NextProtos:   []string{alpn},
	}, Identity{Role: peer})
	if err != nil {
		return nil, fmt.Errorf("tlsutil: server config: %w", err)
	}
	return cfg, nil
}

// ClientConfig returns a TLS 1.3 client config that presents f's
// certificate and accepts only a server whose certificate chains to f's
// CA and carries peer's identity: peer.Role, and peer.ID unless it is ""
// (any ID of that role).
//
// With a serverName the standard verification applies, host name included.
// With serverName "" the server's certificate must still chain to the CA,
// but any DNS or IP SAN is accepted: agents reach controllers at addresses
// learnt at run time (serf tags, a changed IP), which the certificate may
// not list, and the identity URI SAN, not the address, says who the peer
// is. crypto/tls can only skip the host name check by skipping all
// verification (InsecureSkipVerify), so the chain is verified again in
// VerifyConnection, which runs on every handshake, resumed ones included.
func ClientConfig(f Files, alpn, serverName string, peer Identity) (*tls.Config, error) {
	if alpn == "" {
		return nil, fmt.Errorf("tlsutil: client config: %w", ErrNoALPN)
	}
	cert, pool, err := load(f, "")
	if err != nil {
		return nil, fmt.Errorf("tlsutil: client config: %w", err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		NextProtos:   []string{alpn},
		ServerName:   serverName,
	}
	if serverName == "" {
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return verifyChain(cs.PeerCertificates, pool)
		}
	}
	cfg, err = RequirePeer(cfg, peer)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: client config: %w", err)
	}
	return cfg, nil
}

// verifyChain verifies a server's certificate chain against roots as
// crypto/tls would, except for the host name.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool) error {
	if len(certs) == 0 {
		return fmt.Errorf("tlsutil: verify server: %w", ErrNoPeer)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("tlsutil: verify server certificate %q: %w", certs[0].Subject.CommonName, err)
	}
	return nil
}

// load reads f's key pair and a pool holding only f's CA. The certificate
// must carry an identity, of role own unless own is "": a node refuses to
// start with a certificate from before roles existed, with the error that
// says how to re-issue it, instead of failing every handshake later.
func load(f Files, own Role) (tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load key pair %s: %w", f.Cert, err)
	}
	id, err := IdentityOf(cert.Leaf)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("%s: %w", f.Cert, err)
	}
	if own != "" && id.Role != own {
		return tls.Certificate{}, nil, fmt.Errorf("%w: %s is %s, this side needs a %s certificate", ErrBadRole, f.Cert, id, own)
	}
	ca, err := readCert(f.CA)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return cert, pool, nil
}

// loadCA reads the CA certificate and key in dir.
func loadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	cert, err := readCert(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w in %s (run InitCA first): %w", ErrNoCA, dir, err)
	}
	if err != nil {
		return nil, nil, err
	}
	key, err := readKey(keyPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w: %s is missing: %w", ErrNoCA, keyPath, err)
	}
	if err != nil {
		return nil, nil, err
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("%w: %s is not a CA certificate", ErrNoCA, certPath)
	}
	return cert, key, nil
}

func readCert(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate %s: %w", path, err)
	}
	return cert, nil
}

// readKey reads a PKCS #8 key, or a SEC 1 EC key as openssl writes them.
func readKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: %s holds no PEM block", ErrBadPEM, path)
	}
	switch block.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse key %s: %w", path, err)
		}
		signer, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%w: %s: key of type %T cannot sign", ErrBadPEM, path, k)
		}
		return signer, nil
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse key %s: %w", path, err)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("%w: %s holds a %q block, want a private key", ErrBadPEM, path, block.Type)
	}
}

func readPEM(path, typ string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", typ, err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != typ {
		return nil, fmt.Errorf("%w: %s holds no %s block", ErrBadPEM, path, typ)
	}
	return block.Bytes, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

// writePEM writes one PEM block to path atomically: a crash leaves the old
// file or the new one, never a truncated key. The temporary file is created
// with perm from the start, so a key is never readable by others, not even
// for a moment.
func writePEM(path, typ string, der []byte, perm os.FileMode) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			if rerr := os.Remove(tmp.Name()); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				err = errors.Join(err, rerr)
			}
		}
	}()
	// CreateTemp makes 0600 files; set perm explicitly so the umask plays
	// no part in it.
	if err := tmp.Chmod(perm); err != nil {
		_ = tmp.Close() // the chmod error is the one to report
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := pem.Encode(tmp, &pem.Block{Type: typ, Bytes: der}); err != nil {
		_ = tmp.Close() // the encode error is the one to report
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close() // the sync error is the one to report
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func fileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
}

// checkName accepts names that are plain file names and cannot overwrite
// the CA's files or another identity's key.
func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrBadName)
	case name == "ca" || strings.HasSuffix(name, "-key"):
		return fmt.Errorf("%w: %q would collide with a CA or key file", ErrBadName, name)
	case strings.HasPrefix(name, "."):
		return fmt.Errorf("%w: %q starts with a dot", ErrBadName, name)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			r == '.' || r == '-' || r == '_'
		if !ok {
			return fmt.Errorf("%w: %q has %q; use letters, digits, '.', '-' and '_'", ErrBadName, name, r)
		}
	}
	return nil
}

// addSAN adds h to the certificate's IP or DNS SANs, once.
func addSAN(c *x509.Certificate, h string) {
	if ip := net.ParseIP(h); ip != nil {
		for _, have := range c.IPAddresses {
			if have.Equal(ip) {
				return
			}
		}
		c.IPAddresses = append(c.IPAddresses, ip)
		return
	}
	for _, have := range c.DNSNames {
		if strings.EqualFold(have, h) {
			return
		}
	}
	c.DNSNames = append(c.DNSNames, h)
}

// newSerial returns a random 128-bit serial number, as RFC 5280 asks for
// unpredictable serials.
func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return serial, nil
}
