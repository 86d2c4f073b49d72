package metrics

// Attribute keys of MIG (multi-instance GPU) devices.
const (
	AttrMIGGPUInstance     = "capstan.mig.gpu_instance.id"
	AttrMIGComputeInstance = "capstan.mig.compute_instance.id"
	AttrMIGProfile         = "capstan.mig.profile"
	AttrMIGUUID            = "capstan.mig.uuid"
)

// migAttrs identify one MIG device: its GPU (the parent's identity, so it joins the GPU's
// metrics), its GPU and compute instance, profile and MIG UUID.
var migAttrs = with(gpuAttrs, AttrMIGGPUInstance, AttrMIGComputeInstance, AttrMIGProfile, AttrMIGUUID)

// MIG metrics, shown with the other GPU metrics in docs/metrics.md.
var (
	GPUMIGMode = def("capstan.gpu.mig.mode", "{enabled}", Gauge, "gpu",
		"1 while the GPU is in MIG mode (split into GPU instances), 0 when it is not; only MIG-capable GPUs (A100 and later) report it.",
		gpuAttrs...)
	GPUMIGModePending = def("capstan.gpu.mig.mode.pending", "{change}", Gauge, "gpu",
		"1 while the GPU has been set to change its MIG mode at its next reset (nvidia-smi -mig, not yet applied: capstan.gpu.mig.mode is still the old mode), else 0; only MIG-capable GPUs report it.",
		gpuAttrs...)
	GPUMIGInfo = def("capstan.gpu.mig.info", "{instance}", Gauge, "gpu",
		"1 for each MIG device (a compute instance in its GPU instance) of the GPU, with its profile (1g.10gb …) and MIG UUID; instances appear and disappear with the GPU's MIG layout, without an agent restart.",
		migAttrs...)
	GPUMIGMemoryUsage = def("capstan.gpu.mig.memory.usage", "By", UpDownCounter, "gpu",
		"Memory used in the MIG device's GPU instance (NVML memory info of the MIG device handle).",
		migAttrs...)
	GPUMIGMemoryLimit = def("capstan.gpu.mig.memory.limit", "By", UpDownCounter, "gpu",
		"Memory of the MIG device's GPU instance.",
		migAttrs...)
	GPUMIGProcesses = def("capstan.gpu.mig.processes", "{process}", Gauge, "gpu",
		"Compute processes running in the MIG device (NVML compute processes of the MIG device handle); the workload collector maps them to workloads.",
		migAttrs...)
	GPUMIGActivity = def("capstan.gpu.mig.activity", "1", Gauge, "gpu",
		"GPM profiling per GPU instance (Hopper and later): fraction of the time between the last two collections, by capstan.gpu.engine, as capstan.gpu.activity but over the instance's own slices.",
		with(gpuAttrs, AttrMIGGPUInstance, AttrMIGProfile, AttrGPUEngine)...)
)
