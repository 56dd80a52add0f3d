// Package spool is the agent's durable outbox.
//
// Every record the agent produces (metric points, job events, log chunks, GPU
// samples, the exit record) is appended here before it is sent, and deleted
// only when the controller acknowledges it after Raft commit. That is the
// agent's half of invariant I3 (nothing lost, nothing doubled): a crash,
// restart or network cut between send and ack leaves the record in the spool
// to be sent again, and the (job, seq) the spool assigned lets the controller
// drop the duplicate.
//
// The layout follows rqlite's cdc/fifo.go: a bbolt bucket keyed by a
// big-endian uint64 index, so that key order is append order. Acks may
// delete records out of that order (the link sends the streams of several
// jobs round-robin, see AckEntries), never out of order within a stream.
//
// The spool also keeps, in memory, how many records of each stream are
// unacked, so that a job that produces faster than the controller takes can
// be held back (WaitStreamBelow) instead of filling the spool ahead of the
// other jobs' records.
package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// schemaVersion is the layout this code writes. Bump it (and add a migration)
// whenever the meaning of a bucket or key changes.
const schemaVersion = 1

// openTimeout bounds the wait for bbolt's file lock, so that a second agent
// started on the same data dir fails loudly instead of hanging. A variable
// so that tests need not wait for it.
var openTimeout = 2 * time.Second

var (
	bucketMeta    = []byte("meta")
	bucketRecords = []byte("records")
	bucketSeqs    = []byte("seqs")
	bucketJobs    = []byte("jobs")

	keyVersion = []byte("version")
)

// Sentinel errors.
var (
	// ErrNewerSchema means the file was written by a newer version of the
	// agent; opening it could misread or corrupt its records.
	ErrNewerSchema = errors.New("spool: file has a newer schema version")
	// ErrCorrupt means a stored value could not be decoded.
	ErrCorrupt = errors.New("spool: corrupt entry")
	// ErrNilRecord is returned by Append when given a nil record.
	ErrNilRecord = errors.New("spool: nil record")
	// ErrEmptyID is returned for an empty job id where one is required.
	ErrEmptyID = errors.New("spool: empty job id")
	// ErrNilState is returned by AppendWithJob when given no state function.
	ErrNilState = errors.New("spool: nil job state function")
)

// Entry is one spooled record and its position in the spool.
type Entry struct {
	// Index is the record's global position, increasing in append order and
	// never reused, even after the record is acked.
	Index uint64
	// Record is the decoded record, with Seq set; it shares no memory with
	// the database.
	Record *gantrypb.Record
	// Size is the record's encoded size.
	Size int
}

// Spool is a durable FIFO of records backed by a bbolt file. It is safe for
// concurrent use.
type Spool struct {
	db       *bolt.DB
	appended chan struct{}

	// mu guards the unacked counts, which follow every committed append
	// and delete.
	mu      sync.Mutex
	streams map[string]int // unacked records per stream ("" is the node stream)
	total   int
	acked   chan struct{} // closed and replaced after every delete
}

// Open opens the spool at path, creating the file (mode 0600) and its buckets
// if needed. It refuses a file whose schema version is newer than this code
// understands.
func Open(path string) (*Spool, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: openTimeout})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("spool: open %s: file is locked by another process: %w", path, err)
		}
		return nil, fmt.Errorf("spool: open %s: %w", path, err)
	}
	if err := db.Update(initSchema); err != nil {
		if cerr := db.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("spool: close: %w", cerr))
		}
		return nil, fmt.Errorf("spool: open %s: %w", path, err)
	}
	sp := &Spool{db: db, appended: make(chan struct{}, 1), streams: map[string]int{}, acked: make(chan struct{})}
	if err := db.View(sp.countTx); err != nil {
		if cerr := db.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("spool: close: %w", cerr))
		}
		return nil, fmt.Errorf("spool: open %s: %w", path, err)
	}
	return sp, nil
}

// countTx counts the unacked records of every stream, once at Open.
func (s *Spool) countTx(tx *bolt.Tx) error {
	return tx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
		stream, err := recordStream(v)
		if err != nil {
			idx, _ := index(k)
			return fmt.Errorf("%w: record %d: %w", ErrCorrupt, idx, err)
		}
		s.streams[stream]++
		s.total++
		return nil
	})
}

