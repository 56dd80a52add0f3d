//go:build !linux

package cli

import "os"

// termSize reports whether f is a character device; the width is unknown
// here, and 0 makes callers assume a default.
func termSize(f *os.File) (cols int, ok bool) {
	fi, err := f.Stat()
	if err != nil {
		return 0, false
	}
	return 0, fi.Mode()&os.ModeCharDevice != 0
}
