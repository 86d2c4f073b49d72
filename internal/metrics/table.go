// Package metrics is the one definition of every metric Capstan exports: name, unit, instrument,
// description and attributes. Collectors, exporters and docs/metrics.md all derive from Table.
package metrics

import "strings"

// Kind is the OpenTelemetry instrument a metric is exported through.
type Kind int

const (
	// Gauge is an observable gauge: the latest value.
	Gauge Kind = iota
	// Counter is a monotonic, cumulative observable counter.
	Counter
	// UpDownCounter is a cumulative observable counter that may go down.
	UpDownCounter
)

func (k Kind) String() string {
	switch k {
	case Gauge:
		return "gauge"
	case Counter:
		return "counter"
	case UpDownCounter:
		return "updowncounter"
	}
	return "unknown"
}

// Def defines one metric.
type Def struct {
	// ID is the metric's index in Table, so exporters can keep per-metric state in a slice.
	ID          int
	Name        string
	Unit        string
	Kind        Kind
	Description string
	// Attributes lists every attribute key a data point of this metric may carry.
	Attributes []string
	// Sources are the collectors that produce the metric ("agent" for the agent's own); a
	// metric such as hw.temperature has one definition whatever measures it.
	Sources []string
}

// From reports whether collector source produces the metric.
func (d *Def) From(source string) bool {
	for _, s := range d.Sources {
		if s == source {
			return true
		}
	}
	return false
}

// Attribute keys shared by several metrics.
const (
	AttrHWType         = "hw.type"
	AttrHWID           = "hw.id"
	AttrHWName         = "hw.name"
	AttrGPUIndex       = "gpu.index"
	AttrHWState        = "hw.state"
	AttrSensorLocation = "hw.sensor_location"
	AttrGPUTask        = "hw.gpu.task"
	AttrIODirection    = "network.io.direction"
	AttrErrorType      = "error.type"
	AttrXID            = "capstan.gpu.xid"
	AttrClockDomain    = "capstan.clock.domain"
	AttrLimitKind      = "capstan.limit.kind"
	AttrThrottleReason = "capstan.throttle.reason"
	AttrSerial         = "hw.serial_number"
	AttrPCIBusID       = "capstan.gpu.pci.bus_id"
	AttrDriverVersion  = "hw.driver_version"
	AttrCollector      = "collector"
	AttrLogIOStream    = "log.iostream"
)

// gpuAttrs identify a GPU on every GPU data point; the rarely needed identity (serial, PCI bus
// id, driver) sits on capstan.gpu.info alone to keep every other series small.
var gpuAttrs = []string{AttrHWType, AttrHWID, AttrHWName, AttrGPUIndex}

func with(base []string, extra ...string) []string {
	out := make([]string, 0, len(base)+len(extra))
	return append(append(out, base...), extra...)
}

