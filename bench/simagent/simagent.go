// Package simagent is a simulated Gantry agent inside the benchmark driver:
// the real agent/link (QUIC, mutual TLS with its own certificate) streaming
// a real agent/spool, with records made up by the benchmark instead of read
// from a training process. Many of them in one process load a controller
// cluster the way a fleet of GPU hosts would.
package simagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/agent/link"
	"github.com/gantry-ml/gantry/agent/spool"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/wire"
)

// ErrNotStarted means the controller never sent StartJob for a job.
var ErrNotStarted = errors.New("simagent: job never started")

// Options configures an agent.
type Options struct {
	// ID is the node id; the certificate in TLS must be issued for it.
	ID string
	// Dir holds the spool file.
	Dir   string
	TLS   tlsutil.Files
	Addrs []string
	// GPUs is how many GPUs the agent announces.
	GPUs int
	Log  *slog.Logger
}

// Agent is a running simulated agent.
type Agent struct {
	ID   string
	gpus int
	sp   *spool.Spool
	link *link.Link

	cancel context.CancelFunc
	done   chan struct{}

	appended atomic.Uint64 // index of the last appended record
	acked    atomic.Uint64 // index up to which the controller acked
	ackMu    sync.Mutex
	ackCh    chan struct{} // closed and replaced at every ack

	startMu sync.Mutex
	started map[string]chan struct{}
}

// Start opens the spool and runs the link until Close.
func Start(opts Options) (*Agent, error) {
	sp, err := spool.Open(filepath.Join(opts.Dir, opts.ID+"-spool.db"))
	if err != nil {
		return nil, fmt.Errorf("simagent %s: %w", opts.ID, err)
	}
	tlsConf, err := tlsutil.ClientConfig(opts.TLS, wire.ALPN, "", tlsutil.Identity{Role: tlsutil.RoleController})
	if err != nil {
		sp.Close()
		return nil, fmt.Errorf("simagent %s: %w", opts.ID, err)
	}
	a := &Agent{ID: opts.ID, gpus: opts.GPUs, sp: sp, done: make(chan struct{}),
		ackCh: make(chan struct{}), started: map[string]chan struct{}{}}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a.link = link.New(link.Options{Addrs: opts.Addrs, TLS: tlsConf, Spool: sp, Handler: (*handler)(a),
		Log: log.With("agent", opts.ID), MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() {
		defer close(a.done)
		if err := a.link.Run(ctx); err != nil {
			log.Error("simulated agent link stopped", "agent", opts.ID, "err", err)
		}
	}()
	return a, nil
}

// Connected reports whether the link is up.
func (a *Agent) Connected() bool { return a.link.Connected() }

// Close stops the link and closes the spool.
func (a *Agent) Close() error {
	a.cancel()
	<-a.done
	return a.sp.Close()
}

// Append spools records; the link sends them.
func (a *Agent) Append(recs ...*gantrypb.Record) (uint64, error) {
	last, err := a.sp.Append(recs...)
	if err != nil {
		return 0, fmt.Errorf("simagent %s: %w", a.ID, err)
	}
	a.appended.Store(last)
	return last, nil
}

// Pending is how many appended records the controller has not acked yet.
func (a *Agent) Pending() uint64 {
	app, ack := a.appended.Load(), a.acked.Load()
	if ack >= app {
		return 0
	}
	return app - ack
}

// Acked is the spool index up to which the controller has acked.
func (a *Agent) Acked() uint64 { return a.acked.Load() }

// WaitAcked waits until the controller has acked up to index idx.
func (a *Agent) WaitAcked(ctx context.Context, idx uint64) error {
	return a.waitAck(ctx, func() bool { return a.acked.Load() >= idx })
}

// WaitPendingBelow waits until fewer than n records are unacked: the
// back-pressure that keeps a flooding writer as fast as acks allow without
// growing the spool without bound.
func (a *Agent) WaitPendingBelow(ctx context.Context, n uint64) error {
	return a.waitAck(ctx, func() bool { return a.Pending() < n })
}

func (a *Agent) waitAck(ctx context.Context, ok func() bool) error {
	for {
		a.ackMu.Lock()
		ch := a.ackCh
		a.ackMu.Unlock()
		if ok() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-time.After(time.Second):
			// Acks are signalled; the timer only bounds a missed wake-up.
		}
	}
}

// WaitStarted waits until the controller has sent StartJob for job.
func (a *Agent) WaitStarted(ctx context.Context, job string, timeout time.Duration) error {
	ch := a.startChan(job)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("%w: %s on %s after %s", ErrNotStarted, job, a.ID, timeout)
	}
}

