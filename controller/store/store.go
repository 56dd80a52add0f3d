// Package store is the controller's state in bbolt: jobs, nodes, metric
// points, job events, logs and GPU samples. Only the FSM writes, one short
// transaction per Raft entry (or batch of entries); everyone else reads
// through View, whose transactions are short and closed before the caller
// touches the network (invariant I1). Every value handed out is a copy.
package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the layout this code reads and writes. Version 1 kept
// one value per metric point (points/JOB/SEQ); version 2 keeps chunks of
// points (chunks/JOB/FIRSTSEQ, see points.go). A version 1 database (a
// snapshot written by an older controller) is migrated when opened.
const SchemaVersion = 2

// migrateBatch is how many version 1 points one migration transaction
// moves, so that migrating a long run never builds one huge transaction.
const migrateBatch = 100_000

// Bucket names: the whole schema lives in this block.
var (
	bucketMeta       = []byte("meta")       // schema version, applied index
	bucketJobs       = []byte("jobs")       // job id → gantrypb.Job
	bucketChunks     = []byte("chunks")     // job id → (first seq BE → chunk.Chunk)
	bucketHeads      = []byte("heads")      // job id → the job's head chunk (its newest points)
	bucketMetricKeys = []byte("metrickeys") // job id → metric names, in id order
	bucketPointsV1   = []byte("points")     // schema 1: job id → (seq BE → gantrypb.MetricPoint)
	bucketEvents     = []byte("events")     // job id → (seq BE → gantrypb.JobEvent)
	bucketLogs       = []byte("logs")       // job id → (offset BE → raw bytes)
	bucketStreams    = []byte("streams")    // stream key → highest applied seq (BE)
	bucketNodes      = []byte("nodes")      // node id → gantrypb.Node
	bucketGPU        = []byte("gpu")        // node id → (seq BE → gantrypb.GPUSample)
	keySchema        = []byte("schema")     // in meta
	keyApplied       = []byte("applied")    // in meta
	topBuckets       = [][]byte{bucketMeta, bucketJobs, bucketChunks, bucketHeads, bucketMetricKeys, bucketEvents, bucketLogs, bucketStreams, bucketNodes, bucketGPU}
)

var (
	// ErrNotFound is returned when a job or node does not exist.
	ErrNotFound = errors.New("not found")
	// ErrSchema is returned when a database was written by an unknown schema.
	ErrSchema = errors.New("store: unsupported schema version")
	// ErrCorrupt means a state database cannot be read; the error names
	// the file.
	ErrCorrupt = errors.New("store: state database is corrupt")
)

// Store wraps the bbolt database. The RWMutex only guards swapping the
// database during a Raft snapshot restore; transactions themselves are
// bbolt's.
type Store struct {
	mu          sync.RWMutex
	db          *bolt.DB
	path        string
	prevApplied uint64
	prevErr     error
}

// Open creates a fresh store at path, removing whatever was there. The
// controller's state is rebuilt from the Raft snapshot and log on every
// start, so the file never needs to survive a restart; that is also why it
// runs without fsync (durability is the Raft log's job).
//
// Before removing the old file, Open reads the Raft index it had applied
// (PrevApplied): that is how the controller notices a Raft log that lost
// its tail, which would otherwise roll committed state back silently. A
// file that cannot be read (it runs without fsync, so a power loss can
// tear it) does not stop the start: the file is only a cache of the Raft
// state. Open moves it aside to PATH.corrupt for inspection and goes on,
// and PrevAppliedErr says so, for the caller to warn that this start
// cannot check for a lost log tail.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	prev, prevErr := readApplied(path)
	if prevErr != nil {
		if !errors.Is(prevErr, ErrCorrupt) {
			return nil, prevErr // locked by another process: not ours to touch
		}
		aside := path + ".corrupt"
		if err := os.Rename(path, aside); err != nil {
			return nil, fmt.Errorf("%w; moving it aside: %v", prevErr, err)
		}
		prevErr = fmt.Errorf("%w; moved to %s. The state is rebuilt from the Raft log as on every start, but "+
			"this start cannot tell whether the Raft log lost its tail; check the disk (dmesg, smartctl)", prevErr, aside)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("store: remove stale state: %w", err)
	}
	db, err := openDB(path)
	if err != nil {
		return nil, err
	}
	return &Store{db: db, path: path, prevApplied: prev, prevErr: prevErr}, nil
}

// PrevApplied is the Raft index the state database of the previous run
// had applied (0 when there was none, or it could not be read).
func (s *Store) PrevApplied() uint64 { return s.prevApplied }

// PrevAppliedErr is why the previous run's state database could not be
// read (it matches ErrCorrupt), or nil.
func (s *Store) PrevAppliedErr() error { return s.prevErr }

