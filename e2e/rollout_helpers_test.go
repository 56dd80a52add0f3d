//go:build linux

package e2e

// The Ansible rollout lab: the hosts of netns_helpers_test.go, each
// running its own sshd, plus a control-machine namespace that runs
// ansible-playbook against them over real SSH. Every "host" installs
// under its own prefix in a temporary directory (they share one file
// system), and since no systemd runs here, the test reads each rendered
// unit file and runs its ExecStart= itself, as its User=, with its
// EnvironmentFile=, inside the host's namespace.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// rolloutHosts are the lab's hosts on 10.78.0.0/24 (distinct from the
// other netns tests' 10.77.0.0/24): the control machine, three
// controllers and two GPU hosts.
var rolloutHosts = map[string]string{
	"ansible": "10.78.0.2",
	"ctl-1":   "10.78.0.11", "ctl-2": "10.78.0.12", "ctl-3": "10.78.0.13",
	"gpu-1": "10.78.0.21", "gpu-2": "10.78.0.22",
}

var (
	rolloutControllers = []string{"ctl-1", "ctl-2", "ctl-3"}
	rolloutAgents      = []string{"gpu-1", "gpu-2"}
)

// rolloutTools are the programs the rollout test runs, with the Debian
// package that has each.
var rolloutTools = map[string]string{
	"ansible-playbook": "ansible-core",
	"/usr/sbin/sshd":   "openssh-server",
	"ssh":              "openssh-client",
	"ssh-keygen":       "openssh-client",
	"setpriv":          "util-linux",
}

// requireRolloutTools fails (not skips: CI installs them, see .ci/run)
// when a tool of the rollout test is missing.
func requireRolloutTools(t *testing.T) {
	t.Helper()
	for tool, pkg := range rolloutTools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the Ansible rollout test needs %s (Debian package %s; .ci/run installs it): %v", tool, pkg, err)
		}
	}
}

// ansibleDir is deploy/ansible, absolute.
func ansibleDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "deploy", "ansible"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// rolloutLab is the lab plus everything the playbooks need.
type rolloutLab struct {
	t         *testing.T
	lab       *netLab
	dir       string // world-traversable: the services run as the gantry user
	key       string // the SSH private key Ansible logs in with
	inventory string
	restart   string // the restart script given as gantry_restart_command

	mu       sync.Mutex
	services []*unitService
}

