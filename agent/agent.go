// Package agent is the GPU-host daemon: it runs the jobs the controller
// starts, tails their metrics and log files, samples the GPUs, and puts
// every record in the durable spool that the link streams to the
// controller.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/agent/gpu"
	"github.com/gantry-ml/gantry/agent/health"
	"github.com/gantry-ml/gantry/agent/link"
	"github.com/gantry-ml/gantry/agent/pyhelper"
	"github.com/gantry-ml/gantry/agent/runner"
	"github.com/gantry-ml/gantry/agent/spool"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/membership"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
	"github.com/gantry-ml/gantry/proto/wire"
)

// Version is the agent's version string.
var Version = "dev"

// Config configures an agent.
type Config struct {
	// NodeID names this host in the cluster; it must match the CommonName
	// of the agent's certificate.
	NodeID string
	// DataDir holds the spool and the job directories.
	DataDir string
	// Controllers are controller QUIC addresses (host:port).
	Controllers []string
	TLS         tlsutil.Files
	// FakeGPUs > 0 uses go-nvml's mock A100s instead of the real driver.
	FakeGPUs int
	// Health are this host's defaults for the job health checks, under
	// what a job's spec sets (README "Health").
	Health health.Defaults
	// GPUInterval is the GPU sampling period; default 1 s.
	GPUInterval time.Duration
	Log         *slog.Logger

	// Serf membership (optional): the agent's gossip address, the members
	// to join, and the base64 gossip key.
	SerfAddr      string
	SerfAdvertise string
	Join          []string
	GossipKey     string
	// FastGossip shortens failure detection (tests).
	FastGossip bool

	// JobUser is the account jobs run as when the agent runs as root;
	// DefaultJobUser when empty. Jobs run as root only when this names
	// root explicitly. An agent that is not root cannot switch users: its
	// jobs run as itself, and JobUser is ignored.
	JobUser string

	// AdvertiseAddr is the host or IP peers of a multi-node job reach
	// this host at; empty lets the controller use the source address of
	// this agent's connection.
	AdvertiseAddr string

	// JobCgroups is JobCgroupsAuto (or empty), JobCgroupsOff, or the
	// cgroup under which to make the job cgroups (cgroup.go).
	JobCgroups string
}

// DefaultJobUser is the account jobs run as under a root agent unless
// Config.JobUser says otherwise. The Ansible role creates it.
const DefaultJobUser = "gantry-job"

// Agent is a running agent.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	spool    *spool.Spool
	gpus     *gpu.Source // nil when the host has no usable NVML
	gpuInfo  []*gantrypb.GPUInfo
	hostname string
	link     *link.Link
	members  *membership.Node // nil without serf
	// jobUser is who jobs run as; nil when they run as the agent's user.
	jobUser *runner.User
	// pythonDir holds the gantry_metrics package, on every job's PYTHONPATH.
	pythonDir string
	// cgroups are the jobs' cgroups; nil when off or unavailable.
	cgroups *jobCgroups

	// linkUp reports whether the controller link is up; jobs are held to
	// their share of the spool only then (job.waitShare). nil: never.
	linkUp func() bool

	mu   sync.Mutex
	jobs map[string]*job // jobs started by this process, until their exit is acked
	wg   sync.WaitGroup
	ctx  context.Context
}

// installHelper writes the Python metrics helper into the data directory,
// so that every job can `import gantry_metrics` with nothing installed:
// the directory goes on each job's PYTHONPATH.
func (a *Agent) installHelper() error {
	dir, err := pyhelper.Install(filepath.Join(a.cfg.DataDir, "python"))
	if err != nil {
		return fmt.Errorf("agent: metrics helper: %w", err)
	}
	a.pythonDir = dir
	return nil
}

