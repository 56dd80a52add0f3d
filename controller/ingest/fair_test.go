package ingest_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/agent/link"
	"github.com/gantry-ml/gantry/agent/spool"
	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/ingest"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// waitLong bounds every wait of these tests (they poll; nothing is timed).
const waitLong = 30 * time.Second

// countingApplier numbers the ingest entries proposed through it and
// remembers, for each record of one job, the entry that first carried it.
type countingApplier struct {
	*cluster.Node
	job string

	mu      sync.Mutex
	entries int
	at      map[uint64]int // seq of job → entry number
}

func (c *countingApplier) ApplyAsync(m proto.Message) (*cluster.Pending, error) {
	if cmd, ok := m.(*gantrypb.IngestCmd); ok {
		// Read the records as a voter will: the proposer passes them on
		// encoded.
		b, err := proto.Marshal(cmd)
		if err != nil {
			return nil, err
		}
		cmd = &gantrypb.IngestCmd{}
		if err := proto.Unmarshal(b, cmd); err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.entries++
		for _, r := range cmd.Records {
			if _, seen := c.at[r.Seq]; r.JobId == c.job && !seen {
				c.at[r.Seq] = c.entries
			}
		}
		c.mu.Unlock()
	}
	return c.Node.ApplyAsync(m)
}

func (c *countingApplier) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries
}

func (c *countingApplier) entryOf(seq uint64) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.at[seq]
	return n, ok
}

// linkHandler is the least an agent's link needs.
type linkHandler struct{ node string }

func (h linkHandler) Hello() *gantrypb.Hello {
	return &gantrypb.Hello{NodeId: h.node, Hostname: h.node}
}
func (h linkHandler) Start(*gantrypb.StartJob)   {}
func (h linkHandler) Cancel(*gantrypb.CancelJob) {}
func (h linkHandler) Acked(uint64)               {}

// line is a training line as the agent spools it: a point with 20 metrics.
func line(job string, step int) *gantrypb.Record {
	vals := make(map[string]float64, 20)
	for k := range 20 {
		vals[fmt.Sprintf("metric_%02d", k)] = float64(step) + float64(k)/100
	}
	return &gantrypb.Record{JobId: job, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{
		Step: proto.Int64(int64(step)), Ts: float64(step), Values: vals}}}
}

// TestFloodDoesNotDelayAnotherJob is the fairness property, counted in
// Raft entries rather than timed: while job A's backlog floods the link
// (far more than the window of unacked batches), every line of job B of
// the same agent is proposed within a bounded number of ingest entries
// after it reached the agent's spool.
//
// The bound: at most link.MaxInflight batches are unacked when B's line
// is read, and each of them fits in one entry (the entry cap is the
// batch's); B's line goes in the next batch, which may be the one being
// cut as it arrives. So at most MaxInflight+2 entries are proposed from
// the append to the entry carrying it. Sent in spool order, B's line would
// wait behind the whole backlog (over a hundred entries here).
func TestFloodDoesNotDelayAnotherJob(t *testing.T) {
	const (
		batchBytes = 8 << 10
		inflight   = 16 << 10
		backlog    = 2000 // of job A's lines, about 110 batches
		lines      = 10   // of job B
		bound      = link.MaxInflight + 2
	)
	ca := &countingApplier{job: "job-b", at: map[uint64]int{}}
	e := newEnvWith(t, func(n *cluster.Node) ingest.Applier { ca.Node = n; return ca }, nil, func(o *ingest.Options) {
		o.EntryBytes, o.InflightBytes = batchBytes, inflight
	})
	e.job("job-a", "agent1")
	e.job("job-b", "agent1")
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })

	stepA := 0
	topUp := func() {
		t.Helper()
		for sp.StreamPending("job-a") < backlog {
			recs := make([]*gantrypb.Record, 500)
			for i := range recs {
				stepA++
				recs[i] = line("job-a", stepA)
			}
			if _, err := sp.Append(recs...); err != nil {
				t.Fatal(err)
			}
		}
	}
	topUp()

	l := link.New(link.Options{Addrs: []string{e.srv.Addr().String()}, TLS: e.clientTLS(e.agent1), Spool: sp,
		Handler: linkHandler{node: "agent1"}, Log: logging.Discard(), MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond, BatchBytes: batchBytes, InflightBytes: inflight})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("link: %v", err)
		}
	})
	testutil.WaitFor(t, waitLong, func() bool { return ca.count() > bound }, "job A's flood flowing")

	for i := 1; i <= lines; i++ {
		topUp()
		before := ca.count()
		if _, err := sp.Append(line("job-b", i)); err != nil {
			t.Fatal(err)
		}
		seq := uint64(i)
		testutil.WaitFor(t, waitLong, func() bool { _, ok := ca.entryOf(seq); return ok }, fmt.Sprintf("job B's line %d proposed", i))
		at, _ := ca.entryOf(seq)
		if gap := at - before; gap > bound {
			t.Fatalf("job B's line %d was proposed %d ingest entries after it was spooled; the bound is %d", i, gap, bound)
		}
		if n := sp.StreamPending("job-a"); n == 0 {
			t.Fatalf("job A's backlog ran dry by line %d: the test measured no flood", i)
		}
	}
	// And B's lines are stored, each once, in order.
	testutil.WaitFor(t, waitLong, func() bool {
		var pts []*gantrypb.MetricPoint
		_ = e.st.View(func(tx *store.Tx) (err error) { pts, err = tx.Points("job-b", 0, 0); return err })
		return len(pts) == lines
	}, "job B's lines stored")
	var pts []*gantrypb.MetricPoint
	if err := e.st.View(func(tx *store.Tx) (err error) { pts, err = tx.Points("job-b", 0, 0); return err }); err != nil {
		t.Fatal(err)
	}
	for i, p := range pts {
		if p.Seq != uint64(i+1) || p.GetStep() != int64(i+1) {
			t.Fatalf("job B's point %d is seq %d step %d, want %d", i, p.Seq, p.GetStep(), i+1)
		}
	}
}