// newRolloutLab creates the namespaces and starts one sshd per host.
func newRolloutLab(t *testing.T) *rolloutLab {
	t.Helper()
	lab := newNetLab(t, rolloutHosts)
	dir := t.TempDir()
	// t.TempDir makes 0700 directories; the services run as the gantry
	// user and must reach their prefix under it.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r := &rolloutLab{t: t, lab: lab, dir: dir, key: filepath.Join(dir, "id_ed25519")}
	// Stop the services before the lab deletes the namespaces (cleanups
	// run last-registered first), or their supervisors would restart them.
	t.Cleanup(r.stopServices)
	rolloutCmd(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gantry-rollout-test", "-f", r.key)

	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // sshd's privilege separation directory
		t.Fatal(err)
	}
	// With UsePAM no, sshd refuses a locked account ("!" in /etc/shadow)
	// even for key logins; PAM does not.
	usePAM := "no"
	if rolloutRootLocked() {
		usePAM = "yes"
	}
	// Root's own HOME would have sshd's shell source root's ~/.bashrc for
	// every command Ansible runs (bash does for ssh sessions), at whatever
	// that costs on this machine; the lab's root gets an empty home.
	home := filepath.Join(dir, "root-home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range append(append([]string{}, rolloutControllers...), rolloutAgents...) {
		h := lab.hosts[name]
		hd := filepath.Join(dir, "sshd", name)
		if err := os.MkdirAll(hd, 0o700); err != nil {
			t.Fatal(err)
		}
		hostKey := filepath.Join(hd, "ssh_host_ed25519_key")
		rolloutCmd(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey)
		cfg := filepath.Join(hd, "sshd_config")
		conf := fmt.Sprintf(`ListenAddress %s
Port 22
HostKey %s
PidFile none
PermitRootLogin prohibit-password
AuthorizedKeysFile %s.pub
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM %s
Subsystem sftp internal-sftp
SetEnv HOME=%s
`, h.ip, hostKey, r.key, usePAM, home)
		if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		lab.startProc(h, "sshd-"+name, "/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	}
	for _, name := range append(append([]string{}, rolloutControllers...), rolloutAgents...) {
		h := lab.hosts[name]
		var lastErr error
		if !pollUntil(10*time.Second, 20*time.Millisecond, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			c, err := dialInNetns(ctx, "/run/netns/"+lab.hosts["ansible"].ns, "tcp", h.addr(22))
			if lastErr = err; err != nil {
				return false
			}
			c.Close()
			return true
		}) {
			t.Fatalf("sshd on %s does not accept connections: %v", name, lastErr)
		}
	}

	r.restart = filepath.Join(dir, "restart-service.sh")
	if err := os.WriteFile(r.restart, []byte(restartScript), 0o755); err != nil {
		t.Fatal(err)
	}
	r.writeInventory()
	return r
}

// restartScript is the test's gantry_restart_command, a stand-in for
// `systemctl restart $GANTRY_UNIT`: the unit's supervisor (unitService)
// starts it again whenever its process exits, so this stops the process
// and waits until the new one is recorded.
const restartScript = `#!/bin/sh
set -eu
pidfile="$GANTRY_PREFIX/run/$GANTRY_UNIT.pid"
old=$(cat "$pidfile")
kill -TERM "$old"
n=0
while [ "$(cat "$pidfile")" = "$old" ]; do
	n=$((n + 1))
	if [ "$n" -gt 600 ]; then
		echo "$GANTRY_UNIT: no new process 60 s after SIGTERM to $old" >&2
		exit 1
	fi
	sleep 0.1
done
`

// rolloutRootLocked reports whether root's password field in /etc/shadow marks
// the account locked.
func rolloutRootLocked() bool {
	b, err := os.ReadFile("/etc/shadow")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.SplitN(line, ":", 3); len(f) == 3 && f[0] == "root" {
			return strings.HasPrefix(f[1], "!")
		}
	}
	return false
}

// rolloutCmd runs a command on the test machine, failing the test on error.
func rolloutCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// prefix is the directory host name installs under.
func (r *rolloutLab) prefix(name string) string { return filepath.Join(r.dir, "hosts", name) }

