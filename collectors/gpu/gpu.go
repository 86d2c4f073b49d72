// Package gpu collects GPU telemetry through go-nvml's nvml.Interface: real NVML on a GPU node,
// the simulated fleet (package sim) anywhere else.
package gpu

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// Name is the collector's name in flags and metrics.
const Name = "gpu"

func init() {
	collectors.Register(collectors.Factory{
		Name:             Name,
		EnabledByDefault: true,
		Interval:         time.Second,
		New: func(set collectors.Settings, _ collectors.Config) (collectors.Collector, error) {
			lib, err := collectors.Lookup[nvml.Interface](set)
			if err != nil {
				return nil, err
			}
			c, err := newCollector(lib, set.Logger, set.Now, set.MetricEnabled)
			if err != nil {
				return nil, err
			}
			c.ExpectFromPCI(set.Sysfs)
			return c, nil
		},
	})
}

// maxEventsPerCollection bounds how many NVML events one collection drains, so an event storm
// cannot stall the collector.
const maxEventsPerCollection = 1024

// Collector reads every GPU NVML reports.
type Collector struct {
	lib     nvml.Interface
	log     *slog.Logger
	now     func() time.Time
	driver  string
	devices []*device
	inv     inventory     // GPUs expected and present
	events  nvml.EventSet // nil when XID events are unavailable
	// enabled is the metric selection (nil: every metric); reads that only disabled metrics
	// need are skipped, the runner drops the rest.
	enabled func(*metrics.Def) bool
	// violations and profiling are whether the violation counters and GPM are read at all.
	violations, profiling bool
	// nvlinkOn is whether any NVLink metric is exported; migProcesses whether MIG devices'
	// processes are counted.
	nvlinkOn, migProcesses bool
	// newlyUnsupported gathers, per query, the GPUs that answered "not supported" during one
	// collection, so that it is said in one line per query rather than one per GPU.
	newlyUnsupported [probeCount][]int
	// gpmRequest is the one GPM request every GPU and GPU instance fills in turn (gpmMetrics).
	gpmRequest *nvml.GpmMetricsGetType

	mu sync.Mutex // one collection at a time: device state (counters, flags) is not shared
}

// probe names one NVML query, for "not supported" bookkeeping and its log line.
type probe uint

const (
	probePower probe = iota
	probeFields
	probeEnergy
	probeTemperature
	probeUtilization
	probeEncoder
	probeDecoder
	probeMemory
	probeClockSM
	probeClockMem
	probeMaxClockSM
	probeMaxClockMem
	probeEnforcedLimit
	probeRequestedLimit
	probeDefaultLimit
	probeLimitConstraints
	probeThrottle
	probePCIeTx
	probePCIeRx
	probeECCCorrected
	probeECCUncorrected
	probeFan
	probePerformanceState
	probeViolationPower
	probeViolationThermal
	probeViolationSyncBoost
	probeViolationBoardLimit
	probeViolationLowUtilization
	probeViolationReliability
	probeRemappedRows
	probeRetiredPages
	probePCIeReplays
	probeECCAggregateCorrected
	probeECCAggregateUncorrected
	probeGPMSample
	probeGPMMetrics
	probeMIGMode
	probeMIGMemory
	probeMIGGPM
	probeNVLink
	probeNVLinkCRCData
	probeMIGProcesses
	probeCount
)

var probeNames = [probeCount]string{
	"power usage", "field values (instant power, memory temperature)", "total energy", "temperature",
	"utilization", "encoder utilization", "decoder utilization", "memory info", "SM clock", "memory clock", "max SM clock", "max memory clock",
	"enforced power limit", "power management limit", "default power limit", "power limit constraints",
	"clock-event reasons", "PCIe transmit throughput", "PCIe receive throughput",
	"corrected ECC errors", "uncorrected ECC errors", "fan speed", "performance state",
	"power violation time", "thermal violation time", "sync boost violation time", "board limit violation time",
	"low utilization violation time", "reliability violation time", "remapped rows", "retired pages (field values)",
	"PCIe replay counter", "aggregate corrected ECC errors", "aggregate uncorrected ECC errors",
	"GPM sample", "GPM metrics", "MIG mode", "MIG device memory", "GPU instance GPM sample",
	"NVLink", "NVLink CRC data errors", "MIG device processes",
}

