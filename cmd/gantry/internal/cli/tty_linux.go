package cli

import (
	"os"
	"syscall"
	"unsafe"
)

// termSize returns the column and line counts of f's terminal; ok is false
// when f is not a terminal. TIOCGWINSZ answers only for terminals, so it
// also tells a TTY from /dev/null, which is a character device as well.
func termSize(f *os.File) (cols, rows int, ok bool) {
	var ws struct{ row, col, xpixel, ypixel uint16 }
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), uintptr(syscall.TIOCGWINSZ), uintptr(unsafe.Pointer(&ws)))
	if errno != 0 {
		return 0, 0, false
	}
	return int(ws.col), int(ws.row), true
}
