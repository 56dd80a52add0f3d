// Package blobpeers keeps code archives on a majority of the controllers,
// beside the Raft log rather than in it. An upload is stored where it
// arrives and pushed to the other voters; it is acknowledged only once a
// majority holds it, so any leader elected later can reach a copy. A
// controller that needs a blob it lacks (a new leader serving an agent,
// a node that was down during the upload) pulls it from a peer. Every
// copy is checked against its digest where it is stored, so a peer can
// withhold a blob but never substitute one.
package blobpeers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/gantry-ml/gantry/controller/blobstore"
)

// HeaderReplica marks a blob request between controllers: a PUT carrying
// it is stored where it lands and pushed no further.
const HeaderReplica = "X-Gantry-Blob-Replica"

// ContentType is the media type of an archive on the wire.
const ContentType = "application/gzip"

// Peers is this controller's blob store and the way to its peers'.
type Peers struct {
	*blobstore.Store
	// Self is this controller's Raft server id.
	Self string
	// Voters returns the Raft voters' server ids (Self among them).
	Voters func() ([]string, error)
	// Addrs maps server ids to HTTP addresses.
	Addrs func() map[string]string
	// Scheme is "http" or "https"; Transport carries the requests (it
	// trusts the cluster's CA over HTTPS).
	Scheme    string
	Transport http.RoundTripper
	// Token is this controller's API token, sent on pulls it starts
	// itself (a user's upload is pushed with the user's own header, as a
	// forwarded write is).
	Token string
}

// Replicate makes sure a majority of the voters hold digest, which is
// stored here, pushing it to those that lack it. auth is the uploader's
// Authorization header. It returns how many voters hold the blob and
// how many must.
func (p *Peers) Replicate(ctx context.Context, digest, auth string) (have, need int, err error) {
	voters, err := p.Voters()
	if err != nil {
		// Without the configuration no majority is known: never 0 of 0.
		return 0, 1, err
	}
	need = len(voters)/2 + 1
	addrs := p.Addrs()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, id := range voters {
		if id == p.Self {
			mu.Lock()
			have++
			mu.Unlock()
			continue
		}
		addr, ok := addrs[id]
		if !ok {
			// Pushes started earlier report under mu meanwhile.
			mu.Lock()
			errs = append(errs, fmt.Errorf("%s: no HTTP address known", id))
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p.push(ctx, addr, digest, auth)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", id, err))
				return
			}
			have++
		}()
	}
	wg.Wait()
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return have, need, errors.Join(errs...)
}

// push sends the stored blob to one peer unless it holds it already.
func (p *Peers) push(ctx context.Context, addr, digest, auth string) error {
	url := p.Scheme + "://" + addr + "/v1/blobs/" + digest
	head, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return err
	}
	p.header(head, auth)
	if resp, err := p.Transport.RoundTrip(head); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
	}
	f, size, err := p.Open(digest)
	if err != nil {
		return err
	}
	defer f.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, f)
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", ContentType)
	p.header(req, auth)
	resp, err := p.Transport.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", answer(resp))
	}
	return nil
}

func (p *Peers) header(req *http.Request, auth string) {
	req.Header.Set(HeaderReplica, p.Self)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
}

// Ensure makes digest available here, pulling it from a peer when this
// controller lacks it; ErrNotFound means enough voters answered that they
// lack it that it cannot be on a majority (while those that could not be
// asked may hold it, the error is another).
func (p *Peers) Ensure(ctx context.Context, digest string) error {
	if _, ok := p.Has(digest); ok {
		p.Touch(digest)
		return nil
	}
	voters, err := p.Voters()
	if err != nil {
		return err
	}
	addrs := p.Addrs()
	var errs []error
	// Voters known to lack it, this one included if it is a voter: an
	// uploaded blob is on a majority, so once more than the minority
	// lack it, it was never uploaded (or is lost). Voters that could not
	// be asked may hold it.
	lacking := 0
	for _, id := range voters {
		if id == p.Self {
			lacking++
			continue
		}
		addr, ok := addrs[id]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: no HTTP address known", id))
			continue
		}
		err := p.pull(ctx, addr, digest)
		if err == nil {
			return nil
		}
		if errors.Is(err, errPeerMissing) {
			lacking++
		}
		errs = append(errs, fmt.Errorf("%s: %w", id, err))
	}
	if lacking < len(voters)-(len(voters)/2+1)+1 {
		return fmt.Errorf("%s could not be fetched from the other controllers, and those not reached may hold it (%v)", digest, errors.Join(errs...))
	}
	return fmt.Errorf("%w: %s is on no reachable controller (%v)", blobstore.ErrNotFound, digest, errors.Join(errs...))
}

// errPeerMissing is a peer's answer that it does not hold a blob.
var errPeerMissing = errors.New("not held there")

func (p *Peers) pull(ctx context.Context, addr, digest string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.Scheme+"://"+addr+"/v1/blobs/"+digest, nil)
	if err != nil {
		return err
	}
	auth := ""
	if p.Token != "" {
		auth = "Bearer " + p.Token
	}
	p.header(req, auth)
	resp, err := p.Transport.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w: %s", errPeerMissing, answer(resp))
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", answer(resp))
	}
	// Put checks the bytes against the digest: a peer cannot plant code.
	_, err = p.Put(digest, resp.Body)
	return err
}

// answer is a peer's error response in one line.
func answer(resp *http.Response) string {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512)) // for the message only
	return strings.TrimSpace(resp.Status + ": " + strings.TrimSpace(string(body)))
}

// OpenLocal opens a blob, pulling it first if needed.
func (p *Peers) OpenLocal(ctx context.Context, digest string) (*os.File, int64, error) {
	if err := p.Ensure(ctx, digest); err != nil {
		return nil, 0, err
	}
	return p.Open(digest)
}
