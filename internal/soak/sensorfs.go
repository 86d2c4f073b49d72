package soak

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// sensorTree serves a copy of a sysfs tree through FUSE, from memory, so that the harness can
// make any file's read(2) fail the way a broken sensor's does (EIO, ENODATA) while the agents
// hold it open. A fixture tree on a local filesystem cannot: the agents keep every attribute
// file open and pread it, so a file swapped for a failing one is never read again, and no file
// of the kernel answers ENODATA. Every read is answered at once (FOPEN_DIRECT_IO, so each
// pread reaches the server): the tree never hangs a reader.
type sensorTree struct {
	mnt    string
	server *fuse.Server
	// files are the regular files by their path relative to the root, symlinks resolved;
	// links the symlinks' targets.
	files map[string]*sensorFile
	links map[string]string
	// dirs lists each directory's entries, by the directory's path relative to the root.
	dirs    map[string][]string
	entries []sensorEntry
}

// sensorFile is one attribute file: its content, or the errno its reads answer while failing.
type sensorFile struct {
	gofs.Inode
	content []byte
	mode    uint32
	// errno is the error every read answers, 0 while the file reads its content.
	errno atomic.Int32
	// failed counts the reads answered with an errno.
	failed atomic.Int64
}

var (
	_ gofs.NodeOpener    = (*sensorFile)(nil)
	_ gofs.NodeReader    = (*sensorFile)(nil)
	_ gofs.NodeGetattrer = (*sensorFile)(nil)
	_ gofs.NodeGetattrer = (*sensorDir)(nil)
)

func (f *sensorFile) Open(_ context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EACCES // the agents only read; a write would be a harness bug
	}
	// Opening succeeds while the file fails, as on sysfs; only reads fail.
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (f *sensorFile) Read(_ context.Context, _ gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if e := f.errno.Load(); e != 0 {
		f.failed.Add(1)
		return nil, syscall.Errno(e)
	}
	if off >= int64(len(f.content)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), int64(len(f.content)))
	return fuse.ReadResultData(f.content[off:end]), 0
}

func (f *sensorFile) Getattr(_ context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = f.mode
	out.Size = uint64(len(f.content))
	return 0
}

// fail makes every read of f answer errno (0: its content again).
func (f *sensorFile) fail(errno syscall.Errno) { f.errno.Store(int32(errno)) }

type sensorDir struct {
	gofs.Inode
	mode  uint32
	build func(ctx context.Context, root *gofs.Inode)
}

func (d *sensorDir) Getattr(_ context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = d.mode
	return 0
}

// OnAdd builds the whole tree under the root once it is mounted.
func (d *sensorDir) OnAdd(ctx context.Context) {
	if d.build != nil {
		d.build(ctx, &d.Inode)
	}
}

// mountSensorTree mounts at mnt (an empty directory) a FUSE filesystem holding a copy of the
// tree at src: its directories, symlinks and regular files.
func mountSensorTree(src, mnt string) (*sensorTree, error) {
	t, err := readSensorTree(src)
	if err != nil {
		return nil, err
	}
	if err := t.mount(mnt); err != nil {
		return nil, err
	}
	return t, nil
}

// sensorEntry is one entry of the tree: a directory, a symlink (target) or a file.
type sensorEntry struct {
	rel    string
	mode   fs.FileMode
	target string
	file   *sensorFile
}

// readSensorTree reads the tree at src into memory, not yet mounted.
func readSensorTree(src string) (*sensorTree, error) {
	t := &sensorTree{files: map[string]*sensorFile{}, links: map[string]string{}, dirs: map[string][]string{}}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := sensorEntry{rel: rel, mode: info.Mode()}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			if e.target, err = os.Readlink(p); err != nil {
				return err
			}
			t.links[rel] = e.target
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.file = &sensorFile{content: data, mode: uint32(info.Mode().Perm())}
			t.files[rel] = e.file
		case !d.IsDir():
			return nil // nothing else lives in a fixture tree
		}
		t.entries = append(t.entries, e)
		t.dirs[filepath.Dir(rel)] = append(t.dirs[filepath.Dir(rel)], filepath.Base(rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the tree to serve from %s: %w", src, err)
	}
	// Parents before their children.
	sort.Slice(t.entries, func(i, j int) bool { return t.entries[i].rel < t.entries[j].rel })
	return t, nil
}

