package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gantry-ml/gantry/controller/blobpeers"
	"github.com/gantry-ml/gantry/controller/blobstore"
	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/ingest"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// DefaultMaxCodeArchive is the largest code archive a cluster takes
// unless configured otherwise: code, not data or checkpoints.
const DefaultMaxCodeArchive = 64 << 20

// Blob garbage collection: every blobGCEvery, archives no live job names
// and untouched for blobGrace go. The grace covers an upload whose job is
// not submitted yet and a job that ended a moment ago.
const (
	blobGCEvery = 10 * time.Minute
	blobGrace   = time.Hour
)

// openBlobs opens this controller's archive store and its way to peers.
func (s *Server) openBlobs(dir string, max int64, scheme string) (*blobpeers.Peers, error) {
	st, err := blobstore.Open(dir, max)
	if err != nil {
		return nil, err
	}
	// Archives share the Raft log's disk: they must not take the space
	// the disk guard keeps for it.
	if minFree := s.cfg.Disk.MinFree; minFree >= 0 {
		st.SetMinFree(uint64(cmp.Or(minFree, cluster.DefaultMinFreeDisk)))
	}
	return &blobpeers.Peers{
		Store: st, Self: s.cfg.NodeID, Addrs: s.peerHTTPAddrs, Scheme: scheme, Token: s.cfg.Token,
		Voters: func() ([]string, error) {
			servers, err := s.raft.Servers()
			if err != nil {
				return nil, err
			}
			var ids []string
			for _, sv := range servers {
				if sv.Suffrage == raft.Voter {
					ids = append(ids, string(sv.ID))
				}
			}
			if len(ids) == 0 {
				// Not in a configuration yet (joining, or waiting for
				// -bootstrap-expect): no majority is known, so nothing
				// may be acknowledged as safe. (A lone controller is
				// bootstrapped with itself as its one voter.)
				return nil, errors.New("this controller is not a member of a Raft configuration yet")
			}
			return ids, nil
		},
	}, nil
}

// blobSource serves archives to agents: only the archive of a job that
// is assigned to the asking node and not ended, so a leaked agent key
// reads no other node's code.
type blobSource struct {
	st    *store.Store
	blobs *blobpeers.Peers
}

func (b blobSource) OpenBlob(ctx context.Context, node, runID, digest string) (io.ReadCloser, int64, error) {
	// The agent asks by run id: only the job's current attempt may fetch.
	jobID, attempt, ok := lifecycle.ParseRunID(runID)
	if !ok {
		return nil, 0, fmt.Errorf("no live job %q of this node", runID)
	}
	var job *gantrypb.Job
	err := b.st.View(func(tx *store.Tx) error {
		var err error
		job, err = tx.Job(jobID)
		return err
	})
	if errors.Is(err, store.ErrNotFound) || (err == nil && (job.Attempt != attempt || !lifecycle.RunsOn(job, node) || lifecycle.IsTerminal(job.State))) {
		return nil, 0, fmt.Errorf("no live job %q of this node", jobID)
	}
	if err != nil {
		return nil, 0, err
	}
	if job.GetSpec().GetCodeArchive() != digest {
		return nil, 0, fmt.Errorf("job %s does not use code archive %s", jobID, digest)
	}
	f, size, err := b.blobs.OpenLocal(ctx, digest)
	if err != nil && !errors.Is(err, blobstore.ErrNotFound) {
		err = fmt.Errorf("%w: %w", ingest.ErrBlobUnavailable, err)
	}
	if err != nil {
		return nil, 0, err
	}
	return f, size, nil
}

// blobGCLoop removes archives no live job needs, on every controller.
func (s *Server) blobGCLoop(ctx context.Context) {
	t := time.NewTicker(blobGCEvery)
	defer t.Stop()
	for {
		s.collectBlobs()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// collectBlobs is one GC pass: the archives of jobs not yet ended are
// read in one short transaction, then files go with none held.
func (s *Server) collectBlobs() {
	if err := s.caughtUp(); err != nil {
		// A store still replaying its log may lack jobs committed while
		// this controller was down, and so their archives' references.
		s.cfg.Log.Debug("code archive gc skipped until caught up", "why", err)
		return
	}
	keep := map[string]bool{}
	err := s.store.View(func(tx *store.Tx) error {
		return tx.JobsWhere(func(state gantrypb.JobState, _ int64) bool { return !lifecycle.IsTerminal(state) },
			func(j *gantrypb.Job) bool {
				if d := j.GetSpec().GetCodeArchive(); d != "" {
					keep[d] = true
				}
				return true
			})
	})
	if err != nil {
		s.cfg.Log.Warn("code archive gc: reading jobs failed", "err", err)
		return
	}
	removed, err := s.blobs.GC(keep, time.Now().Add(-blobGrace))
	for _, b := range removed {
		s.cfg.Log.Info("code archive removed: no live job uses it", "digest", b.Digest, "bytes", b.Size)
	}
	if err != nil {
		s.cfg.Log.Warn("code archive gc", "err", err)
	}
}
