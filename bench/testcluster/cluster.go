// Package cluster starts a Gantry controller cluster of real
// gantry-controller processes on loopback (each on its own ports, joined
// through serf with -bootstrap-expect) and reads what a benchmark needs
// from it: the leader, stored point counts per node, Prometheus gauges and
// process CPU.
package testcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/bench/proc"
	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
	"github.com/gantry-ml/gantry/internal/ctxwait"
	"github.com/gantry-ml/gantry/internal/tlsutil"
)

// Sentinel errors.
var (
	// ErrNoLeader means no single leader emerged in time.
	ErrNoLeader = errors.New("cluster: no leader")
	// ErrNoMetric means a Prometheus scrape lacked the asked-for metric.
	ErrNoMetric = errors.New("cluster: metric not exported")
)

// Options configures Start.
type Options struct {
	// BinDir holds gantry-controller.
	BinDir string
	// Dir is where data directories and certificates go.
	Dir string
	// Nodes is the cluster size (3).
	Nodes int
	// Group owns the processes.
	Group *proc.Group
	// Pprof gives every controller a -pprof-addr.
	Pprof bool
	// LogLevel is the controllers' -log-level (default warn).
	LogLevel string
}

// Node is one controller process.
type Node struct {
	ID    string
	HTTP  string // host:port
	QUIC  string
	Raft  string
	Serf  string
	Pprof string // "" when profiling is off
	Proc  *proc.Process
	API   *client.Client
}

// Cluster is a running controller cluster.
type Cluster struct {
	Nodes  []*Node
	TLSDir string
}

// Start creates a CA and a controller certificate for each node, starts
// opts.Nodes controllers and waits until they agree on one leader.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	c := &Cluster{TLSDir: filepath.Join(opts.Dir, "tls")}
	if err := tlsutil.InitCA(c.TLSDir); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "warn"
	}
	perNode := 5
	ports, err := FreePorts(opts.Nodes * perNode)
	if err != nil {
		return nil, err
	}
	addr := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	for i := 0; i < opts.Nodes; i++ {
		p := ports[i*perNode:]
		n := &Node{ID: fmt.Sprintf("c%d", i), HTTP: addr(p[0]), QUIC: addr(p[1]), Raft: addr(p[2]), Serf: addr(p[3])}
		if opts.Pprof {
			n.Pprof = addr(p[4])
		}
		n.API = client.New("http://" + n.HTTP)
		// Each controller proves its own node id to the others on Raft.
		if _, err := tlsutil.Issue(c.TLSDir, tlsutil.RoleController, n.ID, nil); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		args := []string{
			"-node-id", n.ID, "-data-dir", filepath.Join(opts.Dir, n.ID),
			"-http-addr", n.HTTP, "-quic-addr", n.QUIC, "-raft-addr", n.Raft, "-serf-addr", n.Serf,
			"-bootstrap-expect", strconv.Itoa(opts.Nodes), "-tls-dir", c.TLSDir, "-tls-name", n.ID, "-log-level", opts.LogLevel,
		}
		if i > 0 {
			args = append(args, "-join", c.Nodes[0].Serf)
		}
		if n.Pprof != "" {
			args = append(args, "-pprof-addr", n.Pprof)
		}
		n.Proc, err = opts.Group.Start("controller-"+n.ID, filepath.Join(opts.BinDir, "gantry-controller"), args...)
		if err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
		if err := waitHTTP(ctx, n, 30*time.Second); err != nil {
			return nil, err
		}
	}
	if _, err := c.Leader(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	return c, nil
}

// waitHTTP waits until a node answers /v1/cluster.
func waitHTTP(ctx context.Context, n *Node, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if !n.Proc.Alive() {
			return fmt.Errorf("%w: controller %s: %v\n%s", proc.ErrExited, n.ID, n.Proc.Err(), n.Proc.Tail(2000))
		}
		if _, err := n.API.Cluster(ctx); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster: controller %s did not answer in %s:\n%s", n.ID, timeout, n.Proc.Tail(2000))
		}
		if err := ctxwait.Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// Leader waits until every node names the same leader with three voters
// and returns it.
func (c *Cluster) Leader(ctx context.Context, timeout time.Duration) (*Node, error) {
	deadline := time.Now().Add(timeout)
	for {
		if leader := c.agreedLeader(ctx); leader != nil {
			return leader, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w after %s", ErrNoLeader, timeout)
		}
		if err := ctxwait.Sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

func (c *Cluster) agreedLeader(ctx context.Context) *Node {
	var leaderID string
	for _, n := range c.Nodes {
		st, err := n.API.Cluster(ctx)
		if err != nil || st.LeaderID == "" || len(st.Peers) != len(c.Nodes) {
			return nil
		}
		if leaderID != "" && st.LeaderID != leaderID {
			return nil
		}
		leaderID = st.LeaderID
	}
	for _, n := range c.Nodes {
		if n.ID == leaderID {
			return n
		}
	}
	return nil
}

// Submit submits a job through any node (followers forward writes to the
// leader), retrying for up to 30 s: on an overloaded machine leadership
// can move, and a write caught by the election fails with 503.
func (c *Cluster) Submit(ctx context.Context, spec apiv1.JobSpec) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		id, err := c.Nodes[i%len(c.Nodes)].API.Submit(ctx, spec)
		if err == nil {
			return id, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("cluster: submit %s: %w", spec.Name, err)
		}
		if err := ctxwait.Sleep(ctx, 100*time.Millisecond); err != nil {
			return "", err
		}
	}
}

