package ingest_test

import (
	"bytes"
	"context"
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
