package pyhelper

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// swap puts the package written in tmp at dst, leaving the one it replaces
// at old. RENAME_EXCHANGE swaps the two directories in one step, so dst
// always names a whole package; a plain rename cannot replace a non-empty
// directory.
func swap(tmp, dst, old string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_EXCHANGE)
	switch {
	case err == nil:
		// tmp now holds the old package. Should this rename fail, the
		// next install removes it under tmp's name.
		_ = os.Rename(tmp, old)
		return nil
	case errors.Is(err, unix.ENOENT): // nothing at dst yet
		return os.Rename(tmp, dst)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS): // a file system without RENAME_EXCHANGE
		return swapByRenames(tmp, dst, old)
	}
	return err
}
