package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"github.com/gantry-ml/gantry/agent/runner"
	"github.com/gantry-ml/gantry/internal/tlsutil"
)

// Jobs are untrusted code. An agent running as root runs them as an
// unprivileged account (Config.JobUser), so that they cannot read the
// agent's TLS key or its spool, nor signal the agent. All jobs on a host
// share that one account, so they are not isolated from each other: a job
// can read another's environment through /proc, signal it, or leave files
// in the shared home for the next job. Tenants that must not see each
// other need separate hosts (or per-job accounts, not built yet).
// The layout that makes this hold:
//
//	DATA_DIR          0711 root   the job user may pass through, not list
//	├── spool.db      0600 root
//	├── tls/          0700 root   (default -tls-dir)
//	└── jobs/         0711 root   not writable by jobs: a job cannot swap
//	    └── ID/       0700 job    its own directory for a link
//
// An agent that is not root runs jobs as itself; they can then read what
// the agent can, and the README says to run the agent as root on shared
// hosts.

// resolveJobUser decides who jobs run as: nil (the agent's own user) when
// the agent is not root or the job user is root itself, named explicitly.
func resolveJobUser(name string, log *slog.Logger) (*runner.User, error) {
	if name == "" {
		name = DefaultJobUser
	}
	if os.Geteuid() != 0 {
		if name != DefaultJobUser {
			log.Warn("the agent is not root and cannot switch users: jobs run as the agent's own user",
				"job_user", name)
		}
		return nil, nil
	}
	u, err := runner.LookupUser(name)
	if errors.Is(err, runner.ErrNoUser) {
		return nil, fmt.Errorf("jobs run as user %q, which does not exist on this host: create it "+
			"(useradd --system --user-group --no-create-home --shell /usr/sbin/nologin %s) or name another "+
			"account with -job-user; jobs never run as root unless -job-user root is given", name, name)
	}
	if err != nil {
		return nil, err
	}
	if u.IsRoot() {
		log.Warn("jobs run as root (-job-user " + name + "): they can read the agent's keys and take over the host")
		return nil, nil
	}
	log.Info("jobs run as an unprivileged user", "user", u.Name, "uid", u.UID, "gid", u.GID)
	return u, nil
}

// prepareDataDir creates the data dir and the jobs dir. With a job user it
// sets the modes above and checks that the user can reach the jobs dir
// through every parent, so that a layout that would fail every job fails
// the agent's start instead, naming the directory. Without one, jobs run
// as the agent's user and the modes are left as the operator set them.
func prepareDataDir(dataDir string, u *runner.User) error {
	jobs := filepath.Join(dataDir, "jobs")
	if err := os.MkdirAll(jobs, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if u == nil {
		return nil
	}
	for _, d := range []string{dataDir, jobs} {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		if fi.Mode().Perm()&0o002 != 0 {
			// Such as /tmp: others could swap the agent's files, and
			// its mode is not the agent's to change.
			return fmt.Errorf("data dir: %s is writable by every user; give the agent a directory of its own", d)
		}
		if err := os.Chmod(d, 0o711); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
	}
	abs, err := filepath.Abs(jobs)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	for d := abs; ; d = filepath.Dir(d) {
		if !searchable(d, u) {
			return fmt.Errorf("the job user %s cannot reach the job directories under %s: %s is not searchable "+
				"by it (give it o+x, or choose another -data-dir)", u.Name, jobs, d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// searchable reports whether u may pass through directory d.
func searchable(d string, u *runner.User) bool {
	fi, err := os.Stat(d)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	perm := fi.Mode().Perm()
	switch {
	case st.Uid == u.UID:
		return perm&0o100 != 0
	case st.Gid == u.GID || contains(u.Groups, st.Gid):
		return perm&0o010 != 0
	}
	return perm&0o001 != 0
}

func contains(list []uint32, v uint32) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// makeJobDir creates a job's directory and gives it to the job's user.
func (a *Agent) makeJobDir(dir string) error {
	// The jobs dir exists once New has run; MkdirAll covers agents built
	// without it (tests) and keeps its mode then.
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return a.jobUser.Chown(dir)
}

// dirOwner is the uid owning a job's directory: the user the job runs as
// (its files must be that user's), also for jobs re-adopted after an
// upgrade from an agent that ran them as itself.
func dirOwner(dir string) (int, error) {
	fi, err := os.Lstat(dir)
	if err != nil {
		return 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.IsDir() {
		return 0, fmt.Errorf("%s is not a directory", dir)
	}
	return int(st.Uid), nil
}

// secureTLS makes sure other users (the job user above all) cannot read
// the agent's private key: a key or key directory open to every user is
// restricted by removing those bits, where it is the agent's own to change,
// and a warning says what was done or cannot be. Group bits are left alone:
// a shared group (Ansible's gantry group on a host that also runs a
// controller) is the operator's choice, and the job user is not in it.
// (tlsutil writes keys 0600 in a 0700 directory; this covers keys copied
// in by hand or by older tools.)
func secureTLS(files tlsutil.Files, log *slog.Logger) {
	if files.Key == "" {
		return
	}
	for _, path := range []string{files.Key, filepath.Dir(files.Key)} {
		fi, err := os.Stat(path)
		if err != nil {
			continue // a missing key is reported by the TLS set-up
		}
		perm := fi.Mode().Perm()
		if perm&0o007 == 0 {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || int(st.Uid) != os.Geteuid() {
			log.Warn("TLS key readable by every user, and not the agent's to fix", "path", path,
				"mode", perm.String())
			continue
		}
		if err := os.Chmod(path, perm&^0o007); err != nil {
			log.Warn("cannot restrict TLS key permissions", "path", path, "err", err)
			continue
		}
		log.Warn("TLS key was readable by every user: removed their access", "path", path,
			"was", perm.String(), "now", (perm &^ 0o007).String())
	}
}
