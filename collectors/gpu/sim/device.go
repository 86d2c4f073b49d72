package sim

import (
	"encoding/binary"
	"math"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// The nvml.Device methods the agent uses. Each one fails as NVML does before Init and on a GPU
// that has fallen off the bus; the dynamic ones first advance the model to the clock's now.

// ready is the check NVML makes before any device call.
func (g *GPU) ready() nvml.Return {
	if !g.fleet.initialized() {
		return nvml.ERROR_UNINITIALIZED
	}
	if g.lost.Load() {
		return nvml.ERROR_GPU_IS_LOST
	}
	return g.fleet.fault(g)
}

// lockNow checks the GPU, locks it and advances it to now; on SUCCESS the caller unlocks.
func (g *GPU) lockNow() nvml.Return {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return ret
	}
	g.mu.Lock()
	g.advance(g.fleet.clock.Now())
	return nvml.SUCCESS
}

func milli(v float64) uint32 { return uint32(math.Round(max(0, v) * 1000)) }

func celsius(v float64) uint32 { return uint32(math.Round(max(0, v))) }

func percent(frac float64) uint32 { return uint32(math.Round(100 * min(1, max(0, frac)))) }

func (g *GPU) GetUUID() (string, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return "", ret
	}
	return g.uuid, nvml.SUCCESS
}

func (g *GPU) GetName() (string, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return "", ret
	}
	return g.fleet.model.ProductName, nvml.SUCCESS
}

func (g *GPU) GetSerial() (string, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return "", ret
	}
	return g.serial, nvml.SUCCESS
}

func (g *GPU) GetIndex() (int, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	return g.index, nvml.SUCCESS
}

func (g *GPU) GetMinorNumber() (int, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	return g.index, nvml.SUCCESS
}

func (g *GPU) GetPciInfo() (nvml.PciInfo, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return nvml.PciInfo{}, ret
	}
	return g.pci, nvml.SUCCESS
}

func (g *GPU) GetArchitecture() (nvml.DeviceArchitecture, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	return g.fleet.model.Architecture, nvml.SUCCESS
}

// GetPowerUsage reports the drawn power averaged over the last second, in milliwatts, as recent
// GPUs do.
func (g *GPU) GetPowerUsage() (uint32, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return 0, ret
	}
	defer g.mu.Unlock()
	return milli(g.averageW()), nvml.SUCCESS
}

// GetFieldValues fills the fields the model knows: instant and average power (mW), total
// energy (mJ) and memory temperature (°C). Others get ERROR_NOT_SUPPORTED in their own
// NvmlReturn, as NVML answers per field.
func (g *GPU) GetFieldValues(values []nvml.FieldValue) nvml.Return {
	if len(values) == 0 {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return ret
	}
	defer g.mu.Unlock()
	stamp := g.fleet.unixMicroAt(g.step)
	for i := range values {
		v := &values[i]
		v.Timestamp, v.LatencyUsec, v.Value = stamp, 0, [8]byte{}
		v.NvmlReturn = uint32(nvml.SUCCESS)
		switch v.FieldId {
		case nvml.FI_DEV_POWER_INSTANT:
			// Both power fields come from the counters' last update (substep heldStep) and
			// carry its time.
			v.Timestamp = g.fleet.unixMicroAt(g.heldStep)
			putUint32(v, milli(g.instantW()))
		case nvml.FI_DEV_POWER_AVERAGE:
			v.Timestamp = g.fleet.unixMicroAt(g.heldStep)
			putUint32(v, milli(g.averageW()))
		case nvml.FI_DEV_MEMORY_TEMP:
			putUint32(v, celsius(g.memTempC))
		case nvml.FI_DEV_TOTAL_ENERGY_CONSUMPTION:
			putUint64(v, g.energyMJ())
		default:
			if !g.smoothingField(v) && !g.nvlinkField(v) {
				g.healthField(v)
			}
		}
	}
	g.nvlinkSettled = false
	return nvml.SUCCESS
}

func putUint32(v *nvml.FieldValue, x uint32) {
	v.ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_INT)
	binary.LittleEndian.PutUint32(v.Value[:], x)
}

func putUint64(v *nvml.FieldValue, x uint64) {
	v.ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_LONG_LONG)
	binary.LittleEndian.PutUint64(v.Value[:], x)
}

func (g *GPU) energyMJ() uint64 { return uint64(math.Round(g.energyJ * 1000)) }