// New opens the agent's state; Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.GPUInterval == 0 {
		cfg.GPUInterval = time.Second
	}
	jobUser, err := resolveJobUser(cfg.JobUser, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := prepareDataDir(cfg.DataDir, jobUser); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	secureTLS(cfg.TLS, cfg.Log)
	sp, err := spool.Open(filepath.Join(cfg.DataDir, "spool.db"))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	// bbolt creates the file 0600 but keeps the mode of an existing one.
	if err := os.Chmod(filepath.Join(cfg.DataDir, "spool.db"), 0o600); err != nil {
		sp.Close()
		return nil, fmt.Errorf("agent: spool: %w", err)
	}
	a := &Agent{cfg: cfg, log: cfg.Log, spool: sp, jobs: map[string]*job{}, jobUser: jobUser}
	a.cgroups = openJobCgroups(cfg, cfg.Log)
	a.hostname, _ = os.Hostname()
	if err := a.installHelper(); err != nil {
		sp.Close()
		return nil, err
	}

	switch {
	case cfg.FakeGPUs > 0:
		a.gpus, err = gpu.NewMock(cfg.FakeGPUs)
		if err != nil {
			sp.Close()
			return nil, fmt.Errorf("agent: fake GPUs: %w", err)
		}
		a.log.Info("using mock GPUs", "count", cfg.FakeGPUs)
	default:
		a.gpus, err = gpu.OpenNVML()
		if err != nil {
			// Said once, loudly; the agent still runs CPU jobs.
			a.log.Warn("NVML unavailable: running with no GPUs", "err", err)
			a.gpus = nil
		}
	}
	if a.gpus != nil {
		a.gpuInfo, err = a.gpus.Devices()
		if err != nil {
			a.log.Warn("could not list every GPU", "err", err)
		}
		if len(a.gpuInfo) > limits.MaxGPUsPerNode {
			a.log.Warn("more GPUs than a node may offer; offering the first", "gpus", len(a.gpuInfo),
				"offered", limits.MaxGPUsPerNode)
			a.gpuInfo = a.gpuInfo[:limits.MaxGPUsPerNode]
		}
		for _, g := range a.gpuInfo {
			g.Uuid, g.Name = clip(g.Uuid, limits.MaxGPUStringBytes), clip(g.Name, limits.MaxGPUStringBytes)
		}
	}

	clientTLS, err := tlsutil.ClientConfig(cfg.TLS, wire.ALPN, "", tlsutil.Identity{Role: tlsutil.RoleController})
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("agent: TLS: %w", err)
	}
	if err := a.joinCluster(); err != nil {
		a.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.link = link.New(link.Options{
		Addrs: cfg.Controllers, Discover: a.controllerAddrs, TLS: clientTLS, Spool: sp, Handler: (*linkHandler)(a),
		Log: cfg.Log.With("component", "link"),
	})
	a.linkUp = a.link.Connected
	return a, nil
}

// GPUs returns the GPUs this agent offers.
func (a *Agent) GPUs() []*gantrypb.GPUInfo { return a.gpuInfo }

// Connected reports whether the controller link is up.
func (a *Agent) Connected() bool { return a.link.Connected() }

// Run runs the agent until ctx ends. Jobs keep running in their own
// sessions when the agent stops.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	a.ctx = ctx
	a.mu.Unlock()
	if err := a.recover(); err != nil {
		return err
	}
	if a.gpus != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			// XID and ECC events; the faults they record travel in the
			// samples (GPUStat.fault).
			if err := a.gpus.WatchEvents(ctx, a.log.With("component", "gpu"), nil); err != nil && !errors.Is(err, gpu.ErrClosed) {
				a.log.Warn("GPU events unavailable; relying on polled GPU health checks", "err", err)
			}
		}()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			// A GPU sample that cannot be spooled (a full disk) is
			// skipped, unlike a job's records: it cannot wait anywhere,
			// and the next one a second later supersedes it. Said once
			// per episode, not once a second.
			failing := false
			procErr := "" // the last GPU process listing error logged
			err := gpu.Run(ctx, a.gpus, a.cfg.GPUInterval, a.log.With("component", "gpu"), func(s *gantrypb.GPUSample) {
				// Within the limits the controller checks, whatever
				// the driver reports.
				if len(s.Gpus) > limits.MaxGPUsPerNode {
					s.Gpus = s.Gpus[:limits.MaxGPUsPerNode]
				}
				for _, g := range s.Gpus {
					g.Uuid, g.Name = clip(g.Uuid, limits.MaxGPUStringBytes), clip(g.Name, limits.MaxGPUStringBytes)
					g.Fault = clip(g.Fault, limits.MaxGPUStringBytes)
				}
				a.healthSample(s)
				procs, perr := a.gpus.Processes()
				if perr != nil && procErr != perr.Error() {
					// Once per distinct failure, not once a second.
					procErr = perr.Error()
					a.log.Warn("listing GPU processes failed; attributing what could be listed", "err", perr)
				}
				a.attributeProcesses(procs)
				_, err := a.spool.Append(&gantrypb.Record{Body: &gantrypb.Record_Gpu{Gpu: s}})
				switch {
				case err != nil && !failing:
					a.log.Error("spool GPU sample: skipping samples until the spool takes them again", "err", err)
				case err == nil && failing:
					a.log.Info("GPU samples spooled again")
				}
				failing = err != nil
			})
			if err != nil && !errors.Is(err, context.Canceled) {
				a.log.Error("GPU sampler stopped", "err", err)
			}
		}()
	}
	err := a.link.Run(ctx)
	a.wg.Wait()
	return err
}

