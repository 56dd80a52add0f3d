package blobpeers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
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
