// Package jobcgroup gives each job run its own cgroup v2 group, so that
// everything the job starts can be found and killed, even a process that
// left the job's session and process group (double fork and setsid, as a
// daemon does).
//
// Layout. The agent's own cgroup is read from /proc/self/cgroup (the "0::"
// line) and the cgroup2 mount from /proc/self/mountinfo. Under a base
// cgroup the agent creates gantry-jobs-NODE (one per agent, as several
// agents share a host in tests) and, in it, one group per job run:
//
//	BASE/gantry-agent          the agent itself (only under a delegated unit)
//	BASE/gantry-jobs-NODE-INSTANCE/job-ID-RUN
//
// BASE is the agent's own cgroup when that is the root of the hierarchy (a
// container's namespace, a test box) or a cgroup delegated to it (a systemd
// unit with Delegate=yes, which marks it with the trusted.delegate or
// user.delegate extended attribute). cgroup v2 forbids a non-root cgroup to
// both hold processes and hand controllers to its children, so under a
// delegated unit the agent first moves itself into the leaf gantry-agent,
// leaving BASE with children only, as container runtimes do with their
// own process. Anywhere else (a login session, a cgroup someone else
// manages) the agent does not create groups unless told where (Options.Parent),
// and falls back to attribution by session.
//
// The job's groups are root's: the job's user cannot move its processes
// out of them, which needs write access to the target's cgroup.procs.
package jobcgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Names inside the base cgroup.
const (
	// AgentLeaf is the leaf the agent moves itself into under a delegated
	// cgroup.
	AgentLeaf = "gantry-agent"
	// jobsPrefix starts the name of an agent's directory of job groups.
	jobsPrefix = "gantry-jobs-"
	// groupPrefix starts the name of every job's group.
	groupPrefix = "job-"
)

// Bounds of what is read from /proc and cgroupfs.
const (
	maxMountinfoBytes = 4 << 20
	maxCgroupBytes    = 64 << 10
	maxProcsBytes     = 4 << 20
	maxEventsBytes    = 4 << 10
	// maxNameBytes bounds a sanitized name part; a cgroup name is a file
	// name (255 bytes at most).
	maxNameBytes = 80
)

// pollInterval is how often Remove checks that a killed group emptied.
const pollInterval = 10 * time.Millisecond

// ErrUnavailable is wrapped by Open's error when job cgroups cannot be used
// here; the caller falls back to attribution by session.
var ErrUnavailable = errors.New("job cgroups unavailable")

// Options configure Open.
type Options struct {
	// NodeID names the agent; its sanitized form names its directory.
	NodeID string
	// Instance, when set, is hashed into the directory's name too: two
	// agents with one node id on one host (test runs side by side) must
	// not share a directory, or each would sweep the other's groups. The
	// agent's data directory is stable across its restarts, as adoption
	// needs.
	Instance string
	// Parent, when set, is the cgroup (a path from the cgroup2 root, as in
	// /proc/PID/cgroup) under which the agent's directory is created; the
	// agent is not moved. Empty chooses as the package comment says.
	Parent string
	// Mountinfo and SelfCgroup are the files read; /proc/self's when
	// empty (tests point them elsewhere).
	Mountinfo, SelfCgroup string
}

// Manager creates and finds one agent's job groups. Its methods are safe for
// concurrent use.
type Manager struct {
	mount string // the cgroup2 mount point
	rel   string // the agent's directory, from the cgroup2 root ("/a/gantry-jobs-n")
	dir   string // the same in the file system
	moved bool   // the agent moved itself into AgentLeaf
}