// writeInventory writes a YAML inventory: the two groups, per-host
// prefixes, root over SSH with the test's key, no systemd.
func (r *rolloutLab) writeInventory() {
	r.t.Helper()
	group := func(names []string) map[string]any {
		hosts := map[string]any{}
		for _, n := range names {
			hosts[n] = map[string]any{"ansible_host": r.lab.hosts[n].ip, "gantry_prefix": r.prefix(n)}
		}
		return map[string]any{"hosts": hosts}
	}
	inv := map[string]any{"all": map[string]any{
		"children": map[string]any{
			"controllers": group(rolloutControllers),
			"gpu_hosts":   group(rolloutAgents),
		},
		"vars": map[string]any{
			"ansible_user":                 "root",
			"ansible_ssh_private_key_file": r.key,
			"ansible_ssh_common_args":      "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
			"ansible_python_interpreter":   "/usr/bin/python3",
			"gantry_manage_service":        false,
			"gantry_agent_fake_gpus":       2,
			"gantry_binary_dir":            binDir,
			// The upgrade gates poll every second rather than every two.
			"gantry_controller_wait_delay": 1,
			"gantry_agent_wait_delay":      1,
		},
	}}
	b, err := yaml.Marshal(inv)
	if err != nil {
		r.t.Fatal(err)
	}
	r.inventory = filepath.Join(r.dir, "inventory.yml")
	if err := os.WriteFile(r.inventory, b, 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// playbookRun is one ansible-playbook run.
type playbookRun struct {
	output string
	took   time.Duration
	recap  map[string]map[string]int // host → ok, changed, failed, ...
}

// playbook runs ansible-playbook from the control machine's namespace
// and returns its output and PLAY RECAP; a failed run fails the test.
func (r *rolloutLab) playbook(t *testing.T, args ...string) playbookRun {
	t.Helper()
	res, err := r.tryPlaybook(args...)
	if err != nil {
		t.Fatalf("ansible-playbook %s: %v\n%s", strings.Join(args, " "), err, rolloutTail(res.output, 150))
	}
	// The roles make the API token on the first run; the test's clients
	// need it from then on.
	if tok, err := os.ReadFile(filepath.Join(r.dir, ".gantry-secrets", "api.token")); err == nil {
		r.lab.setToken(strings.TrimSpace(string(tok)))
	}
	return res
}

// tryPlaybook is playbook without failing the test: the run, and the
// error of a failed one.
func (r *rolloutLab) tryPlaybook(args ...string) (playbookRun, error) {
	dir := ansibleDir(r.t)
	tmp := filepath.Join(r.dir, "ansible-tmp")
	cmd := exec.Command("ip", append([]string{"netns", "exec", r.lab.hosts["ansible"].ns,
		"ansible-playbook", "-i", r.inventory}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"ANSIBLE_CONFIG="+filepath.Join(dir, "ansible.cfg"),
		"ANSIBLE_NOCOLOR=1",
		"ANSIBLE_FORCE_COLOR=0",
		"ANSIBLE_LOCAL_TEMP="+filepath.Join(tmp, "local"),
		"ANSIBLE_REMOTE_TEMP="+filepath.Join(tmp, "remote"),
		"ANSIBLE_SSH_CONTROL_PATH_DIR="+filepath.Join(tmp, "cp"),
	)
	// Output to a file, not a pipe: ssh's ControlPersist masters outlive
	// ansible-playbook with its stdout, and Wait would wait for them.
	out, err := os.CreateTemp(r.dir, "ansible-output-*.log")
	if err != nil {
		return playbookRun{}, err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	runErr := cmd.Run()
	took := time.Since(start)
	b, err := os.ReadFile(out.Name())
	if err != nil {
		return playbookRun{}, err
	}
	return playbookRun{output: string(b), took: took, recap: parseRecap(string(b))}, runErr
}

// recapLine is one host's line of PLAY RECAP.
var recapLine = regexp.MustCompile(`^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$`)

// parseRecap reads the PLAY RECAP section of ansible-playbook's output.
func parseRecap(out string) map[string]map[string]int {
	recap := map[string]map[string]int{}
	i := strings.LastIndex(out, "PLAY RECAP")
	if i < 0 {
		return recap
	}
	sc := bufio.NewScanner(strings.NewReader(out[i:]))
	for sc.Scan() {
		m := recapLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		counts := map[string]int{}
		for _, kv := range strings.Fields(m[2]) {
			k, v, _ := strings.Cut(kv, "=")
			counts[k], _ = strconv.Atoi(v)
		}
		recap[m[1]] = counts
	}
	return recap
}

// rolloutTail returns the last n lines of s.
func rolloutTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---- systemd units, without systemd ----

// unitFile is what the test honours of a rendered unit's [Service].
type unitFile struct {
	execStart   []string
	envFiles    []string // "-" prefix stripped; optional ones in envOptional
	envOptional map[string]bool
	env         []string
	user, group string
	noNewPrivs  bool
	directives  map[string][]string // every [Service] key → its values
}

// parseUnit reads a unit file: comments, sections, line continuations
// and the quoting of ExecStart= and Environment= as systemd has them.
func parseUnit(path string) (unitFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return unitFile{}, err
	}
	u := unitFile{envOptional: map[string]bool{}, directives: map[string][]string{}}
	section := ""
	var logical []string
	var cont strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cont.Len() == 0 && (trimmed == "" || trimmed[0] == '#' || trimmed[0] == ';') {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cont.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cont.WriteString(trimmed)
		logical = append(logical, cont.String())
		cont.Reset()
	}
	for _, line := range logical {
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return u, fmt.Errorf("%s: not key=value: %q", path, line)
		}
		if section != "Service" {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		u.directives[k] = append(u.directives[k], v)
		switch k {
		case "ExecStart":
			if strings.ContainsAny(v[:1], "-@:+!") {
				return u, fmt.Errorf("%s: ExecStart prefix %q is not supported here", path, v[:1])
			}
			if u.execStart, err = splitUnitWords(v); err != nil {
				return u, fmt.Errorf("%s: ExecStart: %w", path, err)
			}
		case "EnvironmentFile":
			opt := strings.HasPrefix(v, "-")
			v = strings.TrimPrefix(v, "-")
			u.envFiles = append(u.envFiles, v)
			u.envOptional[v] = opt
		case "Environment":
			words, err := splitUnitWords(v)
			if err != nil {
				return u, fmt.Errorf("%s: Environment: %w", path, err)
			}
			u.env = append(u.env, words...)
		case "User":
			u.user = v
		case "Group":
			u.group = v
		case "NoNewPrivileges":
			u.noNewPrivs = v == "yes" || v == "true" || v == "1" || v == "on"
		}
	}
	if len(u.execStart) == 0 {
		return u, fmt.Errorf("%s: no ExecStart=", path)
	}
	return u, nil
}

// splitUnitWords splits on whitespace, honouring double and single quotes.
func splitUnitWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	in, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			w.WriteByte(c)
		case c == '"' || c == '\'':
			quote, in = c, true
		case c == ' ' || c == '\t':
			if in {
				words = append(words, w.String())
				w.Reset()
				in = false
			}
		default:
			w.WriteByte(c)
			in = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if in {
		words = append(words, w.String())
	}
	return words, nil
}

// readEnvFile reads KEY=VALUE lines as systemd's EnvironmentFile= does
// (comments, blank lines, optional quotes).
func readEnvFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var env []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s: not KEY=VALUE: %q", path, line)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		env = append(env, strings.TrimSpace(k)+"="+v)
	}
	return env, nil
}

