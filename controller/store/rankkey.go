package store

import (
	"strconv"

	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// RankKey is the key under which rank k (k > 0) of a multi-node job keeps
// its logs and events: the job id and "/rank/k". Job ids never hold "/"
// (admission.CheckID), so no job's key is ever another's rank key. Rank
// 0's are the job's own.
func RankKey(jobID string, rank uint32) string {
	if rank == 0 {
		return jobID
	}
	return jobID + "/rank/" + strconv.FormatUint(uint64(rank), 10)
}

// JobRankKey is the key of rank k of the job's current attempt: the job
// id for rank 0, whose points, events and log are the job's across
// attempts, and RankKey of the attempt's run id (lifecycle.RunID) for
// k > 0, so each attempt's other ranks start their streams anew.
func JobRankKey(job *gantrypb.Job, rank uint32) string {
	if rank == 0 {
		return job.GetId()
	}
	return RankKey(lifecycle.JobRunID(job), rank)
}
