package httpapi

import (
	"encoding/binary"

	"github.com/gorilla/websocket"
)

// WebSocket opcodes a client may send (RFC 6455, section 5.2).
const (
	opBinary      = 0x2 // continuation (0) and text (1) come before it
	opClose       = 0x8
	opPing        = 0x9
	opPong        = 0xA
	maxControlLen = 125
)

// clientFrames parses what a client sends a watcher when no goroutine of
// its own reads the socket (see readPoller): bytes come in whatever pieces
// the socket gives. Clients have nothing to say, so data messages are only
// counted against the read limit and skipped, never buffered; control
// frames (at most 125 bytes of payload) are handed on. It keeps at most
// one incomplete header or control frame between calls (139 bytes).
type clientFrames struct {
	partial []byte // an incomplete header or control frame
	skip    int64  // data payload bytes still to skip
	msgLen  int64  // bytes of the current data message so far
	broken  bool   // a protocol error was found: the rest is ignored
}

// feed parses b. onControl gets each control frame's opcode and unmasked
// payload (valid only during the call; b is unmasked in place). A non-zero
// result is the close code the client earned: a protocol error (1002) or a
// message over limit bytes (1009); everything after it is ignored.
func (f *clientFrames) feed(b []byte, limit int64, onControl func(op byte, payload []byte)) int {
	if f.broken {
		return 0
	}
	if len(f.partial) > 0 {
		b = append(f.partial, b...)
		f.partial = nil
	}
	keep := func(rest []byte) int {
		f.partial = append([]byte(nil), rest...)
		return 0
	}
	fail := func(code int) int {
		f.broken, f.partial = true, nil
		return code
	}
	for len(b) > 0 {
		if f.skip > 0 {
			k := min(f.skip, int64(len(b)))
			f.skip -= k
			b = b[k:]
			continue
		}
		if len(b) < 2 {
			return keep(b)
		}
		b0, b1 := b[0], b[1]
		fin, op := b0&0x80 != 0, b0&0x0f
		if b0&0x70 != 0 || b1&0x80 == 0 {
			// Reserved bits without an extension, or an unmasked
			// client frame.
			return fail(websocket.CloseProtocolError)
		}
		n, h := int64(b1&0x7f), 2
		switch n {
		case 126:
			if len(b) < 4 {
				return keep(b)
			}
			n, h = int64(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			if len(b) < 10 {
				return keep(b)
			}
			u := binary.BigEndian.Uint64(b[2:])
			if u>>63 != 0 {
				return fail(websocket.CloseProtocolError)
			}
			n, h = int64(u), 10
		}
		h += 4 // the masking key
		if len(b) < h {
			return keep(b)
		}
		key := b[h-4 : h]
		switch {
		case op == opClose || op == opPing || op == opPong:
			if !fin || n > maxControlLen {
				return fail(websocket.CloseProtocolError)
			}
			if int64(len(b)-h) < n {
				return keep(b)
			}
			p := b[h : h+int(n)]
			for i := range p {
				p[i] ^= key[i%4]
			}
			onControl(op, p)
			b = b[h+int(n):]
		case op <= opBinary: // continuation, text, binary
			f.msgLen += n
			if f.msgLen > limit {
				return fail(websocket.CloseMessageTooBig)
			}
			if fin {
				f.msgLen = 0
			}
			f.skip = n
			b = b[h:]
		default:
			return fail(websocket.CloseProtocolError)
		}
	}
	return 0
}
