package sysattr

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

func write(t *testing.T, path, v string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestParse(t *testing.T) {
	cases := []struct {
		in      string
		u       uint64
		uErr    error
		i       int64
		iErr    error
		comment string
	}{
		{"0\n", 0, nil, 0, nil, "zero"},
		{"3800000\n", 3800000, nil, 3800000, nil, "kHz"},
		{"-273150\n", 0, ErrSyntax, -273150, nil, "NVMe's unset minimum"},
		{"18446744073709551615", 1<<64 - 1, nil, 0, strconv.ErrRange, "uint64 max"},
		{"18446744073709551616", 0, strconv.ErrRange, 0, strconv.ErrRange, "past uint64"},
		{"<unsupported>\n", 0, ErrSyntax, 0, ErrSyntax, "scaling_setspeed"},
		{"\n", 0, ErrSyntax, 0, ErrSyntax, "empty"},
	}
	dir := t.TempDir()
	r := NewReader(nil)
	defer r.Close()
	for i, tc := range cases {
		path := filepath.Join(dir, strconv.Itoa(i))
		write(t, path, tc.in)
		f := NewFile(path)
		u, err := r.Uint(f)
		if !errors.Is(err, tc.uErr) || (err == nil && u != tc.u) {
			t.Errorf("%s: Uint(%q) = %d, %v; want %d, %v", tc.comment, tc.in, u, err, tc.u, tc.uErr)
		}
		n, err := r.Int(f)
		if !errors.Is(err, tc.iErr) || (err == nil && n != tc.i) {
			t.Errorf("%s: Int(%q) = %d, %v; want %d, %v", tc.comment, tc.in, n, err, tc.i, tc.iErr)
		}
	}
}

// A held file is reread with pread: a value the kernel (here: a writer) changes is seen.
func TestHeldFileSeesNewValues(t *testing.T) {
	path := filepath.Join(t.TempDir(), "temp")
	write(t, path, "41000\n")
	r := NewReader(nil)
	f := NewFile(path)
	if v, err := r.Int(f); err != nil || v != 41000 {
		t.Fatalf("first read %d, %v", v, err)
	}
	if r.Held() != 1 {
		t.Fatalf("%d files held after a successful read, want 1", r.Held())
	}
	write(t, path, "42500\n")
	if v, err := r.Int(f); err != nil || v != 42500 {
		t.Fatalf("second read %d, %v; want the new value 42500", v, err)
	}
	if err := r.Close(); err != nil || r.Held() != 0 {
		t.Fatalf("close: %v, %d still held", err, r.Held())
	}
	// Still readable after Close: it reopens.
	if v, err := r.Int(f); err != nil || v != 42500 {
		t.Fatalf("read after close %d, %v", v, err)
	}
	r.Close()
}

// A held descriptor whose read fails (a removed sysfs device answers ENODEV) is closed and the
// file is reopened by path on the next read.
func TestFailedReadReopensByPath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "energy_uj")
	write(t, path, "100\n")
	r := NewReader(nil)
	defer r.Close()
	f := NewFile(path)
	if _, err := r.Uint(f); err != nil {
		t.Fatal(err)
	}
	// Make the held descriptor fail: point it at a directory (pread gives EISDIR).
	breakHeld(t, f.fd, dir)
	if _, err := r.Uint(f); !errors.Is(err, syscall.EISDIR) {
		t.Fatalf("read on the broken descriptor: %v, want EISDIR", err)
	}
	if r.Held() != 0 {
		t.Fatal("the failed descriptor is still held")
	}
	write(t, path, "200\n")
	if v, err := r.Uint(f); err != nil || v != 200 {
		t.Fatalf("read after reopening %d, %v; want 200", v, err)
	}
	if r.Held() != 1 || len(r.held) != 1 {
		t.Fatalf("held %d (list %d) after reopening, want 1", r.Held(), len(r.held))
	}
}

func TestMaxHeld(t *testing.T) {
	dir := t.TempDir()
	r := NewReader(nil)
	defer r.Close()
	r.maxHeld = 2
	for i := range 4 {
		path := filepath.Join(dir, strconv.Itoa(i))
		write(t, path, strconv.Itoa(i))
		if v, err := r.Uint(NewFile(path)); err != nil || v != uint64(i) {
			t.Fatalf("read %d: %d, %v", i, v, err)
		}
	}
	if r.Held() != 2 {
		t.Fatalf("%d held, want the limit 2", r.Held())
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	r := NewReader(nil)
	_, err := r.Uint(NewFile(filepath.Join(dir, "absent")))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("absent file: %v, want ErrNotExist", err)
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Path != filepath.Join(dir, "absent") {
		t.Errorf("error %v does not name the file", err)
	}
	if _, err := r.String(dir); !errors.Is(err, syscall.EISDIR) {
		t.Errorf("reading a directory: %v, want EISDIR", err)
	}
	if r.Held() != 0 {
		t.Error("a failed open left a descriptor held")
	}
}

// A device file whose device went away is not reopened by path: the kernel reuses the class
// number (hwmonN), and the path would then read another device.
func TestGoneDeviceFileIsNotReopened(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "temp1_input")
	write(t, path, "41000\n")
	r := NewReader(nil)
	defer r.Close()
	f := NewDeviceFile(path)
	if v, err := r.Uint(f); err != nil || v != 41000 {
		t.Fatalf("first read %d, %v", v, err)
	}
	// The chip is unbound: its held descriptor fails (EISDIR stands in for ENODEV, which a
	// temporary tree cannot produce) and its directory disappears.
	breakHeld(t, f.fd, dir)
	if _, err := r.Uint(f); err == nil {
		t.Fatal("read on the broken descriptor succeeded")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Uint(f); !errors.Is(err, ErrGone) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("reopening a removed device file: %v, want ErrGone wrapping ENOENT", err)
	}
	// Another chip takes the freed number.
	write(t, path, "71000\n")
	if v, err := r.Uint(f); !errors.Is(err, ErrGone) {
		t.Fatalf("read after another device took the path: %d, %v; want ErrGone", v, err)
	}
	if !f.Gone() || r.Held() != 0 {
		t.Fatalf("gone %v, held %d; want gone and nothing held", f.Gone(), r.Held())
	}
	// A plain file (a CPU's policy, renumbered never) is reopened by path.
	p := NewFile(path)
	if v, err := r.Uint(p); err != nil || v != 71000 {
		t.Fatalf("plain file read %d, %v", v, err)
	}
}

// breakHeld makes the held descriptor fd fail its next read: it now refers to the directory dir,
// and pread on a directory gives EISDIR.
func breakHeld(t *testing.T, fd int, dir string) {
	t.Helper()
	d, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Dup2(d, fd); err != nil {
		t.Fatal(err)
	}
	syscall.Close(d)
}
