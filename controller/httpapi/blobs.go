package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/blobpeers"
	"github.com/gantry-ml/gantry/controller/blobstore"
	"github.com/gantry-ml/gantry/internal/codearchive"
)

// Blobs is the code-archive store the API needs: this controller's copy
// and the way to its peers' (blobpeers.Peers).
type Blobs interface {
	Put(digest string, r io.Reader) (int64, error)
	Open(digest string) (*os.File, int64, error)
	Has(digest string) (int64, bool)
	// Touch restarts a blob's grace period in garbage collection.
	Touch(digest string)
	MaxBytes() int64
	// Replicate makes a majority of the voters hold a stored blob.
	Replicate(ctx context.Context, digest, auth string) (have, need int, err error)
	// Ensure makes a blob available here, pulling it from a peer.
	Ensure(ctx context.Context, digest string) error
}

// blobTimeout bounds one upload's replication and one submit's pull.
const blobTimeout = 2 * time.Minute

// putBlob serves PUT /v1/blobs/{digest}: a code archive, stored here and
// on a majority of the voters before it answers 201.
func (a *API) putBlob(w http.ResponseWriter, r *http.Request) {
	b := a.opts.Blobs
	if b == nil {
		writeError(w, http.StatusNotImplemented, errors.New("this controller does not store code archives"))
		return
	}
	digest := r.PathValue("digest")
	if !apiv1.IsDigest(digest) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("%q is not a digest; want \"sha256:\" and 64 lowercase hex digits", digest))
		return
	}
	// A cross-site form cannot send this type (see jsonBody).
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil ||
		(mt != blobpeers.ContentType && mt != "application/octet-stream") {
		writeError(w, http.StatusUnsupportedMediaType, fmt.Errorf("PUT %s needs Content-Type: %s", r.URL.Path, blobpeers.ContentType))
		return
	}
	tooLarge := func(size string) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf(
			"code archive is %s; this cluster takes at most %s (controller flag -max-code-archive): "+
				"list what the job does not need (data, checkpoints, virtualenvs) in .gantryignore", size, codearchive.HumanBytes(b.MaxBytes())))
	}
	if r.ContentLength > b.MaxBytes() {
		tooLarge(codearchive.HumanBytes(r.ContentLength))
		return
	}
	// The server's timeouts are sized for a JSON body: an archive may take
	// minutes on a slow uplink. It is cut once it stalls for ReadTimeout,
	// and the answer gets the time replication takes.
	lim := a.opts.Limits.withDefaults()
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(lim.ReadTimeout)) // unsupported: the server's own deadline stays
	_ = rc.SetWriteDeadline(time.Time{})
	body := &stallDeadline{r: http.MaxBytesReader(w, r.Body, b.MaxBytes()+1), rc: rc, idle: lim.ReadTimeout}
	size, err := b.Put(digest, body)
	_ = rc.SetWriteDeadline(time.Now().Add(blobTimeout + lim.WriteTimeout))
	var mbe *http.MaxBytesError
	switch {
	case errors.Is(err, blobstore.ErrTooLarge) || errors.As(err, &mbe):
		tooLarge("larger than that")
		return
	case errors.Is(err, blobstore.ErrDigestMismatch):
		writeError(w, http.StatusBadRequest, fmt.Errorf("code archive: %w", err))
		return
	case errors.Is(err, syscall.ENOSPC):
		writeError(w, http.StatusInsufficientStorage, fmt.Errorf("code archive: %w", err))
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, fmt.Errorf("code archive: %w", err))
		return
	}
	if r.Header.Get(blobpeers.HeaderReplica) != "" {
		// A peer's push: replicating it is the sender's business.
		writeJSON(w, http.StatusCreated, apiv1.Blob{Digest: digest, Size: size, Replicas: 1})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), blobTimeout)
	defer cancel()
	have, need, err := b.Replicate(ctx, digest, r.Header.Get("Authorization"))
	if have < need {
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf(
			"code archive stored on %d of the controllers, and %d must hold it to survive a failover: %v", have, need, err))
		return
	}
	if err != nil {
		a.opts.Log.Warn("code archive not on every controller", "digest", digest, "have", have, "err", err)
	}
	writeJSON(w, http.StatusCreated, apiv1.Blob{Digest: digest, Size: size, Replicas: have})
}

// stallDeadline moves the connection's read deadline idle past every
// read that brings bytes, so that only a stalled upload times out.
type stallDeadline struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
}

func (s *stallDeadline) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		_ = s.rc.SetReadDeadline(time.Now().Add(s.idle))
	}
	return n, err
}

// getBlob serves GET and HEAD /v1/blobs/{digest} from this controller's
// copy only: peers pull from each other with it, and a miss must not
// fan out.
func (a *API) getBlob(w http.ResponseWriter, r *http.Request) {
	if a.opts.Blobs == nil {
		writeError(w, http.StatusNotImplemented, errors.New("this controller does not store code archives"))
		return
	}
	digest := r.PathValue("digest")
	if !apiv1.IsDigest(digest) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("%q is not a digest", digest))
		return
	}
	f, size, err := a.opts.Blobs.Open(digest)
	if errors.Is(err, blobstore.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Errorf("code archive %s is not stored on this controller", digest))
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	defer f.Close()
	if r.Header.Get(blobpeers.HeaderReplica) != "" {
		// A peer making sure this copy exists (a re-upload, or a pull)
		// wants it kept: its age here must not make GC drop it between
		// the upload's answer and the submit.
		a.opts.Blobs.Touch(digest)
	}
	w.Header().Set("Content-Type", blobpeers.ContentType)
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	// Immutable: the name is the content's hash.
	w.Header().Set("Cache-Control", "private, max-age=31536000, immutable")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(w, f); err != nil {
		a.opts.Log.Debug("code archive download cut", "digest", digest, "err", err)
	}
}

// checkCodeArchive makes sure the leader holds a submitted job's archive,
// pulling it from a peer if the upload landed elsewhere; the agent that
// runs the job fetches it from the leader.
func (a *API) checkCodeArchive(ctx context.Context, digest string) (int, error) {
	if digest == "" {
		return 0, nil
	}
	if a.opts.Blobs == nil {
		return http.StatusBadRequest, errors.New("spec.code_archive: this cluster does not take code archives")
	}
	ctx, cancel := context.WithTimeout(ctx, blobTimeout)
	defer cancel()
	if err := a.opts.Blobs.Ensure(ctx, digest); err != nil {
		if errors.Is(err, blobstore.ErrNotFound) {
			return http.StatusBadRequest, fmt.Errorf("spec.code_archive %s was not uploaded (PUT /v1/blobs/%s first): %w", digest, digest, err)
		}
		return http.StatusServiceUnavailable, fmt.Errorf("spec.code_archive: %w", err)
	}
	return 0, nil
}
