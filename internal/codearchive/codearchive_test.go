package codearchive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

func write(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// tree lists the files, dirs and symlinks under dir as "f name", "d
// name", "l name -> target".
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out = append(out, "l "+rel+" -> "+target)
		case d.IsDir():
			out = append(out, "d "+rel)
		default:
			out = append(out, "f "+rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestPackHonoursIgnoreFiles(t *testing.T) {
	src := t.TempDir()
	write(t, src, map[string]string{
		"train.py":              "print(1)",
		"job.yaml":              "run: python train.py",
		".gitignore":            "*.pt\ndata/\n# a comment\n\n__pycache__/\n",
		".gantryignore":         "!keep.pt\nwandb\n",
		"model.pt":              "weights",
		"keep.pt":               "small weights",
		"data/big.bin":          "dataset",
		"__pycache__/x.pyc":     "bytecode",
		"wandb/run/log":         "offline run",
		"pkg/mod.py":            "x = 1",
		"pkg/.gitignore":        "local.txt\n",
		"pkg/local.txt":         "ignored below pkg only",
		"local.txt":             "kept at the top",
		".git/HEAD":             "ref: refs/heads/main",
		"pkg/sub/deep.py":       "y = 2",
		"pkg/sub/.gantryignore": "*.py\n!deep.py\n",
		"pkg/sub/other.py":      "ignored by the nested negation file",
	})
	if err := os.Symlink("train.py", filepath.Join(src, "main.py")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	st, err := Pack(src, &buf, 0)
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	u, err := Unpack(bytes.NewReader(buf.Bytes()), dst, DefaultLimits, Owner{Uid: -1})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"d pkg", "d pkg/sub",
		"f .gantryignore", "f .gitignore", "f job.yaml", "f keep.pt", "f local.txt",
		"f pkg/.gitignore", "f pkg/mod.py", "f pkg/sub/.gantryignore", "f pkg/sub/deep.py", "f train.py",
		"l main.py -> train.py",
	}
	sort.Strings(want)
	if got := tree(t, dst); !slices.Equal(got, want) {
		t.Fatalf("unpacked tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if st.Files != 10 || u.Files != 10 || u.Symlinks != 1 {
		t.Fatalf("stats %+v, unpacked %+v", st, u)
	}
	b, err := os.ReadFile(filepath.Join(dst, "pkg/sub/deep.py"))
	if err != nil || string(b) != "y = 2" {
		t.Fatalf("deep.py = %q, %v", b, err)
	}
}

func TestPackRefusesPastInputLimit(t *testing.T) {
	src := t.TempDir()
	write(t, src, map[string]string{"ckpt/model.bin": strings.Repeat("x", 5000), "train.py": "x"})
	_, err := Pack(src, &bytes.Buffer{}, 1000)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "ckpt/model.bin") || !strings.Contains(err.Error(), ".gantryignore") {
		t.Fatalf("Pack = %v, want ErrTooLarge naming the big file and .gantryignore", err)
	}
	if _, err := Pack(filepath.Join(src, "train.py"), &bytes.Buffer{}, 0); err == nil {
		t.Fatal("Pack of a file succeeded")
	}
}

type entry struct {
	hdr  tar.Header
	body string
}

func archive(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg || h.Typeflag == 'Z' {
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func reg(name, body string) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg}, body: body}
}

func TestUnpackRefusesHostileArchives(t *testing.T) {
	outside := t.TempDir()
	for _, tt := range []struct {
		name    string
		entries []entry
		lim     Limits
	}{
		{"dot-dot", []entry{reg("../escape.txt", "x")}, DefaultLimits},
		{"nested dot-dot", []entry{reg("a/../../escape.txt", "x")}, DefaultLimits},
		{"absolute", []entry{reg(filepath.Join(outside, "escape.txt"), "x")}, DefaultLimits},
		{"write through an escaping symlink", []entry{
			{hdr: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: outside}},
			reg("link/escape.txt", "x"),
		}, DefaultLimits},
		{"replace a planted symlink", []entry{
			{hdr: tar.Header{Name: "f", Typeflag: tar.TypeSymlink, Linkname: filepath.Join(outside, "escape.txt")}},
			reg("f", "x"),
		}, DefaultLimits},
		{"bomb", []entry{reg("a", strings.Repeat("0", 600)), reg("b", strings.Repeat("0", 600))}, Limits{MaxBytes: 1000, MaxEntries: 10}},
		{"too many entries", []entry{reg("a", ""), reg("b", ""), reg("c", "")}, Limits{MaxBytes: 1000, MaxEntries: 2}},
		{"bomb of skipped entries", []entry{
			{hdr: tar.Header{Name: "a", Typeflag: 'Z'}, body: strings.Repeat("0", 600)},
			{hdr: tar.Header{Name: "b", Typeflag: 'Z'}, body: strings.Repeat("0", 600)},
		}, Limits{MaxBytes: 1000, MaxEntries: 10}},
	} {
		dst := t.TempDir()
		_, err := Unpack(bytes.NewReader(archive(t, tt.entries...)), dst, tt.lim, Owner{Uid: -1})
		if err == nil {
			t.Errorf("%s: Unpack succeeded", tt.name)
		}
		if _, serr := os.Lstat(filepath.Join(outside, "escape.txt")); serr == nil {
			t.Fatalf("%s: a file was written outside the destination", tt.name)
		}
	}
	if _, err := Unpack(strings.NewReader("not gzip"), t.TempDir(), DefaultLimits, Owner{Uid: -1}); err == nil {
		t.Error("Unpack of garbage succeeded")
	}
}

