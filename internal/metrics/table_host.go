package metrics

// Attribute keys of the host collectors (cpufreq, thermal).
const (
	AttrCPULogicalNumber = "cpu.logical_number"
	AttrCPUPackage       = "capstan.cpu.package"
	AttrCPUGovernor      = "capstan.cpufreq.governor"
	AttrCPUFreqDriver    = "capstan.cpufreq.driver"
	AttrCPUEPP           = "capstan.cpufreq.energy_performance_preference"
	AttrThrottleScope    = "capstan.throttle.scope"
	AttrLimitType        = "hw.limit_type"
	AttrTripPoint        = "capstan.thermal.trip"
	AttrRAPLConstraint   = "capstan.rapl.constraint"
)

// sensorAttrs identify a host sensor: hw.type, hw.id (stable: zone, chip/sensor or powercap
// zone), hw.name (zone type, chip name, RAPL domain) and hw.sensor_location (the label).
var sensorAttrs = []string{AttrHWType, AttrHWID, AttrHWName, AttrSensorLocation}

// Host metrics, appended to Table after those of table.go.
var (
	CPUFrequency = def("system.cpu.frequency", "Hz", Gauge, "cpufreq",
		"Current frequency of a logical CPU: cpuinfo_cur_freq (what the hardware runs at) when readable, else scaling_cur_freq.",
		AttrCPULogicalNumber)
	CPUFrequencyLimit = def("capstan.cpu.frequency.limit", "Hz", Gauge, "cpufreq",
		"Frequency limits of a logical CPU: hardware_min and hardware_max (cpuinfo), scaling_min and scaling_max (the policy's current bounds).",
		AttrCPULogicalNumber, AttrLimitKind)
	CPUGovernor = def("capstan.cpu.governor", "{info}", Gauge, "cpufreq",
		"Always 1; names the cpufreq governor, scaling driver and energy-performance preference (where the driver has one) of a logical CPU.",
		AttrCPULogicalNumber, AttrCPUGovernor, AttrCPUFreqDriver, AttrCPUEPP)
	CPUThrottleEvents = def("capstan.cpu.throttle.events", "{event}", Counter, "cpufreq",
		"Thermal throttle events the CPU reported since boot (thermal_throttle/*_throttle_count): per logical CPU (scope core) and per package (scope package).",
		AttrThrottleScope, AttrCPULogicalNumber, AttrCPUPackage)

	HWTemperatureLimit = def("hw.temperature.limit", "Cel", Gauge, "thermal",
		"Temperature thresholds: hwmon temp<N>_<limit> (hw.limit_type min, max, lcrit, crit, emergency) and thermal zone trip points (hw.limit_type the trip type: critical, hot, passive, active).",
		with(sensorAttrs, AttrLimitType, AttrTripPoint)...)
	ThermalCoolingState = def("capstan.thermal.cooling.state", "{state}", Gauge, "thermal",
		"Current state of a thermal cooling device (0 is no cooling); -1 where the driver reports it inactive (intel_powerclamp).",
		AttrHWID, AttrHWName)
	ThermalCoolingStateMax = def("capstan.thermal.cooling.state.max", "{state}", Gauge, "thermal",
		"Highest state of a thermal cooling device.",
		AttrHWID, AttrHWName)
	HWFanSpeed = def("hw.fan.speed", "{rpm}", Gauge, "thermal",
		"Fan speed from an hwmon fan sensor, revolutions per minute.",
		sensorAttrs...)
	HWFanSpeedLimit = def("hw.fan.speed.limit", "{rpm}", Gauge, "thermal",
		"Fan speed thresholds of an hwmon fan sensor (hw.limit_type min, max, …).",
		with(sensorAttrs, AttrLimitType)...)
	HWVoltage = def("hw.voltage", "V", Gauge, "thermal",
		"Voltage from an hwmon in<N> sensor.",
		sensorAttrs...)
	HWVoltageLimit = def("hw.voltage.limit", "V", Gauge, "thermal",
		"Voltage thresholds of an hwmon in<N> sensor (hw.limit_type min, max, lcrit, crit).",
		with(sensorAttrs, AttrLimitType)...)
	HWCurrent = def("capstan.hw.current", "A", Gauge, "thermal",
		"Current from an hwmon curr<N> sensor.",
		sensorAttrs...)
	HWCurrentLimit = def("capstan.hw.current.limit", "A", Gauge, "thermal",
		"Current thresholds of an hwmon curr<N> sensor (hw.limit_type min, max, lcrit, crit).",
		with(sensorAttrs, AttrLimitType)...)
	HWPowerLimit = def("capstan.hw.power.limit", "W", Gauge, "thermal",
		"Power thresholds of an hwmon power<N> sensor (hw.limit_type max, crit, cap).",
		with(sensorAttrs, AttrLimitType)...)
	HWAlarm = def("capstan.hw.alarm", "{alarm}", Gauge, "thermal",
		"1 while an hwmon alarm is raised, else 0; hw.limit_type says which (any for the sensor's plain alarm, else the limit crossed).",
		with(sensorAttrs, AttrLimitType)...)
	RAPLPowerLimit = def("capstan.rapl.power.limit", "W", Gauge, "thermal",
		"Power limit of a RAPL constraint (capstan.rapl.constraint long_term, short_term, peak_power); 0 means unlimited.",
		AttrHWType, AttrHWID, AttrHWName, AttrRAPLConstraint)
	RAPLTimeWindow = def("capstan.rapl.time_window", "s", Gauge, "thermal",
		"Averaging window of a RAPL constraint.",
		AttrHWType, AttrHWID, AttrHWName, AttrRAPLConstraint)
)
