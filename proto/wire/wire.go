// Package wire is the agent↔controller protocol over QUIC: the ALPN name,
// the stream type bytes, the QUIC settings both sides share, and
// length-delimited protobuf framing with a deadline on every read and write.
//
// One QUIC connection per agent. The agent opens the control stream first
// (Hello, then StartJob/CancelJob from the controller), then the records
// stream (RecordBatch up, BatchAck down). Every stream opens with its type
// byte.
package wire

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/quic-go/quic-go"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
)

// ALPN is the TLS application protocol of the agent link.
const ALPN = "gantry-link/1"

// StreamType is the first byte of every stream.
type StreamType byte

// Stream types. Only append.
const (
	StreamControl StreamType = 1
	StreamRecords StreamType = 2
	// StreamBlob carries one code archive to the agent (BlobRequest).
	StreamBlob StreamType = 3
)

// Limits and timeouts shared by both ends.
const (
	// MaxMessageBytes bounds one framed message (a record batch).
	MaxMessageBytes = 16 << 20
	// WriteTimeout bounds every single write.
	WriteTimeout = 10 * time.Second
	// IdleTimeout closes a connection that has been silent this long: it
	// bounds how long an agent stays attached to a dead controller.
	IdleTimeout = 6 * time.Second
	// KeepAlive keeps an idle but healthy connection open.
	KeepAlive = 1500 * time.Millisecond
)

// Application error codes for CloseWithError.
const (
	CodeOK           quic.ApplicationErrorCode = 0
	CodeProtocol     quic.ApplicationErrorCode = 1
	CodeNotLeader    quic.ApplicationErrorCode = 2
	CodeShuttingDown quic.ApplicationErrorCode = 3
)

// NotLeaderReason is HelloReply.error from a controller that does not
// lead; with leader_addr empty it means no leader is known yet (an
// election, or a cluster starting), which an agent waits out quietly.
const NotLeaderReason = "not the leader"

// QUICStreamCanceled is the error code of a stream one end abandons
// (a failed archive download), as opposed to a clean close.
const QUICStreamCanceled quic.StreamErrorCode = 1

// ErrBadStreamType is returned for a stream whose first byte is unknown.
var ErrBadStreamType = errors.New("link: unknown stream type")

// QUICConfig is the QUIC configuration of both ends.
func QUICConfig() *quic.Config {
	return &quic.Config{
		MaxIdleTimeout:        IdleTimeout,
		KeepAlivePeriod:       KeepAlive,
		HandshakeIdleTimeout:  5 * time.Second,
		MaxIncomingStreams:    16,
		MaxIncomingUniStreams: -1,
	}
}

// Stream is a framed message stream.
type Stream struct {
	s *quic.Stream
	r *bufio.Reader
}

// Wrap frames an already-typed QUIC stream.
func Wrap(s *quic.Stream) *Stream {
	return &Stream{s: s, r: bufio.NewReaderSize(s, 64<<10)}
}

// Open writes the type byte on a freshly opened stream and wraps it.
func Open(s *quic.Stream, t StreamType) (*Stream, error) {
	if err := s.SetWriteDeadline(time.Now().Add(WriteTimeout)); err != nil {
		return nil, err
	}
	if _, err := s.Write([]byte{byte(t)}); err != nil {
		return nil, fmt.Errorf("link: open stream: %w", err)
	}
	return Wrap(s), nil
}

// Accept reads the type byte of a stream the peer opened.
func Accept(s *quic.Stream, timeout time.Duration) (StreamType, *Stream, error) {
	if err := s.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return 0, nil, err
	}
	var b [1]byte
	if _, err := io.ReadFull(s, b[:]); err != nil {
		return 0, nil, fmt.Errorf("link: read stream type: %w", err)
	}
	t := StreamType(b[0])
	switch t {
	case StreamControl, StreamRecords, StreamBlob:
	default:
		return 0, nil, fmt.Errorf("%w: %d", ErrBadStreamType, b[0])
	}
	if err := s.SetReadDeadline(time.Time{}); err != nil {
		return 0, nil, err
	}
	return t, Wrap(s), nil
}

// Write sends one message with a write deadline.
func (st *Stream) Write(m proto.Message) error {
	if err := st.s.SetWriteDeadline(time.Now().Add(WriteTimeout)); err != nil {
		return err
	}
	if _, err := protodelim.MarshalTo(st.s, m); err != nil {
		return fmt.Errorf("link: write %T: %w", m, err)
	}
	return nil
}

// Read reads one message; timeout 0 waits as long as the connection lives
// (QUIC's idle timeout still ends a dead peer).
func (st *Stream) Read(m proto.Message, timeout time.Duration) error {
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	if err := st.s.SetReadDeadline(deadline); err != nil {
		return err
	}
	err := protodelim.UnmarshalOptions{MaxSize: MaxMessageBytes}.UnmarshalFrom(st.r, m)
	if err != nil {
		return fmt.Errorf("link: read %T: %w", m, err)
	}
	return nil
}

// Close closes the send side.
func (st *Stream) Close() error { return st.s.Close() }
