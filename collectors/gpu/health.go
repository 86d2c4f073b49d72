package gpu

import (
	"encoding/binary"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// Health: what says a GPU is slowed down or wearing out, read so that it does not flap and
// does not miss short events. Slowdowns come as NVML's violation counters (time under each
// performance policy, so a 200 ms power brake between two collections still shows); the
// hardware conditions are held for conditionHold after they were last seen.

// conditionHold is how long a hardware condition stays reported after it was last seen: long
// enough that a condition coming and going every few seconds reads as one, short enough that
// an alert clears within a minute.
const conditionHold = 30 * time.Second

// outOfBandMarginMW is how far the enforced limit must sit below the requested one to count as
// an out-of-band limit; NVML rounds limits, and a few milliwatts is not a BMC's doing.
const outOfBandMarginMW = 1000

// violationPolicies are the performance policies whose violation time is exported, in the order
// of their series.
var violationPolicies = [...]struct {
	name   string
	policy nvml.PerfPolicyType
	probe  probe
}{
	{"power", nvml.PERF_POLICY_POWER, probeViolationPower},
	{"thermal", nvml.PERF_POLICY_THERMAL, probeViolationThermal},
	{"sync_boost", nvml.PERF_POLICY_SYNC_BOOST, probeViolationSyncBoost},
	{"board_limit", nvml.PERF_POLICY_BOARD_LIMIT, probeViolationBoardLimit},
	{"low_utilization", nvml.PERF_POLICY_LOW_UTILIZATION, probeViolationLowUtilization},
	{"reliability", nvml.PERF_POLICY_RELIABILITY, probeViolationReliability},
}

// conditions are the debounced hardware conditions, from the clock-event reasons.
var conditions = [...]struct {
	name string
	mask uint64
}{
	{"hw_slowdown", nvml.ClocksThrottleReasonHwSlowdown | nvml.ClocksThrottleReasonHwThermalSlowdown | nvml.ClocksThrottleReasonHwPowerBrakeSlowdown},
	{"power_brake", nvml.ClocksThrottleReasonHwPowerBrakeSlowdown},
}

// health is one GPU's health series and the state behind them.
type health struct {
	violation          [len(violationPolicies)]*sample.Series
	condition          [len(conditions)]*sample.Series
	lastSeen           [len(conditions)]time.Time
	outOfBand, memFree *sample.Series
	eccAggregate       [2]*sample.Series // corrected, uncorrected
	remapped           [2]*sample.Series // corrected, uncorrected
	remapPending       *sample.Series
	remapFailed        *sample.Series
	retired            [2]*sample.Series // single_bit, double_bit
	retirementPending  *sample.Series
	pcieReplays        *sample.Series
	retiredFields      [3]nvml.FieldValue
	reasons            uint64 // clock-event reasons of this collection
	reasonsRead        bool   // reasons were read in this collection
	// slowdownNs is the last reading of the time each of slowdownReasons was set (ns since the
	// driver loaded), when haveSlowdown; slowdownRead when read in this collection.
	slowdownNs   [len(slowdownReasons)]uint64
	haveSlowdown [len(slowdownReasons)]bool
	slowdownRead bool
}

// slowdownReasons are the clock-event reasons whose time NVML counts in a field: a condition
// whose reason ran between two collections is seen though neither sampled its bit (a 200 ms
// power brake).
var slowdownReasons = [...]struct {
	field uint32
	mask  uint64
}{
	{nvml.FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN, nvml.ClocksThrottleReasonHwThermalSlowdown},
	{nvml.FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN, nvml.ClocksThrottleReasonHwPowerBrakeSlowdown},
}

func (h *health) build(s func(*metrics.Def, ...attribute.KeyValue) *sample.Series) {
	str := attribute.String
	for i, v := range violationPolicies {
		h.violation[i] = s(metrics.GPUViolationTime, str(metrics.AttrViolationPolicy, v.name))
	}
	for i, c := range conditions {
		h.condition[i] = s(metrics.GPUHealth, str(metrics.AttrHealthCondition, c.name))
	}
	h.outOfBand = s(metrics.GPUOutOfBandLimit)
	h.memFree = s(metrics.GPUMemoryFree)
	h.eccAggregate[0] = s(metrics.GPUECCAggregate, str(metrics.AttrErrorType, "corrected"))
	h.eccAggregate[1] = s(metrics.GPUECCAggregate, str(metrics.AttrErrorType, "uncorrected"))
	h.remapped[0] = s(metrics.GPURemappedRows, str(metrics.AttrErrorType, "corrected"))
	h.remapped[1] = s(metrics.GPURemappedRows, str(metrics.AttrErrorType, "uncorrected"))
	h.remapPending = s(metrics.GPURemapPending)
	h.remapFailed = s(metrics.GPURemapFailed)
	h.retired[0] = s(metrics.GPURetiredPages, str(metrics.AttrErrorType, "single_bit"))
	h.retired[1] = s(metrics.GPURetiredPages, str(metrics.AttrErrorType, "double_bit"))
	h.retirementPending = s(metrics.GPURetirementPending)
	h.pcieReplays = s(metrics.GPUPCIeReplays)
	h.retiredFields = [3]nvml.FieldValue{
		{FieldId: nvml.FI_DEV_RETIRED_SBE}, {FieldId: nvml.FI_DEV_RETIRED_DBE}, {FieldId: nvml.FI_DEV_RETIRED_PENDING},
	}
}

// outOfBand is 1 when the enforced limit sits below the requested one by more than rounding.
func outOfBand(enforcedMW, requestedMW uint32) float64 {
	if enforcedMW+outOfBandMarginMW <= requestedMW {
		return 1
	}
	return 0
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// collectHealth reads the violation counters, remapped rows, retired pages, PCIe replays and
// aggregate ECC, and updates the debounced conditions from this collection's reasons.
func (c *Collector) collectHealth(d *device, b *sample.Batch) {
	h := &d.health
	dev := d.dev
	for i, v := range violationPolicies {
		if !c.violations || !d.want(v.probe) {
			continue
		}
		if t, ret := dev.GetViolationStatus(v.policy); c.ok(d, v.probe, ret) {
			b.Add(h.violation[i], float64(t.ViolationTime)/1e9)
		}
	}
	c.collectConditions(d, b)
	if d.want(probeRemappedRows) {
		if corr, unc, pending, failed, ret := dev.GetRemappedRows(); c.ok(d, probeRemappedRows, ret) {
			b.Add(h.remapped[0], float64(corr))
			b.Add(h.remapped[1], float64(unc))
			b.Add(h.remapPending, boolValue(pending))
			b.Add(h.remapFailed, boolValue(failed))
		}
	}
	if d.want(probeRetiredPages) {
		c.collectRetiredPages(d, b)
	}
	if d.want(probePCIeReplays) {
		if n, ret := dev.GetPcieReplayCounter(); c.ok(d, probePCIeReplays, ret) {
			b.Add(h.pcieReplays, float64(n))
		}
	}
	if d.want(probeECCAggregateCorrected) {
		if n, ret := dev.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.AGGREGATE_ECC); c.ok(d, probeECCAggregateCorrected, ret) {
			b.Add(h.eccAggregate[0], float64(n))
		}
	}
	if d.want(probeECCAggregateUncorrected) {
		if n, ret := dev.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.AGGREGATE_ECC); c.ok(d, probeECCAggregateUncorrected, ret) {
			b.Add(h.eccAggregate[1], float64(n))
		}
	}
}