// recordStream reads a stored record's job id (field 1) without decoding
// the rest of it.
func recordStream(b []byte) (string, error) {
	stream := ""
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", protowire.ParseError(n)
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return "", protowire.ParseError(m)
			}
			stream = string(v) // the last one wins, as in proto.Unmarshal
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return "", protowire.ParseError(m)
		}
		b = b[m:]
	}
	return stream, nil
}

// initSchema creates the buckets and checks or writes the schema version.
func initSchema(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return fmt.Errorf("create meta bucket: %w", err)
	}
	if v := meta.Get(keyVersion); v != nil {
		if len(v) != 8 {
			return fmt.Errorf("%w: schema version has %d bytes", ErrCorrupt, len(v))
		}
		if got := binary.BigEndian.Uint64(v); got > schemaVersion {
			return fmt.Errorf("%w: file has version %d, this agent understands up to %d; upgrade the agent",
				ErrNewerSchema, got, schemaVersion)
		}
	} else if err := meta.Put(keyVersion, u64(schemaVersion)); err != nil {
		return fmt.Errorf("write schema version: %w", err)
	}
	for _, name := range [][]byte{bucketRecords, bucketSeqs, bucketJobs} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// Close closes the underlying file. Calling it more than once is harmless.
func (s *Spool) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("spool: close: %w", err)
	}
	return nil
}

// Append stores recs in one write transaction, so either all of them are
// durable or none is. Each record gets its Seq: the next seq of its stream,
// where the stream is rec.JobId, or "" (the node stream) for node-level
// records. Seqs are dense per stream, start at 1 and survive restarts
// because the counters are updated in the same transaction as the records.
//
// The records passed in are modified (Seq set); if Append fails their Seq is
// restored. It returns the index of the last appended record, or 0 when recs
// is empty.
func (s *Spool) Append(recs ...*gantrypb.Record) (uint64, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	return s.appendWith(nil, recs)
}

// AppendWithJob is Append plus PutJob in the same transaction: the state of
// job jobID is replaced by what state returns, given the index of the last
// appended record (0 when recs is empty), or nothing is written at all.
//
// This is what lets a restarted agent resume a job's files without losing or
// repeating a line: the read offsets stored in the job state always describe
// exactly the records in the spool. Saved in a second transaction after the
// records, a crash between the two would make the next agent read those
// lines again under new seqs, which the controller cannot recognise as
// duplicates; saved before, a crash would skip them. state runs inside the
// write transaction and must be quick (marshal a message, nothing more).
func (s *Spool) AppendWithJob(jobID string, state func(last uint64) ([]byte, error), recs ...*gantrypb.Record) (uint64, error) {
	if jobID == "" {
		return 0, fmt.Errorf("spool: append with job: %w", ErrEmptyID)
	}
	if state == nil {
		return 0, fmt.Errorf("spool: append with job %q: %w", jobID, ErrNilState)
	}
	return s.appendWith(func(tx *bolt.Tx, last uint64) error {
		data, err := state(last)
		if err != nil {
			return fmt.Errorf("job %q state: %w", jobID, err)
		}
		if err := tx.Bucket(bucketJobs).Put([]byte(jobID), data); err != nil {
			return fmt.Errorf("put job %q: %w", jobID, err)
		}
		return nil
	}, recs)
}

// appendWith appends recs and then runs also (if not nil) in the same
// transaction.
func (s *Spool) appendWith(also func(tx *bolt.Tx, last uint64) error, recs []*gantrypb.Record) (uint64, error) {
	for i, r := range recs {
		if r == nil {
			return 0, fmt.Errorf("%w at position %d", ErrNilRecord, i)
		}
	}
	oldSeqs := make([]uint64, len(recs))
	for i, r := range recs {
		oldSeqs[i] = r.Seq
	}
	var last uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if last, err = appendTx(tx, recs); err != nil {
			return err
		}
		if also != nil {
			return also(tx, last)
		}
		return nil
	})
	if err != nil {
		for i, r := range recs {
			r.Seq = oldSeqs[i]
		}
		return 0, fmt.Errorf("spool: append: %w", err)
	}
	if len(recs) > 0 {
		s.mu.Lock()
		for _, r := range recs {
			s.streams[r.JobId]++
		}
		s.total += len(recs)
		s.mu.Unlock()
		select {
		case s.appended <- struct{}{}:
		default: // a signal is already pending; one is enough to wake the sender
		}
	}
	return last, nil
}

