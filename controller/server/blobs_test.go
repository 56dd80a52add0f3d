package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/agent/link"
	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
	"github.com/gantry-ml/gantry/internal/codearchive"
	"github.com/gantry-ml/gantry/internal/testutil"
)

// packTemp packs a small code directory into a temp file and returns it
// with its digest and bytes.
func packTemp(t *testing.T) (*os.File, string, []byte) {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "train.py"), []byte("print('hi')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := codearchive.Pack(src, &buf, 0); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	f, err := os.Create(filepath.Join(t.TempDir(), "code.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, "sha256:" + hex.EncodeToString(sum[:]), buf.Bytes()
}

// TestCodeArchiveSurvivesFailover: an archive uploaded to one controller
// is held by a majority before the upload is acknowledged, so with that
// controller gone the job still submits and its agent still gets the
// archive, from the leader, bit for bit. An agent gets only the archive
// of its own live job.
func TestCodeArchiveSurvivesFailover(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	f, digest, data := packTemp(t)

	up := c.follower()
	var blob apiv1.Blob
	testutil.WaitFor(t, 20*time.Second, func() bool {
		var err error
		blob, err = apiOf(up).PutBlob(ctx, digest, f)
		return err == nil
	}, "the upload acknowledged by a majority")
	if blob.Digest != digest || blob.Size != int64(len(data)) || blob.Replicas < 2 {
		t.Fatalf("upload answered %+v, want %s, %d bytes, on at least 2 controllers", blob, digest, len(data))
	}

	// A spec naming an archive nobody uploaded is refused at submit.
	_, err := apiOf(up).Submit(ctx, apiv1.JobSpec{Run: "true", CodeArchive: "sha256:" + string(bytes.Repeat([]byte("0"), 64))})
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest {
		t.Fatalf("submit with an unknown archive = %v, want 400", err)
	}

	// The controller that took the upload goes away.
	for i, s := range c.nodes {
		if s == up {
			s.Close()
			c.nodes[i] = nil
		}
	}
	leader := c.waitLeader()
	job := submit(t, leader, apiv1.JobSpec{Name: "shipped", Run: "python3 train.py", CodeArchive: digest,
		Resources: apiv1.Resources{GPUs: 1}})
	other := submit(t, leader, apiv1.JobSpec{Name: "plain", Run: "true"})

	var addrs []string
	for _, s := range c.nodes {
		if s != nil {
			addrs = append(addrs, s.QUICAddr())
		}
	}
	l, _, fa := c.agentLink(t, addrs)
	deadline := time.After(15 * time.Second)
	for started := ""; started != job; {
		select {
		case started = <-fa.started:
		case <-deadline:
			t.Fatal("the leader never sent StartJob for the shipped job")
		}
	}

	var got bytes.Buffer
	if _, err := l.FetchBlob(ctx, job, digest, &got); err != nil {
		t.Fatalf("FetchBlob: %v", err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("fetched %d bytes that differ from the %d uploaded", got.Len(), len(data))
	}
	// Another job's name, or a job that does not use the archive, gets
	// nothing: an agent key reads only its own jobs' code.
	for _, id := range []string{other, "no-such-job"} {
		var refused *link.RefusedError
		if _, err := l.FetchBlob(ctx, id, digest, &bytes.Buffer{}); !errors.As(err, &refused) {
			t.Errorf("FetchBlob for job %q = %v, want a refusal", id, err)
		}
	}
}