// Limit kinds and throttle reasons in the order of their series.
var (
	limitKinds      = []string{"enforced", "requested", "default", "min", "max"}
	throttleReasons = []struct {
		name string
		mask uint64
	}{
		{"sw_power_cap", nvml.ClocksEventReasonSwPowerCap},
		{"hw_slowdown", nvml.ClocksThrottleReasonHwSlowdown},
		{"sw_thermal", nvml.ClocksEventReasonSwThermalSlowdown},
		{"hw_thermal", nvml.ClocksThrottleReasonHwThermalSlowdown},
		{"power_brake", nvml.ClocksThrottleReasonHwPowerBrakeSlowdown},
		{"idle", nvml.ClocksEventReasonGpuIdle},
	}
)

type device struct {
	index int
	dev   nvml.Device
	uuid  string
	lost  bool
	// memoryV1: the driver has no GetMemoryInfo_v2 (before R510); memory comes from the first
	// version, which has no reserved memory and counts it as used.
	memoryV1 bool
	// lostProbedAt is when a lost GPU was lost or last looked for.
	lostProbedAt time.Time
	// unsupported marks queries this device answered ERROR_NOT_SUPPORTED; they are skipped.
	unsupported [probeCount]bool
	// failing marks queries (on the whole GPU, or on one link or GPU instance) whose last call
	// failed, so a persistent error is logged once.
	failing map[probePart]bool

	info, statusOK, statusFailed                  *sample.Series
	power, powerInstant, energy                   *sample.Series
	tempGPU, tempMemory                           *sample.Series
	utilGeneral, utilEncoder, utilDecoder         *sample.Series
	memActivity                                   *sample.Series
	memUsage, memLimit, memUtil, memReserved      *sample.Series
	ioTransmit, ioReceive                         *sample.Series
	eccCorrected, eccUncorrected                  *sample.Series
	clockSM, clockMemory, clockMaxSM, clockMaxMem *sample.Series
	limits                                        [5]*sample.Series
	throttle                                      [6]*sample.Series
	fan, pstate                                   *sample.Series
	base                                          *sample.Series // identity only, for deriving xid series
	health                                        health
	gpm                                           *gpm // nil without GPM
	mig                                           *migState
	nvlink                                        *nvlinkState

	xids map[uint64]*xidCount

	fields         []nvml.FieldValue
	pcieTx, pcieRx pcieCounter
	smoothing      smoothingReader
}

type xidCount struct {
	series *sample.Series
	n      float64
}

// New opens every GPU of lib (already initialised) and builds their series.
func New(lib nvml.Interface, log *slog.Logger, now func() time.Time) (*Collector, error) {
	return newCollector(lib, log, now, nil)
}

// newCollector is New with the metric selection; enabled nil means every metric.
func newCollector(lib nvml.Interface, log *slog.Logger, now func() time.Time, enabled func(*metrics.Def) bool) (*Collector, error) {
	if log == nil {
		log = slog.Default()
	}
	if now == nil {
		now = time.Now
	}
	c := &Collector{lib: lib, log: log.With("collector", Name), now: now, enabled: enabled}
	c.violations = c.exports(metrics.GPUViolationTime)
	c.profiling = c.exports(metrics.GPUActivity) || c.exports(metrics.GPUIOThroughput)
	c.nvlinkOn = c.nvlinkWanted()
	c.migProcesses = c.exports(metrics.GPUMIGProcesses)
	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		c.driver = v
	}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("counting GPUs: %w", ret)
	}
	if n == 0 {
		return nil, fmt.Errorf("NVML reports no GPU: %w", collectors.ErrNoSource)
	}
	for i := range n {
		c.devices = append(c.devices, c.openDevice(i))
	}
	c.inv = newInventory(n)
	c.openEvents()
	c.openGPM()
	c.log.Info("GPU collector started", "gpus", n, "driver", c.driver)
	return c, nil
}

