package server

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"

	"github.com/gantry-ml/gantry/controller/client"
)

// checkHTTPBind refuses a tokenless API on an address other hosts can
// reach: any page or process that reaches it could run commands on the
// GPU hosts. -insecure-no-token is the explicit way out.
func checkHTTPBind(cfg Config) error {
	if cfg.Token != "" || cfg.InsecureNoToken || loopbackAddr(cfg.HTTPAddr) {
		return nil
	}
	return fmt.Errorf("server: refusing to serve the API on %s without a token: set -token (or $GANTRY_TOKEN), "+
		"bind -http-addr to 127.0.0.1, or pass -insecure-no-token to let anyone who reaches %s run jobs", cfg.HTTPAddr, cfg.HTTPAddr)
}

// loopbackAddr says whether host:port can only be reached from this host.
// An empty or unspecified host (":7480", "0.0.0.0") listens everywhere.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// allowedHosts is what a tokenless API answers to besides loopback names:
// the operator's list and this controller's own bound and advertised
// hosts. Those are the names followers forward to and peers query, and
// naming ourselves is not something a rebinding page can do.
func allowedHosts(cfg Config) []string {
	out := append([]string(nil), cfg.HTTPAllowedHosts...)
	for _, addr := range []string{cfg.HTTPAddr, cfg.AdvertiseHTTP} {
		host, _, err := net.SplitHostPort(addr)
		if err != nil || host == "" {
			continue
		}
		if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
			continue // 0.0.0.0 is no Host anyone sends
		}
		out = append(out, host)
	}
	return out
}

// httpTLS loads the API's HTTPS certificate, if configured, and the
// transport peers are reached with: it trusts the system roots, the
// cluster CA and $GANTRY_CA, so a follower can forward to a leader that
// serves either the operator's certificate or one from the cluster CA.
func httpTLS(cfg Config) (*tls.Config, http.RoundTripper, error) {
	if cfg.HTTPTLSCert == "" && cfg.HTTPTLSKey == "" {
		return nil, nil, nil
	}
	if cfg.HTTPTLSCert == "" || cfg.HTTPTLSKey == "" {
		return nil, nil, fmt.Errorf("server: HTTPS needs both -http-tls-cert and -http-tls-key")
	}
	cert, err := tls.LoadX509KeyPair(cfg.HTTPTLSCert, cfg.HTTPTLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("server: API certificate: %w", err)
	}
	var cas []string
	if _, err := os.Stat(cfg.TLS.CA); err == nil {
		cas = append(cas, cfg.TLS.CA)
	}
	if ca := os.Getenv(client.EnvCA); ca != "" {
		cas = append(cas, ca)
	}
	pool, err := client.CertPool(cas...)
	if err != nil {
		return nil, nil, fmt.Errorf("server: CA for peer HTTPS: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, tr, nil
}
