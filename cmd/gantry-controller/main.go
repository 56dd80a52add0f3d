// Command gantry-controller runs a Gantry controller node, or with -dev a
// single-node controller plus a local agent in one process.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gantry-ml/gantry/agent"
	"github.com/gantry-ml/gantry/agent/health"
	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/dashboard"
	"github.com/gantry-ml/gantry/controller/fleetmetrics"
	"github.com/gantry-ml/gantry/controller/server"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/cmdutil"
	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/internal/tlsutil"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "tls" {
		if err := tlsCommand(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "gantry-controller tls:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gantry-controller:", err)
		os.Exit(exitStatus(err))
	}
}

// exitCorrupt is the exit status for damaged on-disk state. It differs
// from 1 so that a supervisor can stop restarting a controller that will
// fail the same way until an operator acts (systemd:
// RestartPreventExitStatus=3); the message printed says what to do.
const exitCorrupt = 3

func exitStatus(err error) int {
	if errors.Is(err, cluster.ErrLogCorrupt) || errors.Is(err, store.ErrCorrupt) {
		return exitCorrupt
	}
	return 1
}

// parseSize reads a byte count with an optional binary suffix: 512,
// 64KiB, 128MiB, 2GiB (K, M, G and KB, MB, GB mean the same powers of
// 1024).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffixes []string
		mult     int64
	}{
		{[]string{"GiB", "GB", "G"}, 1 << 30},
		{[]string{"MiB", "MB", "M"}, 1 << 20},
		{[]string{"KiB", "KB", "K"}, 1 << 10},
		{[]string{"B"}, 1},
	} {
		found := false
		for _, suf := range u.suffixes {
			if rest, ok := strings.CutSuffix(t, suf); ok {
				t, mult, found = strings.TrimSpace(rest), u.mult, true
				break
			}
		}
		if found {
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid size %q (want e.g. 134217728, 128MiB or 1GiB)", s)
	}
	return n * mult, nil
}

