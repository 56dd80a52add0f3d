//go:build linux

package e2e

// A small multi-host lab made of Linux network namespaces: every host is a
// namespace with its own address on one /24, wired by a veth pair into a
// bridge that lives in a dedicated "switch" namespace. Nothing is created
// in the root namespace, so parallel or stale runs never collide on
// addresses or interface names; deleting the namespaces removes every veth
// and the bridge with them.
//
// The test process reaches each host's API by dialing from inside that
// host's namespace (setns on a locked thread), so it still sees a host
// whose link is down: cuts only ever separate hosts from each other.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
)

// netnsPrefix starts the name of every namespace this file creates:
// "gnt-PID-RAND-HOST". The PID lets a later run find and remove the
// namespaces of a run that died without cleaning up.
const netnsPrefix = "gnt-"

// Ports every host uses; each host has its own address, so they never clash.
const (
	portHTTP = 7480
	portQUIC = 7481
	portRaft = 7482
	portSerf = 7483
)

// requireNetns skips the test unless it runs as root with a working
// `ip netns` (iproute2).
func requireNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netns tests need root (they create network namespaces with `ip netns`)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("netns tests need iproute2's `ip` command: not found in PATH")
	}
	if out, err := exec.Command("ip", "-V").CombinedOutput(); err != nil {
		t.Skipf("netns tests need iproute2: `ip -V` failed: %v: %s", err, bytes.TrimSpace(out))
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		t.Skipf("`ip netns` is unavailable here: %v: %s", err, bytes.TrimSpace(out))
	}
	if _, ok := sysSetns[runtime.GOARCH]; !ok {
		t.Skipf("netns tests dial into namespaces with setns(2), whose number is not known here for %s", runtime.GOARCH)
	}
}

// ip runs one iproute2 command and returns its error with its output.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// netnsPids lists the processes inside a namespace.
func netnsPids(ns string) ([]int, error) {
	out, err := exec.Command("ip", "netns", "pids", ns).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ip netns pids %s: %w: %s", ns, err, bytes.TrimSpace(out))
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// destroyNetns kills what still runs inside a namespace of ours (trainer
// processes outlive their agent on purpose) and deletes it, which also
// deletes its veth ends and, for the switch, the bridge.
func destroyNetns(ns string) error {
	pids, err := netnsPids(ns)
	if err != nil {
		return err
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill %d in %s: %w", pid, ns, err)
		}
	}
	return ip("netns", "del", ns)
}

// removeStaleNetns deletes namespaces left by earlier runs of these tests
// whose process is gone.
func removeStaleNetns(t *testing.T) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], netnsPrefix) {
			continue
		}
		name := f[0]
		parts := strings.SplitN(strings.TrimPrefix(name, netnsPrefix), "-", 2)
		pid, err := strconv.Atoi(parts[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // its run is still going
		}
		t.Logf("removing stale namespace %s of dead test process %d", name, pid)
		if err := destroyNetns(name); err != nil {
			t.Logf("stale namespace %s: %v", name, err)
		}
	}
}

// netLab is one test's set of hosts.
type netLab struct {
	t      *testing.T
	id     string // gnt-PID-RAND
	sw     string // the switch namespace holding the bridge
	hosts  map[string]*nsHost
	logDir string

	mu    sync.Mutex
	procs []*nsProc
	// token is the controllers' API token once one is known (the
	// Ansible rollout makes one); every host's HTTP client sends it.
	token string
}

// setToken makes every host's HTTP client send token from now on.
func (lab *netLab) setToken(token string) {
	lab.mu.Lock()
	defer lab.mu.Unlock()
	lab.token = token
}

// authTransport adds the lab's API token, when it has one, to requests.
type authTransport struct {
	lab  *netLab
	base http.RoundTripper
}