// Close releases the spool and NVML. Call after Run returns.
func (a *Agent) Close() error {
	var errs []error
	if a.members != nil {
		errs = append(errs, a.members.Leave())
	}
	if a.gpus != nil {
		errs = append(errs, a.gpus.Close())
	}
	errs = append(errs, a.spool.Close())
	a.cgroups.close()
	return errors.Join(errs...)
}

func (a *Agent) saveJob(st *gantrypb.AgentJob) error {
	data, err := proto.Marshal(st)
	if err != nil {
		return err
	}
	if err := a.spool.PutJob(st.JobId, data); err != nil {
		return fmt.Errorf("agent: save job %s: %w", st.JobId, err)
	}
	return nil
}

// activeJobs lists jobs whose exit the controller has not acked yet.
func (a *Agent) activeJobs() []string {
	saved, err := a.spool.Jobs()
	if err != nil {
		a.log.Error("read job state", "err", err)
	}
	ids := make([]string, 0, len(saved))
	for id := range saved {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if len(ids) > limits.MaxActiveJobs {
		// The controller refuses a longer hello; the jobs beyond are
		// still followed and reported, only not listed here.
		a.log.Warn("more unfinished jobs than a hello can list", "jobs", len(ids), "listed", limits.MaxActiveJobs)
		ids = ids[:limits.MaxActiveJobs]
	}
	return ids
}

// linkHandler is the Agent as the link sees it.
type linkHandler Agent

func (h *linkHandler) Hello() *gantrypb.Hello {
	a := (*Agent)(h)
	return &gantrypb.Hello{
		NodeId: a.cfg.NodeID, Hostname: a.hostname, Gpus: a.gpuInfo, AdvertiseAddr: a.cfg.AdvertiseAddr,
		Version: Version, ActiveJobs: a.activeJobs(),
	}
}

func (h *linkHandler) Start(m *gantrypb.StartJob) { (*Agent)(h).start(m) }

func (h *linkHandler) Cancel(m *gantrypb.CancelJob) {
	a := (*Agent)(h)
	a.mu.Lock()
	j := a.jobs[m.JobId]
	a.mu.Unlock()
	if j == nil {
		a.log.Warn("cancel for a job this agent is not running", "job", m.JobId)
		return
	}
	// Off the link's goroutine, which must not block: the cancel's record
	// is saved under the job's state lock, which a spool write waiting for
	// disk space holds. The SIGTERM itself goes out at once.
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		j.cancel()
	}()
}

// Acked forgets jobs whose exit record the controller has committed.
func (h *linkHandler) Acked(upTo uint64) {
	a := (*Agent)(h)
	saved, err := a.spool.Jobs()
	if err != nil {
		a.log.Error("read job state", "err", err)
		return
	}
	for id, data := range saved {
		var st gantrypb.AgentJob
		if err := proto.Unmarshal(data, &st); err != nil || st.ExitIndex == 0 || st.ExitIndex > upTo {
			continue
		}
		if err := a.spool.DeleteJob(id); err != nil {
			a.log.Error("forget finished job", "job", id, "err", err)
			continue
		}
		if err := a.spool.ForgetStream(id); err != nil {
			a.log.Error("forget finished job stream", "job", id, "err", err)
		}
		a.mu.Lock()
		delete(a.jobs, id)
		a.mu.Unlock()
	}
}

// runCtx is the context Run was given: it ends when the agent stops.
func (a *Agent) runCtx() context.Context {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ctx == nil {
		return context.Background()
	}
	return a.ctx
}

func now() float64 { return float64(time.Now().UnixNano()) / 1e9 }

func jobDir(dataDir, id string) string {
	// Job ids come from the controller; keep them inside the data dir.
	return filepath.Join(dataDir, "jobs", strings.ReplaceAll(filepath.Base(id), "..", "_"))
}
