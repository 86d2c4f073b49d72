package workload

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

// helperEnv makes the test binary act as a helper process (sender, receiver, unprivileged
// loader) so the helpers run in the cgroups and namespaces the tests create.
const helperEnv = "CAPSTAN_WORKLOAD_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "send":
		os.Exit(helperSend(os.Args[len(os.Args)-3:]))
	case "recv":
		os.Exit(helperRecv(os.Args[len(os.Args)-2:]))
	case "fallback":
		os.Exit(helperFallback())
	}
	os.Exit(2)
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestParseIdentity(t *testing.T) {
	const cid = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"
	for _, tc := range []struct {
		path string
		want Identity
	}{
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-" + cid + ".scope",
			Identity{ContainerID: cid, PodUID: "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"}},
		{"/kubepods.slice/kubepods-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/crio-" + cid + ".scope",
			Identity{ContainerID: cid, PodUID: "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"}},
		{"/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/" + cid,
			Identity{ContainerID: cid, PodUID: "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"}},
		{"/system.slice/docker-" + cid + ".scope", Identity{ContainerID: cid}},
		{"/docker/" + cid, Identity{ContainerID: cid}},
		{"/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0", Identity{SlurmJobID: "4242"}},
		{"/slurm/uid_1000/job_17", Identity{SlurmJobID: "17"}},
		{"/user.slice/user-1000.slice/session-3.scope", Identity{}},
		{"/", Identity{}},
	} {
		if got := ParseIdentity(tc.path); got != tc.want {
			t.Errorf("ParseIdentity(%q) = %+v, want %+v", tc.path, got, tc.want)
		}
	}
}