// appendTx stores recs with their seqs inside tx and returns the index of
// the last one (0 when recs is empty).
func appendTx(tx *bolt.Tx, recs []*gantrypb.Record) (uint64, error) {
	records := tx.Bucket(bucketRecords)
	seqs := tx.Bucket(bucketSeqs)
	// Counters are read once per stream and written back once, so a batch
	// of points for one job costs one counter read and write.
	next := make(map[string]uint64)
	var last uint64
	for _, r := range recs {
		n, ok := next[r.JobId]
		if !ok {
			v := seqs.Get(streamKey(r.JobId))
			switch {
			case v == nil:
				n = 1
			case len(v) == 8:
				n = binary.BigEndian.Uint64(v)
			default:
				return 0, fmt.Errorf("%w: seq counter of stream %q has %d bytes", ErrCorrupt, r.JobId, len(v))
			}
		}
		r.Seq = n
		next[r.JobId] = n + 1

		idx, err := records.NextSequence()
		if err != nil {
			return 0, fmt.Errorf("next index: %w", err)
		}
		data, err := proto.Marshal(r)
		if err != nil {
			return 0, fmt.Errorf("marshal record %d of stream %q: %w", r.Seq, r.JobId, err)
		}
		if err := records.Put(u64(idx), data); err != nil {
			return 0, fmt.Errorf("put record %d: %w", idx, err)
		}
		last = idx
	}
	for stream, n := range next {
		if err := seqs.Put(streamKey(stream), u64(n)); err != nil {
			return 0, fmt.Errorf("put seq counter of stream %q: %w", stream, err)
		}
	}
	return last, nil
}

// Read returns, in index order, up to maxRecords entries with Index > after.
// It stops before the encoded size of the returned records would exceed
// maxBytes, but always returns at least one entry if there is any, so a
// record larger than maxBytes cannot block the stream. maxRecords <= 0 and
// maxBytes <= 0 mean no limit.
func (s *Spool) Read(after uint64, maxRecords, maxBytes int) ([]Entry, error) {
	var out []Entry
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketRecords).Cursor()
		size := 0
		for k, v := c.Seek(u64(after + 1)); k != nil; k, v = c.Next() {
			if maxRecords > 0 && len(out) >= maxRecords {
				break
			}
			if maxBytes > 0 && len(out) > 0 && size+len(v) > maxBytes {
				break
			}
			idx, err := index(k)
			if err != nil {
				return err
			}
			// proto.Unmarshal copies bytes and strings out of v, so the
			// record stays valid after the transaction ends.
			rec := &gantrypb.Record{}
			if err := proto.Unmarshal(v, rec); err != nil {
				return fmt.Errorf("%w: record %d: %w", ErrCorrupt, idx, err)
			}
			size += len(v)
			out = append(out, Entry{Index: idx, Record: rec, Size: len(v)})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("spool: read after %d: %w", after, err)
	}
	return out, nil
}

// Ack deletes every entry with Index <= upTo. Acking an index that is already
// gone is a no-op, so a repeated or reordered ack is harmless.
func (s *Spool) Ack(upTo uint64) error {
	gone := map[string]int{}
	err := s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketRecords).Cursor()
		// Re-seek to First after every delete rather than rely on where the
		// cursor stands after Cursor.Delete (older bbolt releases skipped a
		// key on the following Next); the prefix being deleted makes First
		// the next key anyway.
		for k, v := c.First(); k != nil; k, v = c.First() {
			idx, err := index(k)
			if err != nil {
				return err
			}
			if idx > upTo {
				break
			}
			stream, err := recordStream(v)
			if err != nil {
				return fmt.Errorf("%w: record %d: %w", ErrCorrupt, idx, err)
			}
			if err := c.Delete(); err != nil {
				return fmt.Errorf("delete record %d: %w", idx, err)
			}
			gone[stream]++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("spool: ack up to %d: %w", upTo, err)
	}
	s.forget(gone)
	return nil
}

// AckEntries deletes the given entries, which need not be a prefix of the
// spool: the link acks what a batch held, and a batch holds the records of
// several streams. Each entry's Record must be the one Read returned for
// its Index (its JobId is what the stream counts go by). Entries already
// gone are skipped, so a repeated ack is harmless.
func (s *Spool) AckEntries(entries []Entry) error {
	gone := map[string]int{}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRecords)
		for _, e := range entries {
			k := u64(e.Index)
			if b.Get(k) == nil {
				continue
			}
			if err := b.Delete(k); err != nil {
				return fmt.Errorf("delete record %d: %w", e.Index, err)
			}
			gone[e.Record.GetJobId()]++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("spool: ack %d entries: %w", len(entries), err)
	}
	s.forget(gone)
	return nil
}

