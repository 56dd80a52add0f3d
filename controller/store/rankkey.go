package store

import "strconv"

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
