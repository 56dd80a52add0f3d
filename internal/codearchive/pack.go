// Package codearchive packs a job's code directory on the laptop into a
// gzip-compressed tar, and unpacks one on a GPU host. Packing honours
// .gitignore and .gantryignore files the way git reads .gitignore (each
// file's patterns apply below its directory); unpacking trusts nothing in
// the archive: every path stays inside the destination, sizes and counts
// are bounded, and only files, directories and symlinks are made.
package codearchive

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// IgnoreFiles are read in every directory, in this order; a later
// pattern overrides an earlier one, so .gantryignore can re-include
// ("!data/small.csv") what .gitignore leaves out.
var IgnoreFiles = []string{".gitignore", ".gantryignore"}

// DefaultMaxInputBytes bounds what Pack reads: past it, the directory is
// almost certainly holding datasets or checkpoints that belong in
// .gantryignore, and packing them would take minutes to then be refused.
const DefaultMaxInputBytes = 1 << 30

// ErrTooLarge is returned when the files to pack exceed the input limit.
var ErrTooLarge = errors.New("code directory is too large")

// File is one packed file, for reports.
type File struct {
	Path string
	Size int64
}

// Stats describes a packed archive.
type Stats struct {
	Files int   // regular files
	Bytes int64 // their total size, before compression
	// Largest are the biggest files packed, largest first (at most 5):
	// what to add to .gantryignore when the archive is refused.
	Largest []File
	// Skipped counts entries that are neither files, directories nor
	// symlinks (sockets, devices), which are left out.
	Skipped int
}

// Pack writes dir as a tar.gz to w. The .git directory and whatever the
// ignore files match are left out; maxInput (0: DefaultMaxInputBytes)
// bounds the bytes read.
func Pack(dir string, w io.Writer, maxInput int64) (Stats, error) {
	if maxInput <= 0 {
		maxInput = DefaultMaxInputBytes
	}
	var st Stats
	fi, err := os.Stat(dir)
	if err != nil {
		return st, fmt.Errorf("code directory: %w", err)
	}
	if !fi.IsDir() {
		return st, fmt.Errorf("code directory %s is not a directory", dir)
	}
	// WalkDir does not follow a symlink, not even the root: a directory
	// reached through one would be packed empty.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return st, fmt.Errorf("code directory: %w", err)
	}
	gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed) // a valid level never errors
	tw := tar.NewWriter(gz)
	var patterns []rule
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if rel == "." {
			patterns, err = readIgnores(dir, nil, patterns)
			return err
		}
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		if ignored(patterns, parts, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: info.ModTime(), Mode: int64(info.Mode().Perm())}
		switch {
		case d.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
			// Patterns of a directory apply to what is below it, and
			// WalkDir visits the directory before its entries.
			if patterns, err = readIgnores(path, parts, patterns); err != nil {
				return err
			}
		case info.Mode().Type() == fs.ModeSymlink:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		case info.Mode().IsRegular():
			hdr.Typeflag, hdr.Size = tar.TypeReg, info.Size()
			st.Files++
			st.Bytes += info.Size()
			st.Largest = append(st.Largest, File{Path: hdr.Name, Size: info.Size()})
			sort.Slice(st.Largest, func(i, j int) bool { return st.Largest[i].Size > st.Largest[j].Size })
			if len(st.Largest) > 5 {
				st.Largest = st.Largest[:5]
			}
			if st.Bytes > maxInput {
				return fmt.Errorf("%w: over %d bytes to pack (largest: %s); list what the job does not need in .gantryignore",
					ErrTooLarge, maxInput, describe(st.Largest))
			}
		default:
			st.Skipped++
			return nil
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		// A file that grows while packed must not break the tar stream.
		if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	if err := tw.Close(); err != nil {
		return st, err
	}
	return st, gz.Close()
}

// describe lists files as "a.bin (3.0 MiB), b.pt (1.0 MiB)".
func describe(files []File) string {
	parts := make([]string, len(files))
	for i, f := range files {
		parts[i] = fmt.Sprintf("%s (%s)", f.Path, HumanBytes(f.Size))
	}
	return strings.Join(parts, ", ")
}

// Describe lists the largest files of an archive for a message.
func (s Stats) Describe() string { return describe(s.Largest) }

// HumanBytes formats n as B, KiB, MiB or GiB.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 2; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMG"[exp])
}

// readIgnores appends the patterns of dir's ignore files; domain is dir's
// path below the packed root.
func readIgnores(dir string, domain []string, patterns []rule) ([]rule, error) {
	for _, name := range IgnoreFiles {
		f, err := os.Open(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return patterns, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			if !strings.HasSuffix(line, `\ `) { // an escaped trailing space stays
				line = strings.TrimRight(line, " \t")
			}
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			patterns = append(patterns, parseRule(line, domain))
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return patterns, fmt.Errorf("%s: %w", filepath.Join(dir, name), err)
		}
	}
	return patterns, nil
}

// rule is one ignore pattern. Matching is exact: Pack walks down from the
// root and never enters an ignored directory, so a path's parents are
// known to be packed and only the path itself is matched, as git does.
// (go-git's matcher also matches a path when a pattern matches one of its
// parents, so "!*/" re-included every file in every directory.)
type rule struct {
	domain   []string // the ignore file's directory below the root
	pattern  []string // the pattern's components; "**" is any depth
	negate   bool     // "!": re-include
	dirOnly  bool     // trailing "/": directories only
	anchored bool     // a "/" before the end: matched from domain, not by name
}

func parseRule(line string, domain []string) rule {
	r := rule{domain: slices.Clone(domain)}
	if rest, ok := strings.CutPrefix(line, "!"); ok {
		r.negate, line = true, rest
	}
	if rest, ok := strings.CutSuffix(line, "/"); ok {
		r.dirOnly, line = true, rest
	}
	r.anchored = strings.Contains(line, "/")
	r.pattern = strings.Split(strings.TrimPrefix(line, "/"), "/")
	return r
}

// match reports whether r names exactly the path parts.
func (r rule) match(parts []string, isDir bool) bool {
	if (r.dirOnly && !isDir) || len(parts) <= len(r.domain) || !slices.Equal(parts[:len(r.domain)], r.domain) {
		return false
	}
	rel := parts[len(r.domain):]
	if !r.anchored {
		return globMatch(r.pattern[0], rel[len(rel)-1])
	}
	return matchParts(r.pattern, rel)
}

// matchParts matches path components against pattern components: "**"
// stands for any number of directories, and a trailing "**" for
// everything inside (not the directory itself).
func matchParts(pat, name []string) bool {
	if len(pat) == 0 {
		return len(name) == 0
	}
	if pat[0] == "**" {
		if len(pat) == 1 {
			return len(name) > 0
		}
		for i := 0; i <= len(name); i++ {
			if matchParts(pat[1:], name[i:]) {
				return true
			}
		}
		return false
	}
	return len(name) > 0 && globMatch(pat[0], name[0]) && matchParts(pat[1:], name[1:])
}

// globMatch is one component against one pattern component; a malformed
// pattern matches nothing, as in git.
func globMatch(pattern, name string) bool {
	ok, err := path.Match(pattern, name)
	return err == nil && ok
}

// ignored applies the rules in order, the last that names the path
// deciding.
func ignored(rules []rule, parts []string, isDir bool) bool {
	for i := len(rules) - 1; i >= 0; i-- {
		if rules[i].match(parts, isDir) {
			return !rules[i].negate
		}
	}
	return false
}