// forget takes deleted records off the unacked counts and wakes waiters.
func (s *Spool) forget(gone map[string]int) {
	if len(gone) == 0 {
		return
	}
	s.mu.Lock()
	for stream, n := range gone {
		if s.streams[stream] -= n; s.streams[stream] <= 0 {
			delete(s.streams, stream)
		}
		s.total -= n
	}
	close(s.acked)
	s.acked = make(chan struct{})
	s.mu.Unlock()
}

// Pending returns how many entries are unacked and the lowest unacked index
// (0 if none).
func (s *Spool) Pending() (n int, oldest uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		fk, _ := tx.Bucket(bucketRecords).Cursor().First()
		if fk == nil {
			return nil
		}
		var err error
		oldest, err = index(fk)
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("spool: pending: %w", err)
	}
	s.mu.Lock()
	n = s.total
	s.mu.Unlock()
	return n, oldest, nil
}

// StreamPending is how many records of stream (a job id, "" for the node
// stream) are unacked.
func (s *Spool) StreamPending(stream string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[stream]
}

// WaitStreamBelow waits until fewer than n records of stream are unacked,
// or ctx ends. A job's tails call it before they read on, so that one job
// cannot fill the spool ahead of the others: its data waits in its files
// meanwhile, as it does while the disk is full.
func (s *Spool) WaitStreamBelow(ctx context.Context, stream string, n int) error {
	for {
		s.mu.Lock()
		ok, ch := s.streams[stream] < n, s.acked
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("spool: waiting for acks of stream %q: %w", stream, ctx.Err())
		}
	}
}

// Appended returns a channel that receives after every successful Append.
// Sends never block and the channel has capacity 1, so several appends may
// collapse into one signal: a sender should drain with Read until it is empty,
// then wait on the channel again.
func (s *Spool) Appended() <-chan struct{} {
	return s.appended
}

// ForgetStream drops the seq counter of a finished job's stream so that the
// counter bucket does not grow forever.
//
// Call it only after the job's exit record has been acked: it is the job's
// last record, so no later Append for the job can happen, and none of its
// records remain to be resent. Appending to the stream afterwards would
// restart its seqs at 1 and the controller would drop those records as
// duplicates. The node stream ("") is never forgotten.
func (s *Spool) ForgetStream(jobID string) error {
	if jobID == "" {
		return fmt.Errorf("spool: forget stream: %w (the node stream is never forgotten)", ErrEmptyID)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSeqs).Delete(streamKey(jobID))
	})
	if err != nil {
		return fmt.Errorf("spool: forget stream %q: %w", jobID, err)
	}
	return nil
}

// PutJob stores the agent's durable state for job id, replacing any previous
// value.
func (s *Spool) PutJob(id string, data []byte) error {
	if id == "" {
		return fmt.Errorf("spool: put job: %w", ErrEmptyID)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).Put([]byte(id), data)
	})
	if err != nil {
		return fmt.Errorf("spool: put job %q: %w", id, err)
	}
	return nil
}

// DeleteJob removes the state of job id. Deleting a missing job is a no-op.
func (s *Spool) DeleteJob(id string) error {
	if id == "" {
		return fmt.Errorf("spool: delete job: %w", ErrEmptyID)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("spool: delete job %q: %w", id, err)
	}
	return nil
}

// Jobs returns the state of every stored job, keyed by job id. The values
// are copies and stay valid after the call.
func (s *Spool) Jobs() (map[string][]byte, error) {
	jobs := make(map[string][]byte)
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			jobs[string(k)] = append([]byte(nil), v...)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("spool: jobs: %w", err)
	}
	return jobs, nil
}

// streamKey is the seqs-bucket key of a stream. bbolt rejects empty keys,
// so every key carries a one-byte prefix and the node stream ("") is just
// the prefix.
func streamKey(stream string) []byte {
	k := make([]byte, 0, 1+len(stream))
	k = append(k, 's')
	return append(k, stream...)
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func index(k []byte) (uint64, error) {
	if len(k) != 8 {
		return 0, fmt.Errorf("%w: record key has %d bytes", ErrCorrupt, len(k))
	}
	return binary.BigEndian.Uint64(k), nil
}