func (c *Collector) openDevice(i int) *device {
	d := &device{index: i, xids: map[uint64]*xidCount{}}
	dev, ret := c.lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		// Without a handle the GPU can only be reported failed, under its index.
		c.log.Error("opening GPU; reporting it failed", "gpu", i, "err", ret)
		c.markLost(d)
		d.uuid = fmt.Sprintf("%s%d", indexPlaceholder, i)
		d.buildSeries("unknown", c.driver, "", "")
		return d
	}
	d.dev = dev
	uuid, ret := dev.GetUUID()
	if ret != nvml.SUCCESS {
		uuid = fmt.Sprintf("%s%d", indexPlaceholder, i)
	}
	d.uuid = uuid
	name, _ := dev.GetName()
	serial, _ := dev.GetSerial()
	var busID string
	if pci, ret := dev.GetPciInfo(); ret == nvml.SUCCESS {
		busID = cString(pci.BusId[:])
	}
	if name == "" {
		name = "unknown"
	}
	d.buildSeries(name, c.driver, serial, busID)
	// The time of the slowdown reasons rides in the same call (the health conditions read it).
	d.fields = []nvml.FieldValue{{FieldId: nvml.FI_DEV_POWER_INSTANT}, {FieldId: nvml.FI_DEV_MEMORY_TEMP}}
	for _, r := range slowdownReasons {
		d.fields = append(d.fields, nvml.FieldValue{FieldId: r.field})
	}
	return d
}

func (d *device) buildSeries(name, driver, serial, busID string) {
	id := []attribute.KeyValue{
		attribute.String(metrics.AttrHWType, "gpu"),
		attribute.String(metrics.AttrHWID, d.uuid),
		attribute.String(metrics.AttrHWName, name),
		attribute.Int(metrics.AttrGPUIndex, d.index),
	}
	d.base = sample.NewSeries(nil, id...)
	s := func(def *metrics.Def, extra ...attribute.KeyValue) *sample.Series { return d.base.With(def, extra...) }
	d.info = s(metrics.GPUInfo, attribute.String(metrics.AttrSerial, serial),
		attribute.String(metrics.AttrPCIBusID, busID), attribute.String(metrics.AttrDriverVersion, driver))
	d.statusOK = s(metrics.GPUStatus, attribute.String(metrics.AttrHWState, "ok"))
	d.statusFailed = s(metrics.GPUStatus, attribute.String(metrics.AttrHWState, "failed"))
	d.power = s(metrics.HWPower)
	d.powerInstant = s(metrics.GPUPowerInstant)
	d.energy = s(metrics.HWEnergy)
	d.tempGPU = s(metrics.HWTemperature, attribute.String(metrics.AttrSensorLocation, "gpu"))
	d.tempMemory = s(metrics.HWTemperature, attribute.String(metrics.AttrSensorLocation, "memory"))
	d.utilGeneral = s(metrics.GPUUtilization, attribute.String(metrics.AttrGPUTask, "general"))
	d.utilEncoder = s(metrics.GPUUtilization, attribute.String(metrics.AttrGPUTask, "encoder"))
	d.utilDecoder = s(metrics.GPUUtilization, attribute.String(metrics.AttrGPUTask, "decoder"))
	d.memActivity = s(metrics.GPUMemoryActivity)
	d.memUsage = s(metrics.GPUMemoryUsage)
	d.memLimit = s(metrics.GPUMemoryLimit)
	d.memUtil = s(metrics.GPUMemoryUtilization)
	d.memReserved = s(metrics.GPUMemoryReserved)
	d.ioTransmit = s(metrics.GPUIO, attribute.String(metrics.AttrIODirection, "transmit"))
	d.ioReceive = s(metrics.GPUIO, attribute.String(metrics.AttrIODirection, "receive"))
	d.eccCorrected = s(metrics.GPUErrors, attribute.String(metrics.AttrErrorType, "ecc_corrected"))
	d.eccUncorrected = s(metrics.GPUErrors, attribute.String(metrics.AttrErrorType, "ecc_uncorrected"))
	d.clockSM = s(metrics.GPUClock, attribute.String(metrics.AttrClockDomain, "sm"))
	d.clockMemory = s(metrics.GPUClock, attribute.String(metrics.AttrClockDomain, "memory"))
	d.clockMaxSM = s(metrics.GPUClockMax, attribute.String(metrics.AttrClockDomain, "sm"))
	d.clockMaxMem = s(metrics.GPUClockMax, attribute.String(metrics.AttrClockDomain, "memory"))
	for i, k := range limitKinds {
		d.limits[i] = s(metrics.GPUPowerLimit, attribute.String(metrics.AttrLimitKind, k))
	}
	for i, r := range throttleReasons {
		d.throttle[i] = s(metrics.GPUThrottle, attribute.String(metrics.AttrThrottleReason, r.name))
	}
	d.fan = s(metrics.GPUFanSpeed)
	d.pstate = s(metrics.GPUPerformanceState)
	d.health.build(s)
}