func TestV2Mount(t *testing.T) {
	for _, tc := range []struct{ name, mounts, want string }{
		{"pure v2", "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n", "/sys/fs/cgroup"},
		{"hybrid", "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n", "/sys/fs/cgroup/unified"},
		{"v1 only", "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "mounts"), []byte(tc.mounts), 0o644); err != nil {
				t.Fatal(err)
			}
			// An empty sysfs has no cgroup mount, so the mounts table decides.
			got, err := V2Mount(dir, t.TempDir())
			if tc.want == "" {
				if err == nil || !strings.Contains(err.Error(), "no cgroup2 mount") {
					t.Fatalf("V2Mount = %q, %v; want a no-cgroup2 error", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("V2Mount = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// The host's hierarchy under --path.sysfs wins over the mounts table, which in a container lists
// the container's own cgroup namespace.
func TestV2MountPrefersSysfs(t *testing.T) {
	want := ""
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st syscall.Statfs_t
		if syscall.Statfs(dir, &st) == nil && st.Type == cgroup2Magic {
			want = dir
			break
		}
	}
	if want == "" {
		t.Skip("no cgroup v2 mount under /sys/fs/cgroup on this machine")
	}
	procfs := t.TempDir()
	if err := os.WriteFile(filepath.Join(procfs, "mounts"), []byte("cgroup2 /container/cgroup cgroup2 rw 0 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := V2Mount(procfs, "/sys"); err != nil || got != want {
		t.Fatalf("V2Mount = %q, %v; want %s", got, err, want)
	}
}

func requireRoot(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads eBPF programs and creates cgroups (CI runs as root)")
	}
	root, err := V2Mount("/proc", "/sys")
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skipf("kernel has no BTF: %v", err)
	}
	return root
}

// testCgroup creates a v2 child cgroup, removed (after its processes exit) when the test ends.
func testCgroup(t testing.TB, root, name string) (rel string, fd int) {
	t.Helper()
	rel = fmt.Sprintf("/capstan-test-%d-%s", os.Getpid(), name)
	dir := filepath.Join(root, rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = f.Close()
		// The cgroup can go once the kernel has reaped its last process.
		removed := func() bool { err := os.Remove(dir); return err == nil || os.IsNotExist(err) }
		if !testkit.Poll(5*time.Second, removed) {
			t.Errorf("cgroup %s not removed", dir)
		}
	})
	return rel, int(f.Fd())
}

// ebpfCollector returns a collector on the eBPF source, closed when the test ends: as root,
// the source must load.
func ebpfCollector(tb testing.TB) *Collector {
	tb.Helper()
	c, err := New(Options{Procfs: "/proc", Sysfs: "/sys", Logger: quietLog()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	if c.Source() != SourceEBPF || c.bpf == nil {
		tb.Fatalf("source = %s as root, want ebpf", c.Source())
	}
	return c
}

// startIn starts cmd directly inside the cgroup (clone3 CLONE_INTO_CGROUP), so none of its
// time is charged elsewhere.
func startIn(t testing.TB, cmd *exec.Cmd, cgroupFD int) {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgroupFD}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %v: %v", cmd.Args, err)
	}
}

func value(b *sample.Batch, def *metrics.Def, match ...attribute.KeyValue) (float64, bool) {
	return b.Find(def, match...)
}

func collect(t testing.TB, c *Collector) *sample.Batch {
	t.Helper()
	return testkit.Collect(t, Name, c)
}

func TestBusyLoopMatchesCPUStat(t *testing.T) {
	root := requireRoot(t)
	c := ebpfCollector(t)
	busy, busyFD := testCgroup(t, root, "busy")
	idle, idleFD := testCgroup(t, root, "idle")
	collect(t, c)

	sleeper := exec.Command("sleep", "30")
	startIn(t, sleeper, idleFD)
	burn(t, filepath.Join(root, busy), busyFD, 1.2)
	_ = sleeper.Process.Kill()
	_ = sleeper.Wait()

	usec, err := readUsageUsec(filepath.Join(root, busy, "cpu.stat"))
	if err != nil {
		t.Fatal(err)
	}
	want := float64(usec) / 1e6
	b := collect(t, c)
	got, ok := value(b, metrics.WorkloadCPUTime, attribute.String(metrics.AttrCgroupPath, busy))
	if !ok {
		t.Fatalf("no %s for %s", metrics.WorkloadCPUTime.Name, busy)
	}
	if want < 1 {
		t.Fatalf("busy loop ran only %.3f s by cpu.stat; the machine is too loaded to judge", want)
	}
	// Runs the kernel skipped (another BPF program already on the CPU) are context switches the
	// eBPF source did not see: exported, and named here should the two sources disagree.
	prog := attribute.String(metrics.AttrBPFProgram, "sched_switch")
	missed, ok := value(b, metrics.WorkloadBPFMissed, prog)
	var now [len(bpfPrograms)]uint64
	switch {
	case !ok || b.Count(metrics.WorkloadBPFMissed) != len(bpfPrograms):
		t.Errorf("%d %s series with the eBPF source (sched_switch: %v), want one per program, %d",
			b.Count(metrics.WorkloadBPFMissed), metrics.WorkloadBPFMissed.Name, ok, len(bpfPrograms))
	case !c.bpf.missed(&now) || float64(now[0]) < missed:
		t.Errorf("%s{sched_switch} = %g, but the program counts %d since: not the kernel's running total", metrics.WorkloadBPFMissed.Name, missed, now[0])
	}
	if math.Abs(got-want)/want > 0.05 {
		t.Errorf("busy cgroup: eBPF %.4f s, cpu.stat %.4f s: more than 5 %% apart (eBPF programs' recursion misses: %g)", got, want, missed)
	}
	if src, _ := value(b, metrics.WorkloadCPUTime, attribute.String(metrics.AttrCgroupPath, busy), attribute.String(metrics.AttrWorkloadSource, SourceEBPF)); src != got {
		t.Errorf("busy cgroup's series does not say source=ebpf")
	}
	idleGot, _ := value(b, metrics.WorkloadCPUTime, attribute.String(metrics.AttrCgroupPath, idle))
	if idleGot > 0.01*want {
		t.Errorf("idle sibling got %.4f s of CPU time, want ~0 (busy: %.4f s)", idleGot, want)
	}
	t.Logf("busy: eBPF %.4f s, cpu.stat %.4f s; idle: %.6f s", got, want, idleGot)
}

func TestNetworkCountersOverVeth(t *testing.T) {
	root := requireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip to create the network namespace")
	}
	c := ebpfCollector(t)
	ns := fmt.Sprintf("capstan-wl-%d", os.Getpid())
	hostIf, nsIf := fmt.Sprintf("cwl%dh", os.Getpid()%100000), fmt.Sprintf("cwl%dn", os.Getpid()%100000)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("link", "add", hostIf, "type", "veth", "peer", "name", nsIf, "netns", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostIf).Run() })
	run("addr", "add", "10.213.7.1/30", "dev", hostIf)
	run("link", "set", hostIf, "up")
	run("-n", ns, "addr", "add", "10.213.7.2/30", "dev", nsIf)
	run("-n", ns, "link", "set", nsIf, "up")
	run("-n", ns, "link", "set", "lo", "up")

	sendRel, sendFD := testCgroup(t, root, "send")
	recvRel, recvFD := testCgroup(t, root, "recv")
	collect(t, c)

	const count, size = 200, 1000
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var recvOut testkit.LogBuffer
	recv := exec.Command("ip", "netns", "exec", ns, self, "10.213.7.2:9999", strconv.Itoa(count))
	recv.Env = append(os.Environ(), helperEnv+"=recv")
	recv.Stdout, recv.Stderr = &recvOut, &recvOut
	startIn(t, recv, recvFD)
	if !testkit.Poll(testkit.DefaultWait, func() bool { return recvOut.Contains(receiverReady) }) {
		t.Fatalf("receiver never bound its socket: %s", recvOut.String())
	}
	send := exec.Command(self, "10.213.7.2:9999", strconv.Itoa(count), strconv.Itoa(size))
	send.Env = append(os.Environ(), helperEnv+"=send")
	var sendOut bytes.Buffer
	send.Stdout, send.Stderr = &sendOut, &sendOut
	startIn(t, send, sendFD)
	if err := send.Wait(); err != nil {
		t.Fatalf("sender: %v: %s", err, sendOut.String())
	}
	if err := recv.Wait(); err != nil {
		t.Fatalf("receiver: %v: %s", err, recvOut.String())
	}
	b := collect(t, c)
	// cgroup_skb sees the IP packet: 20 bytes of IPv4 and 8 of UDP header on each datagram.
	wantBytes := float64(count * (size + 28))
	check := func(rel, dir string, def *metrics.Def, want float64) {
		t.Helper()
		got, ok := value(b, def, attribute.String(metrics.AttrCgroupPath, rel), attribute.String(metrics.AttrIODirection, dir))
		if !ok || got != want {
			t.Errorf("%s %s %s = %v (found %v), want %v", rel, def.Name, dir, got, ok, want)
		}
	}
	check(sendRel, "transmit", metrics.WorkloadNetworkIO, wantBytes)
	check(sendRel, "transmit", metrics.WorkloadNetworkPackets, count)
	check(recvRel, "receive", metrics.WorkloadNetworkIO, wantBytes)
	check(recvRel, "receive", metrics.WorkloadNetworkPackets, count)
	check(sendRel, "receive", metrics.WorkloadNetworkIO, 0)
}