func (a *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	a.lab.mu.Lock()
	token := a.lab.token
	a.lab.mu.Unlock()
	if token != "" && req.Header.Get("Authorization") == "" {
		req = req.Clone(req.Context())
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return a.base.RoundTrip(req)
}

// nsHost is one namespace with one address.
type nsHost struct {
	lab  *netLab
	name string
	ns   string
	ip   string
	// http dials from inside the host's namespace.
	http *http.Client
}

// newNetLab creates the switch and one namespace per host (name → IPv4
// address on 10.77.0.0/24), all removed when the test ends.
func newNetLab(t *testing.T, hosts map[string]string) *netLab {
	t.Helper()
	requireNetns(t)
	removeStaleNetns(t)
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	lab := &netLab{
		t:      t,
		id:     fmt.Sprintf("%s%d-%s", netnsPrefix, os.Getpid(), hex.EncodeToString(rnd[:])),
		hosts:  map[string]*nsHost{},
		logDir: t.TempDir(),
	}
	lab.sw = lab.id + "-sw"
	var created []string
	t.Cleanup(func() {
		// Processes first, all at once (a graceful stop is not what is
		// tested here, and it costs seconds each), then their logs on
		// failure, then whatever they left behind with the namespaces.
		lab.mu.Lock()
		procs := append([]*nsProc(nil), lab.procs...)
		lab.mu.Unlock()
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.kill()
			}()
		}
		wg.Wait()
		if t.Failed() {
			for _, p := range procs {
				t.Logf("---- %s log (last 60 lines) ----\n%s", p.name, p.logTail(60))
			}
		}
		for i := len(created) - 1; i >= 0; i-- {
			if err := destroyNetns(created[i]); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	must := func(args ...string) {
		t.Helper()
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := ip("netns", "add", lab.sw); err != nil {
		// Root without CAP_SYS_ADMIN (an unprivileged container) lists
		// namespaces but cannot make them.
		t.Skipf("network namespaces are unavailable here: %v", err)
	}
	created = append(created, lab.sw)
	must("-n", lab.sw, "link", "add", "br0", "type", "bridge")
	must("-n", lab.sw, "link", "set", "br0", "up")

	names := make([]string, 0, len(hosts))
	for name := range hosts {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		h := &nsHost{lab: lab, name: name, ns: lab.id + "-" + name, ip: hosts[name]}
		must("netns", "add", h.ns)
		created = append(created, h.ns)
		port := "p-" + name
		must("-n", lab.sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
		must("-n", lab.sw, "link", "set", port, "master", "br0")
		must("-n", lab.sw, "link", "set", port, "up")
		must("-n", h.ns, "addr", "add", h.ip+"/24", "dev", "eth0")
		must("-n", h.ns, "link", "set", "eth0", "up")
		must("-n", h.ns, "link", "set", "lo", "up")
		nsPath := filepath.Join("/run/netns", h.ns)
		h.http = &http.Client{Transport: &authTransport{lab: lab, base: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialInNetns(ctx, nsPath, network, addr)
			},
			// A fresh connection per request: controllers are killed and
			// restarted, and a pooled connection to a dead one only adds noise.
			DisableKeepAlives: true,
		}}}
		lab.hosts[name] = h
	}
	return lab
}

// dialInNetns dials addr from inside the network namespace at nsPath. The
// socket keeps the namespace it was made in, so only the dial needs the
// thread switched.
func dialInNetns(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer self.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := setns(target); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if rerr := setns(self); rerr != nil {
			// Leave the thread locked: it dies with this goroutine instead
			// of running other goroutines in the wrong namespace.
			if conn != nil {
				conn.Close()
			}
			ch <- result{err: fmt.Errorf("setns back: %w", rerr)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{conn, err}
	}()
	r := <-ch
	return r.conn, r.err
}

// sysSetns is setns(2)'s number by architecture; package syscall does not
// define it, and golang.org/x/sys is not a direct dependency.
var sysSetns = map[string]uintptr{
	"amd64": 308, "arm64": 268, "riscv64": 268, "loong64": 268,
	"386": 346, "arm": 375, "ppc64": 350, "ppc64le": 350, "s390x": 339,
}

func setns(f *os.File) error {
	nr, ok := sysSetns[runtime.GOARCH]
	if !ok {
		return fmt.Errorf("setns: unknown syscall number on %s", runtime.GOARCH)
	}
	if _, _, errno := syscall.RawSyscall(nr, f.Fd(), syscall.CLONE_NEWNET, 0); errno != 0 {
		return errno
	}
	return nil
}

// cut takes the host's link down: it can reach nobody and nobody reaches it.
func (h *nsHost) cut() {
	h.lab.t.Helper()
	if err := ip("-n", h.ns, "link", "set", "eth0", "down"); err != nil {
		h.lab.t.Fatal(err)
	}
	h.lab.t.Logf("%s: link down", h.name)
}

// heal brings the host's link back up (the kernel restores its /24 route).
func (h *nsHost) heal() {
	h.lab.t.Helper()
	if err := ip("-n", h.ns, "link", "set", "eth0", "up"); err != nil {
		h.lab.t.Fatal(err)
	}
	h.lab.t.Logf("%s: link up", h.name)
}

// addr is host:port on this host.
func (h *nsHost) addr(port int) string { return net.JoinHostPort(h.ip, strconv.Itoa(port)) }

// api is a client for the controller API on this host.
func (h *nsHost) api() *client.Client {
	return client.New("http://"+h.addr(portHTTP), client.WithHTTPClient(h.http))
}

// nsProc is one binary running inside a host's namespace; it can be
// killed and started again with the same arguments.
type nsProc struct {
	host    *nsHost
	name    string
	bin     string
	args    []string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// startProc starts bin with args in host's namespace, its output appended
// to a log file; it is killed when the test ends.
func (lab *netLab) startProc(host *nsHost, name, bin string, args ...string) *nsProc {
	lab.t.Helper()
	p := &nsProc{host: host, name: name, bin: bin, args: args, logPath: filepath.Join(lab.logDir, name+".log")}
	p.start()
	lab.mu.Lock()
	lab.procs = append(lab.procs, p)
	lab.mu.Unlock()
	return p
}

// start (re)starts the process.
func (p *nsProc) start() {
	t := p.host.lab.t
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		select {
		case <-p.done:
		default:
			t.Fatalf("%s is already running", p.name)
		}
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "=== %s start %s in %s: %s %s\n", time.Now().Format(time.RFC3339Nano), p.name, p.host.ns,
		filepath.Base(p.bin), strings.Join(p.args, " "))
	// `ip netns exec` execs the binary in place, so signals to cmd reach it.
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.host.ns, p.bin}, p.args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Die with the test process, even when it is killed without cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(logf, "=== %s exit %s: %v\n", time.Now().Format(time.RFC3339Nano), p.name, err)
		logf.Close()
		close(done)
	}()
}

func (p *nsProc) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// kill sends SIGKILL and waits for the exit.
func (p *nsProc) kill() {
	cmd, done := p.current()
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop sends SIGTERM and waits up to timeout, then SIGKILL. It reports
// whether the process stopped on SIGTERM.
func (p *nsProc) stop(timeout time.Duration) bool {
	cmd, done := p.current()
	select {
	case <-done:
		return true
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
		return false
	}
}

// logTail returns the last n lines of the process's log.
func (p *nsProc) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logCount counts log lines containing s.
func (p *nsProc) logCount(s string) int {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), s)
}

