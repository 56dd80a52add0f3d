package ingest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/ingest"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/wire"
)

// slowBlobs serves every request the same bytes after a pause, as a
// controller pulling an archive from a peer does.
type slowBlobs struct{ data []byte }

func (b slowBlobs) OpenBlob(ctx context.Context, node, jobID, digest string) (io.ReadCloser, int64, error) {
	time.Sleep(300 * time.Millisecond)
	return io.NopCloser(bytes.NewReader(b.data)), int64(len(b.data)), nil
}

// TestBlobDownloadsPastTheLimitWait: an agent starting more jobs at once
// than the controller serves downloads (eight one-GPU jobs on an 8-GPU
// host) got "more than 4 downloads at once; retry" for the extra ones,
// which the agent takes as a refusal (RefusedError) and fails the job on.
// Extra downloads must wait their turn instead.
func TestBlobDownloadsPastTheLimitWait(t *testing.T) {
	data := []byte("archive bytes")
	e := newEnvWith(t, nil, nil, func(o *ingest.Options) { o.Blobs = slowBlobs{data: data} })
	a := e.connect("agent1")
	a.records(t)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			qs, err := a.conn.OpenStreamSync(ctx)
			if err != nil {
				errs <- err.Error()
				return
			}
			bs, err := wire.Open(qs, wire.StreamBlob)
			if err != nil {
				errs <- err.Error()
				return
			}
			if err := bs.Write(&gantrypb.BlobRequest{JobId: "j", Digest: "d"}); err != nil {
				errs <- err.Error()
				return
			}
			_ = bs.Close()
			var reply gantrypb.BlobReply
			if err := bs.Read(&reply, 15*time.Second); err != nil {
				errs <- err.Error()
				return
			}
			if !reply.Ok {
				errs <- "refused: " + reply.Error
				return
			}
			var chunk gantrypb.BlobChunk
			if err := bs.Read(&chunk, 15*time.Second); err != nil || !bytes.Equal(chunk.Data, data) {
				errs <- "bad chunk"
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// failingBlobs fails every request with err.
type failingBlobs struct{ err error }

func (b failingBlobs) OpenBlob(ctx context.Context, node, jobID, digest string) (io.ReadCloser, int64, error) {
	return nil, 0, b.err
}

// TestBlobUnavailableIsNoRefusal: every failure to open an archive was
// answered as a refusal, which the agent never retries: a leader that
// could not reach the peer holding the archive for a moment (just after a
// failover) failed the job for good. An archive that is only unavailable
// ends the stream with an error, which the agent retries.
func TestBlobUnavailableIsNoRefusal(t *testing.T) {
	for _, tt := range []struct {
		err     error
		refusal bool
	}{
		{errors.New("no live job of this node"), true},
		{fmt.Errorf("%w: peers unreachable", ingest.ErrBlobUnavailable), false},
	} {
		e := newEnvWith(t, nil, nil, func(o *ingest.Options) { o.Blobs = failingBlobs{err: tt.err} })
		a := e.connect("agent1")
		a.records(t)
		qs, err := a.conn.OpenStreamSync(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		bs, err := wire.Open(qs, wire.StreamBlob)
		if err != nil {
			t.Fatal(err)
		}
		if err := bs.Write(&gantrypb.BlobRequest{JobId: "j", Digest: "d"}); err != nil {
			t.Fatal(err)
		}
		_ = bs.Close()
		var reply gantrypb.BlobReply
		err = bs.Read(&reply, 10*time.Second)
		if got := err == nil && !reply.Ok; got != tt.refusal {
			t.Errorf("%v: reply %v, read error %v; want a refusal: %v", tt.err, &reply, err, tt.refusal)
		}
	}
}
