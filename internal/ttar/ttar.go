// Package ttar unpacks ttar archives: the plain-text trees of small files (directories, files
// with their lines, symbolic links, modes) that Prometheus's node_exporter and procfs keep their
// sysfs and procfs fixtures in. Capstan's side-by-side benchmark runs its host collectors and
// node_exporter on node_exporter's own fixture, unpacked with this.
package ttar

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Extract unpacks the archive read from r under dir, which must exist. name is the archive's
// name in error messages. Every path must stay inside dir.
func Extract(r io.Reader, name, dir string) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	x := extractor{dir: dir, name: name}
	for sc.Scan() {
		x.line++
		if err := x.next(sc.Text()); err != nil {
			return fmt.Errorf("%s:%d: %w", name, x.line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", name, err)
	}
	if x.lines > 0 {
		return fmt.Errorf("%s: %s ends %d lines early", name, x.path, x.lines)
	}
	if err := x.closeFile(); err != nil {
		return err
	}
	// Directories get their modes last: a read-only directory would refuse its own entries.
	for i := len(x.dirModes) - 1; i >= 0; i-- {
		if err := os.Chmod(x.dirModes[i].path, x.dirModes[i].mode); err != nil {
			return err
		}
	}
	return nil
}

type dirMode struct {
	path string
	mode os.FileMode
}

type extractor struct {
	dir, name string
	line      int
	path      string // the entry the next Mode, Lines or SymlinkTo line is about
	isDir     bool
	file      *bufio.Writer
	f         *os.File
	lines     int // content lines still to read
	dirModes  []dirMode
}

func (x *extractor) next(line string) error {
	if x.lines > 0 {
		x.lines--
		return x.content(line)
	}
	if line == "" || strings.HasPrefix(line, "#") {
		return nil
	}
	key, val, ok := strings.Cut(line, ": ")
	if !ok {
		return fmt.Errorf("%q is not a ttar line (Directory, Path, Lines, SymlinkTo or Mode)", line)
	}
	switch key {
	case "Directory":
		if err := x.closeFile(); err != nil {
			return err
		}
		p, err := x.join(val)
		if err != nil {
			return err
		}
		x.path, x.isDir = p, true
		return os.MkdirAll(p, 0o755)
	case "Path":
		if err := x.closeFile(); err != nil {
			return err
		}
		p, err := x.join(val)
		if err != nil {
			return err
		}
		x.path, x.isDir = p, false
		return nil
	case "Lines":
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 || x.path == "" || x.isDir {
			return fmt.Errorf("line count %q: want a number ≥ 0 after a Path line", val)
		}
		if err := os.MkdirAll(filepath.Dir(x.path), 0o755); err != nil {
			return err
		}
		_ = os.Remove(x.path)
		f, err := os.Create(x.path)
		if err != nil {
			return err
		}
		x.f, x.file, x.lines = f, bufio.NewWriter(f), n
		return nil
	case "SymlinkTo":
		if x.path == "" || x.isDir {
			return fmt.Errorf("link target %q: want a Path line before it", val)
		}
		if err := os.MkdirAll(filepath.Dir(x.path), 0o755); err != nil {
			return err
		}
		_ = os.Remove(x.path)
		return os.Symlink(val, x.path)
	case "Mode":
		m, err := strconv.ParseUint(val, 8, 32)
		if err != nil || x.path == "" {
			return fmt.Errorf("mode %q: want an octal mode after a Directory or Path line", val)
		}
		if x.isDir {
			x.dirModes = append(x.dirModes, dirMode{x.path, os.FileMode(m)})
			return nil
		}
		if err := x.closeFile(); err != nil {
			return err
		}
		if fi, err := os.Lstat(x.path); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			return nil // a link has no mode of its own
		}
		return os.Chmod(x.path, os.FileMode(m))
	}
	return fmt.Errorf("unknown ttar key %q", key)
}

// content writes one archived line. ttar marks a last line without a newline with a trailing
// EOF and a NUL byte with NULLBYTE; a backslash before either keeps it literal.
func (x *extractor) content(line string) error {
	newline := true
	if strings.HasSuffix(line, "EOF") && !strings.HasSuffix(line, `\EOF`) && len(line) > len("EOF") {
		line, newline = strings.TrimSuffix(line, "EOF"), false
	}
	var b strings.Builder
	for i := 0; i < len(line); {
		switch rest := line[i:]; {
		case strings.HasPrefix(rest, `\NULLBYTE`):
			b.WriteString("NULLBYTE")
			i += len(`\NULLBYTE`)
		case strings.HasPrefix(rest, "NULLBYTE"):
			b.WriteByte(0)
			i += len("NULLBYTE")
		case strings.HasPrefix(rest, `\EOF`):
			b.WriteString("EOF")
			i += len(`\EOF`)
		default:
			b.WriteByte(line[i])
			i++
		}
	}
	if newline {
		b.WriteByte('\n')
	}
	_, err := x.file.WriteString(b.String())
	return err
}

func (x *extractor) closeFile() error {
	if x.f == nil {
		return nil
	}
	err := x.file.Flush()
	if cerr := x.f.Close(); err == nil {
		err = cerr
	}
	x.f, x.file = nil, nil
	return err
}

// join places an archived path under dir, refusing one that would leave it.
func (x *extractor) join(p string) (string, error) {
	clean := filepath.Clean(p)
	if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("path %q leaves the extraction directory", p)
	}
	return filepath.Join(x.dir, clean), nil
}