// environ is the environment systemd gives a system service of u: its
// default PATH, the User='s identity, then the files, then Environment=.
func (u unitFile) environ() ([]string, error) {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	if u.user != "" {
		pw, err := user.Lookup(u.user)
		if err != nil {
			return nil, err
		}
		env = append(env, "USER="+u.user, "LOGNAME="+u.user, "HOME="+pw.HomeDir, "SHELL=/usr/sbin/nologin")
	}
	for _, f := range u.envFiles {
		kv, err := readEnvFile(f)
		if err != nil {
			if u.envOptional[f] && os.IsNotExist(err) {
				continue
			}
			return nil, err
		}
		env = append(env, kv...)
	}
	return append(env, u.env...), nil
}

// unitService runs one unit's ExecStart= in a host's namespace and, like
// systemd with Restart=always, starts it again whenever it exits: that
// is how the restart script's SIGTERM becomes a restart. Each start reads
// the unit afresh (a daemon-reload) and writes the pid to
// PREFIX/run/UNIT.pid.
type unitService struct {
	host     *nsHost
	name     string // host/unit, for logs
	unitPath string
	pidPath  string
	logPath  string

	mu       sync.Mutex
	cmd      *exec.Cmd
	starts   []time.Time
	startErr error
	stopping bool
	done     chan struct{} // closed when the supervisor returns
}

// startUnit supervises the unit file unit (e.g. "gantry-agent.service")
// under host name's prefix.
func (r *rolloutLab) startUnit(name, unit string) *unitService {
	r.t.Helper()
	prefix := r.prefix(name)
	s := &unitService{
		host: r.lab.hosts[name], name: name + "/" + unit,
		unitPath: filepath.Join(prefix, "etc", "systemd", "system", unit),
		pidPath:  filepath.Join(prefix, "run", unit+".pid"),
		logPath:  filepath.Join(r.dir, "logs", name+"-"+unit+".log"),
		done:     make(chan struct{}),
	}
	for _, d := range []string{filepath.Dir(s.pidPath), filepath.Dir(s.logPath)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			r.t.Fatal(err)
		}
	}
	cmd, err := s.start()
	if err != nil {
		r.t.Fatalf("start %s: %v", s.name, err)
	}
	r.mu.Lock()
	r.services = append(r.services, s)
	r.mu.Unlock()
	go s.supervise(cmd)
	return s
}

