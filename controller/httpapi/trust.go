package httpapi

import (
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// Limits are the HTTP server's timeouts and header cap. They bound what one
// slow or idle client can hold (a goroutine, a socket, buffers): without
// them a slow-body POST keeps its connection forever.
type Limits struct {
	// ReadHeaderTimeout bounds reading the request line and headers.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading the whole request, body included.
	ReadTimeout time.Duration
	// WriteTimeout bounds a request from the end of its headers to the
	// end of the answer. WebSocket handlers are not bound by it: gorilla's
	// Upgrade clears the connection's deadlines once it has hijacked it.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long.
	IdleTimeout time.Duration
	// MaxHeaderBytes caps the request line plus headers.
	MaxHeaderBytes int
}

// Default limits. ReadTimeout leaves a 1 MiB spec ample time on a slow
// link; WriteTimeout covers a forwarded write waiting out a leader election
// and the largest read page.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 60 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
)

func (l Limits) withDefaults() Limits {
	if l.ReadHeaderTimeout <= 0 {
		l.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = DefaultReadTimeout
	}
	if l.ReadHeaderTimeout > l.ReadTimeout {
		l.ReadHeaderTimeout = l.ReadTimeout
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = DefaultWriteTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	return l
}

// NewHTTPServer returns an http.Server serving the API with the configured
// Limits. The caller sets TLSConfig and calls Serve or ServeTLS.
func (a *API) NewHTTPServer() *http.Server {
	l := a.opts.Limits.withDefaults()
	srv := &http.Server{
		Handler:           a,
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout:       l.ReadTimeout,
		WriteTimeout:      l.WriteTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		// Handshake failures and cut-off clients are the client's
		// business; at debug level they do not flood the log of a
		// controller that a scanner probes.
		ErrorLog: slog.NewLogLogger(a.opts.Log.Handler(), slog.LevelDebug),
	}
	// Live views outlive their handlers (hijacked, untracked by the
	// server), so Shutdown has to tell them itself.
	srv.RegisterOnShutdown(a.closeWatchers)
	return srv
}

// hostAllowed says whether a tokenless API may answer a request for host
// (the Host header). Loopback names cannot be pointed at this machine by a
// stranger's DNS, so a rebinding page never carries them; every other name
// must be listed by the operator.
func (a *API) hostAllowed(host string) bool {
	name := hostName(host)
	if name == "" {
		return false
	}
	if name == "localhost" {
		return true
	}
	if ip, err := netip.ParseAddr(name); err == nil && ip.Unmap().IsLoopback() {
		return true
	}
	for _, h := range a.opts.AllowedHosts {
		if hostName(h) == name {
			return true
		}
	}
	return false
}

// hostName lowercases host and strips its port, IPv6 brackets and a
// trailing dot ("LocalHost.:80" and "localhost" are the same name).
func hostName(host string) string {
	host = strings.TrimSpace(host)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

// peerScheme is the scheme other controllers' APIs are reached with.
func (a *API) peerScheme() string {
	if a.opts.TLS {
		return "https"
	}
	return "http"
}

func (a *API) peerTransport() http.RoundTripper {
	if a.opts.PeerTransport != nil {
		return a.opts.PeerTransport
	}
	return http.DefaultTransport
}
