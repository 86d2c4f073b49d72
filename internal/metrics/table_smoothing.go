package metrics

// AttrPowerSmoothingProfile is the preset profile firmware power smoothing has active.
const AttrPowerSmoothingProfile = "capstan.power_smoothing.profile"

// Firmware power smoothing (Blackwell and later), appended to Table after the host metrics.
var (
	GPUPowerSmoothing = def("capstan.gpu.power.smoothing", "{state}", Gauge, "gpu",
		"Firmware power smoothing (Blackwell and later; NVML fields FI_PWR_SMOOTHING_ENABLED and FI_PWR_SMOOTHING_ACTIVE_PRESET_PROFILE): 1 when on, 0 when off, with the active preset profile. Absent on GPUs without it.",
		with(gpuAttrs, AttrPowerSmoothingProfile)...)
	GPUPowerSmoothingFloor = def("capstan.gpu.power.smoothing.floor", "W", Gauge, "gpu",
		"The power floor firmware power smoothing holds now (FI_PWR_SMOOTHING_APPLIED_TMP_FLOOR): the board burns power up to it when its work wants less; 0 when smoothing is off.",
		gpuAttrs...)
)