// errUnitStopping means the service was stopped while it was restarting.
var errUnitStopping = errors.New("service stopped")

// start runs the unit's ExecStart= once. It holds the lock throughout, so
// that stop either sees the new process or keeps it from starting.
func (s *unitService) start() (*exec.Cmd, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return nil, errUnitStopping
	}
	u, err := parseUnit(s.unitPath)
	if err != nil {
		return nil, err
	}
	env, err := u.environ()
	if err != nil {
		return nil, err
	}
	// ip netns exec, then setpriv: both exec in place, so the pid is the
	// service's own, as it would be under systemd.
	args := []string{"netns", "exec", s.host.ns}
	if u.user != "" {
		args = append(args, "setpriv", "--reuid="+u.user, "--init-groups")
		if u.group != "" {
			args = append(args, "--regid="+u.group)
		}
		if u.noNewPrivs {
			args = append(args, "--no-new-privs")
		}
		args = append(args, "--")
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	fmt.Fprintf(logf, "=== %s start: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(u.execStart, " "))
	cmd := exec.Command("ip", append(args, u.execStart...)...)
	cmd.Env, cmd.Dir = env, "/"
	// A *os.File, not a pipe: the agent's jobs inherit nothing that would
	// make Wait wait for them.
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if err := rolloutWriteFile(s.pidPath, []byte(strconv.Itoa(cmd.Process.Pid)+"\n")); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	s.cmd = cmd
	s.starts = append(s.starts, time.Now())
	return cmd, nil
}

// supervise waits for each process and starts the next, until stop.
func (s *unitService) supervise(cmd *exec.Cmd) {
	defer close(s.done)
	for {
		err := cmd.Wait()
		s.mu.Lock()
		stopping := s.stopping
		started := s.starts[len(s.starts)-1]
		s.mu.Unlock()
		s.logf("exit: %v", err)
		if stopping {
			return
		}
		// A process that dies at once is not restarted in a tight loop
		// (systemd's RestartSec); a stopped one is started at once.
		if time.Since(started) < time.Second {
			time.Sleep(time.Second)
		}
		next, err := s.start()
		if errors.Is(err, errUnitStopping) {
			return
		}
		if err != nil {
			s.mu.Lock()
			s.startErr = fmt.Errorf("restart %s: %w", s.name, err)
			s.mu.Unlock()
			return
		}
		cmd = next
	}
}

// logf appends a line to the service's log.
func (s *unitService) logf(format string, args ...any) {
	f, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "=== %s %s\n", time.Now().Format(time.RFC3339Nano), fmt.Sprintf(format, args...))
}

// startTimes returns when each process of the service started.
func (s *unitService) startTimes() ([]time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.starts...), s.startErr
}

// stop kills the current process and ends the supervision.
func (s *unitService) stop() {
	s.mu.Lock()
	s.stopping = true
	cmd := s.cmd
	s.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// stopServices stops every supervised service, printing their logs if
// the test failed.
func (r *rolloutLab) stopServices() {
	r.mu.Lock()
	services := append([]*unitService(nil), r.services...)
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.stop()
		}()
	}
	wg.Wait()
	if r.t.Failed() {
		for _, s := range services {
			b, _ := os.ReadFile(s.logPath)
			r.t.Logf("---- %s (last 40 lines) ----\n%s", s.name, rolloutTail(string(b), 40))
		}
	}
}

// rolloutWriteFile replaces path with data in one rename, so a reader
// never sees it half written.
func rolloutWriteFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// rolloutSHA256 is the hex SHA-256 of a file.
func rolloutSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ---- leader availability during the upgrade ----