func TestUnpackDropsSpecialBitsAndKinds(t *testing.T) {
	dst := t.TempDir()
	data := archive(t,
		entry{hdr: tar.Header{Name: "run.sh", Typeflag: tar.TypeReg, Mode: 0o4755}, body: "#!/bin/sh"},
		entry{hdr: tar.Header{Name: "hard", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}},
		entry{hdr: tar.Header{Name: "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}},
		reg("./sub/./x.py", "x"),
	)
	u, err := Unpack(bytes.NewReader(data), dst, DefaultLimits, Owner{Uid: -1})
	if err != nil {
		t.Fatal(err)
	}
	if u.Files != 2 || u.Skipped != 2 {
		t.Fatalf("unpacked %+v, want 2 files and 2 skipped", u)
	}
	fi, err := os.Stat(filepath.Join(dst, "run.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSetuid != 0 || fi.Mode().Perm() != 0o755 {
		t.Fatalf("run.sh mode %v, want 0755 without setuid", fi.Mode())
	}
	for _, name := range []string{"hard", "dev"} {
		if _, err := os.Lstat(filepath.Join(dst, name)); err == nil {
			t.Errorf("%s was made", name)
		}
	}
}

func TestUnpackChownsToTheJobUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to hand files to another user")
	}
	dst := t.TempDir()
	data := archive(t, reg("pkg/a.py", "x"), entry{hdr: tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "pkg"}})
	if _, err := Unpack(bytes.NewReader(data), dst, DefaultLimits, Owner{Uid: 65534, Gid: 65534}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pkg", "pkg/a.py", "l"} {
		fi, err := os.Lstat(filepath.Join(dst, name))
		if err != nil {
			t.Fatal(err)
		}
		if uid := fileUID(fi); uid != 65534 {
			t.Errorf("%s is owned by uid %d, want 65534", name, uid)
		}
	}
}

// TestUnpackSizeOverflowIsNoBombBypass: an entry claiming a size near the
// int64 maximum made the running total wrap negative and pass the limit,
// so a gzip bomb behind it was written out in full.
func TestUnpackSizeOverflowIsNoBombBypass(t *testing.T) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1<<63 - 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	// The tar stream ends short of its claim: only the bytes sent exist.
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	lim := Limits{MaxBytes: 1000, MaxEntries: 10}
	if _, err := Unpack(bytes.NewReader(buf.Bytes()), dst, lim, Owner{Uid: -1}); !errors.Is(err, ErrUnsafe) {
		t.Errorf("Unpack = %v, want ErrUnsafe", err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "bomb")); err == nil && fi.Size() > lim.MaxBytes {
		t.Fatalf("wrote %d bytes past a limit of %d", fi.Size(), lim.MaxBytes)
	}
}

