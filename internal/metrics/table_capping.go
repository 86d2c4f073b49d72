package metrics

// Attribute keys of the capping controller.
const (
	AttrCappingScope  = "capstan.capping.scope"
	AttrCappingMode   = "capstan.capping.mode"
	AttrBudgetSource  = "capstan.budget.source"
	AttrCappingResult = "capstan.capping.result"
	// AttrRampDirection is rise or fall.
	AttrRampDirection = "capstan.ramp.direction"
)

// Capping controller metrics (source "capping": the controller publishes them to the store
// itself every control period).
var (
	CappingBudget = def("capstan.capping.budget", "W", Gauge, "capping",
		"The node power budget B the controller steers under, and where it came from (static, file, fallback when the budget's TTL ran out).",
		AttrBudgetSource)
	CappingBudgetUnmet = def("capstan.capping.budget.unmet", "{unmet}", Gauge, "capping",
		"1 while the budget B is below the sum of the capped GPUs' minimum limits: no limit a GPU accepts can meet it, and every GPU is held at its minimum; 0 otherwise.",
		AttrCappingScope)
	CappingSetpoint = def("capstan.capping.setpoint", "W", Gauge, "capping",
		"The setpoint S = B × (1 − guard band) the controller holds measured power to.",
		AttrCappingScope)
	CappingMeasured = def("capstan.capping.measured", "W", Gauge, "capping",
		"Measured power P the loop closes on: the sum of GPU instantaneous power (plus RAPL package power with scope node).",
		AttrCappingScope)
	CappingError = def("capstan.capping.error", "W", Gauge, "capping",
		"Control error S − P: positive when the node draws less than the setpoint.",
		AttrCappingScope)
	CappingCapTotal = def("capstan.capping.cap.total", "W", Gauge, "capping",
		"Total GPU cap C the control law set: never below the budget's static share (B within [Σ min, Σ max]), above it only by power lent while GPUs draw less than their limits, at most B × (1 + oversubscription).",
		AttrCappingScope)
	CappingGPULimit = def("capstan.capping.gpu.limit", "W", Gauge, "capping",
		"Power limit the controller applied to the GPU (computed only, under dry_run).",
		gpuAttrs...)
	CappingMode = def("capstan.capping.mode", "{mode}", Gauge, "capping",
		"1 for the controller's current mode, 0 for the others: active, dry_run, failsafe (power readings lost: static caps B / n).",
		AttrCappingMode)
	CappingActuations = def("capstan.capping.actuations", "{write}", Counter, "capping",
		"Power limit writes to the GPU, by result: ok, or refused (NVML returned an error; the limit stays as it was).",
		with(gpuAttrs, AttrCappingResult)...)
	CappingOverrides = def("capstan.capping.overrides", "{override}", Counter, "capping",
		"Times the GPU's limit was found changed behind the controller's back (another agent, nvidia-smi, an out-of-band limit); a changed requested limit is re-applied.",
		gpuAttrs...)
	CappingOverBudgetTime = def("capstan.capping.over_budget.time", "s", Counter, "capping",
		"Time measured power spent above the budget B.",
		AttrCappingScope)
	CappingPowerRamp = def("capstan.capping.power.ramp", "W/s", Gauge, "capping",
		"Steepest change of the node's Σ GPU instant power between two consecutive readings (about 100 ms apart) during the last control period, by direction (rise, fall; both positive): the power ramp the supply sees.",
		AttrRampDirection)
	CappingPowerSwing = def("capstan.capping.power.swing", "W", Gauge, "capping",
		"Peak-to-trough of the node's Σ GPU instant power over the controller's demand window (the last 5 s, or the last period when it is longer).",
		AttrCappingScope)
	CappingFastCuts = def("capstan.capping.fast_cuts", "{cut}", Counter, "capping",
		"Times Σ GPU limits were cut between control periods because Σ instant power crossed the budget while limits above the budget's static share were lent out.",
		AttrCappingScope)
)
