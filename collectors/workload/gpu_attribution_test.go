package workload

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// fakeLib is one GPU whose processes, samples and MIG devices a test sets: the attribution's
// edge cases (a process whose cgroup is gone, an instance made since the last listing, two
// compute instances in one GPU instance, NVML's sample buffer) are beyond what the simulator
// models. Unmodelled calls panic (the embedded interfaces are nil).
type fakeLib struct {
	nvml.Interface
	gpu *fakeGPU
}

func (l *fakeLib) DeviceGetCount() (int, nvml.Return) { return 1, nvml.SUCCESS }
func (l *fakeLib) DeviceGetHandleByIndex(int) (nvml.Device, nvml.Return) {
	return l.gpu, nvml.SUCCESS
}

type fakeGPU struct {
	nvml.Device
	procs   []nvml.ProcessInfo
	samples []nvml.ProcessUtilizationSample
	// lastSeen records each GetProcessUtilization argument.
	lastSeen []uint64
	mig      []*fakeMIG
	migMode  bool
	energyMJ uint64
}

func (d *fakeGPU) GetUUID() (string, nvml.Return) { return "GPU-0", nvml.SUCCESS }
func (d *fakeGPU) GetTotalEnergyConsumption() (uint64, nvml.Return) {
	return d.energyMJ, nvml.SUCCESS
}
func (d *fakeGPU) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return d.procs, nvml.SUCCESS
}
func (d *fakeGPU) GetMPSComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return nil, nvml.ERROR_NOT_SUPPORTED
}

