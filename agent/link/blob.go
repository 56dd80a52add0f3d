package link

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/wire"
)

// ErrNotConnected is returned by FetchBlob while no session is up; the
// caller retries once the link reconnects.
var ErrNotConnected = errors.New("link: not connected to a controller")

// RefusedError is a controller's refusal to serve an archive (unknown
// job, wrong node, archive missing on every controller): retrying the
// same request does not help.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return "controller refused the code archive: " + e.Reason }

// current is the session FetchBlob uses.
type current struct {
	conn  *quic.Conn
	blobs bool // the controller serves blob streams
}

// FetchBlob downloads job's code archive digest into w and returns its
// size. It checks nothing of the bytes itself: the caller hashes them.
func (l *Link) FetchBlob(ctx context.Context, jobID, digest string, w io.Writer) (int64, error) {
	cur := l.cur.Load()
	if cur == nil {
		return 0, ErrNotConnected
	}
	if !cur.blobs {
		return 0, &RefusedError{Reason: "this controller is too old to serve code archives; upgrade the controllers"}
	}
	qs, err := cur.conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, fmt.Errorf("link: open blob stream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() {
		qs.CancelRead(wire.QUICStreamCanceled)
		qs.CancelWrite(wire.QUICStreamCanceled)
	})
	defer stop()
	defer qs.CancelRead(wire.QUICStreamCanceled) // no-op once read to the end
	bs, err := wire.Open(qs, wire.StreamBlob)
	if err != nil {
		return 0, err
	}
	if err := bs.Write(&gantrypb.BlobRequest{JobId: jobID, Digest: digest}); err != nil {
		return 0, err
	}
	_ = bs.Close() // nothing more to send
	var reply gantrypb.BlobReply
	// The controller may first pull the archive from a peer.
	if err := bs.Read(&reply, 3*time.Minute); err != nil {
		return 0, err
	}
	if !reply.Ok {
		return 0, &RefusedError{Reason: reply.Error}
	}
	var got int64
	for got < reply.Size {
		var chunk gantrypb.BlobChunk
		if err := bs.Read(&chunk, time.Minute); err != nil {
			return got, fmt.Errorf("link: code archive cut after %d of %d bytes: %w", got, reply.Size, err)
		}
		if int64(len(chunk.Data)) > reply.Size-got {
			return got, fmt.Errorf("link: controller sent more than the %d bytes it announced", reply.Size)
		}
		if _, err := w.Write(chunk.Data); err != nil {
			return got, err
		}
		got += int64(len(chunk.Data))
	}
	return got, nil
}
