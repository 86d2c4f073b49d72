package workload

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// zeroGPU is a zero-cost GPU with eight compute processes, half of them time-slicing and half MPS
// clients (which NVML lists apart): a benchmark over it measures the attribution alone.
type zeroGPU struct {
	nvml.Device
	uuid    string
	procs   []nvml.ProcessInfo
	mps     []nvml.ProcessInfo
	samples []nvml.ProcessUtilizationSample
	mj      uint64
}

func (g *zeroGPU) GetUUID() (string, nvml.Return) { return g.uuid, nvml.SUCCESS }
func (g *zeroGPU) GetTotalEnergyConsumption() (uint64, nvml.Return) {
	g.mj += 700_000
	return g.mj, nvml.SUCCESS
}
func (g *zeroGPU) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return g.procs, nvml.SUCCESS
}
func (g *zeroGPU) GetMPSComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return g.mps, nvml.SUCCESS
}
func (g *zeroGPU) GetProcessUtilization(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	return g.samples, nvml.SUCCESS
}
func (*zeroGPU) GetMigMode() (int, int, nvml.Return) {
	return nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_DISABLE, nvml.SUCCESS
}

type zeroGPULib struct {
	nvml.Interface
	gpus []*zeroGPU
}

func (l *zeroGPULib) DeviceGetCount() (int, nvml.Return) { return len(l.gpus), nvml.SUCCESS }
func (l *zeroGPULib) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	return l.gpus[i], nvml.SUCCESS
}

// BenchmarkGPUAttribution64Processes is the per-workload GPU attribution's own cost: eight
// zero-cost GPUs with eight processes each, in 32 cgroups (two processes per container), every
// per-process series on.
func BenchmarkGPUAttribution64Processes(b *testing.B) {
	procfs := b.TempDir()
	lib := &zeroGPULib{}
	pid := uint32(1000)
	for i := range 8 {
		g := &zeroGPU{uuid: fmt.Sprintf("GPU-%08d", i)}
		for k := range 8 {
			pid++
			cg := fmt.Sprintf("/kubepods.slice/kubepods-pod%08d_0000_0000_0000_000000000000.slice/cri-containerd-%064d.scope", (i*8+k)/2, (i*8+k)/2)
			dir := filepath.Join(procfs, fmt.Sprint(pid))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::"+cg+"\n"), 0o644); err != nil {
				b.Fatal(err)
			}
			p := nvml.ProcessInfo{Pid: pid, UsedGpuMemory: 8 << 30, GpuInstanceId: noInstance}
			if k%2 == 0 {
				g.procs = append(g.procs, p)
			} else {
				g.mps = append(g.mps, p)
			}
			g.samples = append(g.samples, nvml.ProcessUtilizationSample{Pid: pid, SmUtil: uint32(5 + k), MemUtil: 3})
		}
		lib.gpus = append(lib.gpus, g)
	}
	all := func(*metrics.Def) bool { return true }
	now := time.Unix(1_700_000_000, 0)
	g := newGPUEnergy(lib, procfs, nil, func() time.Time { return now }, 5, all)
	ctx := context.Background()
	batches := [2]*sample.Batch{{}, {}}
	cur := 0
	iteration := func() {
		now = now.Add(time.Second)
		bt := batches[cur]
		bt.Reset(Name, now)
		g.collect(ctx, bt, func(string, ...any) {})
		cur ^= 1
	}
	for range 2 {
		iteration()
	}
	points := len(batches[cur^1].Points)
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for b.Loop() {
		iteration()
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N)/float64(points), "allocs/point")
	b.ReportMetric(float64(points), "points")
}
