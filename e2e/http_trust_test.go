package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
	"github.com/gantry-ml/gantry/internal/testutil"
)

// TestHTTPTrust runs the real controller with the operator's HTTPS
// certificate and checks the API's trust boundary from outside, with the
// real CLI trusting GANTRY_CA: a web page can neither submit (415) nor
// rebind (403), a foreign Origin cannot open a WebSocket, wrong methods and
// overflowing cursors are refused, and a tokenless non-loopback bind does
// not start.
func TestHTTPTrust(t *testing.T) {
	ca, cert, key := testutil.WriteServerPKI(t)
	t.Setenv(client.EnvCA, ca) // startDev's client and the CLI below trust it
	d := startDevArgs(t, "", 1, "-job-user", "root", "-http-tls-cert", cert, "-http-tls-key", key)
	if !strings.HasPrefix(d.addr, "https://") {
		t.Fatalf("dev mode API at %s, want https", d.addr)
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	send := func(method, path, host string, hdr map[string]string, body string) (int, http.Header, string) {
		t.Helper()
		req, err := http.NewRequest(method, d.addr+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}

	t.Run("CSRFAndRebinding", func(t *testing.T) {
		if status, _, body := send("POST", "/v1/jobs", "", map[string]string{"Content-Type": "text/plain"}, `{"run":"id"}`); status != http.StatusUnsupportedMediaType {
			t.Fatalf("text/plain submit: %d %s, want 415", status, body)
		}
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(d.addr, "https://"))
		if status, _, body := send("POST", "/v1/jobs", "evil.example:"+port, map[string]string{"Content-Type": "application/json"}, `{"run":"id"}`); status != http.StatusForbidden {
			t.Fatalf("submit with a foreign Host: %d %s, want 403", status, body)
		}
		jobs, err := d.api.Jobs(context.Background())
		if err != nil || len(jobs) != 0 {
			t.Fatalf("after refused submits: jobs %v, err %v; want none", jobs, err)
		}
		dialer := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: pool}, HandshakeTimeout: 10 * time.Second}
		wsURL := "wss://" + strings.TrimPrefix(d.addr, "https://") + "/v1/jobs/none/live"
		_, resp, err := dialer.Dial(wsURL, http.Header{"Origin": {"https://evil.example"}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("WebSocket with a foreign Origin: %v, want 403", err)
		}
	})

	t.Run("MethodsAndNumbers", func(t *testing.T) {
		if status, hdr, body := send("DELETE", "/v1/jobs", "", map[string]string{"Content-Type": "application/json"}, ""); status != http.StatusMethodNotAllowed || hdr.Get("Allow") == "" {
			t.Fatalf("DELETE /v1/jobs: %d Allow=%q %s, want 405 with Allow", status, hdr.Get("Allow"), body)
		}
		if status, _, body := send("GET", "/v1/jobs/x/metrics?after=18446744073709551615", "", nil, ""); status != http.StatusBadRequest {
			t.Fatalf("after=2^64-1: %d %s, want 400", status, body)
		}
		if status, _, body := send("GET", "/v1/jobs?state=bogus", "", nil, ""); status != http.StatusBadRequest {
			t.Fatalf("state=bogus: %d %s, want 400", status, body)
		}
	})

	t.Run("CLIOverHTTPSWithGantryCA", func(t *testing.T) {
		gantry := func(args ...string) (int, string, string) {
			t.Helper()
			cmd := exec.Command(filepath.Join(binDir, "gantry"), args...)
			cmd.Env = append(os.Environ(), "GANTRY_ADDR="+d.addr, client.EnvCA+"="+ca)
			var out, errOut bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errOut
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("gantry %v: %v", args, err)
			}
			return code, out.String(), errOut.String()
		}
		spec := filepath.Join(t.TempDir(), "job.yaml")
		if err := os.WriteFile(spec, []byte("name: trusted\nrun: sleep 60\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		code, out, errOut := gantry("run", "-d", spec)
		if code != 0 {
			t.Fatalf("gantry run -d: %d %s %s", code, out, errOut)
		}
		id := strings.TrimSpace(out)
		if code, out, errOut := gantry("cancel", id); code != 0 {
			t.Fatalf("gantry cancel (a POST with the JSON content type): %d %s %s", code, out, errOut)
		}
		waitFor(t, 30*time.Second, "the job cancelled", func() bool {
			j, err := d.api.Job(context.Background(), id)
			return err == nil && j.State == apiv1.StateCancelled
		})
		if code, out, errOut := gantry("ps"); code != 0 || !strings.Contains(out, "trusted") {
			t.Fatalf("gantry ps: %d %s %s", code, out, errOut)
		}
		// Without the CA the CLI refuses the certificate.
		cmd := exec.Command(filepath.Join(binDir, "gantry"), "ps")
		cmd.Env = append(os.Environ(), "GANTRY_ADDR="+d.addr, client.EnvCA+"=")
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "certificate") {
			t.Fatalf("gantry ps without GANTRY_CA: %v %s, want a certificate error", err, out)
		}
	})

	t.Run("TokenlessNonLoopbackBindRefused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		dir := t.TempDir()
		out, err := exec.CommandContext(ctx, filepath.Join(binDir, "gantry-controller"), "-dev", "-data-dir", dir,
			"-http-addr", "0.0.0.0:0", "-quic-addr", "127.0.0.1:0", "-raft-addr", "127.0.0.1:0").CombinedOutput()
		if err == nil || ctx.Err() != nil || !strings.Contains(string(out), "-insecure-no-token") {
			t.Fatalf("tokenless controller on 0.0.0.0: err=%v ctx=%v\n%s\nwant a start-up error naming -insecure-no-token", err, ctx.Err(), out)
		}
	})
}
