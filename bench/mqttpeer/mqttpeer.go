// Package mqttpeer runs Mosquitto (Debian's mosquitto) with a WebSockets
// listener on loopback, as the peer for Gantry's watcher fan-out: the same
// number of subscribers, connected over WebSockets like Gantry's watchers,
// each receiving every publication on one topic, with the publisher's
// clock in the payload. Clients are eclipse/paho.mqtt.golang.
package mqttpeer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/sync/errgroup"

	"github.com/gantry-ml/gantry/bench/proc"
	"github.com/gantry-ml/gantry/bench/testcluster"
)

// Sentinel errors.
var (
	// ErrNotInstalled means no mosquitto binary was found.
	ErrNotInstalled = errors.New("mqttpeer: mosquitto not installed (apt-get install mosquitto)")
	// ErrTimeout means a connect, subscribe or publish did not complete.
	ErrTimeout = errors.New("mqttpeer: timed out")
)

// Broker is a running Mosquitto.
type Broker struct {
	// URL is the WebSockets listener, ws://127.0.0.1:PORT.
	URL  string
	Proc *proc.Process
}

// config is Mosquitto's configuration: a WebSockets listener on loopback,
// no persistence, no connection limit. Mosquitto 2.0.11 (Debian 12) exits
// with "Unable to start any listening sockets" when its only listener is a
// WebSockets one, so a plain MQTT listener, unused, comes first.
const config = `per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
max_connections -1
listener %d 127.0.0.1
listener %d 127.0.0.1
protocol websockets
`

// Start writes a config into dir and starts Mosquitto with it.
func Start(ctx context.Context, g *proc.Group, dir string) (*Broker, error) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/mosquitto"); serr != nil {
			return nil, ErrNotInstalled
		}
		bin = "/usr/sbin/mosquitto" // root's PATH has sbin; others may not
	}
	ports, err := testcluster.FreePorts(2)
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(config, ports[0], ports[1])), 0o644); err != nil {
		return nil, fmt.Errorf("mqttpeer: %w", err)
	}
	p, err := g.Start("mosquitto", bin, "-c", conf)
	if err != nil {
		return nil, err
	}
	b := &Broker{URL: fmt.Sprintf("ws://127.0.0.1:%d", ports[1]), Proc: p}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := b.connect("probe", nil)
		if err == nil {
			c.Disconnect(0)
			return b, nil
		}
		if !p.Alive() || time.Now().After(deadline) {
			return nil, fmt.Errorf("mqttpeer: mosquitto did not accept a connection: %w\n%s", err, p.Tail(2000))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (b *Broker) connect(id string, onMsg mqtt.MessageHandler) (mqtt.Client, error) {
	opts := mqtt.NewClientOptions().AddBroker(b.URL).SetClientID(id).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(60 * time.Second).SetConnectTimeout(30 * time.Second).
		SetWriteTimeout(10 * time.Second).SetProtocolVersion(4)
	if onMsg != nil {
		opts.SetDefaultPublishHandler(onMsg)
	}
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		return nil, fmt.Errorf("%w: connect %s", ErrTimeout, id)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("mqttpeer: connect %s: %w", id, err)
	}
	return c, nil
}

// RSS is the broker's resident memory.
func (b *Broker) RSS() (uint64, error) { return proc.RSS(b.Proc.PID()) }

// Subscribers is a set of clients subscribed to one topic.
type Subscribers struct {
	b     *Broker
	topic string

	mu      sync.Mutex
	clients []mqtt.Client
	samples []time.Duration
	got     atomic.Int64
	next    atomic.Int64
}

// NewSubscribers returns an empty set for topic.
func (b *Broker) NewSubscribers(topic string) *Subscribers {
	return &Subscribers{b: b, topic: topic}
}

// Add connects n more subscribers, concurrency at a time, each subscribed
// (QoS 0) before Add returns.
func (s *Subscribers) Add(ctx context.Context, n, concurrency int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(concurrency)
	for i := 0; i < n; i++ {
		g.Go(func() error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			id := "sub-" + strconv.FormatInt(s.next.Add(1), 10)
			c, err := s.b.connect(id, s.onMessage)
			if err != nil {
				return err
			}
			tok := c.Subscribe(s.topic, 0, nil)
			if !tok.WaitTimeout(30 * time.Second) {
				c.Disconnect(0)
				return fmt.Errorf("%w: subscribe %s", ErrTimeout, id)
			}
			if err := tok.Error(); err != nil {
				c.Disconnect(0)
				return fmt.Errorf("mqttpeer: subscribe %s: %w", id, err)
			}
			s.mu.Lock()
			s.clients = append(s.clients, c)
			s.mu.Unlock()
			return nil
		})
	}
	return g.Wait()
}

// onMessage records the delay from the publisher's clock in the payload.
func (s *Subscribers) onMessage(_ mqtt.Client, m mqtt.Message) {
	now := time.Now()
	ns, err := strconv.ParseInt(string(m.Payload()), 10, 64)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.samples = append(s.samples, now.Sub(time.Unix(0, ns)))
	s.mu.Unlock()
	s.got.Add(1)
}

// Len is the number of subscribers.
func (s *Subscribers) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

// Received is how many messages all subscribers received.
func (s *Subscribers) Received() int64 { return s.got.Load() }

// Take returns the latency samples gathered since the last Take.
func (s *Subscribers) Take() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.samples
	s.samples = nil
	return out
}

// Close disconnects every subscriber.
func (s *Subscribers) Close() {
	s.mu.Lock()
	clients := s.clients
	s.clients = nil
	s.mu.Unlock()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			c.Disconnect(0)
			<-sem
		}()
	}
	wg.Wait()
}

// Publisher publishes timestamps to a topic.
type Publisher struct {
	c     mqtt.Client
	topic string
}

// NewPublisher connects a publishing client.
func (b *Broker) NewPublisher(topic string) (*Publisher, error) {
	c, err := b.connect("publisher", nil)
	if err != nil {
		return nil, err
	}
	return &Publisher{c: c, topic: topic}, nil
}

// Publish sends one QoS 0 message holding the current time in unix
// nanoseconds.
func (p *Publisher) Publish() error {
	tok := p.c.Publish(p.topic, 0, false, strconv.FormatInt(time.Now().UnixNano(), 10))
	if !tok.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("%w: publish", ErrTimeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("mqttpeer: publish: %w", err)
	}
	return nil
}

// Close disconnects the publisher.
func (p *Publisher) Close() { p.c.Disconnect(100) }