// Open finds the cgroup2 hierarchy and prepares the agent's directory of
// job groups, moving the agent into its leaf under a delegated cgroup. An
// error wrapping ErrUnavailable means cgroups cannot be used; no other
// error is returned.
func Open(o Options) (*Manager, error) {
	mi, sc := o.Mountinfo, o.SelfCgroup
	if mi == "" {
		mi = "/proc/self/mountinfo"
	}
	if sc == "" {
		sc = "/proc/self/cgroup"
	}
	data, err := readBounded(mi, maxMountinfoBytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	mount, ok := parseMountinfo(data)
	if !ok {
		return nil, fmt.Errorf("%w: no cgroup2 file system is mounted", ErrUnavailable)
	}
	data, err = readBounded(sc, maxCgroupBytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	own, ok := parseCgroup(data)
	if !ok {
		return nil, fmt.Errorf("%w: %s has no cgroup v2 (0::) line", ErrUnavailable, sc)
	}
	m := &Manager{mount: mount}
	base := own
	switch {
	case o.Parent != "":
		base = path.Clean("/" + o.Parent)
	case own == "/":
	case path.Base(own) == AgentLeaf && delegated(filepath.Join(mount, path.Dir(own))):
		// Moved already, by an agent this process replaced by exec.
		base = path.Dir(own)
	case delegated(filepath.Join(mount, own)):
		if err := m.moveSelf(own); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: the agent's cgroup %s is not delegated to it (run it as a systemd unit "+
			"with Delegate=yes, or name a parent cgroup)", ErrUnavailable, own)
	}
	name := jobsPrefix + sanitize(o.NodeID)
	if o.Instance != "" {
		h := fnv.New32a()
		// Cleaned: "/data/" and "/data" are one agent's data directory.
		_, _ = h.Write([]byte(filepath.Clean(o.Instance))) // a hash's Write never fails
		name += fmt.Sprintf("-%08x", h.Sum32())
	}
	m.rel = path.Join(base, name)
	m.dir = filepath.Join(mount, filepath.FromSlash(m.rel))
	if err := os.MkdirAll(m.dir, 0o755); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// mkdir may succeed where a cgroup cannot be used (a read-only
	// control file system mounted over, an unknown file system): the
	// kernel creates the control files in a real cgroup.
	if _, err := os.Stat(filepath.Join(m.dir, "cgroup.procs")); err != nil {
		return nil, fmt.Errorf("%w: %s is not a cgroup: %w", ErrUnavailable, m.dir, err)
	}
	return m, nil
}

// moveSelf moves the agent into AgentLeaf under own, so that own holds no
// process and may have children (cgroup v2's no-internal-processes rule).
func (m *Manager) moveSelf(own string) error {
	leaf := filepath.Join(m.mount, filepath.FromSlash(own), AgentLeaf)
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// Writing one pid to cgroup.procs moves the whole process, every
	// thread of it.
	if err := writeFile(filepath.Join(leaf, "cgroup.procs"), strconv.Itoa(os.Getpid())); err != nil {
		return fmt.Errorf("%w: move the agent into %s: %w", ErrUnavailable, leaf, err)
	}
	m.moved = true
	return nil
}

// delegated reports whether systemd marked the cgroup at dir as delegated.
func delegated(dir string) bool {
	for _, attr := range []string{"trusted.delegate", "user.delegate"} {
		buf := make([]byte, 8)
		n, err := unix.Getxattr(dir, attr, buf)
		if err == nil && string(buf[:n]) == "1" {
			return true
		}
	}
	return false
}

// Dir is the agent's directory of job groups in the file system.
func (m *Manager) Dir() string { return m.dir }

// Path is the agent's directory of job groups as /proc/PID/cgroup names it.
func (m *Manager) Path() string { return m.rel }

// Moved reports whether Open moved the agent into its own leaf.
func (m *Manager) Moved() bool { return m.moved }

// GroupName is the name of the group of run run of job jobID. It is
// derived, not stored: the agent that re-adopts the job computes it again.
func GroupName(jobID, run string) string {
	return groupPrefix + sanitize(jobID) + "-" + sanitize(run)
}

// Group returns the group of run run of job jobID; nothing is created.
func (m *Manager) Group(jobID, run string) *Group { return GroupAt(m.dir, jobID, run) }

// GroupAt is Manager.Group for the manager whose Dir is dir: for a process
// that was handed the directory rather than the Manager.
func GroupAt(dir, jobID, run string) *Group {
	name := GroupName(jobID, run)
	return &Group{name: name, dir: filepath.Join(dir, name)}
}

// Owner returns the name of the job group of this agent that process pid is
// in (or in a group below), and false when it is in none (or is gone).
func (m *Manager) Owner(pid int) (string, bool) {
	data, err := readBounded("/proc/"+strconv.Itoa(pid)+"/cgroup", maxCgroupBytes)
	if err != nil {
		return "", false
	}
	cg, ok := parseCgroup(data)
	if !ok {
		return "", false
	}
	rest, ok := strings.CutPrefix(cg, m.rel+"/")
	if !ok {
		return "", false
	}
	name, _, _ := strings.Cut(rest, "/")
	return name, strings.HasPrefix(name, groupPrefix)
}

// Sweep removes the job groups of this agent that keep does not name (by
// GroupName), killing what still runs in them: the leftovers of jobs that
// ended while no agent watched, or that the agent no longer knows. It
// returns the names removed and what failed.
func (m *Manager) Sweep(keep map[string]bool, deadline time.Time) ([]string, error) {
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return nil, fmt.Errorf("sweep job cgroups: %w", err)
	}
	var stale []*Group
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), groupPrefix) || keep[e.Name()] {
			continue
		}
		g := &Group{name: e.Name(), dir: filepath.Join(m.dir, e.Name())}
		// Kill them all first, then wait: one deadline for all.
		if err := g.Kill(); err != nil {
			errs = append(errs, err)
		}
		stale = append(stale, g)
	}
	var removed []string
	for _, g := range stale {
		if err := g.Remove(deadline); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, g.name)
	}
	return removed, errors.Join(errs...)
}