// openEvents registers every GPU for XID events. Without event support the collector runs on;
// XIDs are then not counted, which it says once.
func (c *Collector) openEvents() {
	set, ret := c.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		c.log.Info("NVML events unavailable; XID errors will not be counted", "err", ret)
		return
	}
	registered := 0
	for _, d := range c.devices {
		if d.lost {
			continue
		}
		supported, ret := d.dev.GetSupportedEventTypes()
		if ret != nvml.SUCCESS || supported&nvml.EventTypeXidCriticalError == 0 {
			continue
		}
		if ret := d.dev.RegisterEvents(nvml.EventTypeXidCriticalError, set); ret != nvml.SUCCESS {
			c.log.Info("registering XID events", "gpu", d.index, "err", ret)
			continue
		}
		registered++
	}
	if registered == 0 {
		if ret := set.Free(); ret != nvml.SUCCESS {
			c.log.Debug("freeing the unused NVML event set", "err", ret)
		}
		c.log.Info("no GPU supports XID events; XID errors will not be counted")
		return
	}
	c.events = set
}

// Close frees the event set; the backend's owner shuts NVML down.
func (c *Collector) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeGPM()
	c.closeMIG()
	if c.events != nil {
		if ret := c.events.Free(); ret != nvml.SUCCESS {
			return fmt.Errorf("freeing the NVML event set: %w", ret)
		}
		c.events = nil
	}
	return nil
}

// Collect reads every GPU. A lost GPU is reported failed and only looked for again every
// reprobeEvery; a query a GPU does not support is skipped from then on.
func (c *Collector) Collect(ctx context.Context, b *sample.Batch) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.logUnsupported()
	c.drainEvents()
	for _, d := range c.devices {
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.lost {
			c.reprobe(d)
		}
		c.collectDevice(d, b)
	}
	c.addInventory(b)
	return nil
}

func (c *Collector) drainEvents() {
	if c.events == nil {
		return
	}
	for range maxEventsPerCollection {
		ev, ret := c.events.Wait(0)
		if ret != nvml.SUCCESS {
			if ret != nvml.ERROR_TIMEOUT {
				c.log.Debug("reading NVML events", "err", ret)
			}
			return
		}
		if ev.EventType&nvml.EventTypeXidCriticalError == 0 {
			continue
		}
		d := c.deviceOf(ev.Device)
		if d == nil {
			continue
		}
		x := d.xids[ev.EventData]
		if x == nil {
			x = &xidCount{series: d.base.With(metrics.GPUErrors,
				attribute.String(metrics.AttrErrorType, "xid"), attribute.Int64(metrics.AttrXID, int64(ev.EventData)))}
			d.xids[ev.EventData] = x
		}
		x.n++
		c.log.Warn("GPU XID error", "gpu", d.index, "uuid", d.uuid, "xid", ev.EventData)
	}
}

func (c *Collector) deviceOf(dev nvml.Device) *device {
	for _, d := range c.devices {
		if d.dev == dev {
			return d
		}
	}
	return nil
}

// ok reports whether ret is success, and does the bookkeeping when it is not.
func (c *Collector) ok(d *device, p probe, ret nvml.Return) bool {
	return c.okPart(d, p, "", wholeGPU, ret)
}

// probePart is a query made on a GPU as a whole (part wholeGPU) or on one part of it: a link, a
// GPU instance.
type probePart struct {
	p    probe
	part int
}

const wholeGPU = -1

