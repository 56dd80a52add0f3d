// Package command encodes the entries Gantry writes to the Raft log: one
// type byte followed by a protobuf payload. Types are only ever appended, so
// a log written by an older controller still decodes.
package command

import (
	"errors"
	"fmt"

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
)

var (
	// ErrEmpty is returned for an entry with no type byte.
	ErrEmpty = errors.New("command: empty entry")
	// ErrUnknownType is returned for a type byte this version does not know.
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
	}
	return 0, fmt.Errorf("%w: %T", ErrUnknownType, m)
}

// Encode returns the Raft entry for a command message.
func Encode(m proto.Message) ([]byte, error) {
	t, err := TypeOf(m)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 1, 1+proto.Size(m))
	buf[0] = byte(t)
	buf, err = proto.MarshalOptions{}.MarshalAppend(buf, m)
	if err != nil {
		return nil, fmt.Errorf("command: encode %s: %w", t, err)
	}
	return buf, nil
}

// Decode parses a Raft entry written by Encode.
func Decode(b []byte) (proto.Message, error) {
	if len(b) == 0 {
		return nil, ErrEmpty
	}
	var m proto.Message
	switch Type(b[0]) {
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
	default:
		return nil, fmt.Errorf("%w: %d", ErrUnknownType, b[0])
	}
	if err := proto.Unmarshal(b[1:], m); err != nil {
		return nil, fmt.Errorf("command: decode %s: %w", Type(b[0]), err)
	}
	return m, nil
}
