package command

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// withCRC builds a checksummed entry from a raw first byte and payload, so
// tests can make intact entries Encode would refuse to write.
func withCRC(first byte, payload []byte) []byte {
	b := append([]byte{first}, payload...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
}

// legacy builds an entry the way controllers before checksums wrote it.
func legacy(t testing.TB, m proto.Message) []byte {
	t.Helper()
	typ, err := TypeOf(m)
	if err != nil {
		t.Fatal(err)
	}
	p, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{byte(typ)}, p...)
}

func sample() proto.Message {
	return &gantrypb.SubmitJobCmd{JobId: "job-1", AtMs: 1234, Spec: &gantrypb.JobSpec{Name: "resnet", Run: "python train.py"}}
}

// oneClass fails unless err matches exactly one of ErrCorrupt and
// ErrMalformed: the FSM relies on that to choose between stopping and
// skipping.
func oneClass(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, ErrCorrupt) == errors.Is(err, ErrMalformed) {
		t.Fatalf("error %q matches ErrCorrupt=%v ErrMalformed=%v, want exactly one",
			err, errors.Is(err, ErrCorrupt), errors.Is(err, ErrMalformed))
	}
}

func TestEncodeFraming(t *testing.T) {
	b, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != byte(SubmitJob)|0x80 {
		t.Fatalf("first byte %#x, want %#x", b[0], byte(SubmitJob)|0x80)
	}
	body := b[:len(b)-4]
	want := crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli))
	if got := binary.BigEndian.Uint32(b[len(b)-4:]); got != want {
		t.Fatalf("trailer %08x, want CRC-32C of first byte and payload %08x", got, want)
	}
	p, _ := proto.Marshal(sample())
	if string(body[1:]) != string(p) {
		t.Fatal("payload between first byte and trailer is not the plain protobuf encoding")
	}
	if err := Verify(b); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

// Logs written before checksums existed must keep replaying.
func TestLegacyEntryDecodes(t *testing.T) {
	b := legacy(t, sample())
	if err := Verify(b); err != nil {
		t.Fatalf("Verify(legacy) = %v", err)
	}
	m, err := Decode(b)
	if err != nil {
		t.Fatalf("Decode(legacy) = %v", err)
	}
	if !proto.Equal(m, sample()) {
		t.Fatalf("legacy entry decoded to %v", m)
	}
}

// Every single-bit flip anywhere in a checksummed entry, the flag bit of
// the first byte included, is reported as ErrCorrupt: never as a malformed
// entry (which the FSM would skip on this node only) and never as a
// different valid command.
func TestEveryBitFlipIsCorrupt(t *testing.T) {
	orig, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	for i := range orig {
		for bit := 0; bit < 8; bit++ {
			b := append([]byte(nil), orig...)
			b[i] ^= 1 << bit
			m, err := Decode(b)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("byte %d bit %d flipped: Decode = %v, %v; want ErrCorrupt", i, bit, m, err)
			}
			oneClass(t, err)
			if verr := Verify(b); !errors.Is(verr, ErrCorrupt) {
				t.Fatalf("byte %d bit %d flipped: Verify = %v; want ErrCorrupt", i, bit, verr)
			}
		}
	}
}

// A first byte overwritten with any other value is caught too, including
// values without the flag that name a valid legacy type.
func TestFirstByteReplacedIsCorrupt(t *testing.T) {
	orig, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	for v := 0; v < 256; v++ {
		if byte(v) == orig[0] {
			continue
		}
		b := append([]byte(nil), orig...)
		b[0] = byte(v)
		if _, err := Decode(b); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("first byte %#x: Decode error = %v, want ErrCorrupt", v, err)
		}
	}
}

func TestTruncatedEntryIsCorrupt(t *testing.T) {
	orig, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	for n := 1; n < len(orig); n++ {
		if _, err := Decode(orig[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("entry cut to %d of %d bytes: Decode error = %v, want ErrCorrupt", n, len(orig), err)
		}
	}
}

// Intact entries that cannot be decoded are ErrMalformed: every voter
// holds the same bytes, so skipping them is deterministic.
func TestIntactButUndecodableIsMalformed(t *testing.T) {
	tests := map[string][]byte{
		"checksummed bad protobuf": withCRC(byte(SubmitJob)|checksumFlag, []byte{0x0a, 0x50, 'x'}),
		"checksummed unknown type": withCRC(0x7f|checksumFlag, []byte{1, 2, 3}),
		"legacy bad protobuf":      {byte(Ingest), 0x0a, 0x50, 'x'},
		"legacy unknown type":      {0x42, 1},
		"empty":                    {},
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			m, err := Decode(b)
			if !errors.Is(err, ErrMalformed) || m != nil {
				t.Fatalf("Decode = %v, %v; want ErrMalformed", m, err)
			}
			oneClass(t, err)
		})
	}
}

// FuzzDecode: Decode never panics, every error belongs to exactly one
// class, and whatever decodes re-encodes to an entry that decodes to the
// same message.
func FuzzDecode(f *testing.F) {
	for _, m := range []proto.Message{
		sample(),
		&gantrypb.IngestCmd{NodeId: "h1", Records: []*gantrypb.Record{{JobId: "j", Seq: 3}}},
		&gantrypb.NodeDownCmd{NodeId: "h1", AtMs: 9},
	} {
		b, err := Encode(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(legacy(f, m))
	}
	f.Add([]byte{})
	f.Add([]byte{0x80})
	f.Add([]byte{0x81, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			oneClass(t, err)
			if m != nil {
				t.Fatalf("message %v returned with error %v", m, err)
			}
			if verr := Verify(b); errors.Is(err, ErrCorrupt) && !errors.Is(verr, ErrCorrupt) {
				t.Fatalf("Decode says corrupt (%v) but Verify says %v", err, verr)
			}
			return
		}
		if verr := Verify(b); verr != nil {
			t.Fatalf("Decode succeeded but Verify = %v", verr)
		}
		again, err := Encode(m)
		if err != nil {
			t.Fatalf("re-encode %T: %v", m, err)
		}
		m2, err := Decode(again)
		if err != nil || !proto.Equal(m, m2) {
			t.Fatalf("re-encoded entry decodes to %v, %v; want %v", m2, err, m)
		}
	})
}