// mount serves the tree at mnt.
func (t *sensorTree) mount(mnt string) error {
	root := &sensorDir{mode: 0o755}
	root.build = func(ctx context.Context, top *gofs.Inode) {
		dirs := map[string]*gofs.Inode{".": top}
		for _, e := range t.entries {
			parent := dirs[filepath.Dir(e.rel)]
			if parent == nil {
				continue
			}
			var child *gofs.Inode
			switch {
			case e.mode.IsDir():
				child = parent.NewPersistentInode(ctx, &sensorDir{mode: uint32(e.mode.Perm())}, gofs.StableAttr{Mode: syscall.S_IFDIR})
				dirs[e.rel] = child
			case e.file == nil:
				child = parent.NewPersistentInode(ctx, &gofs.MemSymlink{Data: []byte(e.target)}, gofs.StableAttr{Mode: syscall.S_IFLNK})
			default:
				child = parent.NewPersistentInode(ctx, e.file, gofs.StableAttr{Mode: syscall.S_IFREG})
			}
			parent.AddChild(filepath.Base(e.rel), child, false)
		}
	}
	// Entries and attributes never change: the kernel may keep them (reads still reach the
	// server, through direct I/O).
	forever := time.Hour
	server, err := gofs.Mount(mnt, root, &gofs.Options{
		EntryTimeout: &forever,
		AttrTimeout:  &forever,
		MountOptions: fuse.MountOptions{
			FsName:            "capstan-soak-sysfs",
			Name:              "capstansoak",
			DirectMountStrict: true, // as root, mount(2) itself: no fusermount needed
			DisableXAttrs:     true,
		},
	})
	if err != nil {
		return fmt.Errorf("mounting the sensor tree at %s: %w", mnt, err)
	}
	t.mnt, t.server = mnt, server
	return nil
}

// file returns the served file that rel (relative to the root) names, following symlinks
// inside the tree as the kernel would.
func (t *sensorTree) file(rel string) *sensorFile {
	real, err := t.resolve(rel, 0)
	if err != nil {
		return nil
	}
	return t.files[real]
}

// resolve turns rel into the path of what it names, symlinks resolved, within the tree.
func (t *sensorTree) resolve(rel string, depth int) (string, error) {
	if depth > 16 {
		return "", errors.New("too many symlinks")
	}
	parts := strings.Split(filepath.Clean(rel), string(filepath.Separator))
	done := ""
	for i, p := range parts {
		next := filepath.Join(done, p)
		if target, ok := t.links[next]; ok {
			if filepath.IsAbs(target) {
				return "", fmt.Errorf("%s links outside the tree", next)
			}
			joined := filepath.Join(done, target)
			if joined == ".." || strings.HasPrefix(joined, "../") {
				return "", fmt.Errorf("%s links outside the tree", next)
			}
			resolved, err := t.resolve(joined, depth+1)
			if err != nil {
				return "", err
			}
			rest := append([]string{resolved}, parts[i+1:]...)
			return t.resolve(filepath.Join(rest...), depth+1)
		}
		done = next
	}
	return done, nil
}

// list returns the names in the directory rel names (symlinks followed), sorted.
func (t *sensorTree) list(rel string) []string {
	real, err := t.resolve(rel, 0)
	if err != nil {
		return nil
	}
	if real == "" {
		real = "."
	}
	return t.dirs[real]
}

// unmount takes the tree away: a plain unmount when nothing holds it open any more, else a
// lazy one (the filesystem goes from the namespace at once and its server ends when the last
// descriptor closes). It never waits for the readers.
func (t *sensorTree) unmount() error {
	if t == nil || t.server == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- t.server.Unmount() }()
	select {
	case err := <-done:
		if err == nil {
			return nil
		}
	case <-time.After(2 * time.Second):
	}
	if err := syscall.Unmount(t.mnt, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("unmounting the sensor tree at %s: %w", t.mnt, err)
	}
	return nil
}