// QUICAddrs lists every node's agent-link address.
func (c *Cluster) QUICAddrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.QUIC
	}
	return out
}

// IssueAgent issues an agent certificate signed by the cluster CA.
func (c *Cluster) IssueAgent(name string) (tlsutil.Files, error) {
	f, err := tlsutil.Issue(c.TLSDir, tlsutil.RoleAgent, name, nil)
	if err != nil {
		return tlsutil.Files{}, fmt.Errorf("cluster: %w", err)
	}
	return f, nil
}

// Alive returns an error naming the first controller that has exited.
func (c *Cluster) Alive() error {
	for _, n := range c.Nodes {
		if !n.Proc.Alive() {
			return fmt.Errorf("%w: controller %s: %v\n%s", proc.ErrExited, n.ID, n.Proc.Err(), n.Proc.Tail(2000))
		}
	}
	return nil
}

// StoredPoints sums the points of every job as this node's own store has
// them (a local read: it counts what this node has applied).
func (n *Node) StoredPoints(ctx context.Context) (uint64, error) {
	jobs, err := n.API.Jobs(ctx)
	if err != nil {
		return 0, fmt.Errorf("cluster: jobs on %s: %w", n.ID, err)
	}
	var sum uint64
	for _, j := range jobs {
		sum += j.Points
	}
	return sum, nil
}

// Status is the node's /v1/cluster view.
func (n *Node) Status(ctx context.Context) (apiv1.Cluster, error) { return n.API.Cluster(ctx) }

// CPU is the controller process's CPU time so far.
func (n *Node) CPU() (time.Duration, error) { return proc.CPU(n.Proc.PID()) }

// Scrape reads the node's /metrics and returns the unlabelled samples by
// name.
func (n *Node) Scrape(ctx context.Context) (map[string]float64, error) {
	return Scrape(ctx, "http://"+n.HTTP+"/metrics")
}

// Scrape reads a Prometheus text endpoint and returns its unlabelled
// samples by name (labelled series are skipped: the benchmark reads only
// plain gauges).
func Scrape(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("cluster: scrape: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cluster: scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("cluster: scrape %s: %s", url, resp.Status)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || strings.Contains(line, "{") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue // NaN and friends parse; anything else is not a sample
		}
		out[f[0]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cluster: read metrics: %w", err)
	}
	return out, nil
}

// Metric returns one sample from a scrape, or ErrNoMetric.
func Metric(m map[string]float64, name string) (float64, error) {
	v, ok := m[name]
	if !ok {
		return 0, fmt.Errorf("%w: %s", ErrNoMetric, name)
	}
	return v, nil
}

// FreePorts returns n distinct loopback ports that were free for both TCP
// and UDP a moment ago (serf uses both on one port; QUIC uses UDP).
func FreePorts(n int) ([]int, error) {
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	var ports []int
	for tries := 0; len(ports) < n && tries < n*50; tries++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("cluster: free port: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			ln.Close()
			continue
		}
		held = append(held, ln, pc)
		ports = append(ports, port)
	}
	if len(ports) < n {
		return nil, fmt.Errorf("cluster: found only %d free ports of %d", len(ports), n)
	}
	return ports, nil
}

// Profile fetches a CPU profile of seconds from a node's pprof endpoint
// and saves it to path.
func (n *Node) Profile(ctx context.Context, seconds int, path string) error {
	return n.fetchPprof(ctx, fmt.Sprintf("profile?seconds=%d", seconds), path)
}

// HeapProfile fetches a heap profile (after a GC, so in-use figures are
// live objects) and saves it to path.
func (n *Node) HeapProfile(ctx context.Context, path string) error {
	return n.fetchPprof(ctx, "heap?gc=1", path)
}

func (n *Node) fetchPprof(ctx context.Context, what, path string) error {
	if n.Pprof == "" {
		return errors.New("cluster: profiling is off")
	}
	url := fmt.Sprintf("http://%s/debug/pprof/%s", n.Pprof, what)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("cluster: profile: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cluster: profile %s: %w", n.ID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cluster: profile %s: %s", n.ID, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("cluster: profile: %w", err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("cluster: profile %s: %w", n.ID, err)
	}
	return f.Close()
}
