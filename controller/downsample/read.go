package downsample

import (
	"context"

	"github.com/gantry-ml/gantry/controller/store"
)

// ChunksPerRead is how many stored chunks one read transaction walks, so
// every transaction stays short however long the run (invariant I1).
const ChunksPerRead = 512

// Viewer runs short read transactions on the store.
type Viewer interface {
	View(fn func(*store.Tx) error) error
}

// Read folds the stored points of job, seqs 1..lastSeq, into at most
// maxBuckets buckets per key (every key when keys is empty). A chunk whose
// seqs lie within one bucket is folded from its header's summaries; only
// chunks across a bucket edge are decoded, so a long run costs about one
// header per chunk plus one decoded chunk per bucket.
func Read(ctx context.Context, st Viewer, job string, lastSeq uint64, maxBuckets int, keys []string) (*Series, error) {
	series := New(lastSeq, maxBuckets, keys)
	for after := uint64(0); after < lastSeq; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		read := 0
		err := st.View(func(tx *store.Tx) error {
			return tx.PointChunks(job, after, ChunksPerRead, func(pc store.PointChunk) error {
				read++
				// A chunk that grew since an earlier read took part of it
				// is decoded, and only its new points are added.
				var err error
				if pc.FirstSeq() > after && series.Fits(pc.FirstSeq(), pc.LastSeq()) {
					series.AddPoints(pc.Len())
					err = pc.EachSummary(series.Wants, func(c *store.ColumnSummary) {
						series.AddSummary(c.Name, c.FirstSeq, c.LastSeq, c.Count, c.LastStep, c.LastHasStep, c.LastTs, c.Min, c.Max, c.Last)
					})
				} else {
					err = pc.EachValue(after, series.Wants, series.AddPoint, series.AddValue)
				}
				after = pc.LastSeq()
				return err
			})
		})
		if err != nil {
			return nil, err
		}
		if read == 0 {
			break
		}
	}
	return series, nil
}
