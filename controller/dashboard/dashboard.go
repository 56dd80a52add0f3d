// Package dashboard serves Gantry's web dashboard: a single-page app of
// plain HTML, CSS and JavaScript embedded in the controller binary, so that
// `go build` alone yields a controller with a working UI and no asset
// pipeline. The pages (jobs, one job live, nodes) talk to the controller's
// own /v1 API and its live WebSocket; this package only serves the files.
package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

// static holds the app. index.html is the shell of every page; the client
// picks the page from the URL path (client-side routing).
//
//go:embed static
var static embed.FS

// Paths the dashboard must never answer for: they belong to the API, and
// an HTML page there would hide a missing endpoint behind a 200.
var apiPrefixes = []string{"/v1/", "/metrics"}

// csp keeps the page to its own scripts and connections; inline script and
// style are not used, so nothing has to be allowed for them.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

// asset is one embedded file, read once at start-up.
type asset struct {
	name string
	data []byte
	etag string
}

// handler serves the embedded assets.
type handler struct {
	assets map[string]asset // by URL path, e.g. "/assets/app.js"
	index  asset
}

// Handler returns the dashboard: the embedded assets under /assets/, and
// index.html for every other GET outside the API so that /jobs/ID and
// /nodes load the app, which then routes on the path.
func Handler() http.Handler {
	h, err := newHandler(static)
	if err != nil {
		// The files are compiled in; failing to read them is a build defect.
		panic(fmt.Sprintf("dashboard: embedded assets: %v", err))
	}
	return h
}

func newHandler(fsys fs.FS) (*handler, error) {
	root, err := fs.Sub(fsys, "static")
	if err != nil {
		return nil, fmt.Errorf("open static: %w", err)
	}
	h := &handler{assets: make(map[string]asset)}
	err = fs.WalkDir(root, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(root, p)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		sum := sha256.Sum256(data)
		a := asset{name: path.Base(p), data: data, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		if p == "index.html" {
			h.index = a
			return nil
		}
		h.assets["/"+p] = a
		return nil
	})
	if err != nil {
		return nil, err
	}
	if h.index.data == nil {
		return nil, fmt.Errorf("static/index.html is missing")
	}
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	for _, p := range apiPrefixes {
		if r.URL.Path == strings.TrimSuffix(p, "/") || strings.HasPrefix(r.URL.Path, p) {
			http.NotFound(w, r)
			return
		}
	}
	a, ok := h.assets[r.URL.Path]
	switch {
	case ok:
	case strings.HasPrefix(r.URL.Path, "/assets/"):
		// A missing asset is a real 404: answering with the HTML shell
		// would make the browser report a confusing syntax error instead.
		http.NotFound(w, r)
		return
	default:
		a = h.index
	}
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", csp)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	// Asset names are not content-hashed, so browsers revalidate each load
	// (cheap: the ETag answers 304) and an upgraded controller is never
	// paired with a stale script.
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("ETag", a.etag)
	// ServeContent picks the Content-Type from the name and handles
	// If-None-Match and Range.
	http.ServeContent(w, r, a.name, time.Time{}, bytes.NewReader(a.data))
}
