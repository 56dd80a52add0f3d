package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"slices"
)

// Role is what a certificate allows its holder to be in the cluster.
type Role string

// The two roles. A controller certificate is both a TLS server certificate
// (agents and other controllers dial it) and a client certificate (it dials
// the other controllers over Raft). An agent certificate is a client
// certificate only, so a process holding one cannot serve as a controller.
const (
	RoleController Role = "controller"
	RoleAgent      Role = "agent"
)

// identityScheme is the URI scheme of identity SANs: gantry://ROLE/ID.
const identityScheme = "gantry"

// Sentinel errors of identities.
var (
	// ErrNoIdentity means a certificate carries no gantry identity URI SAN:
	// it was issued before certificate roles existed and must be re-issued.
	ErrNoIdentity = errors.New("tlsutil: certificate has no gantry identity")
	// ErrBadRole means a role is not one of RoleController and RoleAgent,
	// or a certificate's key usage does not match its role.
	ErrBadRole = errors.New("tlsutil: bad role")
	// ErrWrongPeer means the peer's verified identity is not the one the
	// connection requires.
	ErrWrongPeer = errors.New("tlsutil: wrong peer identity")
)

// upgradeHint says how to replace a certificate from before roles existed.
const upgradeHint = "re-issue it from the same CA with " +
	"`gantry-controller tls issue --role controller|agent DIR NAME [HOST...]` " +
	"(README: Upgrading certificates)"

// Identity is who a certificate says its holder is: a role and an ID (the
// controller's Raft node id or the agent's node id).
type Identity struct {
	Role Role
	ID   string
}

// URI is the identity as the URI SAN it is issued under:
// gantry://controller/ID or gantry://agent/ID.
func (i Identity) URI() *url.URL {
	return &url.URL{Scheme: identityScheme, Host: string(i.Role), Path: "/" + i.ID}
}

// String returns the URI form.
func (i Identity) String() string { return i.URI().String() }

// ParseRole accepts "controller" and "agent".
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleController, RoleAgent:
		return r, nil
	}
	return "", fmt.Errorf("%w: %q; want %q or %q", ErrBadRole, s, RoleController, RoleAgent)
}

// extKeyUsage is the extended key usage a role's certificates are issued
// with, and the only one IdentityOf accepts for it.
func extKeyUsage(r Role) []x509.ExtKeyUsage {
	if r == RoleController {
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
}

// IdentityOf returns the identity a certificate carries in its one gantry
// URI SAN. It refuses a certificate without one (issued before roles: the
// error says how to re-issue it), with more than one, with an unknown role
// or a malformed ID, and one whose extended key usage is not exactly its
// role's: an agent certificate that could also serve as a TLS server is not
// an agent certificate this package issued.
func IdentityOf(c *x509.Certificate) (Identity, error) {
	var ids []Identity
	for _, u := range c.URIs {
		if u.Scheme != identityScheme {
			continue
		}
		role, err := ParseRole(u.Host)
		if err != nil {
			return Identity{}, fmt.Errorf("certificate %q: URI SAN %s: %w", c.Subject.CommonName, u, err)
		}
		id := u.Path
		if len(id) < 2 || id[0] != '/' || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return Identity{}, fmt.Errorf("%w: certificate %q: malformed URI SAN %s", ErrNoIdentity, c.Subject.CommonName, u)
		}
		id = id[1:]
		if err := checkName(id); err != nil {
			return Identity{}, fmt.Errorf("certificate %q: URI SAN %s: %w", c.Subject.CommonName, u, err)
		}
		ids = append(ids, Identity{Role: role, ID: id})
	}
	switch len(ids) {
	case 0:
		return Identity{}, fmt.Errorf("%w: %q (no gantry://controller/ID or gantry://agent/ID URI SAN); it predates certificate roles: %s",
			ErrNoIdentity, c.Subject.CommonName, upgradeHint)
	case 1:
	default:
		return Identity{}, fmt.Errorf("%w: certificate %q has %d gantry URI SANs, want one", ErrNoIdentity, c.Subject.CommonName, len(ids))
	}
	id := ids[0]
	if !slices.Equal(c.ExtKeyUsage, extKeyUsage(id.Role)) {
		return Identity{}, fmt.Errorf("%w: certificate %s has extended key usage %v, want %v for its role",
			ErrBadRole, id, c.ExtKeyUsage, extKeyUsage(id.Role))
	}
	return id, nil
}