func run() error {
	host, _ := os.Hostname()
	fs := flag.NewFlagSet("gantry-controller", flag.ExitOnError)
	var (
		nodeID    = fs.String("node-id", host, "this controller's id in the Raft cluster")
		dataDir   = fs.String("data-dir", "/var/lib/gantry", "directory for Raft log, snapshots and state")
		httpAddr  = fs.String("http-addr", "127.0.0.1:7480", "HTTP/WebSocket API address")
		quicAddr  = fs.String("quic-addr", "127.0.0.1:7481", "UDP address agents connect to (QUIC)")
		raftAddr  = fs.String("raft-addr", "127.0.0.1:7482", "Raft transport address (TCP)")
		bootstrap = fs.Bool("bootstrap", false, "bootstrap a one-node Raft cluster if there is no state yet")
		tlsDir    = fs.String("tls-dir", "", "directory with ca.pem, <tls-name>.pem and <tls-name>-key.pem (default DATA_DIR/tls)")
		tlsName   = fs.String("tls-name", "", "certificate name inside -tls-dir (default: -node-id; a controller certificate for gantry://controller/NODE_ID)")
		token     = fs.String("token", os.Getenv("GANTRY_TOKEN"), "bearer token required by the API (default $GANTRY_TOKEN)")
		logLevel  = fs.String("log-level", "info", "debug, info, warn or error")
		dev       = fs.Bool("dev", false, "dev mode: single-node controller plus a local agent, certificates made on the fly")
		fakeGPUs  = fs.Int("fake-gpus", 0, "dev mode: give the local agent N mock GPUs (go-nvml mock A100s)")
		throttle  = fs.Duration("health-throttle-after", health.DefaultThrottleAfter, "dev mode: how long the local agent lets a job's GPU stay throttled for a throughput-costing reason before a gpu_throttled event (gantry-agent's flag of the same name)")
		jobUser   = fs.String("job-user", "", "dev mode as root: the account jobs run as (default "+
			agent.DefaultJobUser+" if it exists, else nobody); root runs them as root, with access to the CA key")

		serfAddr  = fs.String("serf-addr", "", "serf gossip address (host:port); empty runs without clustering")
		serfAdv   = fs.String("serf-advertise", "", "serf address others reach this node at (default: -serf-addr)")
		join      = fs.String("join", "", "comma-separated serf addresses of existing members")
		expect    = fs.Int("bootstrap-expect", 0, "bootstrap Raft once this many controllers have joined (3 or 5)")
		gossipKey = fs.String("encrypt", os.Getenv("GANTRY_GOSSIP_KEY"), "base64 serf gossip key, 16/24/32 bytes (default $GANTRY_GOSSIP_KEY)")
		advHTTP   = fs.String("advertise-http", "", "HTTP address peers forward to (default: -http-addr)")
		advQUIC   = fs.String("advertise-quic", "", "QUIC address agents are redirected to (default: -quic-addr)")
		advRaft   = fs.String("advertise-raft", "", "Raft address peers dial (default: -raft-addr)")
		lostGrace = fs.Duration("lost-grace", 60*time.Second, "how long a node may be down before its running jobs become lost")
		pprofAddr = fs.String("pprof-addr", "", "serve net/http/pprof on this address (profiling, benchmarks); empty: off")

		allowedHosts = fs.String("http-allowed-hosts", "", "comma-separated Host names the API answers to without a token, besides localhost, loopback addresses and its own -http-addr/-advertise-http hosts")
		httpTLSCert  = fs.String("http-tls-cert", "", "PEM certificate (chain) to serve the API over HTTPS; needs -http-tls-key")
		httpTLSKey   = fs.String("http-tls-key", "", "PEM private key of -http-tls-cert")
		noToken      = fs.Bool("insecure-no-token", false, "allow serving the API without a token on a non-loopback -http-addr (anyone who reaches it can run jobs)")
		maxArchive   = fs.String("max-code-archive", "64MiB", "largest code archive (a job's shipped working directory, compressed) the cluster takes")
		fleetKeys    = fs.String("fleet-metric-keys", "", "comma-separated globs (* and ?) of the job metric keys /metrics/fleet exports as gantry_job_metric; empty: "+
			strings.Join(fleetmetrics.DefaultMetricKeys, ",")+"; -: none")
		fleetMaxKeys = fs.Int("fleet-max-keys-per-job", fleetmetrics.DefaultMaxKeysPerJob, "most gantry_job_metric series per job on /metrics/fleet")
		fleetMaxJobs = fs.Int("fleet-max-jobs", fleetmetrics.DefaultMaxActiveJobs, "most jobs not ended that /metrics/fleet exports (those holding GPUs always are)")
		webhooks     = fs.String("alert-webhook", "", "comma-separated http(s) URLs the leader posts alerts to as JSON with a Slack-compatible text field (job ended, stalled, hung, idle_gpus, node lost); give every controller the same list")
		minFree      = fs.String("min-free-disk", "128MiB", "refuse writes (and hand Raft leadership to a peer) while -data-dir has less free space than this; 0 turns the check off")
	)
	_ = fs.Parse(os.Args[1:])
	log, err := logging.New(os.Stderr, *logLevel)
	if err != nil {
		return err
	}
	if *tlsDir == "" {
		*tlsDir = filepath.Join(*dataDir, "tls")
	}
	if *tlsName == "" {
		*tlsName = *nodeID
	}
	minFreeBytes, err := parseSize(*minFree)
	if err != nil {
		return fmt.Errorf("-min-free-disk: %w", err)
	}
	maxArchiveBytes, err := parseSize(*maxArchive)
	if err != nil || maxArchiveBytes == 0 {
		return fmt.Errorf("-max-code-archive: want a positive size such as 64MiB (got %q)", *maxArchive)
	}
	fleetKeyList, err := fleetmetrics.ParseKeys(*fleetKeys)
	if err != nil {
		return fmt.Errorf("-fleet-metric-keys: %w", err)
	}
	hooks := cmdutil.SplitList(*webhooks)
	for _, h := range hooks {
		if u, err := url.Parse(h); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("-alert-webhook: %q is not an http(s) URL", h)
		}
	}
	if *fleetMaxKeys <= 0 || *fleetMaxJobs <= 0 {
		return errors.New("-fleet-max-keys-per-job and -fleet-max-jobs must be positive")
	}
	if minFreeBytes == 0 {
		minFreeBytes = -1 // cluster.DiskConfig: negative turns the guard off
	}
	if *pprofAddr != "" {
		stopPprof, err := servePprof(*pprofAddr, log)
		if err != nil {
			return err
		}
		defer stopPprof()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cfg := server.Config{
		NodeID: *nodeID, DataDir: *dataDir, HTTPAddr: *httpAddr, QUICAddr: *quicAddr, RaftAddr: *raftAddr,
		Bootstrap: *bootstrap, Token: *token, Log: log,
		SerfAddr: *serfAddr, SerfAdvertise: *serfAdv, Join: cmdutil.SplitList(*join), BootstrapExpect: *expect,
		GossipKey: *gossipKey, AdvertiseHTTP: *advHTTP, AdvertiseQUIC: *advQUIC, AdvertiseRaft: *advRaft,
		LostGrace:        *lostGrace,
		HTTPAllowedHosts: cmdutil.SplitList(*allowedHosts), HTTPTLSCert: *httpTLSCert, HTTPTLSKey: *httpTLSKey,
		InsecureNoToken: *noToken, MaxCodeArchive: maxArchiveBytes,
		Disk:          cluster.DiskConfig{MinFree: minFreeBytes},
		AlertWebhooks: hooks,
		Fleet:         fleetmetrics.Options{MetricKeys: fleetKeyList, MaxKeysPerJob: *fleetMaxKeys, MaxActiveJobs: *fleetMaxJobs},
		TLS:           tlsutil.FilesIn(*tlsDir, *tlsName),
		// The API's mux owns /v1/ and /metrics; "/" only catches the rest.
		Extra: func(m *http.ServeMux) { m.Handle("/", dashboard.Handler()) },
	}
	if *dev {
		return runDev(ctx, cfg, *fakeGPUs, *jobUser, health.Defaults{ThrottleAfter: *throttle}, log)
	}
	if *fakeGPUs != 0 {
		return errors.New("-fake-gpus is a dev-mode flag; give it to gantry-agent otherwise")
	}
	if *throttle != health.DefaultThrottleAfter {
		return errors.New("-health-throttle-after is a dev-mode flag; give it to gantry-agent otherwise")
	}
	srv, err := server.Start(cfg)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return srv.Close()
	case err := <-srv.Fatal():
		_ = srv.Close() // the fatal error is the one to report
		return fmt.Errorf("controller stopped: %w", err)
	}
}