// okPart is ok for a query made once per part of the GPU (partKey names what part is: "link",
// "gpu_instance"): a part failing while its siblings answer is logged once for that part, and
// not again each time a sibling's call succeeds. "Not supported" and a lost GPU are the GPU's.
func (c *Collector) okPart(d *device, p probe, partKey string, part int, ret nvml.Return) bool {
	k := probePart{p, part}
	switch ret {
	case nvml.SUCCESS:
		if len(d.failing) > 0 && d.failing[k] {
			delete(d.failing, k)
			c.log.Info("GPU query works again", queryAttrs(d, p, partKey, part)...)
		}
		return true
	case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_FUNCTION_NOT_FOUND:
		d.unsupported[p] = true
		c.newlyUnsupported[p] = append(c.newlyUnsupported[p], d.index)
	case nvml.ERROR_GPU_IS_LOST:
		if !d.lost {
			c.markLost(d)
			c.log.Error("GPU fell off the bus; reporting it failed and looking for it again every 30 s", "gpu", d.index, "uuid", d.uuid)
		}
	default:
		if !d.failing[k] {
			if d.failing == nil {
				d.failing = map[probePart]bool{}
			}
			d.failing[k] = true
			c.log.Warn("GPU query failed", append(queryAttrs(d, p, partKey, part), "err", ret)...)
		}
	}
	return false
}

// queryAttrs are a query's log attributes: the GPU, the query, and the part when it has one.
func queryAttrs(d *device, p probe, partKey string, part int) []any {
	attrs := []any{"gpu", d.index, "query", probeNames[p]}
	if part != wholeGPU {
		attrs = append(attrs, partKey, part)
	}
	return attrs
}

// logUnsupported says once, at debug, which GPUs do not support each query found unsupported
// by this collection: a board without a fan or a video engine is normal, not news.
func (c *Collector) logUnsupported() {
	for p, gpus := range c.newlyUnsupported {
		if len(gpus) == 0 {
			continue
		}
		c.log.Debug("GPUs do not support this query; skipping it", "query", probeNames[p], "gpus", gpus)
		c.newlyUnsupported[p] = nil
	}
}

// want reports whether probe p should be queried on d.
func (d *device) want(p probe) bool { return !d.lost && !d.unsupported[p] }

func (c *Collector) collectDevice(d *device, b *sample.Batch) {
	b.Add(d.info, 1)
	defer func() {
		ok, failed := 1.0, 0.0
		if d.lost {
			ok, failed = 0, 1
		}
		b.Add(d.statusOK, ok)
		b.Add(d.statusFailed, failed)
		// XID counts stay exported after a GPU is lost: they are usually why.
		for _, x := range d.xids {
			b.Add(x.series, x.n)
		}
	}()
	if d.lost {
		return
	}
	dev := d.dev

	if d.want(probePower) {
		if mw, ret := dev.GetPowerUsage(); c.ok(d, probePower, ret) {
			b.Add(d.power, float64(mw)/1000)
		}
	}
	if d.want(probeFields) {
		for i := range d.fields {
			d.fields[i].NvmlReturn = 0
		}
		if ret := dev.GetFieldValues(d.fields); c.ok(d, probeFields, ret) {
			if v, ok := fieldValue(&d.fields[0]); ok {
				b.Add(d.powerInstant, v/1000)
			}
			if v, ok := fieldValue(&d.fields[1]); ok {
				b.Add(d.tempMemory, v)
			}
			c.noteSlowdownTime(d, d.fields[2:])
		}
	}
	c.collectSmoothing(d, b)
	if d.want(probeEnergy) {
		if mj, ret := dev.GetTotalEnergyConsumption(); c.ok(d, probeEnergy, ret) {
			b.Add(d.energy, float64(mj)/1000)
		}
	}
	if d.want(probeTemperature) {
		if t, ret := dev.GetTemperature(nvml.TEMPERATURE_GPU); c.ok(d, probeTemperature, ret) {
			b.Add(d.tempGPU, float64(t))
		}
	}
	if d.want(probeUtilization) {
		if u, ret := dev.GetUtilizationRates(); c.ok(d, probeUtilization, ret) {
			b.Add(d.utilGeneral, float64(u.Gpu)/100)
			b.Add(d.memActivity, float64(u.Memory)/100)
		}
	}
	if d.want(probeEncoder) {
		if u, _, ret := dev.GetEncoderUtilization(); c.ok(d, probeEncoder, ret) {
			b.Add(d.utilEncoder, float64(u)/100)
		}
	}
	if d.want(probeDecoder) {
		if u, _, ret := dev.GetDecoderUtilization(); c.ok(d, probeDecoder, ret) {
			b.Add(d.utilDecoder, float64(u)/100)
		}
	}
	if d.want(probeMemory) {
		c.collectMemory(d, b)
	}
	c.collectClocks(d, b)
	c.collectLimits(d, b)
	if d.want(probeThrottle) {
		reasons, ret := dev.GetCurrentClocksEventReasons()
		if ret == nvml.ERROR_FUNCTION_NOT_FOUND { // drivers before 535 only know the old name
			reasons, ret = dev.GetCurrentClocksThrottleReasons()
		}
		if c.ok(d, probeThrottle, ret) {
			d.health.reasons, d.health.reasonsRead = reasons, true
			for i, r := range throttleReasons {
				v := 0.0
				if reasons&r.mask != 0 {
					v = 1
				}
				b.Add(d.throttle[i], v)
			}
		}
	}
	c.collectPCIe(d, b)
	c.collectHealth(d, b)
	c.collectGPM(d, b)
	c.collectMIG(d, b)
	c.collectNVLink(d, b)
	if d.want(probeECCCorrected) {
		if n, ret := dev.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC); c.ok(d, probeECCCorrected, ret) {
			b.Add(d.eccCorrected, float64(n))
		}
	}
	if d.want(probeECCUncorrected) {
		if n, ret := dev.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC); c.ok(d, probeECCUncorrected, ret) {
			b.Add(d.eccUncorrected, float64(n))
		}
	}
	if d.want(probeFan) {
		if pct, ret := dev.GetFanSpeed(); c.ok(d, probeFan, ret) {
			b.Add(d.fan, float64(pct)/100)
		}
	}
	if d.want(probePerformanceState) {
		if p, ret := dev.GetPerformanceState(); c.ok(d, probePerformanceState, ret) && p != nvml.PSTATE_UNKNOWN {
			b.Add(d.pstate, float64(p))
		}
	}
}

