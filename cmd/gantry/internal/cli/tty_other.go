//go:build !linux

package cli

import "os"

// termSize reports whether f is a character device; the size is unknown
// here, and 0 makes callers assume a default.
func termSize(f *os.File) (cols, rows int, ok bool) {
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, false
	}
	return 0, 0, fi.Mode()&os.ModeCharDevice != 0
}