// runDev runs a bootstrapped single-node controller and an in-process agent
// named "local", with certificates made under DATA_DIR/tls.
//
// Dev mode keeps the cluster CA key in DATA_DIR/tls, so as root its jobs
// must not run as root: they run as jobUser (by default gantry-job, or
// nobody where that account was not created), and DATA_DIR is made
// passable (0711) for them to reach their directories under
// DATA_DIR/agent/jobs while tls/ stays 0700.
func runDev(ctx context.Context, cfg server.Config, fakeGPUs int, jobUser string, hd health.Defaults, log *slog.Logger) error {
	const agentName = "local"
	tlsDir := filepath.Dir(cfg.TLS.CA)
	ctrlFiles, agentFiles, err := tlsutil.EnsureDev(tlsDir, agentName)
	if err != nil {
		return err
	}
	cfg.TLS = ctrlFiles
	cfg.Bootstrap = true
	srv, err := server.Start(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()

	if jobUser == "" {
		jobUser = devJobUser()
	}
	if os.Geteuid() == 0 && jobUser != "root" {
		if err := passable(cfg.DataDir); err != nil {
			return err
		}
	}
	ag, err := agent.New(agent.Config{
		NodeID: agentName, DataDir: filepath.Join(cfg.DataDir, "agent"),
		Controllers: []string{srv.QUICAddr()}, TLS: agentFiles, FakeGPUs: fakeGPUs,
		Log: log.With("component", "agent"), JobUser: jobUser, Health: hd,
	})
	if err != nil {
		return err
	}
	defer ag.Close()
	scheme := "http"
	if cfg.HTTPTLSCert != "" {
		scheme = "https"
	}
	log.Info("dev mode ready", "api", scheme+"://"+srv.HTTPAddr(), "gpus", len(ag.GPUs()))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case err := <-srv.Fatal():
			cancel(fmt.Errorf("controller stopped: %w", err))
		case <-ctx.Done():
		}
	}()
	err = ag.Run(ctx)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// devJobUser is dev mode's default job account: the one the Ansible role
