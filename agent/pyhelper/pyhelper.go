// Package pyhelper ships the gantry_metrics Python package (python/ in the
// repository, embedded by package python) to jobs: the agent writes it into
// a directory of its own and puts that directory on every job's PYTHONPATH,
// so a training script can `import gantry_metrics` with nothing installed
// on the host.
package pyhelper

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/gantry-ml/gantry/python"
)

// legacyModule is what agents before the package wrote: the helper as one
// module. A stale copy is removed, so that no one imports it by mistake
// (Python would prefer the package, but the file would still be there to
// confuse a reader).
const legacyModule = "gantry_metrics.py"

// Names in the install directory for a package being written and for the
// one it replaced. Both start with a dot: not importable names, so Python
// never takes them for a package.
const (
	tmpPrefix = ".gantry_metrics-new-"
	oldName   = ".gantry_metrics-old"
)

// Install writes the gantry_metrics package into dir/gantry_metrics (dir
// created 0755, directories 0755, files 0644: a job's user, whoever it is,
// must be able to list the directories and read the modules) unless it is
// there already with the same files, and returns dir.
//
// A job importing the package meanwhile sees the old package or the new
// one, never half of one and never none: the new package is written in
// full beside the old, then swapped in with one rename. The old one stays,
// as dir/.gantry_metrics-old, until the next install: a job that is
// resolving a path inside it as it is swapped out still finds the file.
// (A job that imported the old package and imports one of its submodules
// only after the swap gets the new submodule: the agent installs only as
// it starts, so that needs a job that outlives an agent upgrade.)
func Install(dir string) (string, error) {
	if err := install(dir, python.Package, python.PackageName); err != nil {
		return "", fmt.Errorf("pyhelper: %w", err)
	}
	return dir, nil
}

func install(dir string, src fs.FS, name string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	dst := filepath.Join(dir, name)
	if err := removeStale(dir); err != nil {
		return err
	}
	same, err := installed(dst, src, name)
	if err != nil {
		return err
	}
	if !same {
		tmp, err := os.MkdirTemp(dir, tmpPrefix)
		if err != nil {
			return err
		}
		if err := writeTree(tmp, src, name); err != nil {
			os.RemoveAll(tmp)
			return err
		}
		if err := swap(tmp, dst, filepath.Join(dir, oldName)); err != nil {
			os.RemoveAll(tmp)
			return err
		}
	}
	if err := os.Remove(filepath.Join(dir, legacyModule)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// removeStale removes what an earlier install left: the package it
// replaced, and a new one that a crash kept from being swapped in.
func removeStale(dir string) error {
	es, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range es {
		if n := e.Name(); n == oldName || strings.HasPrefix(n, tmpPrefix) {
			if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeTree writes src's tree under root into dir (which exists), with
// the modes Install promises.
func writeTree(dir string, src fs.FS, root string) error {
	if err := os.Chmod(dir, 0o755); err != nil { // MkdirTemp made it 0700
		return err
	}
	return fs.WalkDir(src, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		if rel == "" {
			return nil
		}
		out := filepath.Join(dir, filepath.FromSlash(rel))
		if d.IsDir() {
			return os.Mkdir(out, 0o755)
		}
		b, err := fs.ReadFile(src, p)
		if err != nil {
			return err
		}
		// No fsync: this is about readers, not crashes. A file lost to a
		// crash makes the next start's check fail, and it installs again.
		if err := os.WriteFile(out, b, 0o644); err != nil {
			return err
		}
		return os.Chmod(out, 0o644) // whatever the umask
	})
}

// installed reports whether dst holds exactly src's tree under root: the
// same files with the same bytes and modes. Python's __pycache__ (written
// there when a job's user may write) is not part of the comparison.
func installed(dst string, src fs.FS, root string) (bool, error) {
	want := map[string][]byte{}
	err := fs.WalkDir(src, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(src, p)
		want[strings.TrimPrefix(p, root+"/")] = b
		return err
	})
	if err != nil {
		return false, err
	}
	fi, err := os.Lstat(dst)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.IsDir() || fi.Mode().Perm() != 0o755 {
		return false, nil
	}
	seen := 0
	same := true
	// Anything unreadable counts as different: installing again repairs
	// it, where an error would keep the agent from starting.
	err = filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			same = false
			return filepath.SkipAll
		}
		if d.IsDir() && d.Name() == "__pycache__" {
			return filepath.SkipDir
		}
		rel, _ := filepath.Rel(dst, p)
		rel = filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			same = false
			return filepath.SkipAll
		}
		if d.IsDir() {
			if info.Mode().Perm() != 0o755 {
				same = false
			}
			return nil
		}
		w, ok := want[rel]
		if !ok || !info.Mode().IsRegular() || info.Mode().Perm() != 0o644 {
			same = false
			return filepath.SkipAll
		}
		if b, err := os.ReadFile(p); err != nil || !bytes.Equal(b, w) {
			same = false
			return filepath.SkipAll
		}
		seen++
		return nil
	})
	if err != nil {
		return false, err
	}
	return same && seen == len(want), nil
}

// swapByRenames moves dst aside to old, then tmp to dst. Between the two
// renames there is no package at dst: a job starting in that instant fails
// to import it, which is still better than importing half of one. Only
// where RENAME_EXCHANGE is missing.
func swapByRenames(tmp, dst, old string) error {
	if err := os.Rename(dst, old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return os.Rename(tmp, dst)
}
