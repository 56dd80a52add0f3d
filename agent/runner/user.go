package runner

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// User is an account a job runs as.
type User struct {
	// Name is the account's login name, for messages.
	Name string
	// UID and GID are the job's user and primary group.
	UID, GID uint32
	// Groups are its supplementary groups (video, render: what GPU device
	// nodes may require).
	Groups []uint32
	// Home is the account's home directory; the job's HOME when it exists.
	Home string
}

// ErrNoUser is wrapped by LookupUser when the account does not exist.
var ErrNoUser = errors.New("no such user")

// LookupUser resolves name (a login name or a numeric uid) to a User with
// its groups.
func LookupUser(name string) (*User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
				u, err = user.LookupId(name)
			}
		}
		if err != nil {
			if errors.As(err, &unknown) || errors.As(err, new(user.UnknownUserIdError)) {
				return nil, fmt.Errorf("%w %q", ErrNoUser, name)
			}
			return nil, fmt.Errorf("look up user %q: %w", name, err)
		}
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: gid %q: %w", name, u.Gid, err)
	}
	res := &User{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}
	gids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("user %q: groups: %w", name, err)
	}
	for _, g := range gids {
		n, err := strconv.ParseUint(g, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user %q: group id %q: %w", name, g, err)
		}
		res.Groups = append(res.Groups, uint32(n))
	}
	return res, nil
}

// IsRoot reports whether the account is uid 0.
func (u *User) IsRoot() bool { return u != nil && u.UID == 0 }

// credential is what the job's supervisor is started with. Without a user,
// or when the agent is not root (it could not switch users anyway, and
// setgroups would fail), the job keeps the agent's credentials.
func (u *User) credential() *syscall.Credential {
	if u == nil || os.Geteuid() != 0 {
		return nil
	}
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}
}

// Owner is the uid the files of a job run as u belong to: the job's, or
// the agent's own when u does not apply.
func (u *User) Owner() int {
	if u == nil || os.Geteuid() != 0 {
		return os.Geteuid()
	}
	return int(u.UID)
}

// Chown gives path to u; a no-op when u does not apply. The job's
// directory and log file are the job's, so that the job can write them.
func (u *User) Chown(path string) error {
	if u == nil || os.Geteuid() != 0 {
		return nil
	}
	if err := unix.Lchown(path, int(u.UID), int(u.GID)); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, u.Name, err)
	}
	return nil
}

// openLog opens the job's log file for the job's stdout and stderr,
// creating it for the job's user. The job's directory is the job's, so a
// symlink planted there is not followed: the agent (root) must not append
// to, or create, a file the job names.
func openLog(path string, u *User) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0o640)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, errors.Join(err, f.Close())
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.Join(fmt.Errorf("%s is not a regular file", path), f.Close())
	}
	if u != nil && os.Geteuid() == 0 {
		if err := f.Chown(int(u.UID), int(u.GID)); err != nil {
			return nil, errors.Join(fmt.Errorf("chown %s: %w", path, err), f.Close())
		}
	}
	return f, nil
}
