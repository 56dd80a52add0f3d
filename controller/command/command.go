// Package command encodes the entries Gantry writes to the Raft log. Types
// are only ever appended, so a log written by an older controller still
// decodes.
//
// Two entry framings exist, told apart by the high bit of the first byte:
//
//	legacy (before checksums):  [type] [protobuf payload]
//	checksummed (written now):  [type|0x80] [protobuf payload] [CRC-32C, 4 bytes big-endian]
//
// The CRC-32C (Castagnoli) covers the first byte (flag included) and the
// payload. Every command type is below 0x80, so a legacy entry never has the
// flag set and both framings decode. The checksum exists because raft-wal
// keeps no checksum over the entries of a sealed segment: a flipped byte on
// disk used to decode as garbage or fail to decode, and the FSM could not
// tell local damage from an entry every voter holds.
package command

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// Type identifies the payload of a Raft entry.
type Type byte

// Command types. Never renumber; only append.
const (
	SubmitJob Type = 1
	AssignJob Type = 2
	CancelJob Type = 3
	Ingest    Type = 4
	NodeUp    Type = 5
	NodeDown  Type = 6
	EndJob    Type = 7
	// QueueTimeout is appended after EndJob: controllers older than it
	// skip it as an unknown type, so upgrade every controller before a
	// spec with queue_timeout is submitted.
	QueueTimeout Type = 8
	// AlertsDelivered moves the alert outbox's delivered cursor (the
	// leader's webhook notifier). Older controllers skip it as unknown;
	// their outbox is then only trimmed by its cap.
	AlertsDelivered Type = 9
	// Drain stops or resumes placement on a node or some of its GPUs.
	Drain Type = 10
	// AssignGang assigns every rank of a multi-node job in one entry;
	// upgrade every controller before submitting a job with
	// resources.nodes > 1.
	AssignGang Type = 11
)

// checksumFlag marks an entry that ends with a CRC-32C trailer.
const checksumFlag = 0x80

// trailerLen is the size of the CRC-32C trailer.
const trailerLen = 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Decode's errors come in two classes, and the FSM must react to them
// differently, so every error Decode returns matches exactly one of
// ErrCorrupt and ErrMalformed under errors.Is.
var (
	// ErrCorrupt means the entry's checksum does not match its bytes: this
	// node's copy of the entry was damaged on disk or in memory, and other
	// voters most likely hold the intact entry. Applying or skipping it
	// would make this node diverge, so the node must stop (cleanly, with an
	// error naming the index) and be rebuilt from its peers.
	ErrCorrupt = errors.New("command: entry checksum mismatch (this node's copy of the entry is damaged)")
	// ErrMalformed means the entry is intact (its checksum matches, or it
	// is a legacy entry without one) but cannot be decoded: an unknown
	// type, an empty entry, or a payload that is not valid protobuf. Every
	// voter holds the same bytes and reaches the same verdict, so the FSM
	// can skip the entry deterministically (and count and report it).
	ErrMalformed = errors.New("command: malformed entry")

	// ErrEmpty is returned for an entry with no type byte. It also matches
	// ErrMalformed.
	ErrEmpty = errors.New("command: empty entry")
	// ErrUnknownType is returned for a type byte this version does not
	// know (by Decode, together with ErrMalformed) and by TypeOf and Encode
	// for a message that is not a command.
	ErrUnknownType = errors.New("command: unknown type")
)

func (t Type) String() string {
	switch t {
	case SubmitJob:
		return "submit_job"
	case AssignJob:
		return "assign_job"
	case CancelJob:
		return "cancel_job"
	case Ingest:
		return "ingest"
	case NodeUp:
		return "node_up"
	case NodeDown:
		return "node_down"
	case EndJob:
		return "end_job"
	case QueueTimeout:
		return "queue_timeout"
	case AlertsDelivered:
		return "alerts_delivered"
	case Drain:
		return "drain"
	case AssignGang:
		return "assign_gang"
	}
	return fmt.Sprintf("type(%d)", byte(t))
}

// TypeOf returns the command type of a payload message.
func TypeOf(m proto.Message) (Type, error) {
	switch m.(type) {
	case *gantrypb.SubmitJobCmd:
		return SubmitJob, nil
	case *gantrypb.AssignJobCmd:
		return AssignJob, nil
	case *gantrypb.CancelJobCmd:
		return CancelJob, nil
	case *gantrypb.IngestCmd:
		return Ingest, nil
	case *gantrypb.NodeUpCmd:
		return NodeUp, nil
	case *gantrypb.NodeDownCmd:
		return NodeDown, nil
	case *gantrypb.EndJobCmd:
		return EndJob, nil
	case *gantrypb.QueueTimeoutCmd:
		return QueueTimeout, nil
	case *gantrypb.AlertsDeliveredCmd:
		return AlertsDelivered, nil
	case *gantrypb.DrainCmd:
		return Drain, nil
	case *gantrypb.AssignGangCmd:
		return AssignGang, nil
	}
	return 0, fmt.Errorf("%w: %T", ErrUnknownType, m)
}

