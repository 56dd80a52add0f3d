//go:build !linux

package pyhelper

// swap puts the package written in tmp at dst, leaving the one it replaces
// at old; without Linux's RENAME_EXCHANGE, by two renames.
func swap(tmp, dst, old string) error {
	return swapByRenames(tmp, dst, old)
}