// netCluster is three controllers and two agents, each on its own host.
type netCluster struct {
	t      *testing.T
	lab    *netLab
	tlsDir string
	ctrls  []*netNode
	agents []*netNode
}

// netNode is one controller or agent.
type netNode struct {
	name    string
	host    *nsHost
	proc    *nsProc
	dataDir string
}

func (n *netNode) api() *client.Client { return n.host.api() }

// Cluster layout: controllers c1..c3 on .11–.13, agents a1, a2 on .21, .22.
var netHosts = map[string]string{
	"c1": "10.77.0.11", "c2": "10.77.0.12", "c3": "10.77.0.13",
	"a1": "10.77.0.21", "a2": "10.77.0.22",
}

// startNetCluster brings up the cluster and waits for a leader that every
// controller agrees on and for both agents up and connected to it.
func startNetCluster(t *testing.T) *netCluster {
	t.Helper()
	return startNetClusterWith(t)
}

// startNetClusterWith is startNetCluster with extra controller flags,
// which win over the defaults (the flag package keeps the last value).
func startNetClusterWith(t *testing.T, ctrlArgs ...string) *netCluster {
	t.Helper()
	lab := newNetLab(t, netHosts)
	c := &netCluster{t: t, lab: lab, tlsDir: t.TempDir()}

	ctl := filepath.Join(binDir, "gantry-controller")
	tlsCmd := func(args ...string) {
		if out, err := exec.Command(ctl, append([]string{"tls"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("gantry-controller tls %v: %v: %s", args, err, out)
		}
	}
	tlsCmd("init", c.tlsDir)
	for _, name := range []string{"c1", "c2", "c3"} {
		tlsCmd("issue", "--role", "controller", c.tlsDir, name)
	}
	tlsCmd("issue", "--role", "agent", c.tlsDir, "a1")
	tlsCmd("issue", "--role", "agent", c.tlsDir, "a2")

	var join []string
	for _, name := range []string{"c1", "c2", "c3"} {
		join = append(join, lab.hosts[name].addr(portSerf))
	}
	joinList := strings.Join(join, ",")
	for _, name := range []string{"c1", "c2", "c3"} {
		h := lab.hosts[name]
		n := &netNode{name: name, host: h, dataDir: t.TempDir()}
		args := []string{"-node-id", name, "-data-dir", n.dataDir, "-tls-dir", c.tlsDir,
			"-http-addr", h.addr(portHTTP), "-quic-addr", h.addr(portQUIC),
			"-raft-addr", h.addr(portRaft), "-serf-addr", h.addr(portSerf),
			"-bootstrap-expect", "3", "-join", joinList, "-lost-grace", "60s",
			// Tokenless on purpose: the API then answers only to its own
			// address, which is what clients and forwarding followers use.
			"-insecure-no-token"}
		n.proc = lab.startProc(h, name, ctl, append(args, ctrlArgs...)...)
		c.ctrls = append(c.ctrls, n)
	}
	for _, name := range []string{"a1", "a2"} {
		h := lab.hosts[name]
		n := &netNode{name: name, host: h, dataDir: t.TempDir()}
		n.proc = lab.startProc(h, name, filepath.Join(binDir, "gantry-agent"),
			"-node-id", name, "-data-dir", n.dataDir, "-tls-dir", c.tlsDir,
			"-serf-addr", h.addr(portSerf), "-join", joinList, "-controller", "", "-fake-gpus", "2",
			"-job-user", "root") // the agents' data dirs are 0700 temp dirs
		c.agents = append(c.agents, n)
	}
	start := time.Now()
	leader := c.waitLeader(30*time.Second, c.ctrls...)
	c.waitAgentsUp(30*time.Second, leader)
	t.Logf("cluster up in %s: leader %s", time.Since(start).Round(time.Millisecond), leader.name)
	return c
}

// others returns the controllers other than n.
func (c *netCluster) others(n *netNode) []*netNode {
	var out []*netNode
	for _, o := range c.ctrls {
		if o != n {
			out = append(out, o)
		}
	}
	return out
}

// localStatus is one controller's own Raft view (/v1/cluster?local=1:
// no fan-out to peers, so it answers even when peers cannot).
func localStatus(n *netNode) (apiv1.Cluster, error) {
	var st apiv1.Cluster
	err := getJSON(n.host.http, "http://"+n.host.addr(portHTTP)+"/v1/cluster?local=1", &st)
	return st, err
}

// waitLeader waits until exactly one of nodes is the Raft leader and all
// of them name it, with three voters in their configuration.
func (c *netCluster) waitLeader(timeout time.Duration, nodes ...*netNode) *netNode {
	c.t.Helper()
	var leader *netNode
	var last string
	ok := pollUntil(timeout, 20*time.Millisecond, func() bool {
		leader = nil
		ids := map[string]bool{}
		for _, n := range nodes {
			st, err := localStatus(n)
			if err != nil {
				last = fmt.Sprintf("%s: %v", n.name, err)
				return false
			}
			if len(st.Peers) != 3 {
				last = fmt.Sprintf("%s: %d raft peers", n.name, len(st.Peers))
				return false
			}
			ids[st.LeaderID] = true
			if st.State == "Leader" {
				if leader != nil {
					last = "two leaders"
					return false
				}
				leader = n
			}
		}
		if leader == nil || len(ids) != 1 || !ids[leader.name] {
			last = fmt.Sprintf("leader views %v", ids)
			return false
		}
		return true
	})
	if !ok {
		c.t.Fatalf("no agreed leader among %d controllers after %s (last: %s)", len(nodes), timeout, last)
	}
	return leader
}

// waitAgentsUp waits until every agent is up and connected to leader.
func (c *netCluster) waitAgentsUp(timeout time.Duration, leader *netNode) {
	c.t.Helper()
	var last string
	ok := pollUntil(timeout, 20*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		nodes, err := leader.api().Nodes(ctx)
		if err != nil {
			last = err.Error()
			return false
		}
		up := 0
		for _, n := range nodes {
			if n.State == "up" && n.Connected {
				up++
			}
		}
		last = fmt.Sprintf("%+v", nodes)
		return up == len(c.agents)
	})
	if !ok {
		c.t.Fatalf("agents not up and connected to %s after %s: %s", leader.name, timeout, last)
	}
}

// pollUntil calls cond every interval until it holds or timeout passes.
func pollUntil(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}

// submit submits spec through n, failing the test on error.
func submit(t *testing.T, n *netNode, spec apiv1.JobSpec) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := n.api().Submit(ctx, spec)
	if err != nil {
		t.Fatalf("submit %q via %s: %v", spec.Name, n.name, err)
	}
	return id
}

