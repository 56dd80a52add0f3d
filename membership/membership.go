// Package membership is Gantry's serf cluster: controllers and agents are
// members with tags (role, addresses, GPUs). Controllers use it to find each
// other (Raft voters, bootstrap, leader forwarding) and to notice failed
// agents; agents use it to find controllers.
package membership

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/serf/serf"

	"github.com/gantry-ml/gantry/internal/logging"
)

// Roles.
const (
	RoleController = "controller"
	RoleAgent      = "agent"
)

// Tag keys. Only append.
const (
	TagRole          = "role"
	TagRaftAddr      = "raft"
	TagQUICAddr      = "quic"
	TagHTTPAddr      = "http"
	TagGPUs          = "gpus"
	TagExpect        = "expect"
	TagRaftBootstrap = "bootstrapped"
	// TagFeatures lists, comma-separated, what a controller's release
	// reads in Raft entries that older ones do not (FeatureFlatPoints).
	TagFeatures = "features"
)

// Member statuses as the API shows them.
const (
	StatusAlive   = "alive"
	StatusFailed  = "failed"
	StatusLeft    = "left"
	StatusLeaving = "leaving"
)

// ErrBadKey is returned for a gossip key that is not base64 of 16, 24 or 32 bytes.
var ErrBadKey = errors.New("membership: gossip key must be base64 of 16, 24 or 32 bytes")

// Member is one member of the cluster.
type Member struct {
	Name     string
	Addr     string // gossip address
	Role     string
	Status   string
	RaftAddr string
	QUICAddr string
	HTTPAddr string
	GPUs     int
	Expect   int
	// Bootstrapped is set on controllers that have Raft state.
	Bootstrapped bool
	// Features is what the member's release reads (TagFeatures).
	Features []string
}

// FeatureFlatPoints: the controller applies Raft entries whose metric
// points are in the flat form (MetricPoint.key_idx with IngestCmd.keys).
const FeatureFlatPoints = "flat_points"

// FeatureRequeue: the controller applies the requeue health policy (a
// job's exit queues it again as its next attempt). An older release would
// end the job instead, so the leader takes no spec that asks for it until
// every voter has this feature.
const FeatureRequeue = "requeue"

// Has reports whether the member's release has feature f.
func (m Member) Has(f string) bool { return slices.Contains(m.Features, f) }

// Config configures a member.
type Config struct {
	Name string
	// BindAddr is the gossip address (host:port), TCP and UDP.
	BindAddr string
	// Advertise is the address others reach this member at; defaults to BindAddr.
	Advertise string
	Tags      map[string]string
	// Key is the base64 gossip encryption key; empty means no encryption.
	Key string
	// Fast shortens failure detection (tests).
	Fast bool
	Log  *slog.Logger
}

// Node is this process's membership.
type Node struct {
	serf   *serf.Serf
	events chan serf.Event
	log    *slog.Logger

	mu       sync.Mutex
	tags     map[string]string
	watchers []chan struct{}
	done     chan struct{}
}

// Start creates the local member and starts gossiping. Call Join next.
func Start(cfg Config) (*Node, error) {
	host, portStr, err := net.SplitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("membership: bind address %q: %w", cfg.BindAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("membership: bind port %q: %w", portStr, err)
	}
	sc := serf.DefaultConfig()
	sc.Init()
	sc.NodeName = cfg.Name
	sc.Tags = cfg.Tags
	sc.Logger = logging.HCLog(cfg.Log, "serf").StandardLogger(nil)
	if cfg.Fast {
		sc.MemberlistConfig = memberlistFast()
	} else {
		sc.MemberlistConfig = memberlistLAN()
	}
	ml := sc.MemberlistConfig
	ml.Logger = sc.Logger
	ml.BindAddr = host
	ml.BindPort = port
	if cfg.Advertise != "" {
		ah, ap, err := net.SplitHostPort(cfg.Advertise)
		if err != nil {
			return nil, fmt.Errorf("membership: advertise address %q: %w", cfg.Advertise, err)
		}
		ml.AdvertiseAddr = ah
		ml.AdvertisePort, _ = strconv.Atoi(ap)
	}
	if cfg.Key != "" {
		key, err := base64.StdEncoding.DecodeString(cfg.Key)
		if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
			return nil, ErrBadKey
		}
		ml.SecretKey = key
	}
	// Failed members are kept for a day so a host that comes back is
	// recognised; then reaped.
	sc.ReconnectTimeout = 24 * time.Hour
	events := make(chan serf.Event, 256)
	sc.EventCh = events
	s, err := serf.Create(sc)
	if err != nil {
		return nil, fmt.Errorf("membership: start serf on %s: %w", cfg.BindAddr, err)
	}
	n := &Node{serf: s, events: events, log: cfg.Log, tags: cfg.Tags, done: make(chan struct{})}
	go n.loop()
	return n, nil
}

