package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/gantry-ml/gantry/agent/link"
	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/internal/codearchive"
	"github.com/gantry-ml/gantry/lifecycle"
)

// CodeDirName is the directory of a job's directory its code archive is
// unpacked into; it is the job's working directory unless the spec names
// an absolute one.
const CodeDirName = "code"

// codeFetchTimeout bounds how long a job waits for its archive across
// link outages before it fails.
const codeFetchTimeout = 10 * time.Minute

// blobFetcher is what fetching needs of the link.
type blobFetcher interface {
	FetchBlob(ctx context.Context, jobID, digest string, w io.Writer) (int64, error)
}

// fetchCode downloads the job's code archive next to its directory
// (in the agent's own jobs directory, which job users cannot write),
// checks its digest, and unpacks it into dir/code as the job's user.
// It returns the code directory and a summary for the job's events.
func (j *job) fetchCode(ctx context.Context, fetch blobFetcher, dir, digest string) (string, string, error) {
	if !apiv1.IsDigest(digest) {
		return "", "", fmt.Errorf("code archive %q is not a digest", digest)
	}
	tmpPath := dir + ".code.tar.gz"
	defer os.Remove(tmpPath) // unpacked or failed, the download is not kept
	ctx, cancel := context.WithTimeout(ctx, codeFetchTimeout)
	defer cancel()
	backoff := 200 * time.Millisecond
	for {
		err := download(ctx, fetch, j.id, digest, tmpPath)
		if err == nil {
			break
		}
		var refused *link.RefusedError
		if errors.As(err, &refused) || ctx.Err() != nil {
			return "", "", err
		}
		if j.isCancelled() {
			return "", "", errors.New("cancelled while its code archive was downloading")
		}
		j.a.log.Info("code archive download failed; retrying", "job", j.id, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return "", "", fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}

	// The job's directory belongs to the job's user; everything below is
	// opened through a root on it, so nothing there can redirect the
	// agent's writes elsewhere.
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", "", err
	}
	defer root.Close()
	if err := root.Mkdir(CodeDirName, 0o755); err != nil {
		return "", "", fmt.Errorf("make code directory: %w", err)
	}
	code, err := root.OpenRoot(CodeDirName)
	if err != nil {
		return "", "", err
	}
	defer code.Close()
	owner := codearchive.Owner{Uid: -1}
	if u := j.a.jobUser; u != nil && os.Geteuid() == 0 {
		owner = codearchive.Owner{Uid: int(u.UID), Gid: int(u.GID)}
		// The job's user may have put a directory of its own in place of
		// the one just made: unpack only into the agent's.
		fi, err := code.Stat(".")
		if err != nil {
			return "", "", err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != 0 {
			return "", "", errors.New("the code directory was replaced while it was being made")
		}
	}
	f, err := os.Open(tmpPath)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	u, err := codearchive.UnpackIn(f, code, codearchive.DefaultLimits, owner)
	// The code directory stays the agent's until everything in it is
	// made and handed over (see UnpackIn); it is chowned through its own
	// handle, whatever its name in the job's directory now points to.
	if owner.Uid >= 0 {
		if cerr := code.Lchown(".", owner.Uid, owner.Gid); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return "", "", err
	}
	summary := fmt.Sprintf("code archive %s unpacked: %d files (%s), %d directories, %d symlinks",
		shortDigest(digest), u.Files, codearchive.HumanBytes(u.Bytes), u.Dirs, u.Symlinks)
	if u.Skipped > 0 {
		summary += fmt.Sprintf("; %d entries of other kinds (hard links, devices) left out", u.Skipped)
	}
	return dir + "/" + CodeDirName, summary, nil
}

// download writes the archive to path and checks it hashes to digest.
func download(ctx context.Context, fetch blobFetcher, jobID, digest, path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := fetch.FetchBlob(ctx, jobID, digest, io.MultiWriter(f, h)); err != nil {
		return err
	}
	if got := apiv1.DigestPrefix + hex.EncodeToString(h.Sum(nil)); got != digest {
		// A controller serving other bytes is not one to retry.
		return &link.RefusedError{Reason: fmt.Sprintf("archive received hashes to %s, not %s", got, digest)}
	}
	return nil
}

// shortDigest is "sha256:" and 12 hex digits, for messages.
func shortDigest(d string) string {
	if len(d) > len(apiv1.DigestPrefix)+12 {
		return d[:len(apiv1.DigestPrefix)+12]
	}
	return d
}

func (j *job) isCancelled() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.cancelled
}

// codeEvent is the record that tells the user what the archive held.
func (j *job) codeEvent(summary string) {
	j.append(j.event(lifecycle.EventCodeUnpacked, summary, 0))
}

// workdirWithCode is the job's working directory when code was unpacked
// into codeDir: the code directory itself, a relative workdir inside it,
// or an absolute workdir as given (the code is then at $GANTRY_CODE_DIR).
func workdirWithCode(codeDir, workdir string) string {
	switch {
	case workdir == "":
		return codeDir
	case strings.HasPrefix(workdir, "/"):
		return workdir
	default:
		return codeDir + "/" + workdir
	}
}