func helperSend(args []string) int {
	n, _ := strconv.Atoi(args[1])
	size, _ := strconv.Atoi(args[2])
	conn, err := net.Dial("udp4", args[0])
	if err != nil {
		fmt.Println(err)
		return 1
	}
	buf := make([]byte, size)
	for i := 0; i < n; i++ {
		if _, err := conn.Write(buf); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	return 0
}

// receiverReady is what the receiver prints once its socket is bound.
const receiverReady = "receiver bound"

// forceRecvBuffer sets the socket's receive buffer to size bytes past net.core.rmem_max
// (SO_RCVBUFFORCE; the helper runs as root).
func forceRecvBuffer(conn net.PacketConn, size int) error {
	raw, err := conn.(*net.UDPConn).SyscallConn()
	if err != nil {
		return fmt.Errorf("reaching the receiver's socket: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, size)
	}); err != nil {
		return fmt.Errorf("reaching the receiver's socket: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("setting the receive buffer to %d bytes: %w", size, serr)
	}
	return nil
}

func helperRecv(args []string) int {
	n, _ := strconv.Atoi(args[1])
	conn, err := net.ListenPacket("udp4", args[0])
	if err != nil {
		fmt.Println(err)
		return 1
	}
	// Room for every datagram the sender writes, however the two are scheduled: UDP drops
	// what does not fit, and the test counts each packet.
	if err := forceRecvBuffer(conn, 8<<20); err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println(receiverReady)
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 65536)
	for got := 0; got < n; got++ {
		if _, _, err := conn.ReadFrom(buf); err != nil {
			fmt.Printf("after %d datagrams: %v\n", got, err)
			return 1
		}
	}
	return 0
}

// helperFallback runs as an unprivileged user: BPF is refused, cpu.stat must be the source.
func helperFallback() int {
	c, err := New(Options{Procfs: "/proc", Sysfs: "/sys", Logger: quietLog()})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer func() { _ = c.Close() }()
	b := &sample.Batch{}
	b.Reset(Name, time.Now())
	if err := c.Collect(context.Background(), b); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	rootCPU, ok := b.Find(metrics.WorkloadCPUTime, attribute.String(metrics.AttrCgroupPath, "/"), attribute.String(metrics.AttrWorkloadSource, SourceCPUStat))
	fmt.Printf("source=%s series=%d root_found=%v root_cpu=%g bpf_missed_series=%d\n", c.Source(), b.Count(metrics.WorkloadCPUTime), ok, rootCPU,
		b.Count(metrics.WorkloadBPFMissed))
	return 0
}

func TestFallbackWithoutPrivilege(t *testing.T) {
	requireRoot(t)
	// The test binary may sit in a directory only root can read: copy it where nobody can run it.
	dir, err := os.MkdirTemp("", "capstan-workload-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "workload.test")
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), helperEnv+"=fallback")
	// nobody: no capabilities at all, so the BPF load is refused by the kernel.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged helper: %v: %s", err, out)
	}
	s := string(out)
	if !strings.Contains(s, "source=cpu.stat ") || !strings.Contains(s, "root_found=true") || strings.Contains(s, " series=0 ") {
		t.Fatalf("unprivileged collector: %s; want source cpu.stat with the root cgroup's CPU time", s)
	}
	if !strings.Contains(s, "bpf_missed_series=0") {
		t.Errorf("unprivileged collector: %s; want no %s without eBPF", s, metrics.WorkloadBPFMissed.Name)
	}
	t.Log(strings.TrimSpace(s))
}