// getJob reads a job from n (zero Job and an error when it cannot).
func getJob(n *netNode, id string) (apiv1.Job, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return n.api().Job(ctx, id)
}

// waitJobTerminal polls n until the job is terminal there.
func waitJobTerminal(t *testing.T, n *netNode, id string, timeout time.Duration) apiv1.Job {
	t.Helper()
	var job apiv1.Job
	var lastErr error
	if !pollUntil(timeout, 50*time.Millisecond, func() bool {
		job, lastErr = getJob(n, id)
		return lastErr == nil && apiv1.IsTerminal(job.State)
	}) {
		t.Fatalf("job %s not terminal on %s after %s: state %q, points %d, err %v", id, n.name, timeout, job.State, job.Points, lastErr)
	}
	return job
}

// pointSet is a job's stored points as one node serves them.
type pointSet struct {
	count  int
	digest string // sha256 over seq, step and values, in seq order
	steps  []int64
}

// rawPoint is a stored point with its values left as the JSON the
// controller wrote (encoding/json sorts map keys, so equal values are
// equal bytes): decoding 100,000s of maps would dominate the test's time.
type rawPoint struct {
	Seq    uint64          `json:"seq"`
	Step   *int64          `json:"step"`
	Values json.RawMessage `json:"values"`
}

