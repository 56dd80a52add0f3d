package cluster_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// persistent is a single-node controller whose state.db survives restarts
// the way the real one's does (store.Open reads it, then starts afresh).
type persistent struct {
	dataDir string
	logs    *testutil.SyncBuffer
}

func newPersistent(t *testing.T) *persistent {
	return &persistent{dataDir: t.TempDir(), logs: &testutil.SyncBuffer{}}
}

// start opens the store and the Raft node; the returned error is
// cluster.Open's.
func (p *persistent) start(t *testing.T, disk cluster.DiskConfig) (*node, error) {
	t.Helper()
	st, err := store.Open(filepath.Join(p.dataDir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	log, err := logging.New(p.logs, "info")
	if err != nil {
		t.Fatal(err)
	}
	rc := &restoreCounter{}
	f := fsm.New(st, rc, logging.Discard())
	n, err := cluster.Open(cluster.Config{
		NodeID: "c1", DataDir: p.dataDir, BindAddr: "127.0.0.1:0", Bootstrap: true, Fast: true, Log: log,
		TLS:         controllerTLS(t, t.TempDir(), "c1"),
		PrevApplied: st.PrevApplied(), Disk: disk,
	}, f)
	if err != nil {
		st.Close()
		return nil, err
	}
	nd := &node{Node: n, st: st, fsm: f, restores: rc}
	t.Cleanup(func() { nd.close(t) })
	return nd, nil
}

// fill starts a node, submits jobs job-0000..job-(n-1) and stops it.
// It returns the Raft index of each job's entry.
func (p *persistent) fill(t *testing.T, n int) map[string]uint64 {
	t.Helper()
	nd, err := p.start(t, cluster.DiskConfig{})
	if err != nil {
		t.Fatal(err)
	}
	waitLeader(t, nd)
	idx := map[string]uint64{}
	for i := range n {
		id := fmt.Sprintf("job-%04d", i)
		f, err := nd.ApplyAsync(&gantrypb.SubmitJobCmd{JobId: id, Spec: &gantrypb.JobSpec{Run: "train " + id}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Wait(); err != nil {
			t.Fatal(err)
		}
		idx[id] = f.Index()
	}
	nd.close(t)
	return idx
}

// segment returns the only raft-wal segment file (the tests write few
// entries, so there is one) and its bytes.
func (p *persistent) segment(t *testing.T) (string, []byte) {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(p.dataDir, "raft", "wal", "*.wal"))
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments = %v, %v; want one", segs, err)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	return segs[0], b
}

func mustContain(t *testing.T, s string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(s, w) {
			t.Errorf("%q\ndoes not contain %q", s, w)
		}
	}
}

// A byte flipped in the middle of a segment (an entry raft-wal has no
// checksum for) fails start-up with an error naming the index, the segment
// file and what to do: no panic, no garbage applied.
func TestFlippedByteMidSegmentFailsStartup(t *testing.T) {
	p := newPersistent(t)
	idx := p.fill(t, 40)
	seg, b := p.segment(t)
	marker := []byte("train job-0020")
	at := bytes.Index(b, marker)
	if at < 0 {
		t.Fatal("job-0020's entry not found in the segment")
	}
	b[at+len(marker)-1] ^= 0x01
	if err := os.WriteFile(seg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := p.start(t, cluster.DiskConfig{})
	if !errors.Is(err, cluster.ErrLogCorrupt) {
		t.Fatalf("Open with a flipped byte: err = %v, want ErrLogCorrupt", err)
	}
	mustContain(t, err.Error(), fmt.Sprintf("index %d", idx["job-0020"]), seg, "checksum",
		"stop this controller", filepath.Join(p.dataDir, "raft"), "single-node")
	// The offset named is that of the damaged entry's frame: the payload
	// (with the flipped byte) follows its 8-byte header.
	m := regexp.MustCompile(`byte offset (\d+)`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("error names no offset: %v", err)
	}
	off, _ := strconv.Atoi(m[1])
	if off <= 32 || off >= at || at-off > 256 {
		t.Fatalf("frame offset %d is not just before the damaged byte at %d", off, at)
	}
}

// A damaged first frame (the frame header and the start of the encoded
// entry) made raft-wal return "short buffer" and raft panic; every variant
// must now be a clear start-up error.
func TestCorruptFirstFrameFailsStartup(t *testing.T) {
	damages := map[string]func(b []byte){
		"header length":   func(b []byte) { copy(b[36:40], []byte{0xff, 0xff, 0xff, 0x7f}) },
		"header type":     func(b []byte) { b[32] = 0x09 },
		"entry varints":   func(b []byte) { copy(b[40:56], bytes.Repeat([]byte{0xff}, 16)) },
		"entry data len":  func(b []byte) { copy(b[42:50], bytes.Repeat([]byte{0xfe}, 8)) },
		"zeroed first 64": func(b []byte) { clear(b[32:96]) },
	}
	for name, damage := range damages {
		t.Run(name, func(t *testing.T) {
			p := newPersistent(t)
			p.fill(t, 5)
			seg, b := p.segment(t)
			damage(b)
			if err := os.WriteFile(seg, b, 0o644); err != nil {
				t.Fatal(err)
			}
			nd, err := p.start(t, cluster.DiskConfig{})
			if err == nil {
				// raft-wal may treat damage in its only, unsealed segment as
				// a torn write and drop everything after it; then it must be
				// reported as a lost tail, never pass silently.
				if nd.LogCheck().Lost.Count() == 0 {
					t.Fatalf("damaged first frame: start-up succeeded with nothing reported (log %d..%d)",
						nd.LogCheck().First, nd.LogCheck().Last)
				}
				mustContain(t, p.logs.String(), "were lost from this node's log")
				t.Logf("reported as a lost tail: %+v", nd.LogCheck().Lost)
				return
			}
			if !errors.Is(err, cluster.ErrLogCorrupt) {
				t.Fatalf("err = %v, want ErrLogCorrupt", err)
			}
			t.Logf("start-up error: %v", err)
			mustContain(t, err.Error(), "stop this controller", filepath.Join(p.dataDir, "raft"))
		})
	}
}

// A zeroed tail: raft-wal stops at the first zero frame, so the entries
// after it vanish. Start-up must say which committed entries this node
// lost instead of starting silently with its state rolled back.
func TestZeroedTailWarnsWithLostRange(t *testing.T) {
	p := newPersistent(t)
	p.fill(t, 40)
	seg, b := p.segment(t)
	at := bytes.Index(b, []byte("train job-0030"))
	if at < 0 {
		t.Fatal("job-0030's entry not found")
	}
	clear(b[at-64:])
	if err := os.WriteFile(seg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// The state database of the run before had applied every entry.
	nd, err := p.start(t, cluster.DiskConfig{})
	if err != nil {
		t.Fatalf("start-up with a zeroed tail: %v", err)
	}
	check := nd.LogCheck()
	lost := check.Lost
	if lost.Count() == 0 || lost.From != check.Last+1 {
		t.Fatalf("lost = %+v with log %d..%d; want the range after the log's end", lost, check.First, check.Last)
	}
	// 40 submits after the bootstrap configuration entry and the first
	// leader's no-op: the last applied index was at least 41.
	if lost.To < 41 {
		t.Fatalf("lost range ends at %d, want the previous applied index (>= 41)", lost.To)
	}
	mustContain(t, p.logs.String(), "WARN",
		fmt.Sprintf("raft log ends at %d", check.Last),
		fmt.Sprintf("state.db had applied %d", lost.To),
		fmt.Sprintf("entries %d..%d were lost from this node's log", lost.From, lost.To))
	waitLeader(t, nd)
}

// A snapshot beyond the log's end covers the entries: nothing is lost.
func TestLostTailCountsSnapshot(t *testing.T) {
	p := newPersistent(t)
	nd, err := p.start(t, cluster.DiskConfig{})
	if err != nil {
		t.Fatal(err)
	}
	waitLeader(t, nd)
	submit(t, nd, "a")
	if err := nd.Snapshot(); err != nil {
		t.Fatal(err)
	}
	nd.close(t)
	nd, err = p.start(t, cluster.DiskConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if c := nd.LogCheck(); c.Lost.Count() != 0 || c.SnapshotIndex == 0 {
		t.Fatalf("LogCheck = %+v, want a snapshot and nothing lost", c)
	}
}

// mountTmpfs mounts a tmpfs of size bytes for the test (root only).
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs for the disk-full test")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): the disk-full test needs one", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// On a real small file system: once free space drops under the minimum,
// the leader refuses writes with ErrDiskFull (a single node has nobody to
// hand leadership to), and it accepts them again once space is freed.
func TestDiskFullRefusesWritesAndResumes(t *testing.T) {
	// raft-wal preallocates 64 MiB per segment, so the file system must
	// hold one with room to spare.
	dir := mountTmpfs(t, 96<<20)
	p := &persistent{dataDir: dir, logs: &testutil.SyncBuffer{}}
	const minFree = 16 << 20
	nd, err := p.start(t, cluster.DiskConfig{MinFree: minFree, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	waitLeader(t, nd)
	submit(t, nd, "before")

	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	ballast, err := os.Create(filepath.Join(dir, "ballast"))
	if err != nil {
		t.Fatal(err)
	}
	defer ballast.Close()
	if err := syscall.Fallocate(int(ballast.Fd()), 0, 0, free-minFree/2); err != nil {
		t.Fatalf("fill the file system: %v", err)
	}
	// Writes until the guard's next measurement still succeed; the one
	// refused must not be applied.
	var applyErr error
	attempt, refused := 0, ""
	testutil.WaitFor(t, 10*time.Second, func() bool {
		attempt++
		refused = fmt.Sprintf("during-%d", attempt)
		_, applyErr = nd.Apply(&gantrypb.SubmitJobCmd{JobId: refused, Spec: &gantrypb.JobSpec{Run: "x"}})
		return errors.Is(applyErr, cluster.ErrDiskFull)
	}, "Apply to be refused with ErrDiskFull")
	mustContain(t, applyErr.Error(), dir, "free, needs 16.0 MiB", "writes refused until space is freed")
	if _, full := nd.DiskFree(); !full {
		t.Fatal("DiskFree does not report the disk full")
	}
	mustContain(t, p.logs.String(), "out of disk space")

	if err := ballast.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(ballast.Name()); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool {
		_, applyErr = nd.Apply(&gantrypb.SubmitJobCmd{JobId: "after", Spec: &gantrypb.JobSpec{Run: "x"}})
		return applyErr == nil
	}, "writes to resume once space is freed")
	ids := nd.jobIDs(t)
	if !ids["before"] || !ids["after"] || ids[refused] {
		t.Fatalf("jobs = %v, want before and after, not the refused %s", ids, refused)
	}
	if free, full := nd.DiskFree(); full || free < minFree {
		t.Fatalf("DiskFree = %d, %v after space was freed", free, full)
	}
}

// With the guard off, raft-wal runs out of space when it preallocates its
// next 64 MiB segment, and then cannot append again in this process even
// after space is freed. The failure is reported (LogWriteFailed, a log
// line), and a restart once space is back resumes writes with every
// committed entry intact. This is what the guard's default avoids.
func TestWALWriteFailureReportedAndRestartRecovers(t *testing.T) {
	dir := mountTmpfs(t, 100<<20)
	p := &persistent{dataDir: dir, logs: &testutil.SyncBuffer{}}
	nd, err := p.start(t, cluster.DiskConfig{MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	waitLeader(t, nd)
	submit(t, nd, "committed")

	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	ballast, err := os.Create(filepath.Join(dir, "ballast"))
	if err != nil {
		t.Fatal(err)
	}
	defer ballast.Close()
	// Leave room for the rest of the first segment's data, not for a
	// second segment.
	if err := syscall.Fallocate(int(ballast.Fd()), 0, 0, int64(st.Bavail)*st.Bsize-8<<20); err != nil {
		t.Fatal(err)
	}
	// 1 MiB entries the FSM refuses as duplicates, so state.db stays
	// small and only the log grows: about 64 fill the first segment.
	big := &gantrypb.SubmitJobCmd{JobId: "committed", Spec: &gantrypb.JobSpec{Run: strings.Repeat("x", 1<<20)}}
	for i := 0; nd.LogWriteFailed() == nil; i++ {
		if i == 100 {
			t.Fatal("100 MiB of entries written without the log running out of space")
		}
		if _, err := nd.Apply(big); err != nil && !errors.Is(err, lifecycle.ErrJobExists) {
			break
		}
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { return nd.LogWriteFailed() != nil }, "the failed append to be reported")
	mustContain(t, p.logs.String(), "cannot append to the raft log", "until it is restarted")

	if err := ballast.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(ballast.Name()); err != nil {
		t.Fatal(err)
	}
	nd.close(t)
	nd, err = p.start(t, cluster.DiskConfig{MinFree: -1})
	if err != nil {
		t.Fatalf("restart after space was freed: %v", err)
	}
	waitLeader(t, nd)
	submit(t, nd, "after-restart")
	if ids := nd.jobIDs(t); !ids["committed"] || !ids["after-restart"] {
		t.Fatalf("jobs after restart = %v", ids)
	}
	if err := nd.LogWriteFailed(); err != nil {
		t.Fatalf("LogWriteFailed after restart = %v", err)
	}
}
