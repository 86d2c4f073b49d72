package metrics

// Attribute keys of the workload collector.
const (
	AttrCgroupPath     = "cgroup.path"
	AttrContainerID    = "container.id"
	AttrPodUID         = "k8s.pod.uid"
	AttrPodName        = "k8s.pod.name"
	AttrNamespaceName  = "k8s.namespace.name"
	AttrSlurmJobID     = "slurm.job.id"
	AttrWorkloadSource = "capstan.workload.source"
	// AttrBPFProgram names one of the workload collector's eBPF programs: sched_switch,
	// cpu_frequency, cgroup_skb_ingress, cgroup_skb_egress.
	AttrBPFProgram = "capstan.bpf.program"
)

// workloadAttrs identify a workload on every workload data point.
var workloadAttrs = []string{AttrCgroupPath, AttrContainerID, AttrPodUID, AttrPodName, AttrNamespaceName, AttrSlurmJobID, AttrWorkloadSource}

// Workload metrics, appended to Table after the other tables.
var (
	WorkloadCPUTime = def("capstan.workload.cpu.time", "s", Counter, "workload",
		"CPU time a cgroup's tasks ran since the agent started; capstan.workload.source says whether it was measured by the sched_switch eBPF program (ebpf) or read from the cgroup's cpu.stat (cpu.stat).",
		workloadAttrs...)
	WorkloadEnergy = def("capstan.workload.energy", "J", Counter, "workload",
		"Energy attributed to a cgroup since the agent started: hw.type=cpu is the cgroup's share of estimated CPU cycles (or CPU time) in each interval times the RAPL package energy of that interval; hw.type=gpu splits each GPU's energy by NVML per-process SM utilization (process → cgroup), or gives it whole to the pod the kubelet assigned the GPU to (k8s.pod.name, k8s.namespace.name; empty cgroup.path when no process is seen).",
		with(workloadAttrs, AttrHWType)...)
	WorkloadNetworkIO = def("capstan.workload.network.io", "By", Counter, "workload",
		"Bytes a cgroup's sockets received and sent (cgroup_skb ingress and egress on the cgroup v2 root, IP headers included).",
		with(workloadAttrs, AttrIODirection)...)
	WorkloadNetworkPackets = def("capstan.workload.network.packet.count", "{packet}", Counter, "workload",
		"Packets a cgroup's sockets received and sent.",
		with(workloadAttrs, AttrIODirection)...)
	WorkloadGPUIdleEnergy = def("capstan.workload.gpu.idle.energy", "J", Counter, "workload",
		"GPU energy since the agent started that no workload was charged with: intervals with no compute process on the GPU and no pod assigned to it by the kubelet, and the share of a process whose cgroup (or MIG instance) could not be found.",
		AttrHWID)
	WorkloadCgroups = def("capstan.workload.cgroups", "{cgroup}", Gauge, "workload",
		"Cgroups with activity in the recent intervals that the workload collector exports, by the source of their CPU time.",
		AttrWorkloadSource)
	WorkloadSeriesDropped = def("capstan.workload.series.dropped", "{series}", Counter, "workload",
		"Workload cgroups not exported because the active cgroups exceeded the series limit, counted per collection.",
		AttrWorkloadSource)
	WorkloadBPFMissed = def("capstan.workload.bpf.missed", "{run}", Counter, "workload",
		"Runs of the workload collector's eBPF programs the kernel skipped since they were loaded, because a BPF program was already running on that CPU (recursion misses, Linux 5.12 and later); while it rises, what that program counts (sched_switch: CPU time and cycles; cpu_frequency: the frequency cycles are estimated at; cgroup_skb: network bytes and packets) undercounts. Exported only with capstan.workload.source ebpf.",
		AttrBPFProgram)
)
