package httpapi

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/gorilla/websocket"
)

// clientFrame encodes one masked client frame.
func clientFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var out []byte
	switch n := len(payload); {
	case n <= 125:
		out = []byte{b0, 0x80 | byte(n)}
	case n <= 0xffff:
		out = binary.BigEndian.AppendUint16([]byte{b0, 0x80 | 126}, uint16(n))
	default:
		out = binary.BigEndian.AppendUint64([]byte{b0, 0x80 | 127}, uint64(n))
	}
	key := []byte{0x12, 0x34, 0x56, 0x78}
	out = append(out, key...)
	for i, c := range payload {
		out = append(out, c^key[i%4])
	}
	return out
}

type control struct {
	op      byte
	payload string
}

// feedAll feeds stream to a fresh parser in pieces of size step (0: all
// at once) and returns the control frames and the close code.
func feedAll(stream []byte, step int) ([]control, int) {
	var f clientFrames
	var got []control
	on := func(op byte, p []byte) { got = append(got, control{op, string(p)}) }
	if step == 0 {
		step = len(stream)
	}
	for i := 0; i < len(stream); i += step {
		piece := append([]byte(nil), stream[i:min(i+step, len(stream))]...)
		if code := f.feed(piece, 4096, on); code != 0 {
			return got, code
		}
	}
	return got, 0
}

func TestClientFrames(t *testing.T) {
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	long := bytes.Repeat([]byte("x"), 3000)
	tests := []struct {
		name   string
		stream []byte
		want   []control
		code   int
	}{
		{"pong, ping, close", cat(clientFrame(true, opPong, []byte("p1")), clientFrame(true, opPing, []byte("hello")), clientFrame(true, opClose, []byte{0x03, 0xe8})),
			[]control{{opPong, "p1"}, {opPing, "hello"}, {opClose, "\x03\xe8"}}, 0},
		{"data skipped between controls", cat(clientFrame(true, 1, []byte("hi")), clientFrame(true, opPong, nil), clientFrame(true, 2, long), clientFrame(true, opPing, []byte("x"))),
			[]control{{opPong, ""}, {opPing, "x"}}, 0},
		{"fragmented message within the limit", cat(clientFrame(false, 1, long[:2000]), clientFrame(true, opPong, []byte("mid")), clientFrame(true, 0, long[:2000])),
			[]control{{opPong, "mid"}}, 0},
		{"fragmented message over the limit", cat(clientFrame(false, 1, long), clientFrame(true, 0, long)), nil, websocket.CloseMessageTooBig},
		{"one frame over the limit (64-bit length)", clientFrame(true, 2, bytes.Repeat([]byte("y"), 70000)), nil, websocket.CloseMessageTooBig},
		{"unmasked", []byte{0x89, 0x00}, nil, websocket.CloseProtocolError},
		{"reserved bits", cat([]byte{0xc1}, clientFrame(true, 1, nil)[1:]), nil, websocket.CloseProtocolError},
		{"control over 125 bytes", clientFrame(true, opPing, bytes.Repeat([]byte("z"), 126)), nil, websocket.CloseProtocolError},
		{"fragmented control", clientFrame(false, opPing, nil), nil, websocket.CloseProtocolError},
		{"unknown opcode", clientFrame(true, 0x3, nil), nil, websocket.CloseProtocolError},
		{"length with the top bit", []byte{0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4}, nil, websocket.CloseProtocolError},
	}
	for _, tt := range tests {
		for _, step := range []int{0, 1, 3, 7, 139} {
			t.Run(fmt.Sprintf("%s/step=%d", tt.name, step), func(t *testing.T) {
				got, code := feedAll(tt.stream, step)
				if code != tt.code || fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Fatalf("got %v, close %d; want %v, close %d", got, code, tt.want, tt.code)
				}
			})
		}
	}
}

// After a protocol error the parser ignores everything, and it never
// keeps more than one control frame's worth of bytes.
func TestClientFramesBounded(t *testing.T) {
	var f clientFrames
	noop := func(byte, []byte) {}
	ping := clientFrame(true, opPing, bytes.Repeat([]byte("a"), 125))
	if code := f.feed(ping[:len(ping)-1], 4096, noop); code != 0 || len(f.partial) != len(ping)-1 {
		t.Fatalf("partial ping: code %d, kept %d bytes", code, len(f.partial))
	}
	if code := f.feed(append(ping[len(ping)-1:], 0x89, 0x00), 4096, noop); code != websocket.CloseProtocolError {
		t.Fatalf("unmasked frame after a ping: close %d", code)
	}
	called := false
	if code := f.feed(clientFrame(true, opPing, nil), 4096, func(byte, []byte) { called = true }); code != 0 || called || f.partial != nil {
		t.Fatalf("after the error: code %d, called %v, kept %d bytes", code, called, len(f.partial))
	}
}