// The metrics, in the order docs/metrics.md lists them.
var (
	GPUInfo = def("capstan.gpu.info", "{info}", Gauge, "gpu",
		"Always 1; identifies a GPU: serial number, PCI bus id, driver version.",
		with(gpuAttrs, AttrSerial, AttrPCIBusID, AttrDriverVersion)...)
	GPUStatus = def("hw.status", "1", UpDownCounter, "gpu",
		"1 for the GPU's current state, 0 for the others. A GPU that fell off the bus is failed and no longer queried.",
		with(gpuAttrs, AttrHWState)...)
	HWPower = def("hw.power", "W", Gauge, "gpu,thermal",
		"Power draw: GPU averaged over the last second (NVML GetPowerUsage); RAPL domains (hw.type cpu for package and core, memory for dram) derived from two consecutive energy readings; hwmon power sensors.",
		with(gpuAttrs, AttrSensorLocation)...)
	GPUPowerInstant = def("capstan.gpu.power.instant", "W", Gauge, "gpu",
		"GPU instantaneous power draw (NVML field FI_DEV_POWER_INSTANT); what the capping loop closes on.",
		gpuAttrs...)
	HWEnergy = def("hw.energy", "J", Counter, "gpu,thermal",
		"Energy consumed: by a GPU since the driver was loaded; by a RAPL domain (its counter, wrap-arounds added since the agent started); by an hwmon energy sensor.",
		with(gpuAttrs, AttrSensorLocation)...)
	HWTemperature = def("hw.temperature", "Cel", Gauge, "gpu,thermal",
		"Temperature: GPU die (gpu) and HBM (memory); thermal zones (hw.id thermal_zone<N>, hw.sensor_location the zone type) and hwmon temp sensors (hw.id <chip>/temp<N>, hw.sensor_location the sensor label).",
		with(gpuAttrs, AttrSensorLocation)...)
	GPUUtilization = def("hw.gpu.utilization", "1", Gauge, "gpu",
		"Fraction of the last sample period the GPU was busy: kernels (general), video encoder, video decoder.",
		with(gpuAttrs, AttrGPUTask)...)
	GPUMemoryActivity = def("capstan.gpu.memory.activity", "1", Gauge, "gpu",
		"Fraction of the last sample period device memory was being read or written.",
		gpuAttrs...)
	GPUMemoryUsage = def("hw.gpu.memory.usage", "By", UpDownCounter, "gpu",
		"Device memory in use.",
		gpuAttrs...)
	GPUMemoryLimit = def("hw.gpu.memory.limit", "By", UpDownCounter, "gpu",
		"Total device memory.",
		gpuAttrs...)
	GPUMemoryUtilization = def("hw.gpu.memory.utilization", "1", Gauge, "gpu",
		"Fraction of device memory in use.",
		gpuAttrs...)
	GPUMemoryReserved = def("capstan.gpu.memory.reserved", "By", UpDownCounter, "gpu",
		"Device memory reserved by the driver and firmware, unavailable to applications.",
		gpuAttrs...)
	GPUIO = def("hw.gpu.io", "By", Counter, "gpu",
		"PCIe bytes moved, integrated from NVML's sampled PCIe throughput at each collection.",
		with(gpuAttrs, AttrIODirection)...)
	GPUErrors = def("hw.errors", "{error}", Counter, "gpu",
		"GPU errors: XID events by code (error.type=xid), volatile corrected and uncorrected ECC errors.",
		with(gpuAttrs, AttrErrorType, AttrXID)...)
	GPUClock = def("capstan.gpu.clock", "Hz", Gauge, "gpu",
		"Current SM and memory clock.",
		with(gpuAttrs, AttrClockDomain)...)
	GPUClockMax = def("capstan.gpu.clock.max", "Hz", Gauge, "gpu",
		"Maximum SM and memory clock.",
		with(gpuAttrs, AttrClockDomain)...)
	GPUPowerLimit = def("capstan.gpu.power.limit", "W", Gauge, "gpu",
		"Power limits: enforced (all limits combined), requested (set through NVML), default, and the allowed min and max.",
		with(gpuAttrs, AttrLimitKind)...)
	GPUThrottle = def("capstan.gpu.throttle", "{active}", Gauge, "gpu",
		"1 while a clock-event reason holds the clocks down, else 0.",
		with(gpuAttrs, AttrThrottleReason)...)
	GPUFanSpeed = def("hw.fan.speed_ratio", "1", Gauge, "gpu",
		"Fan speed as a fraction of its maximum (GPUs with their own fan only).",
		gpuAttrs...)
	GPUPerformanceState = def("capstan.gpu.performance_state", "{pstate}", Gauge, "gpu",
		"Performance state: 0 (P0, fastest) to 15 (P15, slowest).",
		gpuAttrs...)
	GPUsExpected = def("capstan.gpu.expected", "{gpu}", Gauge, "gpu",
		"GPUs the host should have: the most of those NVML enumerated when the collector started and, with real NVML, the NVIDIA GPUs on the PCI bus (a GPU the driver did not bring up counts here).",
		AttrHWType)
	GPUsPresent = def("capstan.gpu.present", "{gpu}", Gauge, "gpu",
		"GPUs answering NVML now; below capstan.gpu.expected, a GPU is lost or missing since the start.",
		AttrHWType)

	CollectorDuration = def("capstan.collector.duration", "s", Gauge, "agent",
		"How long the collector's last collection took.",
		AttrCollector)
	CollectorUp = def("capstan.collector.up", "{up}", Gauge, "agent",
		"1 when the collector's last collection succeeded, 0 when it failed, timed out or the collector could not start.",
		AttrCollector)
	CollectorAvailable = def("capstan.collector.available", "{available}", Gauge, "agent",
		"1 when the host has what the collector reads (its hardware, driver or kernel interface), 0 when it has not and the collector did not start: capstan.collector.up 0 with available 1 is a failure, with available 0 a host without that source.",
		AttrCollector)
	LogDropped = def("capstan.log.dropped", "{line}", Counter, "agent",
		"Log lines dropped because stderr could not be written (the log reader went away); the agent runs on without its log.",
		AttrLogIOStream)
)

// Table holds every metric Capstan exports, indexed by Def.ID.
var Table []*Def

// def adds a metric to Table. sources is one collector name, or several separated by commas.
func def(name, unit string, kind Kind, sources, desc string, attrs ...string) *Def {
	d := &Def{ID: len(Table), Name: name, Unit: unit, Kind: kind, Sources: strings.Split(sources, ","), Description: desc, Attributes: attrs}
	Table = append(Table, d)
	return d
}

// ByName returns the metric called name, or nil.
func ByName(name string) *Def {
	for _, d := range Table {
		if d.Name == name {
			return d
		}
	}
	return nil
}
