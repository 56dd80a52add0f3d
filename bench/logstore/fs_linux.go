package main

import (
	"fmt"
	"syscall"
)

// fsType names the filesystem under path, so that a result taken on tmpfs
// (where fsync is free) or overlayfs is recognisable as such.
func fsType(path string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return "unknown: " + err.Error()
	}
	// Magic numbers from linux/magic.h.
	switch uint64(st.Type) {
	case 0xEF53:
		return "ext4"
	case 0x58465342:
		return "xfs"
	case 0x9123683E:
		return "btrfs"
	case 0x01021994:
		return "tmpfs"
	case 0x794C7630:
		return "overlayfs"
	case 0x2FC12FC1:
		return "zfs"
	case 0x6969:
		return "nfs"
	default:
		return fmt.Sprintf("fs magic 0x%x", uint64(st.Type))
	}
}