// GetTotalEnergyConsumption reports millijoules since the fleet started.
func (g *GPU) GetTotalEnergyConsumption() (uint64, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return 0, ret
	}
	defer g.mu.Unlock()
	return g.energyMJ(), nvml.SUCCESS
}

func (g *GPU) GetTemperature(sensor nvml.TemperatureSensors) (uint32, nvml.Return) {
	if sensor != nvml.TEMPERATURE_GPU {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return 0, ret
	}
	defer g.mu.Unlock()
	return celsius(g.tempC), nvml.SUCCESS
}

func (g *GPU) GetUtilizationRates() (nvml.Utilization, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return nvml.Utilization{}, ret
	}
	defer g.mu.Unlock()
	u := g.fleet.model.utilization(g.demandW)
	return nvml.Utilization{Gpu: percent(u), Memory: percent(u * g.workload().memoryActivity)}, nvml.SUCCESS
}

// GetEncoderUtilization is always idle: no trace encodes video.
func (g *GPU) GetEncoderUtilization() (uint32, uint32, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, 0, ret
	}
	return 0, samplingPeriodUs, nvml.SUCCESS
}

func (g *GPU) GetDecoderUtilization() (uint32, uint32, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return 0, 0, ret
	}
	defer g.mu.Unlock()
	u := g.fleet.model.utilization(g.demandW)
	return percent(u * g.workload().decoder), samplingPeriodUs, nvml.SUCCESS
}

var memoryV2Version = nvml.STRUCT_VERSION(nvml.Memory_v2{}, 2)

// memory splits the board's memory: a reserved part for the driver, the trace's footprint while
// busy (a driver context's worth when idle), and the rest free.
func (g *GPU) memory() (total, reserved, used uint64) {
	total = g.fleet.model.MemoryBytes
	reserved = total / 128
	used = 512 * mib
	if g.busy() {
		used = uint64(float64(total) * g.workload().memoryFraction * g.memoryShare)
	}
	return total, reserved, min(used, total-reserved)
}

func (g *GPU) GetMemoryInfo_v2() (nvml.Memory_v2, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return nvml.Memory_v2{}, ret
	}
	defer g.mu.Unlock()
	total, reserved, used := g.memory()
	return nvml.Memory_v2{Version: memoryV2Version, Total: total, Reserved: reserved, Used: used, Free: total - reserved - used}, nvml.SUCCESS
}

// GetMemoryInfo is the v1 view, in which the reserved memory counts as used.
func (g *GPU) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return nvml.Memory{}, ret
	}
	defer g.mu.Unlock()
	total, reserved, used := g.memory()
	return nvml.Memory{Total: total, Used: reserved + used, Free: total - reserved - used}, nvml.SUCCESS
}

// GetClockInfo reports current clocks in MHz; graphics and SM clocks are one domain on these
// boards, HBM runs at its maximum, and the video clock is not modelled (ERROR_NOT_SUPPORTED).
func (g *GPU) GetClockInfo(clock nvml.ClockType) (uint32, nvml.Return) {
	if clock >= nvml.CLOCK_COUNT {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return 0, ret
	}
	defer g.mu.Unlock()
	switch clock {
	case nvml.CLOCK_SM, nvml.CLOCK_GRAPHICS:
		return uint32(math.Round(g.clockMHz)), nvml.SUCCESS
	case nvml.CLOCK_MEM:
		return g.fleet.model.MaxMemClockMHz, nvml.SUCCESS
	}
	return 0, nvml.ERROR_NOT_SUPPORTED
}

func (g *GPU) GetMaxClockInfo(clock nvml.ClockType) (uint32, nvml.Return) {
	if clock >= nvml.CLOCK_COUNT {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	switch clock {
	case nvml.CLOCK_SM, nvml.CLOCK_GRAPHICS:
		return g.fleet.model.MaxSMClockMHz, nvml.SUCCESS
	case nvml.CLOCK_MEM:
		return g.fleet.model.MaxMemClockMHz, nvml.SUCCESS
	}
	return 0, nvml.ERROR_NOT_SUPPORTED
}

// GetEnforcedPowerLimit includes an out-of-band limit; GetPowerManagementLimit does not.
func (g *GPU) GetEnforcedPowerLimit() (uint32, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return 0, ret
	}
	defer g.mu.Unlock()
	return milli(g.enforcedW()), nvml.SUCCESS
}

func (g *GPU) GetPowerManagementLimit() (uint32, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return 0, ret
	}
	defer g.mu.Unlock()
	return milli(g.requestedW), nvml.SUCCESS
}