// clockQueries are the clock reads, in the order of collectClocks' series.
var clockQueries = [...]struct {
	p      probe
	max    bool
	domain nvml.ClockType
}{
	{probeClockSM, false, nvml.CLOCK_SM}, {probeClockMem, false, nvml.CLOCK_MEM},
	{probeMaxClockSM, true, nvml.CLOCK_SM}, {probeMaxClockMem, true, nvml.CLOCK_MEM},
}

func (c *Collector) collectClocks(d *device, b *sample.Batch) {
	const hzPerMHz = 1e6
	// One probe per NVML call: a board that lacks one clock still reports the others.
	series := [...]*sample.Series{d.clockSM, d.clockMemory, d.clockMaxSM, d.clockMaxMem}
	for i, q := range clockQueries {
		if !d.want(q.p) {
			continue
		}
		var mhz uint32
		var ret nvml.Return
		if q.max {
			mhz, ret = d.dev.GetMaxClockInfo(q.domain)
		} else {
			mhz, ret = d.dev.GetClockInfo(q.domain)
		}
		if c.ok(d, q.p, ret) {
			b.Add(series[i], float64(mhz)*hzPerMHz)
		}
	}
}

func (c *Collector) collectLimits(d *device, b *sample.Batch) {
	const wPerMW = 1e-3
	var enforced, requested uint32
	if d.want(probeEnforcedLimit) {
		if mw, ret := d.dev.GetEnforcedPowerLimit(); c.ok(d, probeEnforcedLimit, ret) {
			b.Add(d.limits[0], float64(mw)*wPerMW)
			enforced = mw
		}
	}
	if d.want(probeRequestedLimit) {
		if mw, ret := d.dev.GetPowerManagementLimit(); c.ok(d, probeRequestedLimit, ret) {
			b.Add(d.limits[1], float64(mw)*wPerMW)
			requested = mw
		}
	}
	if enforced > 0 && requested > 0 {
		b.Add(d.health.outOfBand, outOfBand(enforced, requested))
	}
	if d.want(probeDefaultLimit) {
		if mw, ret := d.dev.GetPowerManagementDefaultLimit(); c.ok(d, probeDefaultLimit, ret) {
			b.Add(d.limits[2], float64(mw)*wPerMW)
		}
	}
	if d.want(probeLimitConstraints) {
		if lo, hi, ret := d.dev.GetPowerManagementLimitConstraints(); c.ok(d, probeLimitConstraints, ret) {
			b.Add(d.limits[3], float64(lo)*wPerMW)
			b.Add(d.limits[4], float64(hi)*wPerMW)
		}
	}
}