func TestSeriesLimitCountsDropped(t *testing.T) {
	root, err := V2Mount("/proc", "/sys")
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	if os.Geteuid() == 0 {
		testCgroup(t, root, "limit-a")
		testCgroup(t, root, "limit-b")
	}
	total := 0
	if err := walkCgroups(root, func(uint64, string) { total++ }); err != nil {
		t.Fatal(err)
	}
	if total < 2 {
		t.Skipf("only %d cgroup in %s and not root to create more; the limit needs two", total, root)
	}
	c, err := New(Options{Procfs: "/proc", Sysfs: "/sys", Logger: quietLog(), NoBPF: true, MaxSeries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	b := collect(t, c)
	src := attribute.String(metrics.AttrWorkloadSource, SourceCPUStat)
	if got := b.Count(metrics.WorkloadCPUTime); got != 1 {
		t.Errorf("%d cpu.time series with a limit of 1", got)
	}
	if got, _ := b.Find(metrics.WorkloadCgroups, src); got != 1 {
		t.Errorf("cgroups gauge = %v, want 1", got)
	}
	// Every cgroup is active in the first collection; all but one are dropped.
	if got, _ := b.Find(metrics.WorkloadSeriesDropped, src); got < float64(total-1) {
		t.Errorf("dropped = %v, want at least %d of %d cgroups", got, total-1, total)
	}
}

// A cgroup with no activity stays exported for ActiveIntervals collections after its last
// activity (its first sight counts as activity), then leaves the export.
func TestActivityWindow(t *testing.T) {
	root, err := V2Mount("/proc", "/sys")
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a cgroup (CI runs as root)")
	}
	rel, _ := testCgroup(t, root, "idle")
	c, err := New(Options{Procfs: "/proc", Sysfs: "/sys", Logger: quietLog(), NoBPF: true, ActiveIntervals: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	path := attribute.String(metrics.AttrCgroupPath, rel)
	for round, want := range []bool{true, true, false, false} {
		b := collect(t, c)
		if _, got := b.Find(metrics.WorkloadCPUTime, path); got != want {
			t.Errorf("collection %d: idle cgroup exported = %v, want %v (active-intervals 2)", round+1, got, want)
		}
	}
}

// burn runs a busy loop in the cgroup at dir until cpu.stat charges it cpu more seconds, and
// returns when the loop has exited.
func burn(t testing.TB, dir string, cgroupFD int, cpu float64) {
	t.Helper()
	start := usageSeconds(t, dir)
	loop := exec.Command("sh", "-c", "while :; do :; done")
	startIn(t, loop, cgroupFD)
	burnt := testkit.Poll(testkit.DefaultWait, func() bool { return usageSeconds(t, dir)-start >= cpu })
	_ = loop.Process.Kill()
	_ = loop.Wait()
	if !burnt {
		t.Fatalf("a busy loop in %s did not get %.1f s of CPU in %s", dir, cpu, testkit.DefaultWait)
	}
}

func usageSeconds(t testing.TB, dir string) float64 {
	t.Helper()
	usec, err := readUsageUsec(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		t.Fatal(err)
	}
	return float64(usec) / 1e6
}

// A cgroup removed and made again at the same path (a restarted systemd service: new id, zeroed
// kernel counters) continues its predecessor's totals: the series it shares never goes back.
// On eBPF the removed cgroup's last interval, read before the walk that finds it gone, counts
// too; cpu.stat cannot read a removed cgroup, so there its unread interval is lost.
func TestRecreatedCgroupContinuesTotals(t *testing.T) {
	root := requireRoot(t)
	for _, noBPF := range []bool{false, true} {
		name := map[bool]string{false: SourceEBPF, true: SourceCPUStat}[noBPF]
		t.Run(name, func(t *testing.T) {
			c, err := New(Options{Procfs: "/proc", Sysfs: "/sys", Logger: quietLog(), NoBPF: noBPF})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = c.Close() }()
			if c.Source() != name {
				t.Fatalf("source = %s, want %s", c.Source(), name)
			}
			rel, fd := testCgroup(t, root, "restart-"+strings.ReplaceAll(name, ".", ""))
			dir := filepath.Join(root, rel)
			path := attribute.String(metrics.AttrCgroupPath, rel)
			collect(t, c)
			burn(t, dir, fd, 0.3)
			before, _ := value(collect(t, c), metrics.WorkloadCPUTime, path)

			burn(t, dir, fd, 0.3) // not collected before the cgroup goes
			oldUsage := usageSeconds(t, dir)
			if err := os.Remove(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = f.Close() }()
			burn(t, dir, int(f.Fd()), 0.2)
			newUsage := usageSeconds(t, dir)
			after, ok := value(collect(t, c), metrics.WorkloadCPUTime, path)
			if !ok {
				t.Fatalf("recreated cgroup %s not exported", rel)
			}
			t.Logf("before %.4f s, after %.4f s; cpu.stat: removed %.4f s, new %.4f s", before, after, oldUsage, newUsage)
			if before < 0.1 || after < before {
				t.Fatalf("cpu.time went from %.4f s to %.4f s across the cgroup's restart", before, after)
			}
			want := before + newUsage
			if !noBPF {
				want = oldUsage + newUsage
			}
			if math.Abs(after-want) > 0.05*want {
				t.Errorf("cpu.time after the restart = %.4f s, want %.4f s", after, want)
			}
		})
	}
}

// Removed cgroups' totals wait for a successor only for the activity window: churn does not grow
// the collector's memory.
func TestRetiredTotalsArePruned(t *testing.T) {
	root := requireRoot(t)
	c, err := New(Options{Procfs: "/proc", Sysfs: "/sys", Logger: quietLog(), NoBPF: true, ActiveIntervals: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	for i := 0; i < 6; i++ {
		rel, _ := testCgroup(t, root, fmt.Sprintf("churn-%d", i))
		collect(t, c)
		if err := os.Remove(filepath.Join(root, rel)); err != nil {
			t.Fatal(err)
		}
		if n := len(c.retired); n > 2 {
			t.Fatalf("after %d removals, %d retired paths kept with a window of 2", i, n)
		}
	}
	// The collection that finds the last one gone retires it; it is kept for that one and the
	// next (the window of 2) and gone in the third.
	for i := 0; i < 3; i++ {
		collect(t, c)
	}
	if n := len(c.retired); n != 0 {
		t.Errorf("%d retired paths kept past the window, want 0", n)
	}
}

// cpu.stat source: the kernel keeps a removed child's usage in its parent's usage_usec. The
// parent's own time must not take the child's lifetime when the child goes.
func TestRemovedChildNotChargedToParent(t *testing.T) {
	root := requireRoot(t)
	c, err := New(Options{Procfs: "/proc", Sysfs: "/sys", Logger: quietLog(), NoBPF: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	parent, _ := testCgroup(t, root, "parent")
	child := filepath.Join(root, parent, "child")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(child) }) // runs before the parent's removal
	f, err := os.Open(child)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	burn(t, child, int(f.Fd()), 0.2)
	path := attribute.String(metrics.AttrCgroupPath, parent)
	first, _ := value(collect(t, c), metrics.WorkloadCPUTime, path)
	if err := os.Remove(child); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // the collection that finds the child gone, and the next
		got, _ := value(collect(t, c), metrics.WorkloadCPUTime, path)
		if got-first > 0.02 {
			t.Fatalf("collection %d after the child's removal: parent's own time %.4f s → %.4f s; nothing ran in it", i+1, first, got)
		}
	}
}
