package workload

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// sleeperIn starts a real process and moves it into cgroup rel (created under the cgroup v2
// root); it returns the PID. Everything is undone when the test ends.
func sleeperIn(t *testing.T, root, rel string) uint32 {
	t.Helper()
	dir := filepath.Join(root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		// Remove the cgroup and its empty parents up to the test's own.
		for d := dir; d != root && len(d) > len(root); d = filepath.Dir(d) {
			_ = os.Remove(d)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatalf("moving PID %d into %s: %v", cmd.Process.Pid, dir, err)
	}
	return uint32(cmd.Process.Pid)
}

// End to end: real processes in real cgroups of this test run on simulated GPUs, time-sliced
// and MPS on one, in MIG instances on another; the workload collector maps PID → cgroup → pod
// and splits the GPUs' energy by the workloads' shares, and exports their memory and SM share.
func TestGPUUseOfRealCgroupsEndToEnd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups and move processes into them")
	}
	root, err := V2Mount("/proc", "/sys")
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	top := fmt.Sprintf("capstan-gpu-test-%d", os.Getpid())
	t.Cleanup(func() { _ = os.Remove(filepath.Join(root, top)) })
	const cid = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"
	container := "/" + top + "/kubepods.slice/kubepods-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-" + cid + ".scope"
	job := "/" + top + "/slurm/job_42/step_0"
	migJob := "/" + top + "/slurm/job_43/step_0"
	migPod := "/" + top + "/kubepods.slice/kubepods-pod99990000_1111_2222_3333_444455556666.slice/cri-containerd-" + cid[:60] + "ffff.scope"

	a1 := sleeperIn(t, root, container) // two processes of one container (MPS)
	a2 := sleeperIn(t, root, container)
	b := sleeperIn(t, root, job) // another job time-slicing the same GPU
	c := sleeperIn(t, root, migJob)
	d := sleeperIn(t, root, migPod)

	clk := clock.NewManual(time.Unix(1_700_000_000, 0))
	fleet, err := sim.New(sim.Options{Model: "H100", Count: 2, Trace: "steady", Seed: 5, Clock: clk, MIG: "off;3g.40gb,2x2g.20gb"})
	if err != nil {
		t.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	const gib = 1 << 30
	if err := fleet.SetProcesses(0, []sim.Process{
		{PID: a1, MemoryBytes: 10 * gib, SMShare: 0.4, MPSClient: true}, // listed apart by NVML
		{PID: a2, MemoryBytes: 6 * gib, SMShare: 0.2, MPSClient: true},
		{PID: b, MemoryBytes: 20 * gib, SMShare: 0.2},
	}); err != nil {
		t.Fatal(err)
	}
	if err := fleet.SetProcesses(1, []sim.Process{
		{PID: c, MemoryBytes: 30 * gib, GPUInstance: 1},
		{PID: d, MemoryBytes: 12 * gib, GPUInstance: 2},
	}); err != nil {
		t.Fatal(err)
	}
	uuid := func(h nvml.Device) string { u, _ := h.GetUUID(); return u }
	gpu0, _ := fleet.DeviceGetHandleByIndex(0)
	gpu1, _ := fleet.DeviceGetHandleByIndex(1)
	mig := map[int]string{}
	for i := range 3 {
		h, ret := gpu1.GetMigDeviceHandleByIndex(i)
		if ret != nvml.SUCCESS {
			t.Fatal(ret)
		}
		gi, _ := h.GetGpuInstanceId()
		mig[gi] = uuid(h)
	}
	// The kubelet: GPU 0's time-sliced replicas 0 and 2 belong to one pod, MIG instance 2 to
	// another.
	sock := serveKubelet(t, []*podresourcesv1.PodResources{
		{Name: "trainer-0", Namespace: "ml", Containers: []*podresourcesv1.ContainerResources{{Name: "main",
			Devices: []*podresourcesv1.ContainerDevices{{ResourceName: "nvidia.com/gpu", DeviceIds: []string{uuid(gpu0) + "::0", uuid(gpu0) + "::2"}}}}}},
		{Name: "infer", Namespace: "serving", Containers: []*podresourcesv1.ContainerResources{{Name: "server",
			Devices: []*podresourcesv1.ContainerDevices{{ResourceName: "nvidia.com/mig-2g.20gb", DeviceIds: []string{mig[2]}}}}}},
	})
	pods, err := NewPodResources(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pods.Close() }()
	all := func(*metrics.Def) bool { return true }
	g := newGPUEnergy(fleet, "/proc", pods, clk.Now, 5, all)
	run := func() *sample.Batch {
		bt := &sample.Batch{}
		bt.Reset(Name, clk.Now())
		g.collect(context.Background(), bt, t.Logf)
		return bt
	}
	mj := func(h nvml.Device) float64 { v, _ := h.GetTotalEnergyConsumption(); return float64(v) / 1e3 }
	start0, start1 := mj(gpu0), mj(gpu1)
	run()
	clk.Advance(10 * time.Second)
	bt := run()
	d0, d1 := mj(gpu0)-start0, mj(gpu1)-start1
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 0.02*math.Max(1, want) {
			t.Errorf("%s = %.3f, want %.3f", what, got, want)
		}
	}
	cg := func(path string) attribute.KeyValue { return attribute.String(metrics.AttrCgroupPath, path) }
	energy := func(path string) float64 {
		t.Helper()
		v, ok := bt.Find(metrics.WorkloadEnergy, cg(path))
		if !ok {
			t.Fatalf("no GPU energy for cgroup %s", path)
		}
		return v
	}
	// GPU 0: SM shares 0.4 + 0.2 (container) and 0.2 (job): 3/4 and 1/4 of its energy.
	near("container's energy on the time-sliced GPU", energy(container), 0.75*d0)
	near("job's energy on the time-sliced GPU", energy(job), 0.25*d0)
	// GPU 1 (MIG, no per-process utilisation): each instance's share of the GPU's memory.
	total := 40192.0 + 2*19968
	near("MIG job's energy (3g.40gb)", energy(migJob), 40192/total*d1)
	near("MIG pod's energy (2g.20gb)", energy(migPod), 19968/total*d1)
	idle1, _ := bt.Find(metrics.WorkloadGPUIdleEnergy, attribute.String(metrics.AttrHWID, uuid(gpu1)))
	near("GPU 1's idle energy (the unused 2g.20gb)", idle1, 19968/total*d1)

	mem := func(path, device string) float64 {
		t.Helper()
		v, ok := bt.Find(metrics.WorkloadGPUMemory, cg(path), attribute.String(metrics.AttrHWID, device))
		if !ok {
			t.Fatalf("no GPU memory for cgroup %s on %s", path, device)
		}
		return v
	}
	near("container's GPU memory (GiB)", mem(container, uuid(gpu0))/gib, 16)
	near("MIG pod's GPU memory (GiB), on its MIG device", mem(migPod, mig[2])/gib, 12)
	smC, _ := bt.Find(metrics.WorkloadGPUUtilization, cg(container))
	smJ, _ := bt.Find(metrics.WorkloadGPUUtilization, cg(job))
	if !(smC > 0 && smC <= 1 && smJ > 0) || math.Abs(smC/smJ-3) > 0.3 {
		t.Errorf("SM shares: container %v, job %v; want both in (0, 1], the container's 3 times the job's", smC, smJ)
	}
	if _, ok := bt.Find(metrics.WorkloadGPUUtilization, cg(migJob)); ok {
		t.Error("an SM share exported for a MIG process, which NVML cannot give")
	}
	// Pods: the time-sliced GPU is held by one pod, so its processes are named after it; the
	// MIG device's pod names the process in that instance.
	if _, ok := bt.Find(metrics.WorkloadEnergy, cg(container), attribute.String(metrics.AttrPodName, "trainer-0")); !ok {
		t.Error("the container on GPU 0 is not named after the pod holding GPU 0's replicas")
	}
	if _, ok := bt.Find(metrics.WorkloadEnergy, cg(migPod), attribute.String(metrics.AttrPodName, "infer"),
		attribute.String(metrics.AttrPodUID, "99990000-1111-2222-3333-444455556666")); !ok {
		t.Error("the process in MIG instance 2 is not named after the pod holding that MIG device")
	}
	// Per-process series, when selected: one memory series per process.
	if n := bt.Count(metrics.GPUProcessMemory); n != 5 {
		t.Errorf("%d per-process memory series, want 5", n)
	}
	if v, _ := bt.Find(metrics.GPUProcessMemory, attribute.Int64(metrics.AttrProcessPID, int64(b))); v != 20*gib {
		t.Errorf("process %d memory %v, want 20 GiB", b, v)
	}
}

