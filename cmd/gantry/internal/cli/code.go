package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
	"github.com/gantry-ml/gantry/internal/codearchive"
)

// codeNone is the `code:` value that ships nothing.
const codeNone = "none"

// codeDir decides which local directory a spec file ships: its `code:`
// (relative to the spec file), else the spec file's own directory, unless
// the spec runs in an absolute workdir on the host, where the code lives
// already. "" ships nothing.
func codeDir(specPath string, f specFile) string {
	base := filepath.Dir(specPath)
	switch {
	case f.Code != nil && *f.Code == codeNone:
		return ""
	case f.Code != nil && filepath.IsAbs(*f.Code):
		return *f.Code
	case f.Code != nil:
		return filepath.Join(base, *f.Code)
	case filepath.IsAbs(f.Workdir):
		return ""
	default:
		return base
	}
}

// checkCodeDir refuses to ship, by default, a directory that is plainly
// not a project: the home directory (its keys and credentials would
// travel to every GPU host) or the file system root. A `code:` the user
// wrote is taken as asked.
func checkCodeDir(dir string, explicit bool, home string) error {
	if explicit {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	if h, err := filepath.EvalSymlinks(home); err == nil && home != "" {
		home = h
	}
	if abs == "/" || (home != "" && abs == filepath.Clean(home)) {
		return fmt.Errorf("the spec is in %s, which gantry run would ship whole to the GPU host (keys and all): "+
			"put the spec in the project's directory, or say what to ship with `code: DIR` (or `code: none`)", abs)
	}
	return nil
}

// shipCode packs dir, uploads it, and returns its digest. Progress goes
// to stderr, so that `run -d` prints only the job id on stdout.
func (a *app) shipCode(ctx context.Context, c *client.Client, dir string) (string, error) {
	tmp, err := os.CreateTemp("", "gantry-code-*.tar.gz")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	st, err := codearchive.Pack(dir, io.MultiWriter(tmp, h), 0)
	if err != nil {
		return "", &exitError{code: exitUsage, err: fmt.Errorf("pack code from %s: %w", dir, err)}
	}
	digest := apiv1.DigestPrefix + hex.EncodeToString(h.Sum(nil))
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return "", err
	}
	shown := dir
	if abs, err := filepath.Abs(dir); err == nil {
		shown = abs // "." says nothing in a scrollback
	}
	fmt.Fprintf(a.env.Stderr, "uploading code from %s: %d files, %s (%s compressed)\n",
		termSafe(shown), st.Files, codearchive.HumanBytes(st.Bytes), codearchive.HumanBytes(size))
	_, err = c.PutBlob(ctx, digest, tmp)
	var apiErr *client.APIError
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusRequestEntityTooLarge {
		msg := apiErr.Message
		if len(st.Largest) > 0 {
			msg += "\nlargest files: " + st.Describe()
		}
		return "", &exitError{code: exitUsage, err: errors.New(msg)}
	}
	if errors.As(err, &apiErr) && (apiErr.Status == http.StatusNotFound || apiErr.Status == http.StatusMethodNotAllowed ||
		apiErr.Status == http.StatusNotImplemented) {
		// An older controller has no /v1/blobs: not a missing job.
		return "", &exitError{code: exitFailure, err: fmt.Errorf(
			"this controller does not take code archives (%s); upgrade it, or put `code: none` in the spec to run code already on the host", apiErr.Message)}
	}
	if err != nil {
		return "", err
	}
	return digest, nil
}
