package sim

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Processes: the sim models power, not jobs, so a test (or the agent's user) says which
// processes run on a GPU: real PIDs, so the workload collector maps them to cgroups end to end.
// Several processes on one GPU are time-slicing or MPS; on a GPU in MIG mode each process runs
// in one GPU instance.

// Process is a compute process on a simulated GPU.
type Process struct {
	PID         uint32
	MemoryBytes uint64
	// SMShare is the process's share of the SMs' activity (of its GPU instance under MIG): the
	// GPU's SM utilisation times SMShare is what NVML reports for it. Shares on one GPU (or one
	// instance) should add up to 1 or less.
	SMShare float64
	// GPUInstance is the MIG GPU instance id the process runs in; 0 on a GPU not in MIG mode.
	GPUInstance int
	// MPSClient: the process reaches the GPU through an MPS server; NVML lists it with the MPS
	// compute processes (GetMPSComputeRunningProcesses), not with the others.
	MPSClient bool
}

// noInstance is what NVML reports as the GPU and compute instance of a process on a whole GPU.
const noInstance = 0xFFFFFFFF

// SetProcesses replaces the compute processes of GPU gpu. A process in a GPU instance needs the
// GPU in MIG mode with that instance.
func (f *Fleet) SetProcesses(gpu int, procs []Process) error {
	g := f.GPU(gpu)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range procs {
		if p.SMShare < 0 || p.SMShare > 1 {
			return fmt.Errorf("process %d: SM share %v is out of range: must be 0 to 1", p.PID, p.SMShare)
		}
		if !g.mig.enabled {
			if p.GPUInstance != 0 {
				return fmt.Errorf("process %d: GPU %d is not in MIG mode: GPU instance must be 0", p.PID, gpu)
			}
			continue
		}
		found := false
		for _, d := range g.mig.instances {
			found = found || d.giID == p.GPUInstance
		}
		if !found {
			return fmt.Errorf("process %d: GPU %d has no GPU instance %d", p.PID, gpu, p.GPUInstance)
		}
	}
	g.procs = append(g.procs[:0:0], procs...)
	return nil
}

// processInfos lists the processes (of GPU instance gi, or all with gi < 0) that are MPS
// clients or not, as mps says; the caller holds g.mu.
func (g *GPU) processInfos(gi int, mps bool) []nvml.ProcessInfo {
	out := make([]nvml.ProcessInfo, 0, len(g.procs))
	for _, p := range g.procs {
		if gi >= 0 && p.GPUInstance != gi || p.MPSClient != mps {
			continue
		}
		info := nvml.ProcessInfo{Pid: p.PID, UsedGpuMemory: p.MemoryBytes, GpuInstanceId: noInstance, ComputeInstanceId: noInstance}
		if g.mig.enabled {
			info.GpuInstanceId, info.ComputeInstanceId = uint32(p.GPUInstance), 0
		}
		out = append(out, info)
	}
	return out
}

func (g *GPU) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return nil, ret
	}
	defer g.mu.Unlock()
	return g.processInfos(-1, false), nvml.SUCCESS
}

// GetMPSComputeRunningProcesses lists the processes that reach the GPU through MPS.
func (g *GPU) GetMPSComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return nil, ret
	}
	defer g.mu.Unlock()
	return g.processInfos(-1, true), nvml.SUCCESS
}

// GetProcessUtilization reports each process's share of SM and memory activity, one sample each
// stamped now, when now is after lastSeen. NVML has no per-process utilisation on a GPU in MIG
// mode (ERROR_NOT_SUPPORTED) and answers ERROR_NOT_FOUND when no process ran or no sample is newer.
func (g *GPU) GetProcessUtilization(lastSeen uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return nil, ret
	}
	defer g.mu.Unlock()
	if g.mig.enabled {
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	if len(g.procs) == 0 {
		return nil, nvml.ERROR_NOT_FOUND
	}
	u := g.fleet.model.utilization(g.demandW)
	mem := u * g.workload().memoryActivity
	stamp := uint64(g.fleet.start.Add(g.elapsed()).UnixMicro())
	if stamp <= lastSeen {
		return nil, nvml.ERROR_NOT_FOUND // only samples newer than lastSeen, as NVML
	}
	out := make([]nvml.ProcessUtilizationSample, len(g.procs))
	for i, p := range g.procs {
		out[i] = nvml.ProcessUtilizationSample{Pid: p.PID, TimeStamp: stamp,
			SmUtil: percent(u * p.SMShare), MemUtil: percent(mem * p.SMShare)}
	}
	return out, nvml.SUCCESS
}

// GetComputeRunningProcesses of a MIG device lists the processes of its GPU instance.
func (d *MigDevice) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	if ret := d.ready(); ret != nvml.SUCCESS {
		return nil, ret
	}
	g := d.parent
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return nil, ret
	}
	defer g.mu.Unlock()
	return g.processInfos(d.giID, false), nvml.SUCCESS
}