// leaderWatch polls every controller's own Raft view (?local=1) and
// records the intervals without a leader, in two views: "serving", no
// controller answers as leader (a controller stops serving HTTP before
// it gives up leadership, so its shutdown counts), and "known", no
// controller that answers names a leader (Raft's own view: followers
// forget a leader only after a missed heartbeat).
type leaderWatch struct {
	stopCh chan struct{}
	done   chan struct{}

	mu      sync.Mutex
	polls   int
	leaders map[string]bool
	serving gapRecorder
	known   gapRecorder
}

// gapRecorder turns a series of has-leader samples into intervals.
type gapRecorder struct {
	gaps     []leaderGap
	open     time.Time // zero while there is a leader
	openTerm uint64
}

// leaderGap is one interval without a leader, with the highest term seen
// before and after it (how many elections it took).
type leaderGap struct {
	from, to        time.Time
	term, afterTerm uint64
}

func (g leaderGap) String() string {
	return fmt.Sprintf("%s (term %d → %d)", g.to.Sub(g.from).Round(time.Millisecond), g.term, g.afterTerm)
}

// sample records whether there was a leader at now.
func (g *gapRecorder) sample(now time.Time, leader bool, termBefore, term uint64) {
	switch {
	case !leader && g.open.IsZero():
		g.open, g.openTerm = now, termBefore
	case leader && !g.open.IsZero():
		g.gaps = append(g.gaps, leaderGap{from: g.open, to: now, term: g.openTerm, afterTerm: term})
		g.open = time.Time{}
	}
}

// result returns the intervals, one still open ending at now.
func (g *gapRecorder) result(now time.Time, term uint64) []leaderGap {
	gaps := append([]leaderGap(nil), g.gaps...)
	if !g.open.IsZero() {
		gaps = append(gaps, leaderGap{from: g.open, to: now, term: g.openTerm, afterTerm: term})
	}
	return gaps
}

// watchLeader starts polling hosts every interval.
func watchLeader(hosts []*nsHost, interval time.Duration) *leaderWatch {
	w := &leaderWatch{stopCh: make(chan struct{}), done: make(chan struct{}), leaders: map[string]bool{}}
	nodes := make([]*netNode, len(hosts))
	for i, h := range hosts {
		nodes[i] = &netNode{name: h.name, host: h}
	}
	var term uint64
	go func() {
		defer close(w.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			term = w.poll(nodes, term)
			select {
			case <-w.stopCh:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// poll asks every node once and returns the highest term seen so far.
func (w *leaderWatch) poll(nodes []*netNode, termBefore uint64) uint64 {
	type answer struct {
		ok             bool
		leader, leadID string
		term           uint64
	}
	answers := make([]answer, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := localStatus(n)
			if err != nil {
				return
			}
			a := answer{ok: true, leadID: st.LeaderID, term: st.Term}
			if st.State == "Leader" {
				a.leader = n.name
			}
			answers[i] = a
		}()
	}
	wg.Wait()
	now := time.Now()
	serving, known, term := false, false, termBefore
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range answers {
		if a.leader != "" {
			serving = true
			w.leaders[a.leader] = true
		}
		known = known || (a.ok && a.leadID != "")
		term = max(term, a.term)
	}
	w.polls++
	w.serving.sample(now, serving, termBefore, term)
	w.known.sample(now, known, termBefore, term)
	return term
}

// stop ends the polling and returns the leaderless intervals of both
// views (one still open counts up to now), the number of polls and the
// leaders seen.
func (w *leaderWatch) stop() (serving, known []leaderGap, polls int, leaders []string) {
	close(w.stopCh)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	for l := range w.leaders {
		leaders = append(leaders, l)
	}
	var term uint64
	for _, g := range append(append([]leaderGap(nil), w.serving.gaps...), w.known.gaps...) {
		term = max(term, g.afterTerm)
	}
	return w.serving.result(now, term), w.known.result(now, term), w.polls, leaders
}

// ---- small things ----

// rolloutFileMode returns a file's permission bits and owner's name.
func rolloutFileMode(t *testing.T, path string) (os.FileMode, string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	owner := "?"
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if u, err := user.LookupId(strconv.Itoa(int(st.Uid))); err == nil {
			owner = u.Username
		}
	}
	return fi.Mode().Perm(), owner
}
