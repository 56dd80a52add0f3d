package ingest

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/controller/admission"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// Owners tells the leader which node each job is assigned to, so that it
// proposes only records an agent may send: those of its own jobs.
type Owners interface {
	// JobNodes maps each id to the nodes its job is assigned to (one, or
	// one per rank of a multi-node job); ids of jobs that do not exist,
	// or are not assigned yet, are absent.
	JobNodes(ids []string) (map[string][]string, error)
}

// Why records were refused, as the reason label of the rejection counter.
const (
	reasonLimit      = "limit"
	reasonForeignJob = "foreign_job"
	reasonUnknownJob = "unknown_job"
	// reasonRepaired counts started and exit records that broke a limit
	// and were repaired (clipped) rather than refused.
	reasonRepaired = "repaired"
)

// screened is the part of a batch the leader proposes, and what it refused.
type screened struct {
	records []*gantrypb.Record
	refused map[string]int // by reason
	first   error          // the first refusal, for the log
}

// screen checks a batch from node before it is proposed. A record of one
// of node's jobs that breaks a limit is replaced by a record_rejected
// event with the same seq: the job's stream stays dense, and its owner
// sees why. Records for jobs that are not node's (another node's, or none
// at all) are dropped: writing anything into such a job is what a forger
// wants. A job this leader does not know (yet) is left to the FSM, which
// checks ownership at the entry's place in the log: an assignment is never
// taken back, so "another node's" is final while "unknown" may not be.
// Records are never reordered.
//
// nkeys is the size of the batch's key table, which flat points index.
func screen(node string, recs []*gantrypb.Record, nkeys int, owners map[string][]string) screened {
	out := screened{records: make([]*gantrypb.Record, 0, len(recs)), refused: map[string]int{}}
	refuse := func(reason string, err error) {
		out.refused[reason]++
		if out.first == nil {
			out.first = err
		}
	}
	for _, rec := range recs {
		if rec == nil {
			refuse(reasonLimit, fmt.Errorf("nil record"))
			continue
		}
		mine := false // a job this leader knows is assigned to node
		if rec.JobId != "" {
			owner, known := owners[rec.JobId]
			mine = known && slices.Contains(owner, node)
			switch {
			case !known:
				// This leader's state may lag its log (it has just been
				// elected, or applies slowly) and not show an assignment
				// that is committed already: the FSM decides, at the
				// record's place in the log.
			case !mine:
				refuse(reasonForeignJob, fmt.Errorf("record %d for job %s, which runs on %s", rec.Seq, rec.JobId, owner))
				continue
			}
		}
		err := admission.CheckRecordIn(rec, nkeys)
		if err != nil && rec.JobId != "" && admission.Repair(rec) {
			// A started or exit record is repaired, never refused: the
			// job's lifecycle hangs on it.
			if err = admission.CheckRecordIn(rec, nkeys); err == nil {
				out.refused[reasonRepaired]++
			}
		}
		if err != nil {
			refuse(reasonLimit, fmt.Errorf("record %d of job %q: %w", rec.Seq, rec.JobId, err))
			if !mine || rec.Seq == 0 {
				// Nothing to report it on: a node record, or a job this
				// leader cannot vouch for (an event there would carry the
				// same bad id into the log).
				continue
			}
			msg := "the controller refused a record of this job: " + err.Error()
			if len(msg) > limits.MaxEventMessageBytes {
				msg = strings.ToValidUTF8(msg[:limits.MaxEventMessageBytes], "")
			}
			rec = &gantrypb.Record{JobId: rec.JobId, Seq: rec.Seq, Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{
				Ts: float64(time.Now().UnixMilli()) / 1000, Kind: string(lifecycle.EventRecordRejected), Count: 1, Message: msg,
			}}}
		}
		out.records = append(out.records, rec)
	}
	return out
}

// jobIDs lists the distinct, well-formed job ids of a batch.
func jobIDs(recs []*gantrypb.Record) []string {
	seen := map[string]bool{}
	var out []string
	for _, rec := range recs {
		if rec == nil || rec.JobId == "" || seen[rec.JobId] || admission.CheckRunID("job id", rec.JobId) != nil {
			continue
		}
		seen[rec.JobId] = true
		out = append(out, rec.JobId)
	}
	return out
}
