package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// GPUSampleRetention is how many GPU samples are kept per node (one hour at
// the agent's 1 Hz). Older ones are deleted as new ones arrive.
const GPUSampleRetention = 3600

// Tx is a typed view of one bbolt transaction.
type Tx struct {
	tx *bolt.Tx
	w  *writeState // nil in a read transaction
}

// StreamKeyJob is the dedupe stream of a job's records as it was keyed
// before streams were per (node, job); read only, as a fallback.
func StreamKeyJob(jobID string) string { return "j/" + jobID }

// StreamKeyNodeJob is the dedupe stream of the records one node sends for
// one job. Ids never contain '/', so the key is unambiguous.
func StreamKeyNodeJob(nodeID, jobID string) string { return "nj/" + nodeID + "/" + jobID }

// StreamKeyNode is the dedupe stream of a node's own records (GPU samples).
func StreamKeyNode(nodeID string) string { return "n/" + nodeID }

// AppliedIndex returns the last Raft index applied to this state.
func (t *Tx) AppliedIndex() uint64 {
	v := t.tx.Bucket(bucketMeta).Get(keyApplied)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// SetAppliedIndex records the last Raft index applied.
func (t *Tx) SetAppliedIndex(i uint64) error {
	return t.tx.Bucket(bucketMeta).Put(keyApplied, u64(i))
}

// HighWater returns the highest seq applied for a stream (0 if none).
func (t *Tx) HighWater(stream string) uint64 {
	v := t.tx.Bucket(bucketStreams).Get([]byte(stream))
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// SetHighWater records the highest seq applied for a stream.
func (t *Tx) SetHighWater(stream string, seq uint64) error {
	return t.tx.Bucket(bucketStreams).Put([]byte(stream), u64(seq))
}

// Job returns a copy of the job, or ErrNotFound.
func (t *Tx) Job(id string) (*gantrypb.Job, error) {
	v := t.tx.Bucket(bucketJobs).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("job %q: %w", id, ErrNotFound)
	}
	job := &gantrypb.Job{}
	if err := proto.Unmarshal(v, job); err != nil {
		return nil, fmt.Errorf("store: decode job %q: %w", id, err)
	}
	return job, nil
}

// PutJob writes a job.
func (t *Tx) PutJob(job *gantrypb.Job) error {
	return putProto(t.tx.Bucket(bucketJobs), []byte(job.Id), job)
}

// Jobs calls fn for every job in id order (ids sort by creation time);
// fn returning false stops the walk.
func (t *Tx) Jobs(fn func(*gantrypb.Job) bool) error { return t.walkJobs(false, nil, fn) }

// JobsNewestFirst is Jobs in reverse id order, newest first, so that a
// caller wanting the latest few jobs stops after them instead of decoding
// the whole history.
func (t *Tx) JobsNewestFirst(fn func(*gantrypb.Job) bool) error { return t.walkJobs(true, nil, fn) }

// JobsWhere calls fn, in id order, for every job for which keep returns
// true; fn returning false stops the walk. keep sees only the job's state
// and finished_at_ms, read from the stored bytes without decoding the job,
// so a walk that wants the few active jobs among a long history decodes
// only those (the fleet exporter runs one on every scrape).
func (t *Tx) JobsWhere(keep func(state gantrypb.JobState, finishedAtMs int64) bool, fn func(*gantrypb.Job) bool) error {
	return t.walkJobs(false, keep, fn)
}

// walkJobs decodes the jobs in id order, or reversed, for fn; with keep,
// only those keep takes (judged by peekJob, before decoding).
func (t *Tx) walkJobs(reverse bool, keep func(gantrypb.JobState, int64) bool, fn func(*gantrypb.Job) bool) error {
	c := t.tx.Bucket(bucketJobs).Cursor()
	first, next := c.First, c.Next
	if reverse {
		first, next = c.Last, c.Prev
	}
	for k, v := first(); k != nil; k, v = next() {
		if keep != nil {
			state, finished, err := peekJob(v)
			if err != nil {
				return fmt.Errorf("store: decode job %q: %w", k, err)
			}
			if !keep(state, finished) {
				continue
			}
		}
		job := &gantrypb.Job{}
		if err := proto.Unmarshal(v, job); err != nil {
			return fmt.Errorf("store: decode job %q: %w", k, err)
		}
		if !fn(job) {
			return nil
		}
	}
	return nil
}

// Field numbers of gantrypb.Job that peekJob reads.
const (
	jobFieldState      = 3
	jobFieldFinishedAt = 11
)

// peekJob reads a stored job's state and finished_at_ms, skipping every
// other field. Like proto.Unmarshal, the last occurrence of a field wins.
func peekJob(b []byte) (state gantrypb.JobState, finishedAtMs int64, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.VarintType && (num == jobFieldState || num == jobFieldFinishedAt) {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return 0, 0, protowire.ParseError(n)
			}
			if num == jobFieldState {
				state = gantrypb.JobState(int32(v))
			} else {
				finishedAtMs = int64(v)
			}
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0, 0, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return state, finishedAtMs, nil
}

// PutEvent stores a job event under its seq.
func (t *Tx) PutEvent(jobID string, e *gantrypb.JobEvent) error {
	return t.putSeq(bucketEvents, jobID, e.Seq, e)
}

// Events returns up to limit events of a job with seq > after.
func (t *Tx) Events(jobID string, after uint64, limit int) ([]*gantrypb.JobEvent, error) {
	return decodeAfter[gantrypb.JobEvent](t, bucketEvents, "event", jobID, after, limit)
}

// PutLog stores a chunk of a job's log at its byte offset.
func (t *Tx) PutLog(jobID string, offset uint64, data []byte) error {
	b, err := t.sub(bucketLogs, jobID)
	if err != nil {
		return err
	}
	return b.Put(u64(offset), data)
}

// Logs returns the stored log bytes of a job from offset on, at most max
// bytes, and the offset just past them.
func (t *Tx) Logs(jobID string, offset uint64, max int) ([]byte, uint64) {
	b := t.tx.Bucket(bucketLogs).Bucket([]byte(jobID))
	if b == nil {
		return nil, offset
	}
	var out []byte
	next := offset
	c := b.Cursor()
	// Start at the chunk containing offset: the last key <= offset.
	k, v := c.Seek(u64(offset))
	if k == nil || binary.BigEndian.Uint64(k) > offset {
		if pk, pv := c.Prev(); pk != nil {
			k, v = pk, pv
		} else if k == nil {
			return nil, offset
		}
	}
	for ; k != nil && len(out) < max; k, v = c.Next() {
		start := binary.BigEndian.Uint64(k)
		end := start + uint64(len(v))
		if end <= next {
			continue
		}
		if start > next {
			break // a hole: only contiguous bytes are returned
		}
		chunk := v[next-start:]
		if room := max - len(out); len(chunk) > room {
			chunk = chunk[:room]
		}
		out = append(out, chunk...)
		next += uint64(len(chunk))
	}
	return out, next
}

// Node returns a copy of a node, or ErrNotFound.
func (t *Tx) Node(id string) (*gantrypb.Node, error) {
	v := t.tx.Bucket(bucketNodes).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("node %q: %w", id, ErrNotFound)
	}
	n := &gantrypb.Node{}
	if err := proto.Unmarshal(v, n); err != nil {
		return nil, fmt.Errorf("store: decode node %q: %w", id, err)
	}
	return n, nil
}

