package workload

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
)

// cgroup2Magic is CGROUP2_SUPER_MAGIC, the statfs type of a cgroup v2 mount.
const cgroup2Magic = 0x63677270

// V2Mount returns the root of the host's cgroup v2 hierarchy. It looks under sysfs first
// (fs/cgroup on a pure v2 host, fs/cgroup/unified on a hybrid one) because in a container the
// host's /sys is mounted at --path.sysfs, while the container's own /sys/fs/cgroup shows only its
// own cgroup namespace. Failing that, the cgroup2 entry of <procfs>/mounts says where it is.
func V2Mount(procfs, sysfs string) (string, error) {
	for _, dir := range []string{filepath.Join(sysfs, "fs", "cgroup"), filepath.Join(sysfs, "fs", "cgroup", "unified")} {
		var st syscall.Statfs_t
		if syscall.Statfs(dir, &st) == nil && st.Type == cgroup2Magic {
			return dir, nil
		}
	}
	path := filepath.Join(procfs, "mounts")
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	return "", fmt.Errorf("no cgroup2 mount in %s", path)
}

// cgroupID is the kernel's id of a v2 cgroup: the inode number of its directory, which is what
// bpf_get_current_cgroup_id and bpf_skb_cgroup_id return.
func cgroupID(dir string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// walkCgroups calls fn for every cgroup under root with its id and its path relative to root
// ("/" for the root itself).
func walkCgroups(root string, fn func(id uint64, rel string)) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			// A cgroup removed during the walk is normal churn.
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		id, statErr := cgroupID(p)
		if statErr != nil {
			return nil //nolint:nilerr // removed between listing and stat: skip it
		}
		rel := strings.TrimPrefix(p, root)
		if rel == "" {
			rel = "/"
		}
		fn(id, rel)
		return nil
	})
}

// Identity is what a cgroup path says about the workload in it.
type Identity struct {
	ContainerID string
	PodUID      string
	SlurmJobID  string
}

var (
	// Container runtimes name the leaf after the 64-hex container id: docker-<id>.scope,
	// cri-containerd-<id>.scope, crio-<id>.scope (systemd driver) or plain <id> (cgroupfs).
	containerRe = regexp.MustCompile(`(?:^|[-/])([0-9a-f]{64})(?:\.scope)?$`)
	// kubepods-burstable-pod<uid>.slice (systemd, uid with underscores) or pod<uid> (cgroupfs).
	podRe   = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)
	slurmRe = regexp.MustCompile(`/job_([0-9]+)(?:/|$)`)
)

// ParseIdentity reads the container id, pod uid and Slurm job id out of a cgroup path.
func ParseIdentity(path string) Identity {
	var id Identity
	if m := containerRe.FindStringSubmatch(path); m != nil {
		id.ContainerID = m[1]
	}
	if m := podRe.FindStringSubmatch(path); m != nil {
		id.PodUID = strings.ReplaceAll(m[1], "_", "-")
	}
	if m := slurmRe.FindStringSubmatch(path); m != nil {
		id.SlurmJobID = m[1]
	}
	return id
}
