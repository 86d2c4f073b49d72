package sim

import (
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// health is the part of a GPU's state NVML reports as health: time spent slowed down per
// performance policy, remapped memory rows, PCIe replays and injected hardware slowdowns. It is
// guarded by the GPU's lock.
type health struct {
	// violationNs is the time each policy held the clocks down, by nvml.PerfPolicyType.
	violationNs [nvml.PERF_POLICY_COUNT]uint64
	// hwThermalNs and powerBrakeNs are the time the hardware thermal slowdown and the power
	// brake reasons were set (NVML's FI_DEV_CLOCKS_EVENT_REASON_HW_* fields).
	hwThermalNs, powerBrakeNs uint64
	// brakeFrom and brakeUntil are the substeps [from, until) of an injected power brake.
	brakeFrom, brakeUntil int64

	remappedCorrected, remappedUncorrected int
	remapPending, remapFailed              bool
	pcieReplays                            int
}

// violationReasons maps each performance policy to the clock-event reasons whose time it counts.
// The sim counts an external power brake as a power violation, and total application clocks as
// any reason but idle; nothing it models slows a board for sync boost, board limit or
// reliability, nor below its base clocks.
var violationReasons = [nvml.PERF_POLICY_COUNT]uint64{
	nvml.PERF_POLICY_POWER:           nvml.ClocksEventReasonSwPowerCap | nvml.ClocksThrottleReasonHwPowerBrakeSlowdown,
	nvml.PERF_POLICY_THERMAL:         nvml.ClocksEventReasonSwThermalSlowdown | nvml.ClocksThrottleReasonHwThermalSlowdown,
	nvml.PERF_POLICY_LOW_UTILIZATION: nvml.ClocksEventReasonGpuIdle,
	nvml.PERF_POLICY_TOTAL_APP_CLOCKS: nvml.ClocksEventReasonSwPowerCap | nvml.ClocksThrottleReasonHwPowerBrakeSlowdown |
		nvml.ClocksEventReasonSwThermalSlowdown | nvml.ClocksThrottleReasonHwThermalSlowdown | nvml.ClocksThrottleReasonHwSlowdown,
}

// accrue adds the step of n substeps from substep from to the violation time of every policy
// whose reasons the model set during it, and the part of it an injected brake covered to the
// policies the brake's reasons count for; it runs on every step, so it does not allocate.
func (h *health) accrue(reasons uint64, from, n int64) {
	ns := uint64(n) * uint64(substep)
	braked := uint64(0)
	if lo, hi := max(from, h.brakeFrom), min(from+n, h.brakeUntil); hi > lo {
		braked = uint64(hi-lo) * uint64(substep)
	}
	for p, mask := range violationReasons {
		switch {
		case reasons&mask != 0:
			h.violationNs[p] += ns
		case brakeReasons&mask != 0:
			h.violationNs[p] += braked
		}
	}
	if reasons&nvml.ClocksThrottleReasonHwThermalSlowdown != 0 {
		h.hwThermalNs += ns
	}
	if reasons&nvml.ClocksThrottleReasonHwPowerBrakeSlowdown != 0 {
		h.powerBrakeNs += ns
	} else {
		h.powerBrakeNs += braked
	}
}

// brakeReasons are the clock-event reasons an injected brake sets.
const brakeReasons = nvml.ClocksThrottleReasonHwSlowdown | nvml.ClocksThrottleReasonHwPowerBrakeSlowdown

// injected are the clock-event reasons an injected event sets at substep step.
func (h *health) injected(step int64) uint64 {
	if step >= h.brakeFrom && step < h.brakeUntil {
		return brakeReasons
	}
	return 0
}

// InjectPowerBrake asserts the external power-brake signal on GPU gpu for d, starting now: the
// hardware slowdown and power-brake reasons are set and the power violation time runs while it
// lasts, however short, as on a board whose BMC pulls the brake.
func (f *Fleet) InjectPowerBrake(gpu int, d time.Duration) {
	g := f.GPU(gpu)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(f.clock.Now())
	g.health.brakeFrom = g.step
	g.health.brakeUntil = g.step + int64((d+substep-1)/substep)
}

// InjectRemappedRows adds remapped memory rows to GPU gpu; pending says a remap waits for the
// next GPU reset, failed that a remap could not be made (the board should be replaced).
func (f *Fleet) InjectRemappedRows(gpu, corrected, uncorrected int, pending, failed bool) {
	g := f.GPU(gpu)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.health.remappedCorrected += corrected
	g.health.remappedUncorrected += uncorrected
	g.health.remapPending = g.health.remapPending || pending
	g.health.remapFailed = g.health.remapFailed || failed
}

// InjectPCIeReplays adds n to GPU gpu's PCIe replay counter.
func (f *Fleet) InjectPCIeReplays(gpu, n int) {
	g := f.GPU(gpu)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.health.pcieReplays += n
}

// GetViolationStatus reports the time the policy held the clocks down since the fleet started,
// in nanoseconds, with the instant of the reading in microseconds, as NVML does.
func (g *GPU) GetViolationStatus(policy nvml.PerfPolicyType) (nvml.ViolationTime, nvml.Return) {
	if policy >= nvml.PERF_POLICY_COUNT {
		return nvml.ViolationTime{}, nvml.ERROR_INVALID_ARGUMENT
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return nvml.ViolationTime{}, ret
	}
	defer g.mu.Unlock()
	return nvml.ViolationTime{
		ReferenceTime: uint64(g.fleet.start.Add(g.elapsed()).UnixMicro()),
		ViolationTime: g.health.violationNs[policy],
	}, nvml.SUCCESS
}

// GetRemappedRows reports rows remapped for corrected and uncorrected errors, and whether a
// remap is pending or has failed.
func (g *GPU) GetRemappedRows() (int, int, bool, bool, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, 0, false, false, ret
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	h := &g.health
	return h.remappedCorrected, h.remappedUncorrected, h.remapPending, h.remapFailed, nvml.SUCCESS
}

// GetRetiredPages answers ERROR_NOT_SUPPORTED: every modelled board (Ampere and later) remaps
// rows instead of retiring pages.
func (g *GPU) GetRetiredPages(nvml.PageRetirementCause) ([]uint64, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return nil, ret
	}
	return nil, nvml.ERROR_NOT_SUPPORTED
}

func (g *GPU) GetPcieReplayCounter() (int, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.health.pcieReplays, nvml.SUCCESS
}

// healthField answers the field values of health, for GetFieldValues. Page retirement fields
// are not supported, as on every modelled board.
func (g *GPU) healthField(v *nvml.FieldValue) {
	switch v.FieldId {
	case nvml.FI_DEV_PCIE_REPLAY_COUNTER:
		putUint32(v, uint32(g.health.pcieReplays))
	case nvml.FI_DEV_REMAPPED_COR:
		putUint32(v, uint32(g.health.remappedCorrected))
	case nvml.FI_DEV_REMAPPED_UNC:
		putUint32(v, uint32(g.health.remappedUncorrected))
	case nvml.FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN:
		putUint64(v, g.health.hwThermalNs)
	case nvml.FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN:
		putUint64(v, g.health.powerBrakeNs)
	default:
		v.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
	}
}
