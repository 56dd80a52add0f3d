// Package blobstore keeps the code archives jobs ship from laptops, on
// each controller's disk, addressed by their SHA-256. Archives travel
// beside the Raft log, not through it: a job's spec in the log names its
// archive by digest only, so a 64 MiB upload never sits in front of
// metric entries, in snapshots or in every follower's replay.
//
// A blob is written to a temporary file, hashed while it is written,
// synced, and renamed into place only when its digest is the one claimed:
// a reader never sees a partial or forged blob, whoever sent it.
package blobstore

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// Errors callers tell apart.
var (
	// ErrTooLarge is returned when a blob is longer than the store's limit.
	ErrTooLarge = errors.New("blob is larger than the limit")
	// ErrDigestMismatch is returned when the bytes do not hash to the
	// digest they were sent under.
	ErrDigestMismatch = errors.New("blob does not match its digest")
	// ErrNotFound is returned for a blob this store does not hold.
	ErrNotFound = errors.New("blob not found")
	// ErrBadDigest is returned for a name that is not "sha256:" and 64
	// lowercase hex digits.
	ErrBadDigest = errors.New("not a sha256 digest")
)

// Store is a directory of blobs named by digest.
type Store struct {
	dir      string
	maxBytes int64
	// minFree is the space Put leaves free on dir's file system (the
	// Raft log's, beside it); 0 turns the check off.
	minFree uint64
	// reserved is the room taken by Puts in flight (maxBytes each).
	reserved atomic.Int64
}

// SetMinFree makes Put refuse, with an error wrapping syscall.ENOSPC,
// a blob that could leave less than n bytes free (0: no check). Call it
// before the store is shared.
func (s *Store) SetMinFree(n uint64) { s.minFree = n }

// reserve takes room for one Put; release gives it back.
func (s *Store) reserve() (release func(), err error) {
	if s.minFree == 0 {
		return func() {}, nil
	}
	taken := s.reserved.Add(s.maxBytes)
	release = func() { s.reserved.Add(-s.maxBytes) }
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err != nil {
		release()
		return nil, fmt.Errorf("blobstore: %w", err)
	}
	if free := st.Bavail * uint64(st.Bsize); free < s.minFree+uint64(taken) {
		release()
		return nil, fmt.Errorf("blobstore: %w: %d bytes free, and %d must stay free besides the blobs being stored",
			syscall.ENOSPC, free, s.minFree)
	}
	return release, nil
}

// Open returns the store in dir (created 0700: code is private to the
// cluster), taking blobs of at most maxBytes. Temporary files a crash
// left behind are removed.
func Open(dir string, maxBytes int64) (*Store, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("blobstore: limit %d must be positive", maxBytes)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("blobstore: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("blobstore: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			_ = os.Remove(filepath.Join(dir, e.Name())) // a crash's leftover; a failure here only costs disk
		}
	}
	return &Store{dir: dir, maxBytes: maxBytes}, nil
}

// MaxBytes is the largest blob the store takes.
func (s *Store) MaxBytes() int64 { return s.maxBytes }

// path maps a digest to its file; the digest is checked first, so no
// name can reach outside the directory.
func (s *Store) path(digest string) (string, error) {
	if !apiv1.IsDigest(digest) {
		return "", fmt.Errorf("%w: %q", ErrBadDigest, digest)
	}
	return filepath.Join(s.dir, strings.TrimPrefix(digest, apiv1.DigestPrefix)), nil
}

// Has reports whether the blob is stored, and its size.
func (s *Store) Has(digest string) (int64, bool) {
	p, err := s.path(digest)
	if err != nil {
		return 0, false
	}
	fi, err := os.Stat(p)
	if err != nil || !fi.Mode().IsRegular() {
		return 0, false
	}
	return fi.Size(), true
}

// Put stores what r holds under digest and returns its size. It fails
// with ErrTooLarge past the limit and ErrDigestMismatch when the bytes
// hash to another digest; either way nothing is stored. Storing a blob
// that is already there reads r to its end and keeps the stored copy.
func (s *Store) Put(digest string, r io.Reader) (int64, error) {
	p, err := s.path(digest)
	if err != nil {
		return 0, err
	}
	release, err := s.reserve()
	if err != nil {
		return 0, err
	}
	defer release()
	tmp, err := os.CreateTemp(s.dir, ".tmp-")
	if err != nil {
		return 0, fmt.Errorf("blobstore: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename this removes nothing
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, s.maxBytes+1))
	if err == nil && n > s.maxBytes {
		err = fmt.Errorf("%w of %d bytes", ErrTooLarge, s.maxBytes)
	}
	if err == nil {
		if got := apiv1.DigestPrefix + hex.EncodeToString(h.Sum(nil)); got != digest {
			err = fmt.Errorf("%w: the bytes hash to %s", ErrDigestMismatch, got)
		}
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return 0, fmt.Errorf("blobstore: %w", err)
	}
	// The rename is durable only once the directory is synced.
	if d, err := os.Open(s.dir); err == nil {
		serr := d.Sync()
		_ = d.Close() // read-only handle
		if serr != nil {
			return 0, fmt.Errorf("blobstore: sync %s: %w", s.dir, serr)
		}
	}
	return n, nil
}

// Open opens a stored blob for reading; the caller closes it.
func (s *Store) Open(digest string) (*os.File, int64, error) {
	p, err := s.path(digest)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, digest)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("blobstore: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("blobstore: %w", err)
	}
	return f, fi.Size(), nil
}

// Touch marks a blob as just used, restarting its grace period in GC.
func (s *Store) Touch(digest string) {
	if p, err := s.path(digest); err == nil {
		now := time.Now()
		_ = os.Chtimes(p, now, now) // only shortens how long an unreferenced blob is kept
	}
}

// Blob is one stored blob as GC sees it.
type Blob struct {
	Digest  string
	Size    int64
	ModTime time.Time
}

// List returns every stored blob.
func (s *Store) List() ([]Blob, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("blobstore: %w", err)
	}
	var out []Blob
	for _, e := range ents {
		d := apiv1.DigestPrefix + e.Name()
		if !apiv1.IsDigest(d) || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, Blob{Digest: d, Size: fi.Size(), ModTime: fi.ModTime()})
	}
	return out, nil
}

// GC removes every blob that is not in keep and was last written or
// touched before olderThan, and returns what it removed. The grace period
// covers an upload whose job is not submitted yet, and a job that ended a
// moment ago.
func (s *Store) GC(keep map[string]bool, olderThan time.Time) ([]Blob, error) {
	blobs, err := s.List()
	if err != nil {
		return nil, err
	}
	var removed []Blob
	var errs []error
	for _, b := range blobs {
		if keep[b.Digest] || !b.ModTime.Before(olderThan) {
			continue
		}
		p, _ := s.path(b.Digest) // listed names are digests
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, b)
	}
	return removed, errors.Join(errs...)
}
