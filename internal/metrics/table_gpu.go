package metrics

// Attribute keys of the GPU health and profiling metrics.
const (
	AttrViolationPolicy = "capstan.violation.policy"
	AttrHealthCondition = "capstan.health.condition"
	AttrGPUEngine       = "capstan.gpu.engine"
	AttrGPULink         = "capstan.gpu.link"
)

// GPU health and profiling metrics, shown with the other GPU metrics in docs/metrics.md.
var (
	GPUViolationTime = def("capstan.gpu.violation.time", "s", Counter, "gpu",
		"Time the GPU's clocks were held down, by performance policy (NVML GetViolationStatus): power, thermal, sync_boost, board_limit, low_utilization, reliability. A counter, so a slowdown shorter than the collection interval is never missed: rate() is the share of time throttled.",
		with(gpuAttrs, AttrViolationPolicy)...)
	GPUHealth = def("capstan.gpu.health", "{active}", Gauge, "gpu",
		"1 while a hardware condition is active or was seen within the last 30 s (debounced, so it does not flap), else 0: hw_slowdown (any hardware slowdown: thermal, power brake, other), power_brake (the external power-brake signal). Seen in the clock-event reasons of a collection, or, on drivers that count the time of the hardware thermal and power-brake reasons (NVML fields 270 and 271), in that time growing since the last collection: a brake shorter than the interval is not missed. While the reasons cannot be read, a condition still held stays 1 and the others are absent.",
		with(gpuAttrs, AttrHealthCondition)...)
	GPUOutOfBandLimit = def("capstan.gpu.power.limit.out_of_band", "{active}", Gauge, "gpu",
		"1 while the enforced power limit sits below the requested (power-management) one: something outside the driver's power management (a BMC, a datacenter controller) caps the GPU, and the capping loop takes the enforced limit as the GPU's ceiling; 0 otherwise.",
		gpuAttrs...)
	GPUMemoryFree = def("capstan.gpu.memory.free", "By", UpDownCounter, "gpu",
		"Frame-buffer memory free for allocations (NVML memory info v2: total less reserved and used).",
		gpuAttrs...)
	GPUECCAggregate = def("capstan.gpu.ecc.errors.aggregate", "{error}", Counter, "gpu",
		"ECC errors over the board's lifetime (they survive driver reloads and reboots), by error.type: corrected, uncorrected.",
		with(gpuAttrs, AttrErrorType)...)
	GPURemappedRows = def("capstan.gpu.memory.remapped_rows", "{row}", Counter, "gpu",
		"HBM rows remapped to spare rows (NVML GetRemappedRows), by the error that caused it (error.type: corrected, uncorrected).",
		with(gpuAttrs, AttrErrorType)...)
	GPURemapPending = def("capstan.gpu.memory.remap.pending", "{pending}", Gauge, "gpu",
		"1 while a row remap waits for the next GPU reset to take effect, else 0.",
		gpuAttrs...)
	GPURemapFailed = def("capstan.gpu.memory.remap.failed", "{failed}", Gauge, "gpu",
		"1 once a row remap has failed (no spare row left: the board should be replaced), else 0.",
		gpuAttrs...)
	GPURetiredPages = def("capstan.gpu.memory.retired_pages", "{page}", Counter, "gpu",
		"Memory pages retired (boards before Ampere; later boards remap rows instead), by error.type: single_bit, double_bit.",
		with(gpuAttrs, AttrErrorType)...)
	GPURetirementPending = def("capstan.gpu.memory.retirement.pending", "{pending}", Gauge, "gpu",
		"1 while a page retirement waits for the next driver reload, else 0 (boards before Ampere).",
		gpuAttrs...)
	GPUPCIeReplays = def("capstan.gpu.pcie.replays", "{replay}", Counter, "gpu",
		"PCIe replays: packets the link had to resend. A rising rate points at a bad riser, slot or cable.",
		gpuAttrs...)

	GPUGPMSupported = def("capstan.gpu.gpm.supported", "{supported}", Gauge, "gpu",
		"1 when the GPU supports GPM profiling metrics (Hopper and later), so capstan.gpu.activity and capstan.gpu.io.throughput come from it; 0 when it does not (the collector says so once and exports NVML's utilisation).",
		gpuAttrs...)
	GPUActivity = def("capstan.gpu.activity", "1", Gauge, "gpu",
		"GPM profiling: fraction of the time between the last two collections, by capstan.gpu.engine: graphics (graphics engine busy), sm (SMs busy), sm_occupancy (warps resident over the SMs' maximum), tensor (any tensor pipe), tensor_hmma, tensor_imma, tensor_dfma, fp64, fp32, fp16, integer (pipe activity), dram (memory bandwidth used), nvdec, nvjpg, nvofa (mean over the engines of that kind).",
		with(gpuAttrs, AttrGPUEngine)...)
	GPUIOThroughput = def("capstan.gpu.io.throughput", "By/s", Gauge, "gpu",
		"GPM profiling: bytes per second between the last two collections, by capstan.gpu.link (pcie, nvlink: all links together) and network.io.direction (transmit, receive).",
		with(gpuAttrs, AttrGPULink, AttrIODirection)...)
)