// PutNode writes a node.
func (t *Tx) PutNode(n *gantrypb.Node) error {
	return putProto(t.tx.Bucket(bucketNodes), []byte(n.Id), n)
}

// Nodes returns every node in id order.
func (t *Tx) Nodes() ([]*gantrypb.Node, error) {
	var out []*gantrypb.Node
	err := t.tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
		n := &gantrypb.Node{}
		if err := proto.Unmarshal(v, n); err != nil {
			return fmt.Errorf("store: decode node %q: %w", k, err)
		}
		out = append(out, n)
		return nil
	})
	return out, err
}

// PutGPUSample stores a node's GPU sample and drops the one that falls out
// of the retention window.
func (t *Tx) PutGPUSample(nodeID string, s *gantrypb.GPUSample) error {
	b, err := t.sub(bucketGPU, nodeID)
	if err != nil {
		return err
	}
	if err := putProto(b, u64(s.Seq), s); err != nil {
		return err
	}
	if s.Seq > GPUSampleRetention {
		// Seqs are dense, so deleting exactly one old key keeps the window.
		if err := b.Delete(u64(s.Seq - GPUSampleRetention)); err != nil {
			return err
		}
	}
	return nil
}

// GPUSamples returns up to n of a node's most recent samples, oldest first.
func (t *Tx) GPUSamples(nodeID string, n int) ([]*gantrypb.GPUSample, error) {
	b := t.tx.Bucket(bucketGPU).Bucket([]byte(nodeID))
	if b == nil || n <= 0 {
		return nil, nil
	}
	return decodeLast[gantrypb.GPUSample](t, bucketGPU, "gpu sample", nodeID, n)
}