// readPoints pages through a job's points on n (GET /v1/jobs/{id}/metrics,
// 10,000 a page) and checks that seqs strictly increase.
func readPoints(n *netNode, id string) (pointSet, error) {
	var ps pointSet
	h := sha256.New()
	after := uint64(0)
	for {
		var page struct {
			Points []rawPoint `json:"points"`
			Next   uint64     `json:"next"`
		}
		u := fmt.Sprintf("http://%s/v1/jobs/%s/metrics?after=%d&limit=10000", n.host.addr(portHTTP), id, after)
		if err := getJSON(n.host.http, u, &page); err != nil {
			return ps, fmt.Errorf("%s: metrics of %s after %d: %w", n.name, id, after, err)
		}
		if len(page.Points) == 0 {
			ps.digest = hex.EncodeToString(h.Sum(nil))
			return ps, nil
		}
		for _, p := range page.Points {
			if p.Seq <= after {
				return ps, fmt.Errorf("%s: job %s: seq %d after %d", n.name, id, p.Seq, after)
			}
			after = p.Seq
			step := int64(-1)
			if p.Step != nil {
				step = *p.Step
			}
			ps.count++
			ps.steps = append(ps.steps, step)
			fmt.Fprintf(h, "%d,%d,%s\n", p.Seq, step, p.Values)
		}
		if page.Next != after {
			return ps, fmt.Errorf("%s: job %s: page ends at seq %d but next is %d", n.name, id, after, page.Next)
		}
	}
}