func (g *GPU) GetPowerManagementDefaultLimit() (uint32, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	return milli(g.fleet.model.DefaultLimitW), nvml.SUCCESS
}

func (g *GPU) GetPowerManagementLimitConstraints() (uint32, uint32, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, 0, ret
	}
	return milli(g.fleet.model.MinLimitW), milli(g.fleet.model.MaxLimitW), nvml.SUCCESS
}

// SetPowerManagementLimit sets the requested limit in milliwatts. Outside the constraints it
// returns ERROR_INVALID_ARGUMENT and changes nothing, as NVML does. The limit reads back at once
// and binds after the write's latency (requestLimit).
func (g *GPU) SetPowerManagementLimit(milliwatts uint32) nvml.Return {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return ret
	}
	defer g.mu.Unlock()
	m := &g.fleet.model
	if milliwatts < milli(m.MinLimitW) || milliwatts > milli(m.MaxLimitW) {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	g.requestLimit(float64(milliwatts)/1000, g.fleet.clock.Now())
	g.fleet.limitChanged(g, WriterNVML)
	return nvml.SUCCESS
}

func (g *GPU) GetCurrentClocksEventReasons() (uint64, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return 0, ret
	}
	defer g.mu.Unlock()
	return g.reasons(), nvml.SUCCESS
}

// GetCurrentClocksThrottleReasons is the name drivers before 535 know; the bits are the same.
func (g *GPU) GetCurrentClocksThrottleReasons() (uint64, nvml.Return) {
	return g.GetCurrentClocksEventReasons()
}

// GetPcieThroughput reports KB/s for the trace's phase, with some seeded jitter.
func (g *GPU) GetPcieThroughput(counter nvml.PcieUtilCounter) (uint32, nvml.Return) {
	if counter >= nvml.PCIE_UTIL_COUNT {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return 0, ret
	}
	defer g.mu.Unlock()
	w := g.workload()
	kbps := w.rxKBps
	if counter == nvml.PCIE_UTIL_TX_BYTES {
		kbps = w.txKBps
	}
	jitter := 1 + 0.1*noise(g.fleet.seed).signed(streamPCIe, g.index, 2*g.step+int64(counter))
	return uint32(math.Round(kbps * g.fleet.model.utilization(g.demandW) * jitter)), nvml.SUCCESS
}

// GetTotalEccErrors reports what InjectECC added; no errors are counted from before the fleet
// started, so the volatile and aggregate counters agree.
func (g *GPU) GetTotalEccErrors(kind nvml.MemoryErrorType, counter nvml.EccCounterType) (uint64, nvml.Return) {
	if kind >= nvml.MEMORY_ERROR_TYPE_COUNT || counter >= nvml.ECC_COUNTER_TYPE_COUNT {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if kind == nvml.MEMORY_ERROR_TYPE_CORRECTED {
		return g.eccCorrected, nvml.SUCCESS
	}
	return g.eccUncorrected, nvml.SUCCESS
}

// GetFanSpeed answers ERROR_NOT_SUPPORTED on boards without a fan of their own, as SXM boards
// do; a fan-cooled board runs its fan up with temperature.
func (g *GPU) GetFanSpeed() (uint32, nvml.Return) {
	if !g.fleet.model.HasFan {
		if ret := g.ready(); ret != nvml.SUCCESS {
			return 0, ret
		}
		return 0, nvml.ERROR_NOT_SUPPORTED
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return 0, ret
	}
	defer g.mu.Unlock()
	return percent(0.3 + 0.7*(g.tempC-40)/40), nvml.SUCCESS
}

func (g *GPU) GetPerformanceState() (nvml.Pstates, nvml.Return) {
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return nvml.PSTATE_UNKNOWN, ret
	}
	defer g.mu.Unlock()
	if g.busy() {
		return nvml.PSTATE_0, nvml.SUCCESS
	}
	return nvml.PSTATE_8, nvml.SUCCESS
}

func (g *GPU) GetSupportedEventTypes() (uint64, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	return supportedEvents, nvml.SUCCESS
}

// RegisterEvents adds event types for this GPU to set, which must come from the same fleet's
// EventSetCreate.
func (g *GPU) RegisterEvents(types uint64, set nvml.EventSet) nvml.Return {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return ret
	}
	s, ok := set.(*EventSet)
	if !ok || s.fleet != g.fleet {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	if types&^supportedEvents != 0 {
		return nvml.ERROR_NOT_SUPPORTED
	}
	return s.register(g, types)
}