func (a *Agent) startChan(job string) chan struct{} {
	a.startMu.Lock()
	defer a.startMu.Unlock()
	ch, ok := a.started[job]
	if !ok {
		ch = make(chan struct{})
		a.started[job] = ch
	}
	return ch
}

// handler is the link's view of the agent.
type handler Agent

func (h *handler) Hello() *gantrypb.Hello {
	hello := &gantrypb.Hello{NodeId: h.ID, Hostname: h.ID, Version: "bench"}
	for i := 0; i < h.gpus; i++ {
		hello.Gpus = append(hello.Gpus, &gantrypb.GPUInfo{Index: uint32(i), Uuid: fmt.Sprintf("GPU-%s-%d", h.ID, i),
			Name: "Simulated A100-SXM4-80GB", MemoryTotalBytes: 80 << 30})
	}
	return hello
}

func (h *handler) Start(m *gantrypb.StartJob) {
	ch := (*Agent)(h).startChan(m.JobId)
	h.startMu.Lock()
	defer h.startMu.Unlock()
	select {
	case <-ch:
	default:
		close(ch)
	}
}

func (h *handler) Cancel(*gantrypb.CancelJob) {}

func (h *handler) Acked(upTo uint64) {
	if upTo > h.acked.Load() {
		h.acked.Store(upTo)
	}
	h.ackMu.Lock()
	close(h.ackCh)
	h.ackCh = make(chan struct{})
	h.ackMu.Unlock()
}

// MetricKeys are the ~20 metric names of a realistic training line.
var MetricKeys = []string{
	"loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "train/acc", "val/acc", "ppl",
	"epoch", "mfu", "gpu_mem_gb", "loss_scale", "weight_decay", "aux_loss", "train/loss_ema",
	"throughput/tflops", "data_time_ms", "step_time_ms", "clip_frac", "z_loss",
}

// Point returns a metric point record of job at step with ts, carrying one
// value per MetricKeys entry.
func Point(job string, step int64, ts float64) *gantrypb.Record {
	vals := make(map[string]float64, len(MetricKeys))
	x := float64(step)
	for i, k := range MetricKeys {
		vals[k] = 1/(1+x*1e-3) + float64(i)*0.01
	}
	return &gantrypb.Record{JobId: job, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{
		Step: proto.Int64(step), Ts: ts, Values: vals}}}
}

// GPUSample returns a node-level GPU sample record for n GPUs.
func GPUSample(n int, ts float64) *gantrypb.Record {
	s := &gantrypb.GPUSample{Ts: ts}
	for i := 0; i < n; i++ {
		s.Gpus = append(s.Gpus, &gantrypb.GPUStat{Index: uint32(i), Name: "Simulated A100-SXM4-80GB",
			UtilizationPct: 90 + 5*math.Sin(ts+float64(i)), MemoryUsedBytes: 70 << 30, MemoryTotalBytes: 80 << 30,
			TemperatureC: 65, PowerW: 350, SmClockMhz: 1410})
	}
	return &gantrypb.Record{Body: &gantrypb.Record_Gpu{Gpu: s}}
}

// Exit returns a job's successful exit record.
func Exit(job string, ts float64) *gantrypb.Record {
	code := int32(0)
	return &gantrypb.Record{JobId: job, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: &code, Ts: ts}}}
}

// Now is the current time in unix seconds, the unit of record timestamps.
func Now() float64 { return float64(time.Now().UnixNano()) / 1e9 }
