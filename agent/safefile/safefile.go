// Package safefile opens files that an untrusted job controls (its metrics
// file, its log, its exit status file) for the agent to read.
//
// The job owns its directory, so it can put anything at those names: a
// FIFO (a plain open or read blocks forever), a symlink to /dev/zero (an
// endless read), or a symlink to /etc/shadow or the agent's TLS key (the
// agent, often root, would read and ship it). Open refuses all of these:
//
//   - the path is resolved beneath its directory only: with openat2 and
//     RESOLVE_BENEATH where the kernel has it (Linux 5.6), so a symlink
//     within the job directory still works; elsewhere with O_NOFOLLOW on
//     the final component, which refuses every symlink there (the
//     directory itself is the agent's to create, so only the last
//     component is the job's);
//   - it is opened with O_NONBLOCK, so opening a FIFO or a device cannot
//     block, and then fstat must show a regular file before a byte is read;
//   - optionally the file must belong to a given user (the job's), which
//     refuses a hard link to a file the job does not own.
package safefile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrUnsafe is wrapped by every refusal: the path is a symlink leading out
// of its directory, not a regular file, or not owned by the expected user.
var ErrUnsafe = errors.New("refused to read")

// AnyOwner disables the owner check of Open.
const AnyOwner = -1

// noOpenat2 is set once openat2 turned out to be unavailable (ENOSYS on
// kernels before 5.6, EPERM under some seccomp filters), so that later
// opens go straight to the fallback.
var noOpenat2 atomic.Bool

// Open opens path read-only for a follower, resolving it beneath its own
// directory. owner is the uid the file must belong to, or AnyOwner. A
// missing file yields an error wrapping fs.ErrNotExist, so followers can
// keep waiting for it to appear.
func Open(path string, owner int) (*os.File, error) {
	dir, name := filepath.Split(filepath.Clean(path))
	if dir == "" {
		dir = "."
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)

	flags := unix.O_RDONLY | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY
	fd, err := openBeneath(dfd, name, flags)
	if err != nil {
		switch {
		case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
			// ELOOP: O_NOFOLLOW met a symlink; EXDEV: RESOLVE_BENEATH
			// met a path leading out of the directory.
			return nil, fmt.Errorf("%w %s: a symbolic link leading out of the job directory", ErrUnsafe, path)
		case errors.Is(err, unix.ENXIO):
			// A socket, or a FIFO opened for writing with no reader.
			return nil, fmt.Errorf("%w %s: not a regular file", ErrUnsafe, path)
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%w %s: not a regular file (%s)", ErrUnsafe, path, kind(st.Mode))
	}
	if owner != AnyOwner && int(st.Uid) != owner {
		unix.Close(fd)
		return nil, fmt.Errorf("%w %s: owned by uid %d, not by the job's user (uid %d)", ErrUnsafe, path, st.Uid, owner)
	}
	// Reads of a regular file never block, so O_NONBLOCK can stay; it
	// changes nothing for them.
	return os.NewFile(uintptr(fd), path), nil
}

// openBeneath opens name relative to dfd without leaving dfd.
func openBeneath(dfd int, name string, flags int) (int, error) {
	if !noOpenat2.Load() {
		fd, err := unix.Openat2(dfd, name, &unix.OpenHow{
			Flags:   uint64(flags),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err == nil || !(errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM)) {
			return fd, err
		}
		noOpenat2.Store(true)
	}
	return unix.Openat(dfd, name, flags|unix.O_NOFOLLOW, 0)
}

func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	}
	return fmt.Sprintf("mode %#o", mode&unix.S_IFMT)
}