// collectConditions holds each hardware condition for conditionHold after it was last seen: in
// this collection's clock-event reasons, or in the time NVML counts for its reason since the
// last collection. With neither read (not supported, or failing), a condition still held is
// exported (an alert on it stays up) and the others, unknown, are not.
func (c *Collector) collectConditions(d *device, b *sample.Batch) {
	h := &d.health
	now := c.now()
	read := h.reasonsRead
	h.reasonsRead = false
	if read {
		h.see(h.reasons, now)
	}
	if h.slowdownRead {
		read, h.slowdownRead = true, false
	}
	for i := range conditions {
		active := !h.lastSeen[i].IsZero() && now.Sub(h.lastSeen[i]) < conditionHold
		if read || active {
			b.Add(h.condition[i], boolValue(active))
		}
	}
}

// see marks the conditions of the reasons set as seen now.
func (h *health) see(reasons uint64, now time.Time) {
	for i, cond := range conditions {
		if reasons&cond.mask != 0 {
			h.lastSeen[i] = now
		}
	}
}

// noteSlowdownTime takes this collection's reading of the time counted for each slowdown reason
// (fields in the order of slowdownReasons) and marks the conditions of those that ran since the
// last reading. Drivers before these fields answer "not supported" for them.
func (c *Collector) noteSlowdownTime(d *device, fields []nvml.FieldValue) {
	h := &d.health
	now := c.now()
	for i, r := range slowdownReasons {
		f := &fields[i]
		if nvml.Return(f.NvmlReturn) != nvml.SUCCESS || nvml.ValueType(f.ValueType) != nvml.VALUE_TYPE_UNSIGNED_LONG_LONG {
			continue
		}
		ns := binary.LittleEndian.Uint64(f.Value[:])
		if h.haveSlowdown[i] && ns > h.slowdownNs[i] {
			h.see(r.mask, now)
		}
		h.slowdownNs[i], h.haveSlowdown[i] = ns, true
		h.slowdownRead = true
	}
}

// collectRetiredPages reads the page-retirement field values in one call. Boards that remap rows
// instead (Ampere and later) answer "not supported" per field, which marks the query unsupported.
func (c *Collector) collectRetiredPages(d *device, b *sample.Batch) {
	h := &d.health
	f := h.retiredFields[:]
	for i := range f {
		f[i].NvmlReturn = 0
	}
	if ret := d.dev.GetFieldValues(f); !c.ok(d, probeRetiredPages, ret) {
		return
	}
	if !c.ok(d, probeRetiredPages, nvml.Return(f[0].NvmlReturn)) {
		return
	}
	for i, s := range [...]*sample.Series{h.retired[0], h.retired[1], h.retirementPending} {
		if v, ok := fieldValue(&f[i]); ok {
			b.Add(s, v)
		}
	}
}

// exports reports whether the metric is selected for export.
func (c *Collector) exports(d *metrics.Def) bool { return c.enabled == nil || c.enabled(d) }