// Group is one job run's cgroup.
type Group struct {
	name string
	dir  string
}

// Name is the group's name (GroupName).
func (g *Group) Name() string { return g.name }

// Dir is the group's directory in the file system.
func (g *Group) Dir() string { return g.dir }

// Create makes the group, after killing and removing a leftover of the same
// name, and returns its directory open for clone3's CLONE_INTO_CGROUP
// (syscall.SysProcAttr.CgroupFD). The caller closes it.
func (g *Group) Create(deadline time.Time) (*os.File, error) {
	if err := g.Remove(deadline); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(g.dir), 0o755); err != nil {
		return nil, fmt.Errorf("job cgroup: %w", err)
	}
	if err := os.Mkdir(g.dir, 0o755); err != nil {
		return nil, fmt.Errorf("job cgroup: %w", err)
	}
	f, err := os.OpenFile(g.dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("job cgroup: %w", err), g.rmdir())
	}
	return f, nil
}

// Procs lists the processes in the group (and in groups below it, which
// a job cannot create but a leftover might have). A group that does not
// exist holds none.
func (g *Group) Procs() ([]int, error) {
	var pids []int
	err := filepath.WalkDir(g.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		data, err := readBounded(filepath.Join(p, "cgroup.procs"), maxProcsBytes)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		for f := range strings.FieldsSeq(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("job cgroup %s: %w", g.name, err)
	}
	return pids, nil
}

// Kill sends SIGKILL to every process in the group: through cgroup.kill
// (Linux 5.14), which cannot miss a process forked meanwhile nor hit a pid
// reused by someone else, or else to each pid of cgroup.procs. A group that
// does not exist is not an error.
func (g *Group) Kill() error {
	err := writeFile(filepath.Join(g.dir, "cgroup.kill"), "1")
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist):
		if _, serr := os.Stat(g.dir); errors.Is(serr, fs.ErrNotExist) {
			return nil
		}
	default:
		return fmt.Errorf("job cgroup %s: %w", g.name, err)
	}
	// No cgroup.kill: an older kernel.
	pids, err := g.Procs()
	if err != nil {
		return err
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("job cgroup %s: kill %d: %w", g.name, pid, err)
		}
	}
	return nil
}

