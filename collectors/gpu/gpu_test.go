package gpu

import (
	"context"
	"encoding/binary"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

// fakeGPU is a go-nvml mock device with every query the collector makes answering a known
// value; tests override single functions to inject errors.
type fakeGPU struct {
	*mock.Device
	calls atomic.Int64 // device calls made after the handle was opened
}

func newFakeGPU(index int) *fakeGPU {
	f := &fakeGPU{}
	count := func() { f.calls.Add(1) }
	f.Device = &mock.Device{
		GetUUIDFunc:   func() (string, nvml.Return) { return "GPU-0000000" + string(rune('0'+index)), nvml.SUCCESS },
		GetNameFunc:   func() (string, nvml.Return) { return "NVIDIA H100 80GB HBM3", nvml.SUCCESS },
		GetSerialFunc: func() (string, nvml.Return) { return "165432100001", nvml.SUCCESS },
		GetPciInfoFunc: func() (nvml.PciInfo, nvml.Return) {
			var p nvml.PciInfo
			for i, c := range "00000000:18:00.0" {
				p.BusId[i] = int8(c)
			}
			return p, nvml.SUCCESS
		},
		GetSupportedEventTypesFunc: func() (uint64, nvml.Return) { return nvml.EventTypeXidCriticalError, nvml.SUCCESS },
		RegisterEventsFunc:         func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS },
		GetPowerUsageFunc:          func() (uint32, nvml.Return) { count(); return 512_000, nvml.SUCCESS },
		GetMigModeFunc:             func() (int, int, nvml.Return) { return nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_DISABLE, nvml.SUCCESS },
		GetNvLinkStateFunc: func(l int) (nvml.EnableState, nvml.Return) {
			if l < 2 { // two links
				return nvml.FEATURE_ENABLED, nvml.SUCCESS
			}
			return 0, nvml.ERROR_INVALID_ARGUMENT
		},
		GetNvLinkErrorCounterFunc:     func(int, nvml.NvLinkErrorCounter) (uint64, nvml.Return) { return 1, nvml.SUCCESS },
		GetNvLinkVersionFunc:          func(int) (uint32, nvml.Return) { return 4, nvml.SUCCESS },
		GetNvLinkRemoteDeviceTypeFunc: func(int) (nvml.IntNvLinkDeviceType, nvml.Return) { return nvml.NVLINK_DEVICE_TYPE_SWITCH, nvml.SUCCESS },
		GetFieldValuesFunc: func(fv []nvml.FieldValue) nvml.Return {
			count()
			for i := range fv {
				fv[i].ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_INT)
				switch fv[i].FieldId {
				case nvml.FI_DEV_POWER_INSTANT:
					binary.LittleEndian.PutUint32(fv[i].Value[:], 530_000)
				case nvml.FI_DEV_MEMORY_TEMP:
					binary.LittleEndian.PutUint32(fv[i].Value[:], 61)
				case nvml.FI_DEV_RETIRED_SBE:
					binary.LittleEndian.PutUint32(fv[i].Value[:], 2)
				case nvml.FI_DEV_RETIRED_DBE, nvml.FI_DEV_RETIRED_PENDING:
					binary.LittleEndian.PutUint32(fv[i].Value[:], 1)
				default:
					fv[i].NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
				}
			}
			return nvml.SUCCESS
		},
		GetTotalEnergyConsumptionFunc: func() (uint64, nvml.Return) { count(); return 1_234_567_000, nvml.SUCCESS },
		GetTemperatureFunc:            func(nvml.TemperatureSensors) (uint32, nvml.Return) { count(); return 67, nvml.SUCCESS },
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) {
			count()
			return nvml.Utilization{Gpu: 93, Memory: 41}, nvml.SUCCESS
		},
		GetEncoderUtilizationFunc: func() (uint32, uint32, nvml.Return) { count(); return 0, 167000, nvml.SUCCESS },
		GetDecoderUtilizationFunc: func() (uint32, uint32, nvml.Return) { count(); return 12, 167000, nvml.SUCCESS },
		GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
			count()
			return nvml.Memory_v2{Total: 80 << 30, Reserved: 512 << 20, Used: 60 << 30, Free: 20<<30 - 512<<20}, nvml.SUCCESS
		},
		GetClockInfoFunc: func(t nvml.ClockType) (uint32, nvml.Return) {
			count()
			if t == nvml.CLOCK_SM {
				return 1755, nvml.SUCCESS
			}
			return 2619, nvml.SUCCESS
		},
		GetMaxClockInfoFunc: func(t nvml.ClockType) (uint32, nvml.Return) {
			count()
			if t == nvml.CLOCK_SM {
				return 1980, nvml.SUCCESS
			}
			return 2619, nvml.SUCCESS
		},
		GetEnforcedPowerLimitFunc:          func() (uint32, nvml.Return) { count(); return 600_000, nvml.SUCCESS },
		GetPowerManagementLimitFunc:        func() (uint32, nvml.Return) { count(); return 650_000, nvml.SUCCESS },
		GetPowerManagementDefaultLimitFunc: func() (uint32, nvml.Return) { count(); return 700_000, nvml.SUCCESS },
		GetPowerManagementLimitConstraintsFunc: func() (uint32, uint32, nvml.Return) {
			count()
			return 200_000, 700_000, nvml.SUCCESS
		},
		GetCurrentClocksEventReasonsFunc: func() (uint64, nvml.Return) {
			count()
			return nvml.ClocksEventReasonSwPowerCap | nvml.ClocksThrottleReasonHwThermalSlowdown, nvml.SUCCESS
		},
		GetPcieThroughputFunc: func(c nvml.PcieUtilCounter) (uint32, nvml.Return) {
			count()
			if c == nvml.PCIE_UTIL_TX_BYTES {
				return 1000, nvml.SUCCESS // KB/s
			}
			return 2000, nvml.SUCCESS
		},
		GetTotalEccErrorsFunc: func(t nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
			count()
			switch {
			case t == nvml.MEMORY_ERROR_TYPE_CORRECTED && c == nvml.AGGREGATE_ECC:
				return 10, nvml.SUCCESS
			case t == nvml.MEMORY_ERROR_TYPE_CORRECTED:
				return 3, nvml.SUCCESS
			}
			return 0, nvml.SUCCESS
		},
		GetViolationStatusFunc: func(p nvml.PerfPolicyType) (nvml.ViolationTime, nvml.Return) {
			count()
			ns := map[nvml.PerfPolicyType]uint64{nvml.PERF_POLICY_POWER: 1_500_000_000, nvml.PERF_POLICY_THERMAL: 250_000_000}[p]
			return nvml.ViolationTime{ReferenceTime: 1_700_000_000_000_000, ViolationTime: ns}, nvml.SUCCESS
		},
		GpmQueryDeviceSupportFunc: func() (nvml.GpmSupport, nvml.Return) {
			return nvml.GpmSupport{Version: 1, IsSupportedDevice: 1}, nvml.SUCCESS
		},
		GpmSampleGetFunc:         func(nvml.GpmSample) nvml.Return { count(); return nvml.SUCCESS },
		GetRemappedRowsFunc:      func() (int, int, bool, bool, nvml.Return) { count(); return 4, 1, true, false, nvml.SUCCESS },
		GetPcieReplayCounterFunc: func() (int, nvml.Return) { count(); return 7, nvml.SUCCESS },
		GetFanSpeedFunc:          func() (uint32, nvml.Return) { count(); return 45, nvml.SUCCESS },
		GetPerformanceStateFunc:  func() (nvml.Pstates, nvml.Return) { count(); return nvml.PSTATE_0, nvml.SUCCESS },
	}
	return f
}

