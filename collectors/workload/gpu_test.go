package workload

import (
	"context"
	"math"
	"os"
	"path/filepath"
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

// withProcesses is a simulated fleet whose GPU 1 runs two compute processes. The simulator models
// power, not jobs, so the processes (with fixture /proc/<pid>/cgroup files) are added here;
// everything else is the simulator.
type withProcesses struct {
	*sim.Fleet
	pids []uint32
	util []uint32
}

type busyGPU struct {
	nvml.Device
	w *withProcesses
}

func (w *withProcesses) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	d, ret := w.Fleet.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS || i != 1 {
		return d, ret
	}
	return busyGPU{Device: d, w: w}, ret
}

func (d busyGPU) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	out := make([]nvml.ProcessInfo, len(d.w.pids))
	for i, p := range d.w.pids {
		out[i] = nvml.ProcessInfo{Pid: p}
	}
	return out, nvml.SUCCESS
}

func (d busyGPU) GetProcessUtilization(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	out := make([]nvml.ProcessUtilizationSample, len(d.w.pids))
	for i, p := range d.w.pids {
		out[i] = nvml.ProcessUtilizationSample{Pid: p, SmUtil: d.w.util[i]}
	}
	return out, nvml.SUCCESS
}

func energyMJ(t *testing.T, lib nvml.Interface, i int) uint64 {
	t.Helper()
	d, _ := lib.DeviceGetHandleByIndex(i)
	mj, ret := d.GetTotalEnergyConsumption()
	if ret != nvml.SUCCESS {
		t.Fatalf("energy of GPU %d: %v", i, ret)
	}
	return mj
}

