package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/internal/ctxwait"
)

// PutBlob uploads a code archive (a gzip-compressed tar) under its
// digest. The controller answers once a majority of the controllers hold
// it; while too few are reachable it answers 503, and the upload is sent
// again for up to a minute.
func (c *Client) PutBlob(ctx context.Context, digest string, f *os.File) (apiv1.Blob, error) {
	var out apiv1.Blob
	if c.setupErr != nil {
		return out, c.setupErr
	}
	fi, err := f.Stat()
	if err != nil {
		return out, err
	}
	endpoint := c.endpoint(nil, "v1", "blobs", digest)
	start := time.Now()
	for {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return out, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, endpoint, io.NopCloser(f))
		if err != nil {
			return out, fmt.Errorf("upload code archive: %w", err)
		}
		req.ContentLength = fi.Size()
		req.Header.Set("Content-Type", "application/gzip")
		req.Header.Set("Accept", "application/json")
		c.authorize(req.Header)
		resp, err := c.http.Do(req)
		if err != nil {
			return out, err
		}
		wait, retry := retryAfter(resp)
		if retry && time.Since(start) < unavailableRetryFor {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err := ctxwait.Sleep(ctx, wait); err != nil {
				return out, err
			}
			continue
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
			return out, fmt.Errorf("upload code archive: %w", readAPIError(resp))
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
			return out, fmt.Errorf("upload code archive: invalid answer: %w", err)
		}
		return out, nil
	}
}

// ValidateSpec asks whether a submit of spec would be taken, without
// storing anything: a 400 (an *APIError) says why not. An older
// controller without the endpoint answers 404 or 405.
func (c *Client) ValidateSpec(ctx context.Context, spec apiv1.JobSpec) error {
	var v apiv1.Validation
	if err := c.do(ctx, http.MethodPost, c.endpoint(nil, "v1", "jobs", "validate"), spec, &v); err != nil {
		return err
	}
	if !v.OK {
		return errors.New("controller did not accept the spec")
	}
	return nil
}