// A GPU process's cgroup is read again every cgroupRecheck collections, so a process moved to
// another cgroup (or a PID reused by another job) is attributed to its new cgroup within that
// many collections, and a PID that left the GPUs is forgotten.
func TestGPUProcessCgroupIsReadAgain(t *testing.T) {
	clk := clock.NewManual(time.Unix(1_700_000_000, 0))
	fleet, err := sim.New(sim.Options{Model: "H100", Count: 1, Trace: "steady", Seed: 5, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	procfs := t.TempDir()
	write := func(cg string) {
		if err := os.MkdirAll(filepath.Join(procfs, "4242"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(procfs, "4242", "cgroup"), []byte("0::"+cg+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("/slurm/job_1")
	if err := fleet.SetProcesses(0, []sim.Process{{PID: 4242, SMShare: 1}}); err != nil {
		t.Fatal(err)
	}
	g := newGPUEnergy(fleet, procfs, nil, clk.Now, 100, nil)
	run := func() *sample.Batch {
		clk.Advance(time.Second)
		b := &sample.Batch{}
		b.Reset(Name, clk.Now())
		g.collect(context.Background(), b, t.Logf)
		return b
	}
	job := func(b *sample.Batch, n string) bool {
		_, ok := b.Find(metrics.WorkloadGPUMemory, attribute.String(metrics.AttrCgroupPath, "/slurm/job_"+n))
		return ok
	}
	run()
	write("/slurm/job_2") // the PID now belongs to job 2
	moved := -1
	for i := range cgroupRecheck + 1 {
		if b := run(); job(b, "2") {
			moved = i
			break
		}
	}
	if moved < 0 {
		t.Fatalf("the process's new cgroup was not read within %d collections", cgroupRecheck+1)
	}
	if err := fleet.SetProcesses(0, nil); err != nil {
		t.Fatal(err)
	}
	run()
	if len(g.cgroupOf) != 0 {
		t.Errorf("%d cached cgroups after every process left, want none", len(g.cgroupOf))
	}
}
