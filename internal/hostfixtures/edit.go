package hostfixtures

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capstan-power/capstan/internal/sysattr"
)

// Copy copies host's sysfs tree into a temporary directory of tb that the test may change, and
// returns the copy's root.
func Copy(tb testing.TB, host string) string {
	tb.Helper()
	dst := filepath.Join(tb.TempDir(), "sys")
	if err := os.CopyFS(dst, os.DirFS(Sysfs(host))); err != nil {
		tb.Fatalf("copying the %s fixture host: %v", host, err)
	}
	return dst
}

// WriteAttr writes value to the sysfs attribute at path as the kernel shows it: with a newline.
func WriteAttr(tb testing.TB, path, value string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// Faults is a sysattr.ReadFunc seam that fails reads of the files whose path ends in one of
// Suffixes with Err, and reads every other file from the filesystem. Tests change Suffixes
// between collections to make a file fail and recover; "" fails every read.
type Faults struct {
	Err      error
	Suffixes []string
}

// Read is the sysattr.ReadFunc.
func (f *Faults) Read(path string, buf []byte) (int, error) {
	for _, s := range f.Suffixes {
		if strings.HasSuffix(path, s) {
			return 0, &fs.PathError{Op: "read", Path: path, Err: f.Err}
		}
	}
	return sysattr.ReadFile(path, buf)
}

var _ sysattr.ReadFunc = (*Faults)(nil).Read
