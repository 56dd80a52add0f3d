package httpapi_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"github.com/gantry-ml/gantry/controller/blobpeers"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/httpapi"
	"github.com/gantry-ml/gantry/controller/server"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/tlsutil"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// TestBlobUploadErrors: every way an upload can be wrong gets its own
// status and a reason, and a good one is stored, listed and usable by a
// submit.
func TestBlobUploadErrors(t *testing.T) {
	ctrl, _, err := tlsutil.EnsureDev(t.TempDir(), "agent1")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.Start(server.Config{
		NodeID: "c1", DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		Bootstrap: true, Fast: true, TLS: ctrl, Token: "tok", Log: logging.Discard(), MaxCodeArchive: 64,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if err := srv.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	base := "http://" + srv.HTTPAddr()
	put := func(digest, ctype string, body []byte, auth bool) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPut, base+"/v1/blobs/"+digest, bytes.NewReader(body))
		req.Header.Set("Content-Type", ctype)
		if auth {
			req.Header.Set("Authorization", "Bearer tok")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	good := []byte("small archive")
	big := bytes.Repeat([]byte("x"), 100)
	for _, tt := range []struct {
		name, digest, ctype string
		body                []byte
		auth                bool
		status              int
		reason              string
	}{
		{"no token", sha(good), "application/gzip", good, false, http.StatusUnauthorized, "token"},
		{"form content type", sha(good), "application/x-www-form-urlencoded", good, true, http.StatusUnsupportedMediaType, "Content-Type"},
		{"not a digest", "sha256:abc", "application/gzip", good, true, http.StatusBadRequest, "not a digest"},
		{"forged digest", sha([]byte("other")), "application/gzip", good, true, http.StatusBadRequest, "does not match"},
		{"too large", sha(big), "application/gzip", big, true, http.StatusRequestEntityTooLarge, ".gantryignore"},
		{"good", sha(good), "application/gzip", good, true, http.StatusCreated, ""},
	} {
		status, body := put(tt.digest, tt.ctype, tt.body, tt.auth)
		if status != tt.status || !strings.Contains(body, tt.reason) {
			t.Errorf("%s: %d %s, want %d with %q", tt.name, status, body, tt.status, tt.reason)
		}
		if tt.status == http.StatusCreated {
			var b apiv1.Blob
			if err := json.Unmarshal([]byte(body), &b); err != nil || b.Digest != sha(good) || b.Size != int64(len(good)) || b.Replicas != 1 {
				t.Errorf("%s: answer %s (%v)", tt.name, body, err)
			}
		}
	}
	// Only the good one is stored.
	for digest, want := range map[string]int{sha(good): http.StatusOK, sha(big): http.StatusNotFound, sha([]byte("other")): http.StatusNotFound} {
		req, _ := http.NewRequest(http.MethodHead, base+"/v1/blobs/"+digest, nil)
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("HEAD %s = %d, want %d", digest, resp.StatusCode, want)
		}
	}
	submit := func(digest string) (int, string) {
		spec, _ := json.Marshal(apiv1.JobSpec{Run: "true", CodeArchive: digest})
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/jobs", bytes.NewReader(spec))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, body := submit(sha(big)); status != http.StatusBadRequest || !strings.Contains(body, "was not uploaded") {
		t.Errorf("submit naming a missing archive: %d %s", status, body)
	}
	if status, body := submit(sha(good)); status != http.StatusCreated {
		t.Errorf("submit naming an uploaded archive: %d %s", status, body)
	}
}

// TestBlobUploadOnFullDiskIs507: archives are stored beside the Raft log,
// and the upload ignored -min-free-disk: uploads (pushed to a majority)
// could eat the space the log needs and stop writes on every voter. An
// upload that would leave less than the minimum free is refused with 507.
func TestBlobUploadOnFullDiskIs507(t *testing.T) {
	ctrl, _, err := tlsutil.EnsureDev(t.TempDir(), "agent1")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.Start(server.Config{
		NodeID: "c1", DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		Bootstrap: true, Fast: true, TLS: ctrl, Log: logging.Discard(),
		// More free space than any disk has.
		Disk: cluster.DiskConfig{MinFree: 1 << 62, Interval: 10 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if err := srv.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	good := []byte("small archive")
	req, _ := http.NewRequest(http.MethodPut, "http://"+srv.HTTPAddr()+"/v1/blobs/"+sha(good), bytes.NewReader(good))
	req.Header.Set("Content-Type", "application/gzip")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusInsufficientStorage {
		t.Fatalf("upload on a full disk: %d %s, want 507", resp.StatusCode, b)
	}
}

// TestBlobSlowUploadIsNotCut: the server's ReadTimeout (30 s, meant for a
// 1 MiB spec) bounded the whole upload and WriteTimeout (60 s) its answer,
// so a 64 MiB archive failed on any uplink under about 18 Mbit/s. An
// upload that keeps moving is taken however long it takes; one that
// stalls for ReadTimeout is still cut.
func TestBlobSlowUploadIsNotCut(t *testing.T) {
	ctrl, _, err := tlsutil.EnsureDev(t.TempDir(), "agent1")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.Start(server.Config{
		NodeID: "c1", DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		Bootstrap: true, Fast: true, TLS: ctrl, Log: logging.Discard(),
		HTTPLimits: httpapi.Limits{ReadTimeout: 400 * time.Millisecond, WriteTimeout: 400 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if err := srv.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("code"), 1000)
	upload := func(pause time.Duration, chunks int) (int, string, error) {
		pr, pw := io.Pipe()
		go func() {
			step := len(data) / chunks
			for i := 0; i < len(data); i += step {
				time.Sleep(pause)
				if _, err := pw.Write(data[i:min(i+step, len(data))]); err != nil {
					return
				}
			}
			pw.Close()
		}()
		req, _ := http.NewRequest(http.MethodPut, "http://"+srv.HTTPAddr()+"/v1/blobs/"+sha(data), pr)
		req.ContentLength = int64(len(data))
		req.Header.Set("Content-Type", "application/gzip")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	// About 1.2 s in all, never 400 ms without a byte.
	if status, body, err := upload(150*time.Millisecond, 8); err != nil || status != http.StatusCreated {
		t.Fatalf("slow but steady upload: %d %s %v, want 201", status, body, err)
	}
	// A stalled upload is still cut.
	if status, _, err := upload(time.Second, 2); err == nil && status == http.StatusCreated {
		t.Fatal("an upload stalled past ReadTimeout was taken")
	}
}

// TestBlobReplicaHeadKeepsCopy: a peer's HEAD (the push of a re-upload
// finding the copy there) restarts the copy's GC grace period, so an old
// copy is not collected between the upload's answer and the submit.
func TestBlobReplicaHeadKeepsCopy(t *testing.T) {
	ctrl, _, err := tlsutil.EnsureDev(t.TempDir(), "agent1")
	if err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	srv, err := server.Start(server.Config{
		NodeID: "c1", DataDir: dataDir, HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		Bootstrap: true, Fast: true, TLS: ctrl, Log: logging.Discard(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if err := srv.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	body := []byte("archive")
	digest := sha(body)
	req, _ := http.NewRequest(http.MethodPut, "http://"+srv.HTTPAddr()+"/v1/blobs/"+digest, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/gzip")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload: %s", resp.Status)
	}
	file := filepath.Join(dataDir, "blobs", strings.TrimPrefix(digest, "sha256:"))
	old := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(file, old, old); err != nil {
		t.Fatal(err)
	}
	head := func(replica bool) time.Time {
		t.Helper()
		req, _ := http.NewRequest(http.MethodHead, "http://"+srv.HTTPAddr()+"/v1/blobs/"+digest, nil)
		if replica {
			req.Header.Set(blobpeers.HeaderReplica, "c2")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		return fi.ModTime()
	}
	if got := head(false); !got.Equal(old) {
		t.Fatalf("a user's HEAD changed the copy's time to %v", got)
	}
	if got := head(true); time.Since(got) > time.Minute {
		t.Fatalf("a peer's HEAD left the copy's time at %v", got)
	}
}
