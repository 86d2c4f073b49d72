package soak

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// needFUSE skips a test that mounts a FUSE filesystem where it cannot.
func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a FUSE filesystem with mount(2) needs root")
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no usable /dev/fuse here: %v", err)
	}
	_ = f.Close()
}

func mounted(t *testing.T, mnt string) bool {
	t.Helper()
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == mnt {
			return true
		}
	}
	return false
}

// The sensor tree serves a sysfs copy whose files read their value, or the errno the harness
// sets, through a descriptor held open across the fault as the agents hold theirs (pread at
// offset 0), and through a fresh open; the other files read on; unmounting with a descriptor
// still open falls back to a lazy unmount.
func TestSensorTree(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	src, mnt := filepath.Join(dir, "sys.src"), filepath.Join(dir, "sys")
	chip := filepath.Join(src, "devices/platform/coretemp.0/hwmon/hwmon1")
	for _, d := range []string{chip, filepath.Join(src, "class/hwmon"), mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, value := range map[string]string{"name": "coretemp\n", "temp1_input": "52000\n", "temp2_input": "49000\n"} {
		if err := os.WriteFile(filepath.Join(chip, name), []byte(value), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../../devices/platform/coretemp.0/hwmon/hwmon1", filepath.Join(src, "class/hwmon/hwmon1")); err != nil {
		t.Fatal(err)
	}
	tree, err := mountSensorTree(src, mnt)
	if err != nil {
		t.Fatal(err)
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			_ = tree.unmount()
		}
	})
	through := filepath.Join(mnt, "class/hwmon/hwmon1")
	held, err := os.Open(filepath.Join(through, "temp1_input"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = held.Close() }()
	pread := func() (string, error) {
		buf := make([]byte, 64)
		n, err := held.ReadAt(buf, 0)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return string(buf[:n]), err
	}
	if v, err := pread(); err != nil || v != "52000\n" {
		t.Fatalf("before any fault: %q, %v", v, err)
	}
	f := tree.file("class/hwmon/hwmon1/temp1_input")
	if f == nil || tree.file("class/hwmon/hwmon1/nothing") != nil {
		t.Fatalf("looking files up through the class symlink: %v", f)
	}
	for _, errno := range []syscall.Errno{syscall.ENODATA, syscall.EIO} {
		f.fail(errno)
		if _, err := pread(); !errors.Is(err, errno) {
			t.Errorf("held descriptor under %v: %v", errno, err)
		}
		fresh, err := os.Open(filepath.Join(through, "temp1_input"))
		if err != nil {
			t.Errorf("opening a failing sensor (sysfs opens it; only reads fail): %v", err)
		} else {
			if _, err := fresh.Read(make([]byte, 64)); !errors.Is(err, errno) {
				t.Errorf("fresh descriptor under %v: %v", errno, err)
			}
			_ = fresh.Close()
		}
		if v, err := os.ReadFile(filepath.Join(through, "temp2_input")); err != nil || string(v) != "49000\n" {
			t.Errorf("the other sensor under %v: %q, %v", errno, v, err)
		}
	}
	f.fail(0)
	if v, err := pread(); err != nil || v != "52000\n" {
		t.Errorf("after the fault: %q, %v", v, err)
	}
	if n := f.failed.Load(); n != 4 {
		t.Errorf("%d reads answered an errno, want 4", n)
	}
	if _, err := os.OpenFile(filepath.Join(through, "temp1_input"), os.O_WRONLY, 0); !errors.Is(err, syscall.EACCES) {
		t.Errorf("opening for writing: %v", err)
	}
	if !mounted(t, mnt) {
		t.Fatalf("%s is not in the mount table", mnt)
	}
	// held is still open: a plain unmount is refused (EBUSY), the lazy one goes through.
	if err := tree.unmount(); err != nil {
		t.Fatal(err)
	}
	unmounted = true
	if mounted(t, mnt) {
		t.Errorf("%s still mounted after unmount", mnt)
	}
}
