package fsm

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/admission"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// errMalformed marks a command that decoded but cannot be applied as it
// stands (a missing part, an id bbolt could not take as a key).
var errMalformed = errors.New("malformed command")

// checkCommand rejects a command whose ids or parts the handlers could not
// store. The leader never proposes such a command; this is the voter's own
// line of defence against one that was committed anyway.
func checkCommand(msg proto.Message) error {
	bad := func(err error) error { return fmt.Errorf("%w: %T: %v", errMalformed, msg, err) }
	switch m := msg.(type) {
	case *gantrypb.SubmitJobCmd:
		if err := admission.CheckJobID(m.JobId); err != nil {
			return bad(err)
		}
	case *gantrypb.AssignJobCmd:
		if err := admission.CheckID("job id", m.JobId); err != nil {
			return bad(err)
		}
		if err := admission.CheckID("node id", m.NodeId); err != nil {
			return bad(err)
		}
		if len(m.Gpus) > limits.MaxGPUsPerNode {
			return bad(fmt.Errorf("%d GPUs", len(m.Gpus)))
		}
	case *gantrypb.AssignGangCmd:
		// The ranks are checked against the job's spec in assignGang,
		// all before anything changes; here only what keys are made of.
		if err := admission.CheckID("job id", m.JobId); err != nil {
			return bad(err)
		}
		if len(m.Ranks) > maxGangRanks {
			return bad(fmt.Errorf("%d ranks", len(m.Ranks)))
		}
	case *gantrypb.CancelJobCmd:
		if err := admission.CheckID("job id", m.JobId); err != nil {
			return bad(err)
		}
	case *gantrypb.EndJobCmd:
		if err := admission.CheckID("job id", m.JobId); err != nil {
			return bad(err)
		}
	case *gantrypb.QueueTimeoutCmd:
		if err := admission.CheckID("job id", m.JobId); err != nil {
			return bad(err)
		}
		if len(m.Error) > limits.MaxEventMessageBytes {
			return bad(fmt.Errorf("error of %d bytes", len(m.Error)))
		}
	case *gantrypb.IngestCmd:
		// Records are checked one by one in ingest, so that one bad record
		// does not take the good ones of its batch down with it.
		if err := admission.CheckID("node id", m.NodeId); err != nil {
			return bad(err)
		}
		// The key table serves every point of the entry: a bad one makes
		// the whole entry unappliable.
		if err := admission.CheckKeyTable(m.Keys); err != nil {
			return bad(err)
		}
	case *gantrypb.NodeUpCmd:
		if m.Node == nil {
			return bad(errors.New("no node"))
		}
		hello := &gantrypb.Hello{NodeId: m.Node.Id, Hostname: m.Node.Hostname, Gpus: m.Node.Gpus,
			Version: m.Node.Version, ActiveJobs: m.ActiveJobs}
		if err := admission.CheckHello(hello); err != nil {
			return bad(err)
		}
	case *gantrypb.NodeDownCmd:
		if err := admission.CheckID("node id", m.NodeId); err != nil {
			return bad(err)
		}
	case *gantrypb.DrainCmd:
		if err := admission.CheckID("node id", m.NodeId); err != nil {
			return bad(err)
		}
		if len(m.Gpus) > limits.MaxGPUsPerNode {
			return bad(fmt.Errorf("%d GPUs", len(m.Gpus)))
		}
		for _, g := range m.Gpus {
			if g >= limits.MaxGPUsPerNode {
				return bad(fmt.Errorf("GPU %d", g))
			}
		}
	}
	return nil
}
