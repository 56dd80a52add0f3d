//go:build linux

package e2e

// The Ansible rollout of deploy/ansible over real SSH: three controllers
// and two GPU hosts, each a network namespace with its own sshd, deployed
// by ansible-playbook from a sixth namespace, then run exactly as their
// rendered systemd units say; and a rolling upgrade of the live cluster
// while a job runs. See rollout_helpers_test.go for the lab.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
)

// maxLeaderGap bounds one leaderless interval during the upgrade: the
// old leader's shutdown (it stops serving HTTP first, then leaves serf
// and closes Raft) plus one election with the controllers' 500 ms
// heartbeat and election timeouts (detection 0.5–1 s, candidacy
// 0.5–1 s), with room for a loaded 2-core machine. Two elections in a
// row, or a cluster waiting for the restarted leader, exceed it.
const maxLeaderGap = 6 * time.Second

// TestAnsibleRollout deploys the cluster with site.yml over SSH, runs
// the rendered units, runs a job, checks that a second site.yml changes
// nothing, then rolls a new release out with upgrade.yml while a job runs.
func TestAnsibleRollout(t *testing.T) {
	requireNetns(t)
	requireRolloutTools(t)
	began := time.Now()

	// The "new" release for the upgrade: the same code with another
	// version string, built while the lab comes up and the first deploy
	// runs.
	v2Dir := t.TempDir()
	var v2Err error
	v2Done := make(chan struct{})
	go func() {
		defer close(v2Done)
		ld := "-X github.com/gantry-ml/gantry/controller/server.Version=v2 -X github.com/gantry-ml/gantry/agent.Version=v2"
		out, err := productBuild("-ldflags", ld, "-o", v2Dir+"/",
			"./cmd/gantry-controller", "./cmd/gantry-agent").CombinedOutput()
		if err != nil {
			v2Err = fmt.Errorf("%w: %s", err, out)
		}
	}()
	// The build writes into v2Dir, which the test removes when it ends.
	t.Cleanup(func() { <-v2Done })

	r := newRolloutLab(t)
	ensureGantryUser(t)
	t.Logf("lab with %d sshd hosts up in %s", len(rolloutControllers)+len(rolloutAgents), time.Since(began).Round(time.Millisecond))

	t.Run("SyntaxCheck", func(t *testing.T) {
		r.playbook(t, "--syntax-check", "site.yml", "upgrade.yml")
	})

	var deploy playbookRun
	if !t.Run("Deploy", func(t *testing.T) {
		deploy = r.playbook(t, "site.yml")
		for _, host := range append(append([]string{}, rolloutControllers...), rolloutAgents...) {
			c, ok := deploy.recap[host]
			if !ok || c["failed"] != 0 || c["unreachable"] != 0 || c["changed"] == 0 {
				t.Errorf("PLAY RECAP for %s: %v, want changes and no failures", host, c)
			}
		}
		checkDeployedFiles(t, r)
		t.Logf("first deploy: %s", deploy.took.Round(time.Millisecond))
	}) {
		t.FailNow()
	}

	// No systemd here: run every unit's ExecStart= as the unit says.
	nc := &netCluster{t: t, lab: r.lab}
	services := map[string]*unitService{}
	for _, name := range rolloutControllers {
		services[name] = r.startUnit(name, "gantry-controller.service")
		nc.ctrls = append(nc.ctrls, &netNode{name: name, host: r.lab.hosts[name]})
	}
	for _, name := range rolloutAgents {
		services[name] = r.startUnit(name, "gantry-agent.service")
		nc.agents = append(nc.agents, &netNode{name: name, host: r.lab.hosts[name]})
	}
	var leader *netNode
	if !t.Run("ClusterUp", func(t *testing.T) {
		nc.t = t
		upStart := time.Now()
		leader = nc.waitLeader(60*time.Second, nc.ctrls...)
		nc.waitAgentsUp(60*time.Second, leader)
		t.Logf("cluster up %s after the units started: leader %s", time.Since(upStart).Round(time.Millisecond), leader.name)
		// The roles made a token and the controllers require it.
		_, err := client.New("http://"+leader.host.addr(portHTTP), client.WithHTTPClient(leader.host.http),
			client.WithToken("wrong")).Jobs(context.Background())
		var apiErr *client.APIError
		if !errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized {
			t.Errorf("API with a wrong token: %v, want 401", err)
		}
	}) {
		t.FailNow()
	}
	nc.t = t

	t.Run("JobRunsToCompletion", func(t *testing.T) {
		id := submit(t, leader, apiv1.JobSpec{Name: "after-rollout", Run: trainerLines(20, 0.01), Resources: apiv1.Resources{GPUs: 1}})
		job := waitJobTerminal(t, leader, id, 60*time.Second)
		checkFinal(t, "after rollout", job, finalFor(20))
		if job.Node != "gpu-1" && job.Node != "gpu-2" {
			t.Errorf("job ran on %q, want a GPU host", job.Node)
		}
	})

	t.Run("SecondRunChangesNothing", func(t *testing.T) {
		again := r.playbook(t, "site.yml")
		if len(again.recap) != len(rolloutControllers)+len(rolloutAgents) {
			t.Errorf("PLAY RECAP has %d hosts, want 5: %v", len(again.recap), again.recap)
		}
		for host, c := range again.recap {
			if c["changed"] != 0 || c["failed"] != 0 || c["unreachable"] != 0 {
				t.Errorf("second run, %s: %v, want changed=0 failed=0", host, c)
			}
		}
		if t.Failed() {
			t.Logf("second run output:\n%s", rolloutTail(again.output, 200))
		}
		t.Logf("second run: %s", again.took.Round(time.Millisecond))
	})
	t.Logf("rollout (lab, deploy, cluster up, job, second run) took %s", time.Since(began).Round(time.Millisecond))

	t.Run("RollingUpgrade", func(t *testing.T) {
		nc.t = t
		upgradeStart := time.Now()
		<-v2Done
		if v2Err != nil {
			t.Fatalf("building the v2 binaries: %v", v2Err)
		}
		t.Logf("v2 binaries ready %s into the upgrade test", time.Since(upgradeStart).Round(time.Millisecond))

		// A job that runs until the test says stop, so that it spans the
		// whole upgrade and ends with a known last line.
		stop := filepath.Join(r.dir, "stop-upgrade-job")
		run := fmt.Sprintf(`i=0; while [ ! -e %s ]; do i=$((i+1)); echo "{\"step\":$i,\"loss\":$((100000-i)).5}" >> "$GANTRY_METRICS_FILE"; sleep 0.2; done; echo '{"step":1000000,"loss":0.25}' >> "$GANTRY_METRICS_FILE"`, stop)
		id := submit(t, leader, apiv1.JobSpec{Name: "through-upgrade", Run: run, Resources: apiv1.Resources{GPUs: 1}})
		var job apiv1.Job
		if !pollUntil(30*time.Second, 50*time.Millisecond, func() bool {
			var err error
			job, err = getJob(leader, id)
			return err == nil && job.State == apiv1.StateRunning && job.Points >= 5
		}) {
			t.Fatalf("job %s not running with points: %+v", id, job)
		}
		oldLeader := nc.waitLeader(10*time.Second, nc.ctrls...)
		startsBefore := map[string]int{}
		for name, s := range services {
			st, _ := s.startTimes()
			startsBefore[name] = len(st)
		}

		var hosts []*nsHost
		for _, n := range nc.ctrls {
			hosts = append(hosts, n.host)
		}
		watch := watchLeader(hosts, 100*time.Millisecond)
		extra, err := json.Marshal(map[string]string{
			"gantry_binary_dir":           v2Dir,
			"gantry_agent_expect_version": "v2",
			"gantry_restart_command":      "sh " + r.restart,
		})
		if err != nil {
			t.Fatal(err)
		}
		up, upErr := r.tryPlaybook("upgrade.yml", "-e", string(extra))
		serving, known, polls, leaders := watch.stop()
		t.Logf("upgrade.yml: %s; %d leader polls; leaders seen %v; leaderless intervals: no leader serving %v, no leader known %v",
			up.took.Round(time.Millisecond), polls, leaders, serving, known)
		if upErr != nil {
			t.Fatalf("upgrade.yml: %v\n%s", upErr, rolloutTail(up.output, 200))
		}

		for host, c := range up.recap {
			if c["failed"] != 0 || c["unreachable"] != 0 {
				t.Errorf("upgrade, %s: %v", host, c)
			}
		}
		// Every binary is the new one, and every service restarted once.
		restartAt := map[string]time.Time{}
		for name, s := range services {
			bin := "gantry-agent"
			if strings.HasPrefix(name, "ctl-") {
				bin = "gantry-controller"
			}
			if got, want := rolloutSHA256(t, filepath.Join(r.prefix(name), "usr/local/bin", bin)), rolloutSHA256(t, filepath.Join(v2Dir, bin)); got != want {
				t.Errorf("%s: installed %s has SHA-256 %s, want the v2 build's %s", name, bin, got, want)
			}
			starts, err := s.startTimes()
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if len(starts) != startsBefore[name]+1 {
				t.Errorf("%s started %d times during the upgrade, want once", name, len(starts)-startsBefore[name])
				continue
			}
			restartAt[name] = starts[len(starts)-1]
		}
		if t.Failed() {
			t.Logf("upgrade output:\n%s", rolloutTail(up.output, 200))
			t.FailNow()
		}
		// Followers first, the leader last, then the agents, one at a time.
		order := make([]string, 0, len(restartAt))
		for name := range restartAt {
			order = append(order, name)
		}
		sort.Slice(order, func(i, j int) bool { return restartAt[order[i]].Before(restartAt[order[j]]) })
		t.Logf("restart order: %v (leader before the upgrade: %s)", order, oldLeader.name)
		if order[2] != oldLeader.name || !strings.HasPrefix(order[3], "gpu-") || !strings.HasPrefix(order[4], "gpu-") {
			t.Errorf("restart order %v: want the two followers, then leader %s, then the agents", order, oldLeader.name)
		}

		// A poll that times out on a busy machine looks like a short gap
		// too, but only an election moves the term.
		elections := 0
		for _, g := range serving {
			if d := g.to.Sub(g.from); d > maxLeaderGap {
				t.Errorf("the cluster had no leader for %s (term %d → %d), longer than one election (%s)", d, g.term, g.afterTerm, maxLeaderGap)
			}
			if g.afterTerm > g.term {
				elections++
			}
			if g.afterTerm > g.term+1 {
				t.Errorf("leaderless for %s across terms %d → %d: more than one election", g.to.Sub(g.from), g.term, g.afterTerm)
			}
		}
		if elections > 1 {
			t.Errorf("%d leaderless intervals with elections %v: only the leader's restart may cost one", elections, serving)
		}

		newLeader := nc.waitLeader(30*time.Second, nc.ctrls...)
		nodes, err := newLeader.api().Nodes(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.Version != "v2" || n.State != "up" || !n.Connected {
				t.Errorf("after the upgrade node %s: version %q state %s connected %v, want v2, up, connected", n.ID, n.Version, n.State, n.Connected)
			}
		}

		// The job ran through its agent's restart; now let it finish.
		if job, err = getJob(newLeader, id); err != nil || job.State != apiv1.StateRunning {
			t.Fatalf("after the upgrade job %s is %s (%s, err %v), want still running", id, job.State, job.Error, err)
		}
		if err := os.WriteFile(stop, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		job = waitJobTerminal(t, newLeader, id, 60*time.Second)
		checkFinal(t, "through the upgrade", job, map[string]float64{"step": 1000000, "loss": 0.25})
		ps, err := readPoints(newLeader, id)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range ps.steps[:len(ps.steps)-1] {
			if s != int64(i+1) {
				t.Fatalf("point %d has step %d, want %d: a point lost or doubled across the agent's restart", i, s, i+1)
			}
		}
		t.Logf("job %s on %s: %d points through the upgrade, final %v", id, job.Node, ps.count, job.FinalMetrics)
		t.Logf("rolling upgrade test took %s", time.Since(upgradeStart).Round(time.Millisecond))
	})
	t.Logf("rollout and upgrade tests took %s", time.Since(began).Round(time.Millisecond))
}

// checkDeployedFiles checks what site.yml left on the hosts and on the
// control machine: ownership and modes, the binaries, the units.
func checkDeployedFiles(t *testing.T, r *rolloutLab) {
	t.Helper()
	type want struct {
		path  string
		mode  os.FileMode
		owner string
	}
	secrets := filepath.Join(r.dir, ".gantry-secrets")
	checks := []want{
		{secrets, 0o700, "root"},
		{filepath.Join(secrets, "tls"), 0o700, "root"},
		{filepath.Join(secrets, "tls", "ca-key.pem"), 0o600, "root"},
		{filepath.Join(secrets, "gossip.key"), 0o600, "root"},
		{filepath.Join(secrets, "api.token"), 0o600, "root"},
	}
	gossip := ""
	for _, name := range append(append([]string{}, rolloutControllers...), rolloutAgents...) {
		p := r.prefix(name)
		svc, data, bin, env := "gantry-controller", "var/lib/gantry", "gantry-controller", "controller.env"
		if strings.HasPrefix(name, "gpu-") {
			svc, data, bin, env = "gantry-agent", "var/lib/gantry-agent", "gantry-agent", "agent.env"
		}
		dataMode, dataOwner := os.FileMode(0o750), "gantry"
		if svc == "gantry-agent" {
			// The agent runs as root and its jobs as gantry-job, who
			// may pass through to their own directory and no further.
			dataMode, dataOwner = 0o711, "root"
		}
		checks = append(checks,
			want{filepath.Join(p, data), dataMode, dataOwner},
			want{filepath.Join(p, "etc/gantry/tls"), 0o750, "root"},
			want{filepath.Join(p, "etc/gantry/tls", name+"-key.pem"), 0o600, "gantry"},
			want{filepath.Join(p, "etc/gantry/tls", name+".pem"), 0o644, "root"},
			want{filepath.Join(p, "etc/gantry", env), 0o600, "root"},
			want{filepath.Join(p, "usr/local/bin", bin), 0o755, "root"},
			want{filepath.Join(p, "etc/systemd/system", svc+".service"), 0o644, "root"},
		)
		if got, want := rolloutSHA256(t, filepath.Join(p, "usr/local/bin", bin)), rolloutSHA256(t, filepath.Join(binDir, bin)); got != want {
			t.Errorf("%s: installed %s differs from the local build", name, bin)
		}
		if _, err := os.Stat(filepath.Join(p, "etc/gantry/tls/ca-key.pem")); !os.IsNotExist(err) {
			t.Errorf("%s: the CA key was copied to the host (stat: %v)", name, err)
		}
		envText, err := os.ReadFile(filepath.Join(p, "etc/gantry", env))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(envText), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok && k == "GANTRY_GOSSIP_KEY" {
				if gossip == "" {
					gossip = v
				} else if v != gossip {
					t.Errorf("%s has another gossip key than the other hosts", name)
				}
			}
		}
		unit, err := parseUnit(filepath.Join(p, "etc/systemd/system", svc+".service"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.Join(unit.execStart, " "), gossip) {
			t.Errorf("%s: the gossip key is on the command line", name)
		}
		common := map[string]string{"Restart": "on-failure", "NoNewPrivileges": "yes", "User": "gantry"}
		perRole := map[string]string{"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "ReadWritePaths": filepath.Join(p, data)}
		if svc == "gantry-agent" {
			perRole = map[string]string{"KillMode": "process", "ProtectSystem": "full", "TasksMax": "infinity",
				"User": "root", "Delegate": "yes"}
			// ProtectControlGroups would make the jobs' cgroups impossible.
			for _, k := range []string{"ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectControlGroups"} {
				if v, ok := unit.directives[k]; ok {
					t.Errorf("%s: agent unit sets %s=%v, which training jobs would inherit", name, k, v)
				}
			}
		}
		for k, v := range common {
			if _, ok := perRole[k]; !ok {
				perRole[k] = v
			}
		}
		for k, v := range perRole {
			if got := unit.directives[k]; len(got) != 1 || got[0] != v {
				t.Errorf("%s: %s.service has %s=%v, want %s", name, svc, k, got, v)
			}
		}
		// deploy/systemd/ holds the same unit for people without Ansible:
		// all but the host-specific command line must match.
		example, err := parseUnit(filepath.Join("..", "deploy", "systemd", svc+".service"))
		if err != nil {
			t.Fatal(err)
		}
		rendered := map[string][]string{}
		for k, vs := range unit.directives {
			for _, v := range vs {
				rendered[k] = append(rendered[k], strings.ReplaceAll(v, p, ""))
			}
		}
		delete(rendered, "ExecStart")
		delete(example.directives, "ExecStart")
		if !reflect.DeepEqual(rendered, example.directives) {
			t.Errorf("deploy/systemd/%s.service differs from the rendered unit:\n rendered %v\n example  %v", svc, rendered, example.directives)
		}
	}
	if gossip == "" {
		t.Error("no GANTRY_GOSSIP_KEY in the environment files")
	}
	for _, c := range checks {
		mode, owner := rolloutFileMode(t, c.path)
		if mode != c.mode || owner != c.owner {
			t.Errorf("%s: mode %v owner %s, want %v %s", c.path, mode, owner, c.mode, c.owner)
		}
	}
}

// ensureGantryUser creates the gantry user and group as the role would
// (a system account, nologin, home /nonexistent) unless they exist. The
// lab's hosts share this machine's /etc/passwd: the role's useradd, run
// by three "hosts" at once, would race for its lock, which separate hosts
// never do. The account stays, as a package's system user would: another
// run of this test may be using it.
func ensureGantryUser(t *testing.T) {
	t.Helper()
	if exec.Command("getent", "passwd", "gantry").Run() == nil {
		return
	}
	if exec.Command("getent", "group", "gantry").Run() != nil {
		rolloutCmd(t, "groupadd", "--system", "gantry")
	}
	rolloutCmd(t, "useradd", "--system", "--gid", "gantry", "--shell", "/usr/sbin/nologin",
		"--home-dir", "/nonexistent", "--no-create-home", "gantry")
}

// TestAnsibleLint lints the roles and playbooks with ansible-lint's
// production profile, where it is installed (.ci/run installs it).
func TestAnsibleLint(t *testing.T) {
	if _, err := exec.LookPath("ansible-lint"); err != nil {
		t.Skip("ansible-lint is not installed (Debian package ansible-lint; .ci/run installs it)")
	}
	dir := ansibleDir(t)
	cmd := exec.Command("ansible-lint", "--offline", "--nocolor", "--profile", "production", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "ANSIBLE_LOCAL_TEMP="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ansible-lint: %v\n%s", err, out)
	}
}

// TestAnsibleRoleArgumentSpecs checks each role's meta/argument_specs.yml
// against its defaults/main.yml: every default is declared, with its
// type and the same default value, and every declared default exists.
func TestAnsibleRoleArgumentSpecs(t *testing.T) {
	roles, err := filepath.Glob(filepath.Join(ansibleDir(t), "roles", "*"))
	if err != nil || len(roles) == 0 {
		t.Fatalf("no roles under deploy/ansible/roles (%v)", err)
	}
	for _, role := range roles {
		t.Run(filepath.Base(role), func(t *testing.T) {
			defaults := map[string]any{}
			specReadYAML(t, filepath.Join(role, "defaults", "main.yml"), &defaults)
			var specs struct {
				ArgumentSpecs map[string]struct {
					ShortDescription string `yaml:"short_description"`
					Options          map[string]struct {
						Type        string `yaml:"type"`
						Elements    string `yaml:"elements"`
						Default     any    `yaml:"default"`
						Required    bool   `yaml:"required"`
						Description any    `yaml:"description"`
						Choices     []any  `yaml:"choices"`
					} `yaml:"options"`
				} `yaml:"argument_specs"`
			}
			specReadYAML(t, filepath.Join(role, "meta", "argument_specs.yml"), &specs)
			main, ok := specs.ArgumentSpecs["main"]
			if !ok {
				t.Fatal("no 'main' entry point in meta/argument_specs.yml")
			}
			for name, value := range defaults {
				opt, ok := main.Options[name]
				if !ok {
					t.Errorf("default %s has no entry in argument_specs main", name)
					continue
				}
				if opt.Description == nil {
					t.Errorf("%s: no description", name)
				}
				if !reflect.DeepEqual(opt.Default, value) {
					t.Errorf("%s: spec default %#v, defaults/main.yml %#v", name, opt.Default, value)
				}
				if err := checkSpecType(opt.Type, opt.Elements, value); err != nil {
					t.Errorf("%s: %v", name, err)
				}
				if len(opt.Choices) > 0 && !specHasChoice(opt.Choices, value) {
					t.Errorf("%s: default %#v is not one of %v", name, value, opt.Choices)
				}
			}
			for ep, spec := range specs.ArgumentSpecs {
				if spec.ShortDescription == "" {
					t.Errorf("entry point %s: no short_description", ep)
				}
				for name, opt := range spec.Options {
					if opt.Type == "" {
						t.Errorf("%s.%s: no type", ep, name)
					}
					if opt.Required || opt.Default == nil {
						continue
					}
					if _, ok := defaults[name]; !ok {
						t.Errorf("%s.%s: declared default %#v missing from defaults/main.yml", ep, name, opt.Default)
					}
				}
			}
		})
	}
}

// checkSpecType checks a default value against an argument spec type.
// A Jinja template is accepted for any type: Ansible converts the
// rendered string when it validates.
func checkSpecType(typ, elements string, v any) error {
	if s, ok := v.(string); ok && strings.Contains(s, "{{") {
		return nil
	}
	ok := false
	switch typ {
	case "str", "path", "raw":
		_, ok = v.(string)
	case "int":
		_, ok = v.(int)
	case "bool":
		_, ok = v.(bool)
	case "list":
		var items []any
		if items, ok = v.([]any); ok && elements != "" {
			for _, it := range items {
				if err := checkSpecType(elements, "", it); err != nil {
					return fmt.Errorf("list element: %w", err)
				}
			}
		}
	case "dict":
		_, ok = v.(map[string]any)
	default:
		return fmt.Errorf("unknown argument spec type %q", typ)
	}
	if !ok {
		return fmt.Errorf("default %#v (%T) is not of type %s", v, v, typ)
	}
	return nil
}

// specHasChoice reports whether v is one of list.
func specHasChoice(list []any, v any) bool {
	for _, x := range list {
		if reflect.DeepEqual(x, v) {
			return true
		}
	}
	return false
}

// specReadYAML decodes a YAML file into out.
func specReadYAML(t *testing.T, path string, out any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, out); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