// creates when it exists, else nobody, which every Linux system has.
func devJobUser() string {
	if _, err := user.Lookup(agent.DefaultJobUser); err == nil {
		return agent.DefaultJobUser
	}
	return "nobody"
}

// passable lets other users through dir (0711: no listing), for the dev
// agent's jobs to reach their directories below it. Its files keep their
// own modes (the Raft log, state and keys are 0600 or in 0700 dirs).
func passable(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("dev data dir: %w", err)
	}
	if fi.Mode().Perm()&0o001 != 0 {
		return nil
	}
	if err := os.Chmod(dir, fi.Mode().Perm()|0o111); err != nil {
		return fmt.Errorf("dev data dir: let jobs through: %w", err)
	}
	return nil
}

const tlsUsage = `usage:
  gantry-controller tls init DIR
      make the cluster CA in DIR (ca.pem, ca-key.pem)
  gantry-controller tls issue --role controller|agent DIR NAME [HOST...]
      sign a certificate for gantry://ROLE/NAME with the CA in DIR: NAME is
      the controller's -node-id or the agent's node id; HOSTs are extra DNS
      names or IP addresses (default localhost, 127.0.0.1, ::1)
  gantry-controller tls check --role controller|agent DIR NAME
      exit 0 if DIR holds NAME's certificate for gantry://ROLE/NAME signed
      by DIR's CA, 1 if not (certificates from before roles fail)
  gantry-controller tls gossip-key
      print a serf key for -encrypt`

func tlsCommand(args []string) error {
	usage := errors.New(tlsUsage)
	if len(args) == 0 {
		return usage
	}
	switch args[0] {
	case "gossip-key":
		if len(args) != 1 {
			return usage
		}
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return err
		}
		fmt.Println(base64.StdEncoding.EncodeToString(key))
		return nil
	case "init":
		if len(args) != 2 {
			// Before roles, init also issued a controller certificate
			// shared by every controller; now each controller has its own.
			return fmt.Errorf("tls init takes only DIR; issue each controller's certificate with "+
				"`tls issue --role controller DIR NODE_ID [HOST...]`\n%s", tlsUsage)
		}
		dir := args[1]
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := tlsutil.InitCA(dir); err != nil {
			return err
		}
		fmt.Printf("cluster CA written to %s; now issue certificates with tls issue --role controller|agent\n", dir)
		return nil
	case "issue", "check":
		fs := flag.NewFlagSet("tls "+args[0], flag.ContinueOnError)
		fs.SetOutput(os.Stderr)
		role := fs.String("role", "", "controller or agent (required)")
		if err := fs.Parse(args[1:]); err != nil {
			return usage
		}
		rest := fs.Args()
		if len(rest) < 2 || args[0] == "check" && len(rest) != 2 {
			return usage
		}
		if *role == "" {
			// No default: a certificate of the wrong role is either
			// useless or (an agent host with a controller certificate)
			// dangerous, so the operator says which one is meant.
			return fmt.Errorf("tls %s needs --role controller or --role agent\n%s", args[0], tlsUsage)
		}
		r, err := tlsutil.ParseRole(*role)
		if err != nil {
			return err
		}
		if args[0] == "check" {
			if err := tlsutil.Check(rest[0], r, rest[1]); err != nil {
				return err
			}
			fmt.Printf("%s: ok\n", tlsutil.Identity{Role: r, ID: rest[1]})
			return nil
		}
		f, err := tlsutil.Issue(rest[0], r, rest[1], rest[2:])
		if err != nil {
			return err
		}
		fmt.Printf("%s certificate %s and key %s signed by %s\n", tlsutil.Identity{Role: r, ID: rest[1]}, f.Cert, f.Key, f.CA)
		return nil
	}
	return usage
}
