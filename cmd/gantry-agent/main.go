// Command gantry-agent runs the Gantry agent on a GPU host.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/gantry-ml/gantry/agent"
	"github.com/gantry-ml/gantry/agent/health"
	"github.com/gantry-ml/gantry/internal/cmdutil"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/tlsutil"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gantry-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	host, _ := os.Hostname()
	fs := flag.NewFlagSet("gantry-agent", flag.ExitOnError)
	var (
		nodeID      = fs.String("node-id", host, "this host's node id; must match its certificate's name")
		dataDir     = fs.String("data-dir", "/var/lib/gantry-agent", "directory for the spool and job files")
		controllers = fs.String("controller", "127.0.0.1:7481", "controller QUIC address(es), comma separated")
		tlsDir      = fs.String("tls-dir", "", "directory with ca.pem, NODE_ID.pem and NODE_ID-key.pem (default DATA_DIR/tls)")
		fakeGPUs    = fs.Int("fake-gpus", 0, "use N mock GPUs (go-nvml mock A100s) instead of NVML")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
		serfAddr    = fs.String("serf-addr", "", "serf gossip address (host:port); empty: use -controller only")
		serfAdv     = fs.String("serf-advertise", "", "serf address others reach this agent at (default: -serf-addr)")
		join        = fs.String("join", "", "comma-separated serf addresses of cluster members (controllers are found through serf)")
		gossipKey   = fs.String("encrypt", os.Getenv("GANTRY_GOSSIP_KEY"), "base64 serf gossip key (default $GANTRY_GOSSIP_KEY)")
		advertise   = fs.String("advertise-addr", "", "host or IP the other hosts of a multi-node job reach this host at (MASTER_ADDR when this host runs rank 0); "+
			"default: the source address of the agent's connection to the controller")
		stallK     = fs.Float64("health-stall-k", health.DefaultK, "a job with no new step for this many times its typical step interval is stalled (a spec's health.stall_after overrides)")
		stallFloor = fs.Duration("health-stall-floor", health.DefaultStallFloor, "the shortest stall window")
		grace      = fs.Duration("health-startup-grace", health.DefaultStartupGrace, "how long a job may run before its first step (a spec's health.startup_grace overrides)")
		idleAfter  = fs.Duration("health-idle-after", health.DefaultIdleAfter, "how long a job's GPU may stay idle before idle_gpus (a spec's health.idle_after overrides)")
		idleUtil   = fs.Float64("health-idle-util", health.DefaultIdleUtilPct, "utilization percent below which a GPU may be idle (a spec's health.idle_util_pct overrides)")
		throttle   = fs.Duration("health-throttle-after", health.DefaultThrottleAfter, "how long a job's GPU must stay throttled for a throughput-costing reason (thermal, power cap, hardware slowdown) before the job gets a gpu_throttled event")
		jobUser    = fs.String("job-user", agent.DefaultJobUser, "when the agent runs as root, the unprivileged account jobs run as "+
			"(it must exist); root runs jobs as root, which lets them read the agent's keys")
		jobCgroups = fs.String("job-cgroups", agent.JobCgroupsAuto, "each job's own cgroup v2 group, which kills what a job daemonizes at its end "+
			"and attributes GPU processes by cgroup: auto (under the agent's own cgroup when it is the root or delegated, "+
			"e.g. a systemd unit with Delegate=yes), off, or the cgroup path to make them under (e.g. /gantry.slice)")
	)
	_ = fs.Parse(os.Args[1:])
	log, err := logging.New(os.Stderr, *logLevel)
	if err != nil {
		return err
	}
	if *tlsDir == "" {
		*tlsDir = filepath.Join(*dataDir, "tls")
	}
	tlsFiles := tlsutil.FilesIn(*tlsDir, *nodeID)
	// Say what is wrong with the certificate now, not as every handshake
	// being refused later: the controllers accept this agent only under
	// gantry://agent/NODE_ID.
	id, err := tlsutil.LoadIdentity(tlsFiles)
	if err != nil {
		return err
	}
	if want := (tlsutil.Identity{Role: tlsutil.RoleAgent, ID: *nodeID}); id != want {
		return fmt.Errorf("%s is %s, want %s: issue it with `gantry-controller tls issue --role agent DIR %s`",
			tlsFiles.Cert, id, want, *nodeID)
	}
	ag, err := agent.New(agent.Config{
		NodeID: *nodeID, DataDir: *dataDir, Controllers: cmdutil.SplitList(*controllers),
		FakeGPUs: *fakeGPUs, Log: log,
		SerfAddr: *serfAddr, SerfAdvertise: *serfAdv, Join: cmdutil.SplitList(*join), GossipKey: *gossipKey,
		JobUser: *jobUser, AdvertiseAddr: *advertise, JobCgroups: *jobCgroups,
		TLS: tlsFiles,
		Health: health.Defaults{K: *stallK, StallFloor: *stallFloor, StartupGrace: *grace, IdleAfter: *idleAfter,
			IdleUtilPct: *idleUtil, ThrottleAfter: *throttle},
	})
	if err != nil {
		return err
	}
	defer ag.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("agent started", "node", *nodeID, "controllers", *controllers, "gpus", len(ag.GPUs()))
	return ag.Run(ctx)
}