// Encode returns the checksummed Raft entry for a command message.
func Encode(m proto.Message) ([]byte, error) {
	t, err := TypeOf(m)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 1, 1+proto.Size(m)+trailerLen)
	buf[0] = byte(t) | checksumFlag
	buf, err = proto.MarshalOptions{}.MarshalAppend(buf, m)
	if err != nil {
		return nil, fmt.Errorf("command: encode %s: %w", t, err)
	}
	return binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf, castagnoli)), nil
}

// Verify checks an entry's framing and checksum without decoding the
// payload: it returns an error matching ErrCorrupt when the checksum does
// not match, ErrEmpty (and ErrMalformed) for an empty entry, and nil
// otherwise, legacy entries included. It is the cheap check the start-up
// scan of the Raft log runs over every entry.
func Verify(b []byte) error {
	_, _, err := split(b)
	return err
}

// split checks the framing and checksum and returns the type and payload.
func split(b []byte) (Type, []byte, error) {
	if len(b) == 0 {
		return 0, nil, fmt.Errorf("%w: %w", ErrMalformed, ErrEmpty)
	}
	if b[0]&checksumFlag != 0 {
		if len(b) < 1+trailerLen {
			// A flagged entry too short for its trailer: Encode never
			// writes one, so the bytes were damaged (a truncated entry).
			return 0, nil, fmt.Errorf("%w: %d-byte entry is shorter than its checksum", ErrCorrupt, len(b))
		}
		body := b[:len(b)-trailerLen]
		want := binary.BigEndian.Uint32(b[len(b)-trailerLen:])
		if got := crc32.Checksum(body, castagnoli); got != want {
			return 0, nil, fmt.Errorf("%w: crc32c %08x, stored %08x", ErrCorrupt, got, want)
		}
		return Type(b[0] &^ checksumFlag), body[1:], nil
	}
	// A legacy entry, or a checksummed one whose first byte was damaged so
	// that its flag bit reads 0. The latter would otherwise decode as a
	// malformed legacy entry and be skipped on this node only; catch it by
	// checking whether the last four bytes are the checksum the entry would
	// carry under any known type. A genuine legacy entry matches by chance
	// with probability about 7 in 2^32.
	if len(b) >= 1+trailerLen {
		want := binary.BigEndian.Uint32(b[len(b)-trailerLen:])
		payloadCRC := b[1 : len(b)-trailerLen]
		for t := SubmitJob; t <= EndJob; t++ {
			c := crc32.Update(crc32.Checksum([]byte{byte(t) | checksumFlag}, castagnoli), castagnoli, payloadCRC)
			if c == want {
				return 0, nil, fmt.Errorf("%w: first byte %#x damaged (checksum matches type %s)", ErrCorrupt, b[0], t)
			}
		}
	}
	return Type(b[0]), b[1:], nil
}

// Decode parses a Raft entry written by Encode (or by a controller from
// before checksums). Every error matches either ErrCorrupt or ErrMalformed
// (see those for what the caller must do). Decode never panics, whatever
// the bytes.
func Decode(b []byte) (proto.Message, error) {
	t, payload, err := split(b)
	if err != nil {
		return nil, err
	}
	var m proto.Message
	switch t {
	case SubmitJob:
		m = &gantrypb.SubmitJobCmd{}
	case AssignJob:
		m = &gantrypb.AssignJobCmd{}
	case CancelJob:
		m = &gantrypb.CancelJobCmd{}
	case Ingest:
		m = &gantrypb.IngestCmd{}
	case NodeUp:
		m = &gantrypb.NodeUpCmd{}
	case NodeDown:
		m = &gantrypb.NodeDownCmd{}
	case EndJob:
		m = &gantrypb.EndJobCmd{}
	case QueueTimeout:
		m = &gantrypb.QueueTimeoutCmd{}
	case AlertsDelivered:
		m = &gantrypb.AlertsDeliveredCmd{}
	case Drain:
		m = &gantrypb.DrainCmd{}
	case AssignGang:
		m = &gantrypb.AssignGangCmd{}
	default:
		return nil, fmt.Errorf("%w: %w: %d", ErrMalformed, ErrUnknownType, byte(t))
	}
	if err := proto.Unmarshal(payload, m); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformed, t, err)
	}
	return m, nil
}
