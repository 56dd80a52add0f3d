package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/wire"
)

// ErrBlobUnavailable wraps an OpenBlob error that says nothing about the
// request, such as peers that could not be reached: the stream ends with
// an error, which the agent retries, not with a refusal, which it does not.
var ErrBlobUnavailable = errors.New("code archive unavailable for now")

// Blobs serves code archives to agents.
type Blobs interface {
	// OpenBlob opens digest for node, which is allowed only while node
	// runs (or is about to run) a job jobID whose spec names digest; the
	// error's text reaches the agent.
	OpenBlob(ctx context.Context, node, jobID, digest string) (io.ReadCloser, int64, error)
}

const (
	// maxBlobStreams bounds one agent's concurrent archive downloads;
	// more wait.
	maxBlobStreams = 4
	// blobChunkBytes is the payload of one BlobChunk.
	blobChunkBytes = 256 << 10
	// blobOpenTimeout bounds finding an archive, pulling it from a peer
	// controller included.
	blobOpenTimeout = 2 * time.Minute
)

// serveBlobStreams accepts the streams an agent opens after its records
// stream; each must be a blob stream. A bad stream type is a protocol
// error and ends the session; a failed download ends only its stream.
func (s *Server) serveBlobStreams(ctx context.Context, sess *Session, log *slog.Logger) error {
	sem := make(chan struct{}, maxBlobStreams)
	for {
		qs, err := sess.conn.AcceptStream(ctx)
		if err != nil {
			// The session is over (the connection or ctx ended): the
			// records stream's reader reports why.
			return nil
		}
		typ, bs, err := wire.Accept(qs, 10*time.Second)
		if err != nil {
			return err
		}
		if typ != wire.StreamBlob {
			return fmt.Errorf("stream of type %d after the records stream; only blob streams may follow", typ)
		}
		// Past the limit a download waits its turn: an answer would be
		// a refusal, which the agent does not retry and fails the job on.
		// The QUIC stream limit bounds how many wait.
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		go func() {
			defer func() { <-sem }()
			if err := s.serveBlob(ctx, sess.NodeID, qs, bs); err != nil {
				log.Warn("code archive download failed", "err", err)
				qs.CancelWrite(wire.QUICStreamCanceled)
			}
		}()
	}
}

// serveBlob answers one BlobRequest.
func (s *Server) serveBlob(ctx context.Context, node string, qs *quic.Stream, bs *wire.Stream) error {
	defer qs.CancelRead(wire.QUICStreamCanceled) // the agent sends nothing after its request
	var req gantrypb.BlobRequest
	if err := bs.Read(&req, 10*time.Second); err != nil {
		return err
	}
	if s.opts.Blobs == nil {
		return errors.Join(bs.Write(&gantrypb.BlobReply{Error: "this controller does not serve code archives"}), bs.Close())
	}
	octx, cancel := context.WithTimeout(ctx, blobOpenTimeout)
	rc, size, err := s.opts.Blobs.OpenBlob(octx, node, req.JobId, req.Digest)
	cancel()
	if errors.Is(err, ErrBlobUnavailable) {
		return fmt.Errorf("code archive %s for job %s: %w", truncate(req.Digest, 80), truncate(req.JobId, 80), err)
	}
	if err != nil {
		// A refusal is an answer, closed cleanly so that it arrives.
		s.opts.Log.Warn("code archive refused", "node", node, "job", truncate(req.JobId, 80),
			"digest", truncate(req.Digest, 80), "err", err)
		return errors.Join(bs.Write(&gantrypb.BlobReply{Error: truncate(err.Error(), 500)}), bs.Close())
	}
	defer rc.Close()
	if err := bs.Write(&gantrypb.BlobReply{Ok: true, Size: size}); err != nil {
		return err
	}
	buf := make([]byte, blobChunkBytes)
	var sent int64
	for sent < size {
		n, err := io.ReadFull(rc, buf[:min(int64(len(buf)), size-sent)])
		if err != nil {
			return fmt.Errorf("reading archive %s: %w", req.Digest, err)
		}
		if err := bs.Write(&gantrypb.BlobChunk{Data: buf[:n]}); err != nil {
			return err
		}
		sent += int64(n)
	}
	return bs.Close()
}
