// Package etcdpeer runs a 3-member etcd cluster (Debian's etcd-server) on
// loopback and stores metric points in it through etcd's JSON gateway, with
// the same number of points per Raft entry as Gantry: one put whose value
// holds a batch of encoded points, so one Raft entry per batch. No etcd Go
// client is needed.
package etcdpeer

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/bench/proc"
	"github.com/gantry-ml/gantry/bench/simagent"
	"github.com/gantry-ml/gantry/bench/testcluster"
)

// Sentinel errors.
var (
	// ErrNotInstalled means no etcd binary was found.
	ErrNotInstalled = errors.New("etcdpeer: etcd not installed (apt-get install etcd-server)")
	// ErrNoLeader means the members did not agree on a leader in time.
	ErrNoLeader = errors.New("etcdpeer: no leader")
)

// Member is one etcd process.
type Member struct {
	Name   string
	Client string // http://127.0.0.1:port
	Proc   *proc.Process
	id     string
}

// Cluster is a running etcd cluster.
type Cluster struct {
	Members []*Member
	hc      *http.Client
}

// Start starts n etcd members under dir and waits for a leader.
func Start(ctx context.Context, g *proc.Group, dir string, n int) (*Cluster, error) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, ErrNotInstalled
	}
	ports, err := testcluster.FreePorts(2 * n)
	if err != nil {
		return nil, err
	}
	var initial []string
	for i := 0; i < n; i++ {
		initial = append(initial, fmt.Sprintf("e%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	c := &Cluster{hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}}
	for i := 0; i < n; i++ {
		m := &Member{Name: fmt.Sprintf("e%d", i), Client: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])}
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		m.Proc, err = g.Start("etcd-"+m.Name, bin,
			"--name", m.Name, "--data-dir", filepath.Join(dir, m.Name),
			"--listen-client-urls", m.Client, "--advertise-client-urls", m.Client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", "gantry-bench",
			"--initial-cluster-state", "new",
			// Batches of points are up to ~1 MiB; the quota must hold a
			// whole run without compaction.
			"--max-request-bytes", strconv.Itoa(16<<20), "--quota-backend-bytes", strconv.Itoa(8<<30),
			"--logger", "zap", "--log-level", "warn")
		if err != nil {
			return nil, err
		}
		c.Members = append(c.Members, m)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := c.Leader(ctx); err == nil {
			return c, nil
		} else if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: %v", ErrNoLeader, err)
		}
		for _, m := range c.Members {
			if !m.Proc.Alive() {
				return nil, fmt.Errorf("%w: etcd %s: %v\n%s", proc.ErrExited, m.Name, m.Proc.Err(), m.Proc.Tail(2000))
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// post sends a JSON gateway request and decodes the answer into out.
func (c *Cluster) post(ctx context.Context, url string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("etcdpeer: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("etcdpeer: %s: %w", url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("etcdpeer: %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcdpeer: %s: %s: %s", url, resp.Status, truncate(data, 300))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("etcdpeer: %s: decode: %w", url, err)
	}
	return nil
}

type header struct {
	MemberID string `json:"member_id"`
	Revision string `json:"revision"`
}

// Leader returns the member that leads, as every member sees it.
func (c *Cluster) Leader(ctx context.Context) (*Member, error) {
	leader := ""
	for _, m := range c.Members {
		var st struct {
			Header header `json:"header"`
			Leader string `json:"leader"`
		}
		if err := c.post(ctx, m.Client+"/v3/maintenance/status", []byte("{}"), &st); err != nil {
			return nil, err
		}
		if st.Leader == "" || st.Leader == "0" || (leader != "" && st.Leader != leader) {
			return nil, ErrNoLeader
		}
		leader = st.Leader
		m.id = st.Header.MemberID
	}
	for _, m := range c.Members {
		if m.id == leader {
			return m, nil
		}
	}
	return nil, ErrNoLeader
}

// Revision is a member's own current revision (a serializable read, so it
// is what that member has applied, not the leader's view).
func (c *Cluster) Revision(ctx context.Context, m *Member) (uint64, error) {
	body := fmt.Sprintf(`{"key":%q,"serializable":true,"count_only":true}`, base64.StdEncoding.EncodeToString([]byte("/")))
	var out struct {
		Header header `json:"header"`
	}
	if err := c.post(ctx, m.Client+"/v3/kv/range", []byte(body), &out); err != nil {
		return 0, err
	}
	rev, err := strconv.ParseUint(out.Header.Revision, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("etcdpeer: revision %q: %w", out.Header.Revision, err)
	}
	return rev, nil
}

// Result is what a load stored.
type Result struct {
	Points uint64
	Puts   uint64
	// Elapsed runs from the first put to the moment every member had
	// applied the last one.
	Elapsed time.Duration
	// ValueBytes is the size of one put's value (before base64).
	ValueBytes int
}

// PointsPerSecond is the rate at which points were stored on all members.
func (r Result) PointsPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Points) / r.Elapsed.Seconds()
}

// Load stores batches of batch points, one put per batch (one Raft
// entry), from concurrency clients to the leader for d, round-robin over
// jobs keys, then waits until every member has applied them all.
func (c *Cluster) Load(ctx context.Context, batch, jobs, concurrency int, d time.Duration) (Result, error) {
	leader, err := c.Leader(ctx)
	if err != nil {
		return Result{}, err
	}
	// The value is the batch's points encoded back to back, as a chunk of
	// points per key would be.
	var value []byte
	for i := 0; i < batch; i++ {
		p := simagent.Point("etcd", int64(i+1), simagent.Now()).GetPoint()
		p.Seq = uint64(i + 1)
		b, err := proto.MarshalOptions{}.MarshalAppend(nil, p)
		if err != nil {
			return Result{}, fmt.Errorf("etcdpeer: %w", err)
		}
		value = protoAppendLen(value, b)
	}
	val64 := base64.StdEncoding.EncodeToString(value)
	var (
		puts     atomic.Uint64
		seq      atomic.Uint64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	start := time.Now()
	stopAt := start.Add(d)
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var body bytes.Buffer
			for time.Now().Before(stopAt) && ctx.Err() == nil {
				n := seq.Add(1)
				key := fmt.Sprintf("/points/job-%04d/%020d", n%uint64(jobs), n)
				body.Reset()
				body.WriteString(`{"key":"`)
				body.WriteString(base64.StdEncoding.EncodeToString([]byte(key)))
				body.WriteString(`","value":"`)
				body.WriteString(val64)
				body.WriteString(`"}`)
				if err := c.post(ctx, leader.Client+"/v3/kv/put", body.Bytes(), nil); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				puts.Add(1)
			}
		}()
	}
	wg.Wait()
	res := Result{Puts: puts.Load(), Points: puts.Load() * uint64(batch), ValueBytes: len(value)}
	if firstErr != nil {
		return res, firstErr
	}
	// Stored on all members: wait for every member to reach the leader's
	// revision.
	want, err := c.Revision(ctx, leader)
	if err != nil {
		return res, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, m := range c.Members {
		for {
			rev, err := c.Revision(ctx, m)
			if err != nil {
				return res, err
			}
			if rev >= want {
				break
			}
			if time.Now().After(deadline) {
				return res, fmt.Errorf("etcdpeer: member %s stuck at revision %d of %d", m.Name, rev, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// protoAppendLen appends b with a varint length prefix.
func protoAppendLen(dst, b []byte) []byte {
	n := uint64(len(b))
	for n >= 0x80 {
		dst = append(dst, byte(n)|0x80)
		n >>= 7
	}
	dst = append(dst, byte(n))
	return append(dst, b...)
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}
