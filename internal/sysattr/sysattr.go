// Package sysattr reads small sysfs attribute files (one value each) without the allocations and
// extra stat of os.ReadFile, through a seam that tests use to inject the errors real boards return
// (EIO, ENODATA, EACCES), which a fixture tree read by root cannot produce.
package sysattr

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"syscall"
	"unsafe"
)

// ReadFunc reads at most len(buf) bytes of the file at path into buf.
type ReadFunc func(path string, buf []byte) (int, error)

// ReadFile is the ReadFunc of the real filesystem: open, one read, close.
func ReadFile(path string, buf []byte) (int, error) {
	var r Reader
	return r.readOnce(path, buf)
}

// DefaultMaxHeld bounds the descriptors a reader keeps open, far below the open-file limit Go
// raises to at start; beyond it, files are opened for every read.
const DefaultMaxHeld = 4096

// File is one attribute file read on every collection. A Reader keeps it open after a
// successful read and rereads it with pread at offset 0: sysfs regenerates an attribute on every
// read from offset 0, and a pread costs a fraction of open, read and close (the path walk and
// file setup), which is what lets a 192-CPU host be read in about a millisecond. A descriptor
// whose read fails is closed, so a replaced file is reopened by path next time; but a held
// device file (NewDeviceFile) whose device went away (ENODEV on read, or ENOENT/ENODEV on reopening it) is gone for good:
// the kernel reuses freed hwmonN, thermal_zoneN and cooling_deviceN numbers, so reopening the
// path could read another device under this one's series. Gone files fail with ErrGone until
// the collector rediscovers its devices (restart, SIGHUP), which makes new Files.
type File struct {
	Path   string
	fd     int  // -1 while not held
	listed bool // in the reader's held list
	device bool // under a class directory whose numbers the kernel reuses (NewDeviceFile)
	gone   bool // the device went away: never reopened by path
}

// NewDeviceFile returns the attribute file at path of a device whose class number the kernel
// reuses after removal (hwmonN, thermal_zoneN, cooling_deviceN): once the device goes away the
// file is gone, not reopened by path. Files of stable objects (a CPU's cpufreq policy, which
// comes back under the same number when the CPU is onlined again) use NewFile.
func NewDeviceFile(path string) *File { return &File{Path: path, fd: -1, device: true} }

// ErrGone says a held file's device went away; the path is not reopened, as its number may now
// name another device.
var ErrGone = errors.New("device went away; not reopened until rediscovery")

// goneErr is ErrGone, still matching the errno that revealed it.
type goneErr struct{ errno syscall.Errno }

func (e goneErr) Error() string { return ErrGone.Error() + " (" + e.errno.Error() + ")" }

func (e goneErr) Unwrap() []error { return []error{ErrGone, e.errno} }

// Gone reports whether f's device went away.
func (f *File) Gone() bool { return f.gone }

// NewFile returns the attribute file at path, not yet opened.
func NewFile(path string) *File { return &File{Path: path, fd: -1} }

// Reader reads attributes into one reused buffer. It is not safe for concurrent use: a
// collector owns one and runs one collection at a time. Close releases held descriptors.
type Reader struct {
	read    ReadFunc // nil: the real filesystem, with held descriptors
	buf     [256]byte
	path    []byte
	held    []*File
	maxHeld int
}

// NewReader returns a reader using read, or the real filesystem when read is nil.
func NewReader(read ReadFunc) *Reader {
	return &Reader{read: read, path: make([]byte, 0, 256), maxHeld: DefaultMaxHeld}
}

// Close closes every held descriptor.
func (r *Reader) Close() error {
	for _, f := range r.held {
		if f.fd >= 0 {
			_ = syscall.Close(f.fd)
		}
		f.fd, f.listed = -1, false
	}
	r.held = r.held[:0]
	return nil
}

// Held is the number of descriptors the reader keeps open.
func (r *Reader) Held() int {
	n := 0
	for _, f := range r.held {
		if f.fd >= 0 {
			n++
		}
	}
	return n
}

// readFile reads f through its held descriptor, opening (and holding) it when needed.
func (r *Reader) readFile(f *File, buf []byte) (int, error) {
	if f.gone {
		return 0, &fs.PathError{Op: "read", Path: f.Path, Err: goneErr{syscall.ENODEV}}
	}
	if f.fd >= 0 {
		n, err := pread(f.fd, buf)
		if err == nil {
			return n, nil
		}
		_ = syscall.Close(f.fd)
		f.fd = -1
		if f.device && errors.Is(err, syscall.ENODEV) {
			f.gone = true
			err = goneErr{syscall.ENODEV}
		}
		return 0, &fs.PathError{Op: "read", Path: f.Path, Err: err}
	}
	fd, err := r.open(f.Path)
	if err != nil {
		// A file held before whose path no longer opens: its device was removed, and the
		// path may later name another device.
		var errno syscall.Errno
		if errors.As(err, &errno) && f.device && f.listed && (errno == syscall.ENOENT || errno == syscall.ENODEV) {
			f.gone = true
			err = goneErr{errno}
		}
		return 0, &fs.PathError{Op: "open", Path: f.Path, Err: err}
	}
	n, err := pread(fd, buf)
	if err != nil {
		_ = syscall.Close(fd)
		return 0, &fs.PathError{Op: "read", Path: f.Path, Err: err}
	}
	switch {
	case f.listed: // held before, closed after a failed read: hold it again
		f.fd = fd
	case len(r.held) < r.maxHeld:
		f.fd, f.listed = fd, true
		r.held = append(r.held, f)
	default:
		_ = syscall.Close(fd)
	}
	return n, nil
}