// LoadIdentity reads the identity of f's own certificate, so that a node
// started with an old certificate or one of the wrong role stops at once
// with an error that says so, rather than failing every handshake.
func LoadIdentity(f Files) (Identity, error) {
	c, err := readCert(f.Cert)
	if err != nil {
		return Identity{}, fmt.Errorf("tlsutil: %w", err)
	}
	id, err := IdentityOf(c)
	if err != nil {
		return Identity{}, fmt.Errorf("tlsutil: %s: %w", f.Cert, err)
	}
	return id, nil
}

// PeerIdentity returns the identity of a connection's verified peer. It
// needs a chain verified by crypto/tls, so it works on a server that
// requires client certificates and on a client with a server name, not on
// a client built with server name "" (whose verification crypto/tls does
// not record); such a client's config enforces the peer identity itself.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, fmt.Errorf("tlsutil: peer identity: %w", ErrNoPeer)
	}
	id, err := IdentityOf(cs.VerifiedChains[0][0])
	if err != nil {
		return Identity{}, fmt.Errorf("tlsutil: peer identity: %w", err)
	}
	return id, nil
}

// check returns nil when got satisfies want: the same role, and the same
// ID unless want's is empty.
func (want Identity) check(got Identity) error {
	if got.Role != want.Role {
		return fmt.Errorf("%w: peer is %s, want a %s", ErrWrongPeer, got, want.Role)
	}
	if want.ID != "" && got.ID != want.ID {
		return fmt.Errorf("%w: peer is %s, want %s", ErrWrongPeer, got, want)
	}
	return nil
}

// RequirePeer returns a copy of cfg whose handshakes also fail unless the
// peer's leaf certificate carries want's identity (any ID when want.ID is
// ""). The check runs in VerifyConnection, after crypto/tls's verification
// and after any VerifyConnection cfg already had, so the certificate it
// reads has been verified. A cfg that verifies nothing (InsecureSkipVerify
// without a VerifyConnection) is refused: reading an identity from an
// unverified certificate would trust whatever the peer claims.
func RequirePeer(cfg *tls.Config, want Identity) (*tls.Config, error) {
	if _, err := ParseRole(string(want.Role)); err != nil {
		return nil, fmt.Errorf("tlsutil: require peer: %w", err)
	}
	if cfg == nil || cfg.InsecureSkipVerify && cfg.VerifyConnection == nil {
		return nil, errors.New("tlsutil: require peer: the TLS config does not verify the peer's certificate")
	}
	out := cfg.Clone()
	prev := cfg.VerifyConnection
	out.VerifyConnection = func(cs tls.ConnectionState) error {
		if prev != nil {
			if err := prev(cs); err != nil {
				return err
			}
		}
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("tlsutil: %w", ErrNoPeer)
		}
		got, err := IdentityOf(cs.PeerCertificates[0])
		if err != nil {
			return fmt.Errorf("tlsutil: peer: %w", err)
		}
		return want.check(got)
	}
	return out, nil
}

// Check reports whether dir holds a usable certificate for role and name:
// dir/<name>.pem and its key, signed by dir's CA, for the identity
// gantry://<role>/<name>. Deployment tools run it to re-issue, from the
// same CA, certificates made before roles existed.
func Check(dir string, role Role, name string) error {
	if _, err := ParseRole(string(role)); err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return err
	}
	f := FilesIn(dir, name)
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return fmt.Errorf("tlsutil: check %s: %w", f.Cert, err)
	}
	ca, err := readCert(f.CA)
	if err != nil {
		return fmt.Errorf("tlsutil: check %s: %w", f.Cert, err)
	}
	if err := pair.Leaf.CheckSignatureFrom(ca); err != nil {
		return fmt.Errorf("tlsutil: check %s: not signed by %s: %w", f.Cert, f.CA, err)
	}
	id, err := IdentityOf(pair.Leaf)
	if err != nil {
		return fmt.Errorf("tlsutil: check %s: %w", f.Cert, err)
	}
	if want := (Identity{Role: role, ID: name}); id != want {
		return fmt.Errorf("%w: %s is %s, want %s", ErrWrongPeer, f.Cert, id, want)
	}
	return nil
}
