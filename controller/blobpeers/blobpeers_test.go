package blobpeers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/controller/blobstore"
)

// TestBlobReplicateVoterWithoutAddress: a voter whose HTTP address is not
// known yet was reported from the loop while pushes to the others ran and
// reported under the lock: a data race on the error list (go test -race).
func TestBlobReplicateVoterWithoutAddress(t *testing.T) {
	st, err := blobstore.Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	body := "archive"
	sum := sha256.Sum256([]byte(body))
	digest := "sha256:" + hex.EncodeToString(sum[:])
	if _, err := st.Put(digest, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	p := &Peers{Store: st, Self: "c1", Scheme: "http", Transport: http.DefaultTransport,
		Voters: func() ([]string, error) { return []string{"c1", "c2", "c3", "c4", "c5"}, nil },
		// c2 and c3 refuse connections at once; c4 and c5 have no address.
		Addrs: func() map[string]string { return map[string]string{"c2": "127.0.0.1:1", "c3": "127.0.0.1:1"} },
	}
	have, need, err := p.Replicate(context.Background(), digest, "")
	if have != 1 || need != 3 || err == nil {
		t.Fatalf("Replicate = %d of %d (%v), want 1 of 3 and an error", have, need, err)
	}
	for _, id := range []string{"c2", "c3", "c4", "c5"} {
		if !strings.Contains(err.Error(), id) {
			t.Errorf("error %q does not name %s", err, id)
		}
	}
}

// TestBlobEnsureUnreachableIsNotMissing: Ensure called a blob "not found"
// when the peers holding it could not be reached, so a submit right after
// a failover was told the archive "was not uploaded" (400) and an agent
// got a refusal, which it does not retry, failing the job. Only peers
// answering 404 make a blob missing.
func TestBlobEnsureUnreachableIsNotMissing(t *testing.T) {
	st, err := blobstore.Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + strings.Repeat("0", 64)
	missing := httptest.NewServer(http.NotFoundHandler())
	defer missing.Close()
	gone := strings.TrimPrefix(missing.URL, "http://")
	for _, tt := range []struct {
		name     string
		addrs    map[string]string
		notFound bool
	}{
		// c1 lacks it; while three voters may hold it, it may be on a
		// majority.
		{"unreachable", map[string]string{"c2": "127.0.0.1:1", "c3": "127.0.0.1:1", "c4": "127.0.0.1:1", "c5": gone}, false},
		{"addresses unknown", map[string]string{"c2": gone}, false},
		{"missing on a majority", map[string]string{"c2": "127.0.0.1:1", "c3": "127.0.0.1:1", "c4": gone, "c5": gone}, true},
		{"missing everywhere", map[string]string{"c2": gone, "c3": gone, "c4": gone, "c5": gone}, true},
	} {
		p := &Peers{Store: st, Self: "c1", Scheme: "http", Transport: http.DefaultTransport,
			Voters: func() ([]string, error) { return []string{"c1", "c2", "c3", "c4", "c5"}, nil },
			Addrs:  func() map[string]string { return tt.addrs },
		}
		err := p.Ensure(context.Background(), digest)
		if err == nil || errors.Is(err, blobstore.ErrNotFound) != tt.notFound {
			t.Errorf("%s: Ensure = %v, want not-found %v", tt.name, err, tt.notFound)
		}
	}
}

// TestBlobReplicateWithoutConfiguration: when the voters cannot be read
// (a controller shutting down), an upload is not acknowledged as held by
// "0 of 0" controllers.
func TestBlobReplicateWithoutConfiguration(t *testing.T) {
	st, err := blobstore.Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	p := &Peers{Store: st, Self: "c1", Scheme: "http", Transport: http.DefaultTransport,
		Voters: func() ([]string, error) { return nil, errors.New("raft is shut down") },
		Addrs:  func() map[string]string { return nil },
	}
	have, need, err := p.Replicate(context.Background(), "sha256:"+strings.Repeat("0", 64), "")
	if have >= need || err == nil {
		t.Fatalf("Replicate = %d of %d (%v), want fewer than needed and an error", have, need, err)
	}
}