// message is a generated protobuf message type: *T implements proto.Message.
type message[T any] interface {
	*T
	proto.Message
}

// putSeq stores m under seq in id's bucket inside top.
func (t *Tx) putSeq(top []byte, id string, seq uint64, m proto.Message) error {
	b, err := t.sub(top, id)
	if err != nil {
		return err
	}
	return putProto(b, u64(seq), m)
}

// decodeAfter decodes up to limit messages of id's bucket inside top with
// seq > after, in seq order; what names them in errors.
func decodeAfter[T any, P message[T]](t *Tx, top []byte, what, id string, after uint64, limit int) ([]P, error) {
	var out []P
	err := t.walk(top, id, after, limit, func(v []byte) error {
		m := P(new(T))
		if err := proto.Unmarshal(v, m); err != nil {
			return fmt.Errorf("store: decode %s of %q: %w", what, id, err)
		}
		out = append(out, m)
		return nil
	})
	return out, err
}

// decodeLast decodes the last n messages of id's bucket inside top, in seq
// order; what names them in errors.
func decodeLast[T any, P message[T]](t *Tx, top []byte, what, id string, n int) ([]P, error) {
	b := t.tx.Bucket(top).Bucket([]byte(id))
	if b == nil || n <= 0 {
		return nil, nil
	}
	var out []P
	c := b.Cursor()
	for k, v := c.Last(); k != nil && len(out) < n; k, v = c.Prev() {
		m := P(new(T))
		if err := proto.Unmarshal(v, m); err != nil {
			return nil, fmt.Errorf("store: decode %s of %q: %w", what, id, err)
		}
		out = append(out, m)
	}
	slices.Reverse(out)
	return out, nil
}

// sub returns (creating) the per-id bucket inside a top-level bucket.
func (t *Tx) sub(top []byte, id string) (*bolt.Bucket, error) {
	b, err := t.tx.Bucket(top).CreateBucketIfNotExists([]byte(id))
	if err != nil {
		return nil, fmt.Errorf("store: bucket %s/%s: %w", top, id, err)
	}
	return b, nil
}

// walk calls fn for up to limit values with big-endian key > after in the
// per-id bucket. Values are only valid during fn; fn must copy (unmarshal).
func (t *Tx) walk(top []byte, id string, after uint64, limit int, fn func(v []byte) error) error {
	b := t.tx.Bucket(top).Bucket([]byte(id))
	if b == nil {
		return nil
	}
	c := b.Cursor()
	start := u64(after + 1)
	n := 0
	for k, v := c.Seek(start); k != nil && (limit <= 0 || n < limit); k, v = c.Next() {
		if bytes.Compare(k, start) < 0 {
			continue
		}
		if err := fn(v); err != nil {
			return err
		}
		n++
	}
	return nil
}

func unmarshal(b []byte, m proto.Message) error { return proto.Unmarshal(b, m) }

func putProto(b *bolt.Bucket, key []byte, m proto.Message) error {
	v, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("store: encode %T: %w", m, err)
	}
	return b.Put(key, v)
}
