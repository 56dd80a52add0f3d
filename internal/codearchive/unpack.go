package codearchive

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// Limits bound what one archive may make on a host. The archive's own
// size is bounded by the controllers; these bound what it expands to
// (a gzip bomb) and how many inodes it takes.
type Limits struct {
	MaxBytes   int64 // total size of the files made
	MaxEntries int   // files, directories and symlinks made
}

// DefaultLimits: 4 GiB and 200,000 entries, far past a code tree and far
// below what fills a host's disk or inode table.
var DefaultLimits = Limits{MaxBytes: 4 << 30, MaxEntries: 200_000}

// Owner is who the unpacked entries belong to; a negative Uid leaves
// them to the unpacking process.
type Owner struct{ Uid, Gid int }

// Unpacked counts what Unpack made and left out.
type Unpacked struct {
	Files, Dirs, Symlinks int
	Bytes                 int64
	// Skipped counts entries of other kinds (hard links, devices, FIFOs),
	// which are never made.
	Skipped int
}

// ErrUnsafe is returned for an archive that tries to write outside its
// destination or past its limits.
var ErrUnsafe = errors.New("code archive refused")

// Unpack expands the tar.gz in r into the existing directory dst. Every
// path is opened through an os.Root, so neither "../", an absolute name
// nor a symlink made by an earlier entry can reach outside dst, even when
// the agent runs as root. Modes keep only the permission bits (no setuid),
// and entries are handed to owner.
func Unpack(r io.Reader, dst string, lim Limits, owner Owner) (Unpacked, error) {
	root, err := os.OpenRoot(dst)
	if err != nil {
		return Unpacked{}, fmt.Errorf("code archive: %w", err)
	}
	defer root.Close()
	return UnpackIn(r, root, lim, owner)
}

// UnpackIn is Unpack into an open root: a caller whose destination's
// parents are writable by others opens it through a root of its own, so
// that no one can swap the destination for a symlink meanwhile.
func UnpackIn(r io.Reader, root *os.Root, lim Limits, owner Owner) (u Unpacked, err error) {
	// Entries go to owner only once all are made, each before its
	// directory: while the agent creates and chowns entries by name, the
	// directories it works in stay its own, so the job's user (who may
	// run other jobs meanwhile) cannot swap an entry for a hard link to
	// someone else's file and have it chowned.
	var made []string
	defer func() {
		if cerr := chownAll(root, made, owner); err == nil {
			err = cerr
		}
	}()
	gz, err := gzip.NewReader(r)
	if err != nil {
		return u, fmt.Errorf("code archive: not gzip: %w", err)
	}
	tr := tar.NewReader(gz)
	entries := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return u, fmt.Errorf("code archive: %w", err)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return u, err
		}
		if name == "." {
			continue
		}
		if entries++; entries > lim.MaxEntries {
			return u, fmt.Errorf("%w: more than %d entries", ErrUnsafe, lim.MaxEntries)
		}
		perm := fs.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := mkdirs(root, name, &made); err != nil {
				return u, err
			}
			u.Dirs++
		case tar.TypeReg:
			if err := fits(hdr, u, lim); err != nil {
				return u, err
			}
			if err := mkdirs(root, path.Dir(name), &made); err != nil {
				return u, err
			}
			// O_EXCL: an entry never replaces another, or a symlink
			// planted first could redirect the write.
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm|0o200)
			if err != nil {
				return u, fmt.Errorf("code archive: %w", err)
			}
			made = append(made, name)
			n, err := io.Copy(f, io.LimitReader(tr, hdr.Size))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil && n != hdr.Size {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				return u, fmt.Errorf("code archive: %s: %w", name, err)
			}
			u.Bytes += n
			u.Files++
		case tar.TypeSymlink:
			if err := mkdirs(root, path.Dir(name), &made); err != nil {
				return u, err
			}
			// The link is made as it is; following it later happens as
			// the job's user, who gains nothing the link points to.
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return u, fmt.Errorf("code archive: %w", err)
			}
			u.Symlinks++
			made = append(made, name)
		default:
			// Not made, but its bytes are still decompressed to reach
			// the next header: they count against the limit, or an
			// archive of skipped entries would burn CPU unbounded.
			if err := fits(hdr, u, lim); err != nil {
				return u, err
			}
			u.Bytes += hdr.Size
			u.Skipped++
		}
	}
	return u, nil
}

// cleanName turns an archive path into a relative, clean one, refusing
// absolute paths and any ".." component outright: os.Root would stop
// them too, but a clear error says the archive is hostile, not broken.
func cleanName(name string) (string, error) {
	if strings.ContainsRune(name, 0) || strings.HasPrefix(name, "/") || strings.Contains(name, `\`) {
		return "", fmt.Errorf("%w: entry %q is not a relative path", ErrUnsafe, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: entry %q leaves the directory", ErrUnsafe, name)
		}
	}
	return path.Clean(name), nil
}

// mkdirs makes dir and its parents inside root, adding those it made
// to made.
func mkdirs(root *os.Root, dir string, made *[]string) error {
	if dir == "." {
		return nil
	}
	if fi, err := root.Lstat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("code archive: %s is not a directory", dir)
		}
		return nil
	}
	if err := mkdirs(root, path.Dir(dir), made); err != nil {
		return err
	}
	if err := root.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // made meanwhile, not by this archive
		}
		return fmt.Errorf("code archive: %w", err)
	}
	*made = append(*made, dir)
	return nil
}

// chownAll hands the entries made to owner, last made first: a directory
// after everything in it.
func chownAll(root *os.Root, made []string, owner Owner) error {
	for i := len(made) - 1; i >= 0; i-- {
		if err := chown(root, made[i], owner); err != nil {
			return err
		}
	}
	return nil
}

func chown(root *os.Root, name string, owner Owner) error {
	if owner.Uid < 0 {
		return nil
	}
	if err := root.Lchown(name, owner.Uid, owner.Gid); err != nil {
		return fmt.Errorf("code archive: %w", err)
	}
	return nil
}

// fits checks that an entry of hdr.Size bytes keeps what is unpacked so
// far within lim.MaxBytes. Compared without adding: a claimed size near
// the int64 maximum would wrap the sum negative and pass.
func fits(hdr *tar.Header, u Unpacked, lim Limits) error {
	if hdr.Size < 0 || hdr.Size > lim.MaxBytes-u.Bytes {
		return fmt.Errorf("%w: it expands to more than %d bytes", ErrUnsafe, lim.MaxBytes)
	}
	return nil
}