// collectPCIe turns NVML's sampled throughput (KB/s over a 20 ms window) into byte counters by
// integrating over the time since the last collection: an estimate, but a monotonic one that
// rate() in any backend turns back into throughput.
func (c *Collector) collectPCIe(d *device, b *sample.Batch) {
	now := c.now()
	c.integratePCIe(d, b, probePCIeTx, nvml.PCIE_UTIL_TX_BYTES, &d.pcieTx, d.ioTransmit, now)
	c.integratePCIe(d, b, probePCIeRx, nvml.PCIE_UTIL_RX_BYTES, &d.pcieRx, d.ioReceive, now)
}

// pcieCounter is one direction's byte counter, integrated from sampled KB/s.
type pcieCounter struct {
	bytes float64
	last  time.Time
}

// integratePCIe reads one direction (its own probe: a board may report one and not the other)
// and adds the sampled rate over the time since its last reading.
func (c *Collector) integratePCIe(d *device, b *sample.Batch, p probe, counter nvml.PcieUtilCounter, pc *pcieCounter, s *sample.Series, now time.Time) {
	if !d.want(p) {
		return
	}
	kbps, ret := d.dev.GetPcieThroughput(counter)
	if !c.ok(d, p, ret) {
		return
	}
	if !pc.last.IsZero() {
		if dt := now.Sub(pc.last).Seconds(); dt > 0 {
			pc.bytes += float64(kbps) * 1024 * dt
		}
	}
	pc.last = now
	b.Add(s, pc.bytes)
}

// fieldValue decodes an NVML field value; ok is false when the field failed.
func fieldValue(f *nvml.FieldValue) (float64, bool) {
	if nvml.Return(f.NvmlReturn) != nvml.SUCCESS {
		return 0, false
	}
	v := f.Value[:]
	switch nvml.ValueType(f.ValueType) {
	case nvml.VALUE_TYPE_DOUBLE:
		return math.Float64frombits(binary.LittleEndian.Uint64(v)), true
	case nvml.VALUE_TYPE_UNSIGNED_INT:
		return float64(binary.LittleEndian.Uint32(v)), true
	case nvml.VALUE_TYPE_UNSIGNED_LONG, nvml.VALUE_TYPE_UNSIGNED_LONG_LONG:
		return float64(binary.LittleEndian.Uint64(v)), true
	case nvml.VALUE_TYPE_SIGNED_LONG_LONG:
		return float64(int64(binary.LittleEndian.Uint64(v))), true
	case nvml.VALUE_TYPE_SIGNED_INT:
		return float64(int32(binary.LittleEndian.Uint32(v))), true
	case nvml.VALUE_TYPE_UNSIGNED_SHORT:
		return float64(binary.LittleEndian.Uint16(v)), true
	}
	return 0, false
}

// cString converts a NUL-terminated C char array.
func cString(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

// Devices lists the UUIDs of the GPUs the collector watches, in index order.
func (c *Collector) Devices() []string {
	out := make([]string, len(c.devices))
	for i, d := range c.devices {
		out[i] = d.uuid
	}
	return out
}

var _ collectors.Closer = (*Collector)(nil)

// collectMemory reads the GPU's memory, through the first version of the call on drivers that
// lack the second.
func (c *Collector) collectMemory(d *device, b *sample.Batch) {
	var used, total, free uint64
	if !d.memoryV1 {
		m, ret := d.dev.GetMemoryInfo_v2()
		switch ret {
		case nvml.ERROR_FUNCTION_NOT_FOUND, nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_ARGUMENT_VERSION_MISMATCH:
			d.memoryV1 = true
			c.log.Debug("GPU has no memory info v2; reading the first version (no reserved memory)", "gpu", d.index, "err", ret)
		default:
			if !c.ok(d, probeMemory, ret) {
				return
			}
			used, total, free = m.Used, m.Total, m.Free
			b.Add(d.memReserved, float64(m.Reserved))
		}
	}
	if d.memoryV1 {
		m, ret := d.dev.GetMemoryInfo()
		if !c.ok(d, probeMemory, ret) {
			return
		}
		used, total, free = m.Used, m.Total, m.Free
	}
	b.Add(d.memUsage, float64(used))
	b.Add(d.memLimit, float64(total))
	b.Add(d.health.memFree, float64(free))
	if total > 0 {
		b.Add(d.memUtil, float64(used)/float64(total))
	}
}