func TestGPUEnergySplitByProcessAndPod(t *testing.T) {
	clock := clock.NewManual(time.Unix(1_700_000_000, 0))
	fleet, err := sim.New(sim.Options{Model: "H100", Count: 3, Trace: "steady", Seed: 7, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	// A procfs tree with two GPU processes: one in a Kubernetes container, one in a Slurm job.
	const cid = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"
	procfs := t.TempDir()
	myCgroup := "/kubepods.slice/kubepods-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-" + cid + ".scope"
	initCgroup := "/system.slice/slurmstepd.scope/job_17/step_0"
	for pid, cg := range map[string]string{"4242": myCgroup, "4343": initCgroup} {
		if err := os.MkdirAll(filepath.Join(procfs, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		body := "12:memory:/legacy\n0::" + cg + "\n"
		if err := os.WriteFile(filepath.Join(procfs, pid, "cgroup"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// 60 % and 20 % SM utilization: the container gets 3/4 of GPU 1's energy, the Slurm job 1/4.
	lib := &withProcesses{Fleet: fleet, pids: []uint32{4242, 4343}, util: []uint32{60, 20}}
	uuid := func(i int) string {
		d, _ := fleet.DeviceGetHandleByIndex(i)
		u, _ := d.GetUUID()
		return u
	}
	sock := serveKubelet(t, []*podresourcesv1.PodResources{{Name: "trainer-0", Namespace: "ml",
		Containers: []*podresourcesv1.ContainerResources{{Name: "main",
			Devices: []*podresourcesv1.ContainerDevices{{ResourceName: "nvidia.com/gpu", DeviceIds: []string{uuid(0)}}}}}}})
	pods, err := NewPodResources(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pods.Close() }()
	g := newGPUEnergy(lib, procfs, pods, clock.Now, 5, nil)

	run := func() *sample.Batch {
		b := &sample.Batch{}
		b.Reset(Name, clock.Now())
		g.collect(context.Background(), b, t.Logf)
		return b
	}
	start := []uint64{energyMJ(t, lib, 0), energyMJ(t, lib, 1), energyMJ(t, lib, 2)}
	run()
	clock.Advance(10 * time.Second)
	b := run()
	delta := func(i int) float64 { return float64(energyMJ(t, lib, i)-start[i]) / 1e3 }
	if delta(0) <= 0 {
		t.Fatalf("simulated GPU drew no energy in 10 s")
	}
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-6*math.Max(1, want) {
			t.Errorf("%s = %.3f J, want %.3f J", name, got, want)
		}
	}
	podJ, ok := b.Find(metrics.WorkloadEnergy, attribute.String(metrics.AttrHWType, "gpu"),
		attribute.String(metrics.AttrPodName, "trainer-0"), attribute.String(metrics.AttrNamespaceName, "ml"))
	if !ok {
		t.Fatal("no GPU energy for the pod the kubelet assigned GPU 0 to")
	}
	near("pod trainer-0 (GPU 0, no process)", podJ, delta(0))
	procJ, ok := b.Find(metrics.WorkloadEnergy, attribute.String(metrics.AttrHWType, "gpu"), attribute.String(metrics.AttrCgroupPath, myCgroup),
		attribute.String(metrics.AttrContainerID, cid), attribute.String(metrics.AttrPodUID, "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"))
	if !ok {
		t.Fatalf("no GPU energy for cgroup %s of the process on GPU 1", myCgroup)
	}
	near("container (GPU 1, 60 of 80 % SM)", procJ, 0.75*delta(1))
	initJ, ok := b.Find(metrics.WorkloadEnergy, attribute.String(metrics.AttrHWType, "gpu"), attribute.String(metrics.AttrCgroupPath, initCgroup),
		attribute.String(metrics.AttrSlurmJobID, "17"))
	if !ok {
		t.Fatalf("no GPU energy for init's cgroup %s", initCgroup)
	}
	near("Slurm job (GPU 1, 20 of 80 % SM)", initJ, 0.25*delta(1))
	idleJ, ok := b.Find(metrics.WorkloadGPUIdleEnergy, attribute.String(metrics.AttrHWID, uuid(2)))
	if !ok {
		t.Fatal("no idle energy for GPU 2")
	}
	near("idle GPU 2", idleJ, delta(2))
}

// A GPU energy series leaves the export, and the collector's memory, once its cgroup had no
// process on a GPU for the active-intervals window, like a cgroup's CPU series: every job a node
// ever ran would otherwise keep one.
func TestGPUSeriesLeaveAfterWindow(t *testing.T) {
	if _, err := V2Mount("/proc", "/sys"); err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	clock := clock.NewManual(time.Unix(1_700_000_000, 0))
	fleet, err := sim.New(sim.Options{Model: "H100", Count: 2, Trace: "steady", Seed: 7, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	procfs := t.TempDir()
	for pid, cg := range map[string]string{"4242": "/slurm/job_1", "4343": "/slurm/job_2"} {
		if err := os.MkdirAll(filepath.Join(procfs, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(procfs, pid, "cgroup"), []byte("0::"+cg+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	lib := &withProcesses{Fleet: fleet, pids: []uint32{4242, 4343}, util: []uint32{50, 50}}
	c, err := New(Options{Procfs: procfs, Sysfs: "/sys", Logger: quietLog(), NoBPF: true, NVML: lib,
		ActiveIntervals: 2, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	job1 := []attribute.KeyValue{attribute.String(metrics.AttrHWType, "gpu"), attribute.String(metrics.AttrCgroupPath, "/slurm/job_1")}
	job2 := []attribute.KeyValue{attribute.String(metrics.AttrHWType, "gpu"), attribute.String(metrics.AttrCgroupPath, "/slurm/job_2")}
	collect(t, c)
	lib.pids, lib.util = []uint32{4343}, []uint32{50} // job 1 ends
	for round, want := range []bool{true, false, false} {
		clock.Advance(10 * time.Second)
		b := collect(t, c)
		if _, got := b.Find(metrics.WorkloadEnergy, job1...); got != want {
			t.Errorf("collection %d after job 1 left the GPU: its series exported = %v, want %v (active-intervals 2)", round+1, got, want)
		}
		if _, ok := b.Find(metrics.WorkloadEnergy, job2...); !ok {
			t.Errorf("collection %d: job 2, still on the GPU, not exported", round+1)
		}
	}
	if n := len(c.gpu.series); n != 1 {
		t.Errorf("%d GPU series kept, want 1 (job 2)", n)
	}
}