// readApplied reads the applied index from the state database the last
// run left at path, read-only; (0, nil) when there is none. Only the meta
// bucket is read: the rest of the file is discarded anyway, so damage
// there does not matter.
func readApplied(path string) (applied uint64, err error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	defer func() {
		// bbolt trusts its page headers and can panic on a damaged file
		// instead of returning an error.
		if r := recover(); r != nil {
			err = corrupt(path, fmt.Errorf("bbolt panicked reading it: %v", r))
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return 0, fmt.Errorf("store: %s is locked by another process (is another controller running on this data directory?)", path)
		}
		return 0, corrupt(path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return nil // created but never initialised: nothing applied
		}
		v := meta.Get(keyApplied)
		switch {
		case v == nil:
			return nil
		case len(v) != 8:
			return fmt.Errorf("applied index is %d bytes, want 8", len(v))
		}
		applied = binary.BigEndian.Uint64(v)
		return nil
	})
	if err != nil {
		return 0, corrupt(path, err)
	}
	return applied, nil
}

func corrupt(path string, cause error) error {
	return fmt.Errorf("%w: %s: %v", ErrCorrupt, path, cause)
}

// openDB opens (creating if needed) and initialises a database. A panic
// from bbolt on a damaged file (a snapshot image being restored) becomes
// an error naming the file.
func openDB(path string) (db *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("%w: %s: bbolt panicked opening it: %v", ErrCorrupt, path, r)
		}
	}()
	return openDBUnguarded(path)
}

func openDBUnguarded(path string) (*bolt.DB, error) {
	// A large initial mmap (address space, not memory) means a write that
	// grows the file never has to remap, which would wait for every open
	// read transaction, including a Raft snapshot being persisted.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoSync: true, NoFreelistSync: true,
		InitialMmapSize: 8 << 30})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	var migrate bool
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keySchema); v != nil {
			got := binary.BigEndian.Uint64(v)
			switch {
			case got == 1:
				migrate = true
			case got != SchemaVersion:
				return fmt.Errorf("%w: %d (this build reads %d and migrates 1); upgrade this controller to the release of the others", ErrSchema, got, SchemaVersion)
			}
		} else if err := meta.Put(keySchema, u64(SchemaVersion)); err != nil {
			return err
		}
		for _, name := range topBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil && migrate {
		err = migratePoints(db, migrateBatch)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: init %s: %w", path, err)
	}
	return db, nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Close()
}

// Update runs fn in one write transaction. Only the FSM calls it.
func (s *Store) Update(fn func(*Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.db.Update(func(btx *bolt.Tx) error {
		tx := &Tx{tx: btx, w: newWriteState()}
		if err := fn(tx); err != nil {
			return err
		}
		return tx.flush()
	})
}

// View runs fn in one read transaction. fn must not do network I/O or
// block: it copies what it needs and returns.
func (s *Store) View(fn func(*Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.db.View(func(btx *bolt.Tx) error { return fn(&Tx{tx: btx}) })
}

// OpenReadTxns is the number of read transactions open right now. It is
// exported on /metrics as gantry_store_open_read_txns so that a leak (the old
// platform's failure) is visible and tested.
func (s *Store) OpenReadTxns() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.db.Stats().OpenTxN
}

// Image is a point-in-time copy of the database, held open until written
// or released. Raft snapshots take it on the apply goroutine and write it
// later, concurrently with further applies.
type Image struct {
	tx *bolt.Tx
}

// Image begins a read transaction that pins the current state.
func (s *Store) Image() (*Image, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	tx, err := s.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("store: begin snapshot: %w", err)
	}
	return &Image{tx: tx}, nil
}

// WriteTo writes the image to w.
func (im *Image) WriteTo(w io.Writer) (int64, error) {
	return im.tx.WriteTo(w)
}

// Release ends the image's read transaction. Safe to call twice.
func (im *Image) Release() {
	if im.tx != nil {
		_ = im.tx.Rollback() // read-only: rollback only releases it
		im.tx = nil
	}
}

// Restore replaces the whole state with a database image read from r: the
// new file is written and checked beside the old one, then swapped in.
func (s *Store) Restore(r io.Reader) error {
	tmp := s.path + ".restore"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("store: restore: copy snapshot: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	// Validate the image before touching the live database.
	check, err := openDB(tmp)
	if err != nil {
		return fmt.Errorf("store: restore: snapshot image: %w", err)
	}
	if err := check.Close(); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: restore: close current: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("store: restore: swap: %w", err)
	}
	db, err := openDB(s.path)
	if err != nil {
		return fmt.Errorf("store: restore: reopen: %w", err)
	}
	s.db = db
	return nil
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// ReadTxnsStarted is how many read transactions this database has begun
// since it was opened (a restore starts the count again). Tests use it to
// hold a reader to a number of transactions, e.g. the fleet exporter's
// one per scrape.
func (s *Store) ReadTxnsStarted() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.db.Stats().TxN
}