// GetProcessUtilization answers as NVML does: the buffered samples newer than lastSeen.
func (d *fakeGPU) GetProcessUtilization(lastSeen uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	d.lastSeen = append(d.lastSeen, lastSeen)
	if d.migMode {
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	var out []nvml.ProcessUtilizationSample
	for _, s := range d.samples {
		if s.TimeStamp > lastSeen {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, nvml.ERROR_NOT_FOUND
	}
	return out, nvml.SUCCESS
}
func (d *fakeGPU) GetMigMode() (int, int, nvml.Return) {
	if d.migMode {
		return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS
	}
	return nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_DISABLE, nvml.SUCCESS
}
func (d *fakeGPU) GetMaxMigDeviceCount() (int, nvml.Return) { return 7, nvml.SUCCESS }
func (d *fakeGPU) GetMigDeviceHandleByIndex(i int) (nvml.Device, nvml.Return) {
	if i >= len(d.mig) {
		return nil, nvml.ERROR_NOT_FOUND
	}
	return d.mig[i], nvml.SUCCESS
}

type fakeMIG struct {
	nvml.Device
	gi, ci int
	memB   uint64
}

func (m *fakeMIG) GetGpuInstanceId() (int, nvml.Return)     { return m.gi, nvml.SUCCESS }
func (m *fakeMIG) GetComputeInstanceId() (int, nvml.Return) { return m.ci, nvml.SUCCESS }
func (m *fakeMIG) GetUUID() (string, nvml.Return) {
	return fmt.Sprintf("MIG-%d-%d", m.gi, m.ci), nvml.SUCCESS
}
func (m *fakeMIG) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	return nvml.Memory{Total: m.memB}, nvml.SUCCESS
}

// attributionRig runs the GPU energy attribution on a fakeGPU, with /proc/PID/cgroup files for
// the PIDs given.
type attributionRig struct {
	t   *testing.T
	gpu *fakeGPU
	g   *gpuEnergy
	now time.Time
}

func newAttributionRig(t *testing.T, gpu *fakeGPU, cgroups map[uint32]string) *attributionRig {
	t.Helper()
	procfs := t.TempDir()
	for pid, cg := range cgroups {
		dir := filepath.Join(procfs, strconv.FormatUint(uint64(pid), 10))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::"+cg+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := &attributionRig{t: t, gpu: gpu, now: time.Unix(1_700_000_000, 0)}
	r.g = newGPUEnergy(&fakeLib{gpu: gpu}, procfs, nil, func() time.Time { return r.now }, 5, nil)
	return r
}

// shares runs one attribution and returns each cgroup's share and the share attributed.
func (r *attributionRig) shares() (map[string]float64, float64) {
	r.g.round++
	if r.g.round == 1 {
		r.g.devs[0].refreshMIG(r.g.round)
	}
	attributed := r.g.processShares(r.g.devs[0])
	out := map[string]float64{}
	sum := 0.0
	for k, w := range r.g.weights {
		out[k.cgroup] += w
		sum += w
	}
	if sum > attributed+1e-9 || attributed > 1+1e-9 {
		r.t.Fatalf("weights sum to %v with %v attributed: more energy given out than the GPU's", sum, attributed)
	}
	return out, attributed
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// A process whose cgroup cannot be read (it ended between NVML's list and the read, or its PID
// is not in this procfs) keeps its share unattributed: it goes to idle energy, not to the others.
func TestGPUShareOfAnUnknownProcessStaysUnattributed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sampled bool
	}{{"by SM time", true}, {"equal parts without samples", false}} {
		t.Run(tc.name, func(t *testing.T) {
			gpu := &fakeGPU{procs: []nvml.ProcessInfo{
				{Pid: 100, GpuInstanceId: noInstance, ComputeInstanceId: noInstance},
				{Pid: 200, GpuInstanceId: noInstance, ComputeInstanceId: noInstance},
			}}
			r := newAttributionRig(t, gpu, map[uint32]string{100: "/slurm/job_1/step_0"}) // 200 has no cgroup file
			if tc.sampled {
				gpu.samples = []nvml.ProcessUtilizationSample{{Pid: 100, SmUtil: 10, TimeStamp: 1}}
				r.shares() // the first call finds where the samples end
				gpu.samples = append(gpu.samples,
					nvml.ProcessUtilizationSample{Pid: 100, SmUtil: 10, TimeStamp: 2},
					nvml.ProcessUtilizationSample{Pid: 200, SmUtil: 90, TimeStamp: 2})
			}
			got, attributed := r.shares()
			want := 0.5
			if tc.sampled {
				want = 0.1
			}
			if !near(got["/slurm/job_1/step_0"], want) || !near(attributed, want) {
				t.Errorf("job 1's share %v, attributed %v; want %v for both (the rest is idle)", got["/slurm/job_1/step_0"], attributed, want)
			}
		})
	}
}

// Under MIG each process gets its GPU instance's share by memory, split between the processes of
// the instance; the compute instances of one GPU instance are separate MIG devices (separate
// UUIDs for the kubelet); an instance made since the last listing is found by listing again, and
// one that still is not listed keeps its share unattributed. The shares never add up past 1.
func TestGPUSharesUnderMIG(t *testing.T) {
	const gib = 1 << 30
	gpu := &fakeGPU{migMode: true, mig: []*fakeMIG{
		{gi: 1, ci: 0, memB: 40 * gib}, {gi: 1, ci: 1, memB: 40 * gib}, // 3g.40gb split in two compute instances
		{gi: 2, ci: 0, memB: 20 * gib},
	}}
	proc := func(pid uint32, gi, ci uint32) nvml.ProcessInfo {
		return nvml.ProcessInfo{Pid: pid, GpuInstanceId: gi, ComputeInstanceId: ci, UsedGpuMemory: gib}
	}
	gpu.procs = []nvml.ProcessInfo{proc(1, 1, 0), proc(2, 1, 1), proc(3, 2, 0)}
	r := newAttributionRig(t, gpu, map[uint32]string{1: "/a", 2: "/b", 3: "/c", 4: "/d", 5: "/e"})
	got, attributed := r.shares()
	for cg, want := range map[string]float64{"/a": 1.0 / 3, "/b": 1.0 / 3, "/c": 1.0 / 3} {
		if !near(got[cg], want) {
			t.Errorf("%s: share %v, want %v (all %v)", cg, got[cg], want, got)
		}
	}
	if !near(attributed, 1) {
		t.Errorf("attributed %v, want 1", attributed)
	}
	devices := map[string]string{}
	for k := range r.g.use {
		devices[k.cgroup] = k.device
	}
	if devices["/a"] != "MIG-1-0" || devices["/b"] != "MIG-1-1" {
		t.Errorf("processes in compute instances 0 and 1 of GPU instance 1 on devices %q and %q, want MIG-1-0 and MIG-1-1", devices["/a"], devices["/b"])
	}

	// A new 1g.10gb instance, and a process in it, before the next periodic listing.
	gpu.mig = append(gpu.mig, &fakeMIG{gi: 3, ci: 0, memB: 10 * gib})
	gpu.procs = append(gpu.procs, proc(4, 3, 0))
	got, attributed = r.shares()
	if want := 10.0 / 70; !near(got["/d"], want) || !near(attributed, 1) {
		t.Errorf("process in the new instance: share %v, attributed %v; want %v and 1 (all %v)", got["/d"], attributed, want, got)
	}

	// A process in an instance the GPU does not list (gone, or not yet visible).
	gpu.procs = append(gpu.procs, proc(5, 9, 0))
	got, attributed = r.shares()
	if got["/e"] != 0 || !near(attributed, 1) {
		t.Errorf("process in an unlisted instance: share %v, attributed %v; want 0 and 1 (all %v)", got["/e"], attributed, got)
	}
}

// Each call asks NVML for the samples after the newest one already read, so a sample is counted
// in one interval only; the first call only finds where the buffer ends, since the buffer goes
// back further than an interval.
func TestGPUUtilizationSamplesCountedOnce(t *testing.T) {
	gpu := &fakeGPU{procs: []nvml.ProcessInfo{
		{Pid: 100, GpuInstanceId: noInstance, ComputeInstanceId: noInstance, UsedGpuMemory: 1 << 30},
		{Pid: 200, GpuInstanceId: noInstance, ComputeInstanceId: noInstance, UsedGpuMemory: 1 << 30},
	}, samples: []nvml.ProcessUtilizationSample{
		{Pid: 100, SmUtil: 90, TimeStamp: 1_000}, // from long before the agent started
		{Pid: 200, SmUtil: 10, TimeStamp: 2_000},
	}}
	r := newAttributionRig(t, gpu, map[uint32]string{100: "/a", 200: "/b"})
	if _, attributed := r.shares(); !near(attributed, 1) {
		t.Fatalf("first call: attributed %v, want 1 (equal parts)", attributed)
	}
	gpu.samples = append(gpu.samples,
		nvml.ProcessUtilizationSample{Pid: 100, SmUtil: 25, TimeStamp: 3_000},
		nvml.ProcessUtilizationSample{Pid: 200, SmUtil: 75, TimeStamp: 3_500})
	got, _ := r.shares()
	if !near(got["/a"], 0.25) || !near(got["/b"], 0.75) {
		t.Errorf("second interval: shares %v, want /a 0.25 and /b 0.75 (its own samples only)", got)
	}
	// No new sample: the interval has no utilisation, and the last one is not counted again.
	got, _ = r.shares()
	if !near(got["/a"], 0.5) || !near(got["/b"], 0.5) {
		t.Errorf("interval without samples: shares %v, want equal parts", got)
	}
	if want := []uint64{0, 2_000, 3_500}; fmt.Sprint(gpu.lastSeen) != fmt.Sprint(want) {
		t.Errorf("lastSeen asked %v, want %v", gpu.lastSeen, want)
	}
}

// NVML reports VALUE_NOT_AVAILABLE as a process's memory when it may not show it: the workload
// then has no memory series (rather than 18 EB), and its SM share is still exported.
func TestGPUMemoryNotAvailableIsNotExported(t *testing.T) {
	gpu := &fakeGPU{procs: []nvml.ProcessInfo{
		{Pid: 100, GpuInstanceId: noInstance, ComputeInstanceId: noInstance, UsedGpuMemory: math.MaxUint64},
	}}
	r := newAttributionRig(t, gpu, map[uint32]string{100: "/a"})
	r.shares()
	for k, u := range r.g.use {
		if u.haveMem {
			t.Errorf("%s: memory %v exported from VALUE_NOT_AVAILABLE", k.cgroup, u.memB)
		}
	}
	if len(r.g.use) != 1 {
		t.Errorf("%d workload use entries, want 1", len(r.g.use))
	}
}

// In a container with its own cgroup namespace the kernel shows other containers' cgroups
// relative to the agent's namespace root ("/../../…"): the process's cgroup is the host path
// the walk found that ends with the part below the climb, at the depth the climb implies. A
// tail two cgroups end with, or one the walk has not found, is no answer: the share stays idle.
func TestGPUProcessCgroupFromAPrivateCgroupNamespace(t *testing.T) {
	const (
		agent = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podaaa.slice/cri-containerd-a1.scope"
		job   = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podbbb.slice/cri-containerd-b2.scope"
		slurm = "/system.slice/slurmstepd.scope/job_7/step_0"
	)
	walk := &Collector{cgroups: map[uint64]*cgroup{}}
	for i, p := range []string{"/", "/kubepods.slice", agent, job, slurm,
		"/other.slice/kubepods-besteffort-podbbb.slice/cri-containerd-b2.scope"} { // same tail, another depth
		walk.cgroups[uint64(i+1)] = &cgroup{path: p}
	}
	gpu := &fakeGPU{procs: []nvml.ProcessInfo{
		{Pid: 100, GpuInstanceId: noInstance, ComputeInstanceId: noInstance},
		{Pid: 200, GpuInstanceId: noInstance, ComputeInstanceId: noInstance},
		{Pid: 300, GpuInstanceId: noInstance, ComputeInstanceId: noInstance},
	}}
	r := newAttributionRig(t, gpu, map[uint32]string{
		1:   "/../../../..", // the host's init, in the root cgroup: the namespace root is 4 deep
		100: "/../../../kubepods-besteffort.slice/kubepods-besteffort-podbbb.slice/cri-containerd-b2.scope",
		200: "/../../../../system.slice/slurmstepd.scope/job_7/step_0",
		300: "/../../../kubepods-besteffort.slice/kubepods-besteffort-podccc.slice/cri-containerd-c3.scope", // not walked
	})
	r.g.findCgroup = walk.cgroupByTail
	got, attributed := r.shares()
	if !near(got[job], 1.0/3) || !near(got[slurm], 1.0/3) || !near(attributed, 2.0/3) {
		t.Errorf("shares %v, attributed %v; want %s and %s a third each, the unwalked process's third idle", got, attributed, job, slurm)
	}

	// Two cgroups at the implied depth with the same tail: no answer.
	walk.cgroups[99] = &cgroup{path: "/kubepods2.slice/kubepods-besteffort.slice/kubepods-besteffort-podbbb.slice/cri-containerd-b2.scope"}
	if p, ok := r.g.hostPath("/../../../kubepods-besteffort.slice/kubepods-besteffort-podbbb.slice/cri-containerd-b2.scope"); ok {
		t.Errorf("an ambiguous tail resolved to %s", p)
	}
	if p, ok := r.g.hostPath(slurm); !ok || p != slurm {
		t.Errorf("a path read in the host's namespace became %q (%v)", p, ok)
	}
}