// getJSON GETs u with hc and decodes a 200 answer into out.
func getJSON(hc *http.Client, u string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// checkSteps reports the first problem with steps not being exactly
// 1..want in order, once each.
func checkSteps(steps []int64, want int) error {
	if len(steps) != want {
		seen := map[int64]int{}
		var dups []int64
		for _, s := range steps {
			seen[s]++
			if seen[s] == 2 && len(dups) < 5 {
				dups = append(dups, s)
			}
		}
		var missing []int64
		for s := int64(1); s <= int64(want) && len(missing) < 5; s++ {
			if seen[s] == 0 {
				missing = append(missing, s)
			}
		}
		return fmt.Errorf("%d points, want %d (duplicated steps %v, missing steps %v)", len(steps), want, dups, missing)
	}
	for i, s := range steps {
		if s != int64(i+1) {
			return fmt.Errorf("point %d has step %d, want %d (a gap, a duplicate or out of order)", i, s, i+1)
		}
	}
	return nil
}

// checkFinal checks a terminal job: succeeded, with final metrics equal
// to the last line the trainer wrote.
func checkFinal(t *testing.T, where string, job apiv1.Job, want map[string]float64) {
	t.Helper()
	if job.State != apiv1.StateSucceeded {
		t.Errorf("%s: job %s ended %s (error %q, exit %v), want succeeded", where, job.ID, job.State, job.Error, job.ExitCode)
		return
	}
	for k, v := range want {
		if got, ok := job.FinalMetrics[k]; !ok || math.Abs(got-v) > 1e-9 {
			t.Errorf("%s: job %s final_metrics[%s] = %v (present %v), want %v; final_metrics %v", where, job.ID, k, got, ok, v, job.FinalMetrics)
		}
	}
}

// trainerRounds is a job command that appends rounds×perRound metric
// lines, one round at a time with a short pause, and ends with step
// rounds×perRound and loss = 100000.5 − step.
func trainerRounds(rounds, perRound int, pause string) string {
	return fmt.Sprintf(`for r in $(seq 0 %d); do awk -v r=$r 'BEGIN{for(i=1;i<=%d;i++){s=r*%d+i; printf("{\"step\":%%d,\"loss\":%%d.5}\n", s, 100000-s)}}' >> "$GANTRY_METRICS_FILE"; sleep %s; done`,
		rounds-1, perRound, perRound, pause)
}

// trainerLines is a job command that appends n lines, one every pause
// seconds (python3, a dependency of the project already: a shell loop
// forks a `sleep` per line and drifts far behind on a busy machine).
func trainerLines(n int, pause float64) string {
	return fmt.Sprintf(`python3 -c '
import os, time
with open(os.environ["GANTRY_METRICS_FILE"], "a") as f:
    for i in range(1, %d + 1):
        f.write("{\"step\": %%d, \"loss\": %%d.5}\n" %% (i, 100000 - i))
        f.flush()
        time.sleep(%g)
'`, n, pause)
}

// finalFor is the final metrics trainerRounds and trainerLines end with.
func finalFor(lastStep int) map[string]float64 {
	return map[string]float64{"step": float64(lastStep), "loss": float64(100000-lastStep) + 0.5}
}