// Populated reports whether any process is left in the group or below it.
func (g *Group) Populated() (bool, error) {
	data, err := readBounded(filepath.Join(g.dir, "cgroup.events"), maxEventsBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("job cgroup %s: %w", g.name, err)
	}
	v, ok := field(data, "populated")
	if !ok {
		return false, fmt.Errorf("job cgroup %s: cgroup.events has no populated line", g.name)
	}
	return v != "0", nil
}

// Remove kills what is left in the group, waits until it is empty or the
// deadline passes, and removes it (groups below it first). A group that does
// not exist is removed already.
func (g *Group) Remove(deadline time.Time) error {
	if _, err := os.Stat(g.dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := g.Kill(); err != nil {
		return err
	}
	for {
		pop, err := g.Populated()
		if err != nil {
			return err
		}
		if !pop {
			break
		}
		if time.Now().After(deadline) {
			pids, _ := g.Procs()
			return fmt.Errorf("job cgroup %s: processes %v still there after SIGKILL (uninterruptible sleep?)", g.name, pids)
		}
		// Kill again: on kernels without cgroup.kill a process forked
		// between the listing and the kill was missed.
		time.Sleep(pollInterval)
		if err := g.Kill(); err != nil {
			return err
		}
	}
	return g.rmdir()
}

// rmdir removes the group and any group below it, deepest first.
func (g *Group) rmdir() error {
	var dirs []string
	err := filepath.WalkDir(g.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("job cgroup %s: %w", g.name, err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("job cgroup %s: remove %s: %w", g.name, dirs[i], err)
		}
	}
	return nil
}

// parseMountinfo returns the mount point of the first cgroup2 file system
// in a /proc/PID/mountinfo.
func parseMountinfo(data []byte) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		// "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, sf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(sf) < 1 || sf[0] != "cgroup2" {
			continue
		}
		return unescapeOctal(pf[4]), true
	}
	return "", false
}

// unescapeOctal undoes mountinfo's escapes of space, tab, newline and
// backslash (\040 and so on).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// parseCgroup returns the cgroup v2 path of a /proc/PID/cgroup ("0::/x").
func parseCgroup(data []byte) (string, bool) {
	for line := range strings.SplitSeq(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok && strings.HasPrefix(p, "/") {
			// A cgroup removed while the process was in it reads
			// "/x (deleted)"; it is not a place to create groups in.
			if strings.HasSuffix(p, " (deleted)") {
				return "", false
			}
			return path.Clean(p), true
		}
	}
	return "", false
}

// field returns the value of a "key value" line of a cgroup file.
func field(data []byte, key string) (string, bool) {
	for line := range strings.SplitSeq(string(data), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// sanitize makes s a safe part of a cgroup name: the characters outside
// [A-Za-z0-9._-] become '_', and a long or changed name gets a hash of the
// original so that two ids never share a group.
func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := b.String()
	// A name of dots alone would be "." or ".." as a path.
	if out == s && len(out) <= maxNameBytes && strings.Trim(out, ".") != "" {
		return out
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(s)) // a hash's Write never fails
	if len(out) > maxNameBytes {
		out = out[:maxNameBytes]
	}
	return fmt.Sprintf("%s_%08x", out, h.Sum32())
}

// readBounded reads at most limit bytes of path; more is an error, never
// a silent cut.
func readBounded(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close() // read-only: a close error loses nothing
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read %s: longer than %d bytes", p, limit)
	}
	return data, nil
}

// writeFile writes s to an existing control file.
func writeFile(p, s string) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(s)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("write %s: %w", p, werr)
	}
	if cerr != nil {
		return fmt.Errorf("write %s: %w", p, cerr)
	}
	return nil
}