// TestPackThroughSymlinkedDir: a code directory reached through a symlink
// (gantry run proj/job.yaml with proj a link) was walked as the link
// itself, not a directory, and packed empty without a word.
func TestPackThroughSymlinkedDir(t *testing.T) {
	real := t.TempDir()
	write(t, real, map[string]string{"train.py": "print(1)", "pkg/mod.py": "x = 1", ".gitignore": "*.log\n", "out.log": "x"})
	link := filepath.Join(t.TempDir(), "proj")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	st, err := Pack(link, &buf, 0)
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if _, err := Unpack(bytes.NewReader(buf.Bytes()), dst, DefaultLimits, Owner{Uid: -1}); err != nil {
		t.Fatal(err)
	}
	want := []string{"d pkg", "f .gitignore", "f pkg/mod.py", "f train.py"}
	if got := tree(t, dst); st.Files != 3 || !slices.Equal(got, want) {
		t.Fatalf("packed %d files:\n%s\nwant:\n%s", st.Files, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// midway calls f once, when half of r has been read.
type midway struct {
	r    *bytes.Reader
	half int64
	f    func()
}

func (m *midway) Read(p []byte) (int, error) {
	if m.f != nil && m.r.Size()-int64(m.r.Len()) >= m.half {
		m.f()
		m.f = nil
	}
	if len(p) > 4096 {
		p = p[:4096]
	}
	return m.r.Read(p)
}

// TestUnpackHandsEntriesOverOnlyWhenDone: directories were handed to the
// job's user as they were made, while the agent (root) went on creating
// and chowning entries in them by name. Another job of the same user
// could swap such an entry (for a hard link to a file it does not own)
// between the create and the chown, and have root give it that file.
// Nothing may belong to the job's user before unpacking is over.
func TestUnpackHandsEntriesOverOnlyWhenDone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to hand files to another user")
	}
	noise := make([]byte, 1<<20)
	for i := range noise {
		noise[i] = byte(i*7919 + i>>8*31 + i>>16)
	}
	data := archive(t,
		entry{hdr: tar.Header{Name: "pkg/", Typeflag: tar.TypeDir, Mode: 0o755}},
		reg("pkg/big.bin", string(noise)),
		reg("pkg/after.py", "x"),
	)
	dst := t.TempDir()
	checked := false
	m := &midway{r: bytes.NewReader(data), half: int64(len(data) / 2), f: func() {
		checked = true
		for _, name := range []string{"pkg", "pkg/big.bin"} {
			fi, err := os.Lstat(filepath.Join(dst, name))
			if err != nil {
				t.Errorf("%s not made by half way: %v", name, err)
				continue
			}
			if uid := fileUID(fi); uid == 65534 {
				t.Errorf("%s belongs to the job's user while unpacking goes on", name)
			}
		}
	}}
	if _, err := Unpack(m, dst, DefaultLimits, Owner{Uid: 65534, Gid: 65534}); err != nil {
		t.Fatal(err)
	}
	if !checked {
		t.Fatal("the reader never got half way")
	}
	for _, name := range []string{"pkg", "pkg/big.bin", "pkg/after.py"} {
		fi, err := os.Lstat(filepath.Join(dst, name))
		if err != nil {
			t.Fatal(err)
		}
		if uid := fileUID(fi); uid != 65534 {
			t.Errorf("%s is owned by uid %d once unpacked, want 65534", name, uid)
		}
	}
}

// TestPackIgnoreNegationMatchesGit: go-git's matcher reports a pattern as
// matching a path when it matches any parent directory, so a negation
// meant for directories ("!*/", "!src/*") re-included every file below
// them: the common "ship only *.py" idiom shipped everything in
// subdirectories. Its "**" did not match as git's does either. What is
// packed is what `git ls-files --others --exclude-standard` lists.
func TestPackIgnoreNegationMatchesGit(t *testing.T) {
	src := t.TempDir()
	files := map[string]string{
		".gitignore":     "*\n!*/\n!*.py\ndata/**\n!data/x/\n!data/x/*.py\n!src/*\n!a/**/b/c\n!tr   \n!esc\\ \n",
		"src/.gitignore": "!keep.txt\n",
	}
	for _, f := range []string{"a.py", "b.txt", "src/c.py", "src/d.txt", "src/keep.txt", "src/m/e.py", "src/x/f.txt",
		"deep/a/b/f.py", "data/x/g.py", "data/h.csv", "a/b/x/b/c", "tr ", "esc "} {
		files[f] = "x"
	}
	write(t, src, files)
	var buf bytes.Buffer
	if _, err := Pack(src, &buf, 0); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if _, err := Unpack(bytes.NewReader(buf.Bytes()), dst, DefaultLimits, Owner{Uid: -1}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range tree(t, dst) {
		if f, ok := strings.CutPrefix(e, "f "); ok {
			got = append(got, f)
		}
	}
	// git 2.x on the same tree.
	want := []string{"a.py", "a/b/x/b/c", "data/x/g.py", "deep/a/b/f.py", "esc ", "src/.gitignore", "src/c.py",
		"src/d.txt", "src/keep.txt", "src/m/e.py"}
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Fatalf("packed:\n%s\nwant (as git):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