// readOnce opens, reads and closes path.
func (r *Reader) readOnce(path string, buf []byte) (int, error) {
	fd, err := r.open(path)
	if err != nil {
		return 0, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	n, err := pread(fd, buf)
	_ = syscall.Close(fd)
	if err != nil {
		return 0, &fs.PathError{Op: "read", Path: path, Err: err}
	}
	return n, nil
}

// open opens path through a NUL-terminated copy in the reader's own buffer, so opening allocates
// nothing (syscall.Open allocates that copy on every call).
func (r *Reader) open(path string) (int, error) {
	r.path = append(append(r.path[:0], path...), 0)
	for {
		fd, _, errno := syscall.Syscall6(syscall.SYS_OPENAT, atFDCWD, uintptr(unsafe.Pointer(&r.path[0])),
			syscall.O_RDONLY|syscall.O_CLOEXEC, 0, 0, 0)
		switch errno {
		case 0:
			return int(fd), nil
		case syscall.EINTR:
			continue
		}
		return -1, errno
	}
}

func pread(fd int, buf []byte) (int, error) {
	for {
		n, err := syscall.Pread(fd, buf, 0)
		if !errors.Is(err, syscall.EINTR) {
			return n, err
		}
	}
}

// atFDCWD makes openat resolve relative paths against the working directory, as open does.
const atFDCWD = ^uintptr(99) // -100

// Bytes returns f's content without surrounding white space. The slice is valid until the next
// read.
func (r *Reader) Bytes(f *File) ([]byte, error) {
	var n int
	var err error
	if r.read != nil {
		n, err = r.read(f.Path, r.buf[:])
	} else {
		n, err = r.readFile(f, r.buf[:])
	}
	if err != nil {
		return nil, err
	}
	return bytes.TrimSpace(r.buf[:n]), nil
}

// Int parses f as a decimal integer.
func (r *Reader) Int(f *File) (int64, error) {
	b, err := r.Bytes(f)
	if err != nil {
		return 0, err
	}
	v, err := parseInt(b)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", f.Path, err)
	}
	return v, nil
}

// Uint parses f as a decimal unsigned integer.
func (r *Reader) Uint(f *File) (uint64, error) {
	b, err := r.Bytes(f)
	if err != nil {
		return 0, err
	}
	v, err := parseUint(b)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", f.Path, err)
	}
	return v, nil
}

// onceBytes reads a value read once (a name, a label, a hardware limit) without holding it open.
func (r *Reader) onceBytes(path string) ([]byte, error) {
	var n int
	var err error
	if r.read != nil {
		n, err = r.read(path, r.buf[:])
	} else {
		n, err = r.readOnce(path, r.buf[:])
	}
	if err != nil {
		return nil, err
	}
	return bytes.TrimSpace(r.buf[:n]), nil
}

// String reads the attribute at path once, as a string.
func (r *Reader) String(path string) (string, error) {
	b, err := r.onceBytes(path)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// UintOnce reads the attribute at path once, as a decimal unsigned integer.
func (r *Reader) UintOnce(path string) (uint64, error) {
	b, err := r.onceBytes(path)
	if err != nil {
		return 0, err
	}
	v, err := parseUint(b)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", path, err)
	}
	return v, nil
}

// ErrSyntax says an attribute did not hold a decimal number.
var ErrSyntax = errors.New("not a decimal number")

// parseUint parses without converting to a string, so the hot path does not allocate.
func parseUint(b []byte) (uint64, error) {
	if len(b) == 0 || len(b) > 20 {
		return 0, fmt.Errorf("%q: %w", b, ErrSyntax)
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q: %w", b, ErrSyntax)
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, fmt.Errorf("%q: %w", b, strconv.ErrRange)
		}
		v = v*10 + d
	}
	return v, nil
}

func parseInt(b []byte) (int64, error) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	u, err := parseUint(b)
	if err != nil {
		return 0, err
	}
	if u > 1<<63 || (!neg && u == 1<<63) {
		return 0, fmt.Errorf("%q: %w", b, strconv.ErrRange)
	}
	if neg {
		return -int64(u), nil
	}
	return int64(u), nil
}
