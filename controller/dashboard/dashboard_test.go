package dashboard

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

func get(t *testing.T, h http.Handler, method, path string, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestHandlerRoutes(t *testing.T) {
	h := Handler()
	index, err := fs.ReadFile(static, "static/index.html")
	if err != nil {
		t.Fatal(err)
	}
	js, err := fs.ReadFile(static, "static/assets/app.js")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method, path string
		status             int
		ctype              string // prefix
		body               []byte // nil: not checked
	}{
		{"root is the app", "GET", "/", 200, "text/html", index},
		{"job page falls back to the app", "GET", "/jobs/01ABC", 200, "text/html", index},
		{"nodes page falls back to the app", "GET", "/nodes", 200, "text/html", index},
		{"unknown page falls back to the app", "GET", "/some/where", 200, "text/html", index},
		{"script", "GET", "/assets/app.js", 200, "text/javascript", js},
		{"stylesheet", "GET", "/assets/app.css", 200, "text/css", nil},
		{"icon", "GET", "/assets/favicon.svg", 200, "image/svg+xml", nil},
		{"vendored chart library", "GET", "/assets/vendor/uPlot.iife.min.js", 200, "text/javascript", nil},
		{"vendored chart styles", "GET", "/assets/vendor/uPlot.min.css", 200, "text/css", nil},
		{"HEAD has no body", "HEAD", "/", 200, "text/html", []byte{}},
		{"missing asset is a 404, not the app", "GET", "/assets/nope.js", 404, "text/plain", nil},
		{"API paths are never the app", "GET", "/v1/nope", 404, "text/plain", nil},
		{"API root is never the app", "GET", "/v1", 404, "text/plain", nil},
		{"metrics is never the app", "GET", "/metrics", 404, "text/plain", nil},
		{"writes are refused", "POST", "/", 405, "text/plain", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := get(t, h, tt.method, tt.path, nil)
			if rec.Code != tt.status {
				t.Fatalf("%s %s: status %d, want %d", tt.method, tt.path, rec.Code, tt.status)
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, tt.ctype) {
				t.Errorf("Content-Type %q, want %s…", ct, tt.ctype)
			}
			if tt.body != nil && rec.Body.String() != string(tt.body) {
				t.Errorf("body is %d bytes, want the %d of the file", rec.Body.Len(), len(tt.body))
			}
			if tt.status == 200 {
				if rec.Header().Get("Content-Security-Policy") == "" || rec.Header().Get("ETag") == "" {
					t.Errorf("missing CSP or ETag: %v", rec.Header())
				}
			}
		})
	}
}

func TestHandlerRevalidates(t *testing.T) {
	h := Handler()
	first := get(t, h, "GET", "/assets/app.js", nil)
	etag := first.Header().Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	if cc := first.Header().Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("Cache-Control %q, want no-cache", cc)
	}
	again := get(t, h, "GET", "/assets/app.js", map[string]string{"If-None-Match": etag})
	if again.Code != http.StatusNotModified {
		t.Errorf("revalidation answered %d, want 304", again.Code)
	}
	if other := get(t, h, "GET", "/assets/app.css", nil).Header().Get("ETag"); other == etag {
		t.Error("two different files share an ETag")
	}
}

func TestNewHandlerNeedsIndex(t *testing.T) {
	fsys := fstest.MapFS{"static/assets/app.js": {Data: []byte("x")}}
	if _, err := newHandler(fsys); err == nil {
		t.Fatal("a file set without index.html was accepted")
	}
}

// The page must load nothing from elsewhere: the controller may run where
// there is no internet, and the CSP would block it anyway.
func TestIndexReferencesOnlyEmbeddedAssets(t *testing.T) {
	h := Handler()
	body := get(t, h, "GET", "/", nil).Body.String()
	for _, ref := range []string{"/assets/app.js", "/assets/app.css", "/assets/favicon.svg"} {
		if !strings.Contains(body, ref) {
			t.Errorf("index.html does not reference %s", ref)
		}
		if rec := get(t, h, "GET", ref, nil); rec.Code != 200 {
			t.Errorf("%s referenced by index.html answers %d", ref, rec.Code)
		}
	}
	if strings.Contains(body, "http://") || strings.Contains(body, "https://") {
		t.Error("index.html references an absolute URL")
	}
}