// loop drains serf's events and wakes watchers; consumers re-read Members,
// so a coalesced wake-up never loses information.
func (n *Node) loop() {
	for {
		select {
		case <-n.serf.ShutdownCh():
			close(n.done)
			return
		case e := <-n.events:
			if me, ok := e.(serf.MemberEvent); ok {
				for _, m := range me.Members {
					n.log.Info("membership change", "event", me.EventType().String(), "member", m.Name, "role", m.Tags[TagRole])
				}
			}
			n.notify()
		}
	}
}

func (n *Node) notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, w := range n.watchers {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

// Changed returns a channel that receives after membership changes
// (coalesced: one pending signal at most).
func (n *Node) Changed() <-chan struct{} {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	n.watchers = append(n.watchers, ch)
	n.mu.Unlock()
	return ch
}

// Join contacts existing members. It succeeds if any one answers.
func (n *Node) Join(addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	got, err := n.serf.Join(addrs, true)
	if got > 0 {
		return got, nil
	}
	return 0, fmt.Errorf("membership: join %v: %w", addrs, err)
}

// SetTag updates one of this member's tags and gossips it.
func (n *Node) SetTag(key, value string) error {
	n.mu.Lock()
	tags := make(map[string]string, len(n.tags)+1)
	for k, v := range n.tags {
		tags[k] = v
	}
	tags[key] = value
	n.tags = tags
	n.mu.Unlock()
	return n.serf.SetTags(tags)
}

// LocalAddr is this member's gossip address, as others should join it.
func (n *Node) LocalAddr() string {
	m := n.serf.LocalMember()
	return net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port)))
}

// Name is this member's name.
func (n *Node) Name() string { return n.serf.LocalMember().Name }

// Members returns every known member, sorted by name.
func (n *Node) Members() []Member {
	var out []Member
	for _, m := range n.serf.Members() {
		mm := Member{
			Name:         m.Name,
			Addr:         net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port))),
			Role:         m.Tags[TagRole],
			RaftAddr:     m.Tags[TagRaftAddr],
			QUICAddr:     m.Tags[TagQUICAddr],
			HTTPAddr:     m.Tags[TagHTTPAddr],
			Bootstrapped: m.Tags[TagRaftBootstrap] == "1",
		}
		if f := m.Tags[TagFeatures]; f != "" {
			mm.Features = strings.Split(f, ",")
		}
		mm.GPUs, _ = strconv.Atoi(m.Tags[TagGPUs])
		mm.Expect, _ = strconv.Atoi(m.Tags[TagExpect])
		switch m.Status {
		case serf.StatusAlive:
			mm.Status = StatusAlive
		case serf.StatusFailed:
			mm.Status = StatusFailed
		case serf.StatusLeft:
			mm.Status = StatusLeft
		case serf.StatusLeaving:
			mm.Status = StatusLeaving
		default:
			mm.Status = m.Status.String()
		}
		out = append(out, mm)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}

// Controllers returns the alive controller members.
func (n *Node) Controllers() []Member {
	var out []Member
	for _, m := range n.Members() {
		if m.Role == RoleController && m.Status == StatusAlive {
			out = append(out, m)
		}
	}
	return out
}

// Member returns a member by name.
func (n *Node) Member(name string) (Member, bool) {
	for _, m := range n.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// Leave tells the cluster this member is leaving on purpose, then stops.
func (n *Node) Leave() error {
	err := n.serf.Leave()
	return errors.Join(err, n.serf.Shutdown())
}

// Shutdown stops gossiping without saying goodbye (others see a failure).
func (n *Node) Shutdown() error {
	err := n.serf.Shutdown()
	<-n.done
	return err
}