// fakeLib is a mock NVML library over fake GPUs with an event set tests can feed.
type fakeLib struct {
	*mock.Interface
	gpus   []*fakeGPU
	events chan nvml.EventData
}

func newFakeLib(n int) *fakeLib {
	l := &fakeLib{events: make(chan nvml.EventData, 16)}
	for i := range n {
		l.gpus = append(l.gpus, newFakeGPU(i))
	}
	set := &mock.EventSet{
		WaitFunc: func(uint32) (nvml.EventData, nvml.Return) {
			select {
			case ev := <-l.events:
				return ev, nvml.SUCCESS
			default:
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return { return nvml.SUCCESS },
	}
	l.Interface = &mock.Interface{
		SystemGetDriverVersionFunc: func() (string, nvml.Return) { return "580.95.05", nvml.SUCCESS },
		DeviceGetCountFunc:         func() (int, nvml.Return) { return len(l.gpus), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) { return l.gpus[i], nvml.SUCCESS },
		EventSetCreateFunc:         func() (nvml.EventSet, nvml.Return) { return set, nvml.SUCCESS },
		GpmSampleAllocFunc: func() (nvml.GpmSample, nvml.Return) {
			return &mock.GpmSample{FreeFunc: func() nvml.Return { return nvml.SUCCESS }}, nvml.SUCCESS
		},
		GpmMetricsGetFunc: fakeGPMMetrics,
	}
	return l
}

// fakeGPMMetrics answers GPM metrics as a Hopper board busy with matrix work would: SMs 80 %
// busy, tensor pipes 60 %, PCIe 100 MiB/s out, NVLink 2048 MiB/s in; two of the eight decoders
// at 30 %, and the second optical-flow engine absent.
func fakeGPMMetrics(mg *nvml.GpmMetricsGetType) nvml.Return {
	for i := range mg.Metrics[:mg.NumMetrics] {
		m := &mg.Metrics[i]
		m.Value, m.NvmlReturn = 0, uint32(nvml.SUCCESS)
		switch nvml.GpmMetricId(m.MetricId) {
		case nvml.GPM_METRIC_SM_UTIL:
			m.Value = 80
		case nvml.GPM_METRIC_ANY_TENSOR_UTIL:
			m.Value = 60
		case nvml.GPM_METRIC_PCIE_TX_PER_SEC:
			m.Value = 100
		case nvml.GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC:
			m.Value = 2048
		case nvml.GPM_METRIC_NVDEC_0_UTIL, nvml.GPM_METRIC_NVDEC_1_UTIL:
			m.Value = 30
		case nvml.GPM_METRIC_NVOFA_1_UTIL:
			m.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
		case nvml.GPM_METRIC_NVOFA_0_UTIL:
			m.Value = 10
		}
	}
	return nvml.SUCCESS
}

func collect(t *testing.T, c *Collector) *sample.Batch {
	t.Helper()
	b := &sample.Batch{}
	if err := c.Collect(context.Background(), b); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	return b
}

func TestCollectConvertsUnits(t *testing.T) {
	lib := newFakeLib(2)
	log, _ := testkit.NewLogger()
	c := mustNew(t, lib, log, nil)
	b := collect(t, c)
	gpu1 := attribute.Int(metrics.AttrGPUIndex, 1)
	str := attribute.String
	cases := []struct {
		def   *metrics.Def
		attrs []attribute.KeyValue
		want  float64
	}{
		{metrics.HWPower, nil, 512},
		{metrics.GPUPowerInstant, nil, 530},
		{metrics.HWEnergy, nil, 1_234_567},
		{metrics.HWTemperature, []attribute.KeyValue{str(metrics.AttrSensorLocation, "gpu")}, 67},
		{metrics.HWTemperature, []attribute.KeyValue{str(metrics.AttrSensorLocation, "memory")}, 61},
		{metrics.GPUUtilization, []attribute.KeyValue{str(metrics.AttrGPUTask, "general")}, 0.93},
		{metrics.GPUUtilization, []attribute.KeyValue{str(metrics.AttrGPUTask, "encoder")}, 0},
		{metrics.GPUUtilization, []attribute.KeyValue{str(metrics.AttrGPUTask, "decoder")}, 0.12},
		{metrics.GPUMemoryActivity, nil, 0.41},
		{metrics.GPUMemoryUsage, nil, 60 << 30},
		{metrics.GPUMemoryLimit, nil, 80 << 30},
		{metrics.GPUMemoryReserved, nil, 512 << 20},
		{metrics.GPUMemoryUtilization, nil, 0.75},
		{metrics.GPUClock, []attribute.KeyValue{str(metrics.AttrClockDomain, "sm")}, 1755e6},
		{metrics.GPUClock, []attribute.KeyValue{str(metrics.AttrClockDomain, "memory")}, 2619e6},
		{metrics.GPUClockMax, []attribute.KeyValue{str(metrics.AttrClockDomain, "sm")}, 1980e6},
		{metrics.GPUPowerLimit, []attribute.KeyValue{str(metrics.AttrLimitKind, "enforced")}, 600},
		{metrics.GPUPowerLimit, []attribute.KeyValue{str(metrics.AttrLimitKind, "requested")}, 650},
		{metrics.GPUPowerLimit, []attribute.KeyValue{str(metrics.AttrLimitKind, "default")}, 700},
		{metrics.GPUPowerLimit, []attribute.KeyValue{str(metrics.AttrLimitKind, "min")}, 200},
		{metrics.GPUPowerLimit, []attribute.KeyValue{str(metrics.AttrLimitKind, "max")}, 700},
		{metrics.GPUThrottle, []attribute.KeyValue{str(metrics.AttrThrottleReason, "sw_power_cap")}, 1},
		{metrics.GPUThrottle, []attribute.KeyValue{str(metrics.AttrThrottleReason, "hw_thermal")}, 1},
		{metrics.GPUThrottle, []attribute.KeyValue{str(metrics.AttrThrottleReason, "idle")}, 0},
		{metrics.GPUIO, []attribute.KeyValue{str(metrics.AttrIODirection, "transmit")}, 0}, // first sample: no interval yet
		{metrics.GPUErrors, []attribute.KeyValue{str(metrics.AttrErrorType, "ecc_corrected")}, 3},
		{metrics.GPUErrors, []attribute.KeyValue{str(metrics.AttrErrorType, "ecc_uncorrected")}, 0},
		{metrics.GPUECCAggregate, []attribute.KeyValue{str(metrics.AttrErrorType, "corrected")}, 10},
		{metrics.GPUECCAggregate, []attribute.KeyValue{str(metrics.AttrErrorType, "uncorrected")}, 0},
		{metrics.GPUViolationTime, []attribute.KeyValue{str(metrics.AttrViolationPolicy, "power")}, 1.5},
		{metrics.GPUViolationTime, []attribute.KeyValue{str(metrics.AttrViolationPolicy, "thermal")}, 0.25},
		{metrics.GPUViolationTime, []attribute.KeyValue{str(metrics.AttrViolationPolicy, "reliability")}, 0},
		{metrics.GPUHealth, []attribute.KeyValue{str(metrics.AttrHealthCondition, "hw_slowdown")}, 1},
		{metrics.GPUHealth, []attribute.KeyValue{str(metrics.AttrHealthCondition, "power_brake")}, 0},
		{metrics.GPUOutOfBandLimit, nil, 1},
		{metrics.GPUMemoryFree, nil, 20<<30 - 512<<20},
		{metrics.GPURemappedRows, []attribute.KeyValue{str(metrics.AttrErrorType, "corrected")}, 4},
		{metrics.GPURemappedRows, []attribute.KeyValue{str(metrics.AttrErrorType, "uncorrected")}, 1},
		{metrics.GPURemapPending, nil, 1},
		{metrics.GPURemapFailed, nil, 0},
		{metrics.GPURetiredPages, []attribute.KeyValue{str(metrics.AttrErrorType, "single_bit")}, 2},
		{metrics.GPURetiredPages, []attribute.KeyValue{str(metrics.AttrErrorType, "double_bit")}, 1},
		{metrics.GPURetirementPending, nil, 1},
		{metrics.GPUPCIeReplays, nil, 7},
		{metrics.GPUFanSpeed, nil, 0.45},
		{metrics.GPUPerformanceState, nil, 0},
		{metrics.GPUStatus, []attribute.KeyValue{str(metrics.AttrHWState, "ok")}, 1},
		{metrics.GPUStatus, []attribute.KeyValue{str(metrics.AttrHWState, "failed")}, 0},
		{metrics.GPUInfo, []attribute.KeyValue{str(metrics.AttrPCIBusID, "00000000:18:00.0"), str(metrics.AttrDriverVersion, "580.95.05")}, 1},
	}
	for _, tc := range cases {
		got, ok := b.Find(tc.def, append(tc.attrs, gpu1)...)
		if !ok {
			t.Errorf("%s %v: no point", tc.def.Name, tc.attrs)
			continue
		}
		if math.Abs(got-tc.want) > 1e-9*math.Max(1, math.Abs(tc.want)) {
			t.Errorf("%s %v = %v, want %v", tc.def.Name, tc.attrs, got, tc.want)
		}
	}
	if got, want := c.Devices(), []string{"GPU-00000000", "GPU-00000001"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("Devices() = %v, want %v", got, want)
	}
}

func TestPCIeCountersIntegrateThroughput(t *testing.T) {
	lib := newFakeLib(1)
	now := time.Unix(1000, 0)
	c := mustNew(t, lib, nil, func() time.Time { return now })
	collect(t, c)
	now = now.Add(2 * time.Second)
	b := collect(t, c)
	tx, _ := b.Find(metrics.GPUIO, attribute.String(metrics.AttrIODirection, "transmit"))
	rx, _ := b.Find(metrics.GPUIO, attribute.String(metrics.AttrIODirection, "receive"))
	if tx != 1000*1024*2 || rx != 2000*1024*2 {
		t.Errorf("after 2 s at 1000/2000 KB/s: tx=%v rx=%v bytes, want %v and %v", tx, rx, 1000*1024*2, 2000*1024*2)
	}
}

func TestNotSupportedIsSkippedAndLoggedOnce(t *testing.T) {
	lib := newFakeLib(1)
	var fanCalls atomic.Int64
	lib.gpus[0].GetFanSpeedFunc = func() (uint32, nvml.Return) {
		fanCalls.Add(1)
		return 0, nvml.ERROR_NOT_SUPPORTED
	}
	log, logs := testkit.NewLogger()
	c := mustNew(t, lib, log, nil)
	for range 3 {
		b := collect(t, c)
		if _, ok := b.Find(metrics.GPUFanSpeed); ok {
			t.Fatal("fan speed exported for a GPU that does not support it")
		}
		if _, ok := b.Find(metrics.HWPower); !ok {
			t.Fatal("an unsupported query took other metrics with it")
		}
	}
	if n := fanCalls.Load(); n != 1 {
		t.Errorf("GetFanSpeed called %d times, want once (then skipped)", n)
	}
	if n := logs.Count("query=\"fan speed\""); n != 1 {
		t.Errorf("not-supported logged %d times, want once:\n%s", n, logs.String())
	}
}

// Each NVML call has its own probe: a board without a memory clock or uncorrected ECC counts
// still reports its SM clock and corrected counts, and a call that keeps failing is logged once.
func TestOneFailingCallKeepsItsNeighbours(t *testing.T) {
	lib := newFakeLib(1)
	clock := lib.gpus[0].GetClockInfoFunc
	lib.gpus[0].GetClockInfoFunc = func(t nvml.ClockType) (uint32, nvml.Return) {
		if t == nvml.CLOCK_MEM {
			return 0, nvml.ERROR_NOT_SUPPORTED
		}
		return clock(t)
	}
	ecc := lib.gpus[0].GetTotalEccErrorsFunc
	lib.gpus[0].GetTotalEccErrorsFunc = func(t nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
		if t == nvml.MEMORY_ERROR_TYPE_UNCORRECTED {
			return 0, nvml.ERROR_UNKNOWN
		}
		return ecc(t, c)
	}
	log, logs := testkit.NewLogger()
	c := mustNew(t, lib, log, nil)
	for range 3 {
		b := collect(t, c)
		if _, ok := b.Find(metrics.GPUClock, attribute.String(metrics.AttrClockDomain, "sm")); !ok {
			t.Fatal("the SM clock went missing with the memory clock")
		}
		if _, ok := b.Find(metrics.GPUClock, attribute.String(metrics.AttrClockDomain, "memory")); ok {
			t.Fatal("an unsupported memory clock was exported")
		}
	}
	if n := logs.Count("works again"); n != 0 {
		t.Errorf("a steadily failing call was logged as working again %d times:\n%s", n, logs.String())
	}
	if n := logs.Count("query=\"uncorrected ECC errors\""); n != 1 {
		t.Errorf("the failing uncorrected-ECC query was logged %d times, want once:\n%s", n, logs.String())
	}
}

func TestLostGPUIsReportedFailedAndLeftAlone(t *testing.T) {
	lib := newFakeLib(2)
	var lost atomic.Bool
	lib.gpus[1].GetPowerUsageFunc = func() (uint32, nvml.Return) {
		lib.gpus[1].calls.Add(1)
		if lost.Load() {
			return 0, nvml.ERROR_GPU_IS_LOST
		}
		return 300_000, nvml.SUCCESS
	}
	log, logs := testkit.NewLogger()
	c := mustNew(t, lib, log, nil)
	collect(t, c)
	lost.Store(true)
	collect(t, c) // GPU 1 falls off the bus during this collection
	callsAfterLoss := lib.gpus[1].calls.Load()
	b := collect(t, c)

	gpu := func(i int) attribute.KeyValue { return attribute.Int(metrics.AttrGPUIndex, i) }
	failed, _ := b.Find(metrics.GPUStatus, gpu(1), attribute.String(metrics.AttrHWState, "failed"))
	okv, _ := b.Find(metrics.GPUStatus, gpu(1), attribute.String(metrics.AttrHWState, "ok"))
	if failed != 1 || okv != 0 {
		t.Errorf("lost GPU status failed=%v ok=%v, want 1 and 0", failed, okv)
	}
	if _, ok := b.Find(metrics.HWPower, gpu(1)); ok {
		t.Error("a lost GPU still reports power")
	}
	if _, ok := b.Find(metrics.HWPower, gpu(0)); !ok {
		t.Error("the healthy GPU stopped reporting when its neighbour was lost")
	}
	if n := lib.gpus[1].calls.Load(); n != callsAfterLoss {
		t.Errorf("lost GPU queried %d more times; it must be left alone", n-callsAfterLoss)
	}
	if n := logs.Count("GPU fell off the bus"); n != 1 {
		t.Errorf("loss logged %d times, want once", n)
	}
}

func TestXIDEventsAreCountedByCode(t *testing.T) {
	lib := newFakeLib(2)
	c := mustNew(t, lib, nil, nil)
	for _, xid := range []uint64{79, 79, 48} {
		lib.events <- nvml.EventData{Device: lib.gpus[1], EventType: nvml.EventTypeXidCriticalError, EventData: xid}
	}
	b := collect(t, c)
	xid := func(code int64) []attribute.KeyValue {
		return []attribute.KeyValue{attribute.Int(metrics.AttrGPUIndex, 1), attribute.String(metrics.AttrErrorType, "xid"), attribute.Int64(metrics.AttrXID, code)}
	}
	if n, _ := b.Find(metrics.GPUErrors, xid(79)...); n != 2 {
		t.Errorf("xid 79 count = %v, want 2", n)
	}
	if n, _ := b.Find(metrics.GPUErrors, xid(48)...); n != 1 {
		t.Errorf("xid 48 count = %v, want 1", n)
	}
	if _, ok := b.Find(metrics.GPUErrors, attribute.Int(metrics.AttrGPUIndex, 0), attribute.String(metrics.AttrErrorType, "xid")); ok {
		t.Error("GPU 0 got another GPU's XID")
	}
	// Counters are cumulative: they stay when no new event arrives.
	b = collect(t, c)
	if n, _ := b.Find(metrics.GPUErrors, xid(79)...); n != 2 {
		t.Errorf("xid 79 count after a quiet collection = %v, want 2", n)
	}
}

// A hung NVML call must not stall the agent: the runner's deadline fires, the GPU collector
// reports down, the other collectors go on, and the GPU collector recovers once the call returns.
func TestHungNVMLCallHitsTheDeadline(t *testing.T) {
	lib := newFakeLib(1)
	release := make(chan struct{})
	var hang atomic.Bool
	lib.gpus[0].GetPowerUsageFunc = func() (uint32, nvml.Return) {
		if hang.Load() {
			<-release
		}
		return 100_000, nvml.SUCCESS
	}
	log, _ := testkit.NewLogger()
	c := mustNew(t, lib, log, nil)
	store := sample.NewStore()
	r := collectors.NewRunner(store, log, nil)
	r.Add(Name, c, time.Hour, 50*time.Millisecond)
	other := &countingCollector{}
	r.Add("other", other, time.Hour, time.Second)

	up := func(name string) float64 {
		var v float64 = -1
		store.View(collectors.SelfKey(name), func(b *sample.Batch) {
			if b == nil {
				return
			}
			for _, p := range b.Points {
				if p.Series.Def == metrics.CollectorUp {
					v = p.Value
				}
			}
		})
		return v
	}

	r.CollectOnce(context.Background())
	if up(Name) != 1 {
		t.Fatalf("gpu up = %v before the hang, want 1", up(Name))
	}
	hang.Store(true)
	r.CollectOnce(context.Background())
	if up(Name) != 0 {
		t.Errorf("gpu up = %v while NVML hangs, want 0", up(Name))
	}
	var hasData bool
	store.View(Name, func(b *sample.Batch) { hasData = b != nil })
	if hasData {
		t.Error("stale GPU data kept while the collector is hung")
	}
	if up("other") != 1 || other.n.Load() != 2 {
		t.Errorf("the other collector: up=%v after %d collections; a hung GPU must not stop it", up("other"), other.n.Load())
	}
	r.CollectOnce(context.Background()) // still hung: no second goroutine is started
	hang.Store(false)
	close(release)
	// The hung call returns; the next collections succeed again.
	if !testkit.Poll(testkit.DefaultWait, func() bool { r.CollectOnce(context.Background()); return up(Name) == 1 }) {
		t.Error("gpu collector did not recover after the hung call returned")
	}
}

type countingCollector struct{ n atomic.Int64 }

func (c *countingCollector) Collect(context.Context, *sample.Batch) error {
	c.n.Add(1)
	return nil
}

func TestFieldValueDecoding(t *testing.T) {
	put := func(vt nvml.ValueType, fill func(b []byte)) nvml.FieldValue {
		f := nvml.FieldValue{ValueType: uint32(vt)}
		fill(f.Value[:])
		return f
	}
	le := binary.LittleEndian
	cases := []struct {
		name string
		f    nvml.FieldValue
		want float64
		ok   bool
	}{
		{"double", put(nvml.VALUE_TYPE_DOUBLE, func(b []byte) { le.PutUint64(b, math.Float64bits(12.5)) }), 12.5, true},
		{"uint", put(nvml.VALUE_TYPE_UNSIGNED_INT, func(b []byte) { le.PutUint32(b, 530000) }), 530000, true},
		{"ulonglong", put(nvml.VALUE_TYPE_UNSIGNED_LONG_LONG, func(b []byte) { le.PutUint64(b, 1<<40) }), 1 << 40, true},
		{"slonglong", put(nvml.VALUE_TYPE_SIGNED_LONG_LONG, func(b []byte) { le.PutUint64(b, uint64(math.MaxUint64)) }), -1, true},
		{"sint", put(nvml.VALUE_TYPE_SIGNED_INT, func(b []byte) { le.PutUint32(b, uint32(math.MaxUint32)) }), -1, true},
		{"ushort", put(nvml.VALUE_TYPE_UNSIGNED_SHORT, func(b []byte) { le.PutUint16(b, 7) }), 7, true},
		{"failed field", nvml.FieldValue{NvmlReturn: uint32(nvml.ERROR_NOT_SUPPORTED)}, 0, false},
		{"unknown type", nvml.FieldValue{ValueType: 99}, 0, false},
	}
	for _, tc := range cases {
		got, ok := fieldValue(&tc.f)
		if ok != tc.ok || got != tc.want {
			t.Errorf("%s: got %v,%v want %v,%v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func TestNoGPUIsNoSource(t *testing.T) {
	lib := newFakeLib(0)
	if _, err := New(lib, nil, nil); err == nil || !strings.Contains(err.Error(), "no GPU") {
		t.Errorf("New on a host without GPUs: err = %v, want a no-GPU error", err)
	}
}

// GPUs that differ in what they support are named per query, each query in its own line.
func TestNotSupportedIsOneLinePerQueryNamingTheGPUs(t *testing.T) {
	lib := newFakeLib(3)
	for _, i := range []int{0, 2} {
		lib.gpus[i].GetFanSpeedFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	}
	lib.gpus[1].GetPerformanceStateFunc = func() (nvml.Pstates, nvml.Return) {
		return nvml.PSTATE_UNKNOWN, nvml.ERROR_FUNCTION_NOT_FOUND
	}
	log, logs := testkit.NewLogger()
	c := mustNew(t, lib, log, nil)
	for range 3 {
		collect(t, c)
	}
	for _, want := range []string{
		`level=DEBUG msg="GPUs do not support this query; skipping it" collector=gpu query="fan speed" gpus="[0 2]"`,
		`level=DEBUG msg="GPUs do not support this query; skipping it" collector=gpu query="performance state" gpus=[1]`,
	} {
		if n := logs.Count(want); n != 1 {
			t.Errorf("%d lines\n%s\nwant one; log:\n%s", n, want, logs.String())
		}
	}
	if n := logs.Count("support"); n != 2 {
		t.Errorf("%d lines about unsupported queries, want 2:\n%s", n, logs.String())
	}
}

// A lost GPU is looked for by its UUID once per reprobeEvery, not on every collection, and stays
// failed while the lookup fails.
func TestLostGPUIsLookedForAtASlowPace(t *testing.T) {
	lib := newFakeLib(2)
	var lost atomic.Bool
	lib.gpus[1].GetPowerUsageFunc = func() (uint32, nvml.Return) {
		if lost.Load() {
			return 0, nvml.ERROR_GPU_IS_LOST
		}
		return 300_000, nvml.SUCCESS
	}
	var lookups atomic.Int64
	lib.DeviceGetHandleByUUIDFunc = func(uuid string) (nvml.Device, nvml.Return) {
		lookups.Add(1)
		if lost.Load() {
			return nil, nvml.ERROR_GPU_IS_LOST
		}
		for _, g := range lib.gpus {
			if u, _ := g.GetUUID(); u == uuid {
				return g, nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	now := time.Unix(1_700_000_000, 0)
	c := mustNew(t, lib, nil, func() time.Time { return now })
	lost.Store(true)
	collect(t, c)
	for range 10 { // 10 s of collections: no lookup yet
		now = now.Add(time.Second)
		collect(t, c)
	}
	if n := lookups.Load(); n != 0 {
		t.Fatalf("a lost GPU was looked for %d times within %s", n, reprobeEvery)
	}
	for range 60 { // 60 s more: two lookups
		now = now.Add(time.Second)
		collect(t, c)
	}
	if n := lookups.Load(); n != 2 {
		t.Fatalf("a lost GPU was looked for %d times in 70 s, want 2", n)
	}
	lost.Store(false)
	now = now.Add(reprobeEvery)
	b := collect(t, c)
	if v, _ := b.Find(metrics.GPUStatus, attribute.Int(metrics.AttrGPUIndex, 1), attribute.String(metrics.AttrHWState, "ok")); v != 1 {
		t.Error("a GPU found again is still reported failed")
	}
	if v, ok := b.Find(metrics.HWPower, attribute.Int(metrics.AttrGPUIndex, 1)); !ok || v != 300 {
		t.Errorf("a GPU found again reports power %v (%v), want 300", v, ok)
	}
}

// A GPU that could not be opened at start is looked for by its index and, once it answers,
// exported under its real identity; the placeholder's series are no longer exported.
func TestGPUMissingAtStartIsOpenedLater(t *testing.T) {
	lib := newFakeLib(2)
	var missing atomic.Bool
	missing.Store(true)
	byIndex := lib.DeviceGetHandleByIndexFunc
	lib.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i == 1 && missing.Load() {
			return nil, nvml.ERROR_GPU_IS_LOST
		}
		return byIndex(i)
	}
	now := time.Unix(1_700_000_000, 0)
	c := mustNew(t, lib, nil, func() time.Time { return now })
	b := collect(t, c)
	if _, ok := b.Find(metrics.GPUStatus, attribute.String(metrics.AttrHWID, "gpu-index-1"), attribute.String(metrics.AttrHWState, "failed")); !ok {
		t.Fatal("a GPU that cannot be opened is not reported failed under its index")
	}
	missing.Store(false)
	now = now.Add(reprobeEvery)
	b = collect(t, c)
	if _, ok := b.Find(metrics.GPUStatus, attribute.String(metrics.AttrHWID, "gpu-index-1")); ok {
		t.Error("the placeholder identity is still exported after the GPU was opened")
	}
	if v, _ := b.Find(metrics.GPUStatus, attribute.String(metrics.AttrHWID, "GPU-00000001"), attribute.String(metrics.AttrHWState, "ok")); v != 1 {
		t.Error("the GPU opened late is not reported ok under its UUID")
	}
}

// A driver without GetMemoryInfo_v2 (before R510) still gives the GPU's memory, through the
// first version of the call, which has no reserved memory; the second version is not asked
// again.
func TestMemoryFromTheFirstVersionOnOlderDrivers(t *testing.T) {
	lib := newFakeLib(1)
	v2Calls := 0
	lib.gpus[0].GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
		v2Calls++
		return nvml.Memory_v2{}, nvml.ERROR_FUNCTION_NOT_FOUND
	}
	lib.gpus[0].GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		return nvml.Memory{Total: 80 << 30, Used: 20 << 30, Free: 60 << 30}, nvml.SUCCESS
	}
	c := mustNew(t, lib, nil, nil)
	var b *sample.Batch
	for range 3 {
		b = collect(t, c)
	}
	for _, tc := range []struct {
		def  *metrics.Def
		want float64
	}{
		{metrics.GPUMemoryUsage, 20 << 30}, {metrics.GPUMemoryLimit, 80 << 30},
		{metrics.GPUMemoryFree, 60 << 30}, {metrics.GPUMemoryUtilization, 0.25},
	} {
		if v, ok := b.Find(tc.def); !ok || v != tc.want {
			t.Errorf("%s = %v (present %v), want %v", tc.def.Name, v, ok, tc.want)
		}
	}
	if _, ok := b.Find(metrics.GPUMemoryReserved); ok {
		t.Error("reserved memory exported from a call that has none")
	}
	if v2Calls != 1 {
		t.Errorf("GetMemoryInfo_v2 asked %d times, want once", v2Calls)
	}
}
