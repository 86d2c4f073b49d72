package ttar

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The archive as node_exporter's ttar script writes it: a directory, files with and without a
// final newline, NUL bytes, literal EOF and NULLBYTE words, an empty file and a link.
const archive = `# Archive created by ttar -c -f x.ttar sys
Directory: sys
Mode: 755
# ttar - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Directory: sys/class/hwmon/hwmon0
Mode: 755
# ttar - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Path: sys/class/hwmon/hwmon0/name
Lines: 1
coretemp
Mode: 644
# ttar - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Path: sys/class/hwmon/hwmon0/modalias
Lines: 2
a\EOF and \NULLBYTE
bNULLBYTEcEOF
Mode: 444
# ttar - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Path: sys/class/hwmon/hwmon0/empty
Lines: 0
Mode: 600
# ttar - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Path: sys/class/hwmon/hwmon0/device
SymlinkTo: ../../../devices/platform/coretemp.0
# ttar - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
`

func TestExtract(t *testing.T) {
	dir := t.TempDir()
	if err := Extract(strings.NewReader(archive), "x.ttar", dir); err != nil {
		t.Fatal(err)
	}
	hw := filepath.Join(dir, "sys/class/hwmon/hwmon0")
	for _, tc := range []struct {
		file, want string
		mode       os.FileMode
	}{
		{"name", "coretemp\n", 0o644},
		{"modalias", "aEOF and NULLBYTE\nb\x00c", 0o444},
		{"empty", "", 0o600},
	} {
		got, err := os.ReadFile(filepath.Join(hw, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("%s = %q, want %q", tc.file, got, tc.want)
		}
		fi, err := os.Stat(filepath.Join(hw, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.mode {
			t.Errorf("%s mode %o, want %o", tc.file, fi.Mode().Perm(), tc.mode)
		}
	}
	if target, err := os.Readlink(filepath.Join(hw, "device")); err != nil || target != "../../../devices/platform/coretemp.0" {
		t.Errorf("device links to %q (%v)", target, err)
	}
}

func TestExtractRefuses(t *testing.T) {
	for name, bad := range map[string]string{
		"escaping path":   "Path: ../outside\nLines: 0\n",
		"absolute path":   "Directory: /etc/x\n",
		"short content":   "Path: a\nLines: 3\nonly one\n",
		"lines first":     "Lines: 1\nx\n",
		"unknown key":     "Size: 3\n",
		"not a ttar line": "hello\n",
		"bad mode":        "Path: a\nLines: 0\nMode: rw\n",
	} {
		t.Run(name, func(t *testing.T) {
			err := Extract(strings.NewReader(bad), "bad.ttar", t.TempDir())
			if err == nil || !strings.Contains(err.Error(), "bad.ttar") {
				t.Errorf("error %v, want one naming bad.ttar", err)
			}
		})
	}
}
