package metrics

// Attribute keys of per-process GPU use.
const AttrProcessPID = "process.pid"

// Per-workload and per-process GPU use, shown with the workload metrics in docs/metrics.md.
var (
	WorkloadGPUMemory = def("capstan.workload.gpu.memory.usage", "By", UpDownCounter, "workload",
		"GPU memory the workload's processes hold on a device (NVML compute processes), by hw.id: the GPU's UUID, or the MIG device's (MIG-…) for a process in a MIG instance.",
		with(workloadAttrs, AttrHWID)...)
	WorkloadGPUUtilization = def("capstan.workload.gpu.utilization", "1", Gauge, "workload",
		"Share of the GPU's SM time the workload's processes used over the last interval (NVML per-process utilisation, summed over its processes), by hw.id; several workloads time-slicing or sharing a GPU through MPS each get their own. NVML has none on a GPU in MIG mode.",
		with(workloadAttrs, AttrHWID)...)
	GPUProcessMemory = def("capstan.gpu.process.memory.usage", "By", UpDownCounter, "workload",
		"GPU memory one process holds, by process.pid and hw.id (the GPU's or MIG device's UUID). One series per process.",
		AttrHWID, AttrProcessPID, AttrCgroupPath)
	GPUProcessUtilization = def("capstan.gpu.process.utilization", "1", Gauge, "workload",
		"One process's share of the GPU over the last interval, by hw.gpu.task: sm, memory, encoder, decoder (NVML per-process utilisation). One series per process and task.",
		AttrHWID, AttrProcessPID, AttrCgroupPath, AttrGPUTask)
)

func init() {
	offByDefault[GPUProcessMemory] = true
	offByDefault[GPUProcessUtilization] = true
}
