package gpu

import (
	"context"
	"encoding/binary"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/sample"
)

// zeroDevice answers every call the collector makes with a constant, at no cost: a benchmark
// over it measures the collector alone, without any simulator physics. A call it does not
// answer panics on the nil embedded interface.
type zeroDevice struct{ nvml.Device }

func (zeroDevice) GetUUID() (string, nvml.Return)                   { return "GPU-zero", nvml.SUCCESS }
func (zeroDevice) GetName() (string, nvml.Return)                   { return "NVIDIA H100 80GB HBM3", nvml.SUCCESS }
func (zeroDevice) GetSerial() (string, nvml.Return)                 { return "1650000000000", nvml.SUCCESS }
func (zeroDevice) GetPciInfo() (nvml.PciInfo, nvml.Return)          { return nvml.PciInfo{}, nvml.SUCCESS }
func (zeroDevice) GetPowerUsage() (uint32, nvml.Return)             { return 500_000, nvml.SUCCESS }
func (zeroDevice) GetTotalEnergyConsumption() (uint64, nvml.Return) { return 1e9, nvml.SUCCESS }
func (zeroDevice) GetTemperature(nvml.TemperatureSensors) (uint32, nvml.Return) {
	return 60, nvml.SUCCESS
}
func (zeroDevice) GetUtilizationRates() (nvml.Utilization, nvml.Return) {
	return nvml.Utilization{Gpu: 90, Memory: 40}, nvml.SUCCESS
}
func (zeroDevice) GetEncoderUtilization() (uint32, uint32, nvml.Return) {
	return 0, 167000, nvml.SUCCESS
}
func (zeroDevice) GetDecoderUtilization() (uint32, uint32, nvml.Return) {
	return 0, 167000, nvml.SUCCESS
}
func (zeroDevice) GetMemoryInfo_v2() (nvml.Memory_v2, nvml.Return) {
	return nvml.Memory_v2{Total: 80 << 30, Used: 60 << 30, Free: 20 << 30}, nvml.SUCCESS
}
func (zeroDevice) GetClockInfo(nvml.ClockType) (uint32, nvml.Return)    { return 1980, nvml.SUCCESS }
func (zeroDevice) GetMaxClockInfo(nvml.ClockType) (uint32, nvml.Return) { return 1980, nvml.SUCCESS }
func (zeroDevice) GetEnforcedPowerLimit() (uint32, nvml.Return)         { return 700_000, nvml.SUCCESS }
func (zeroDevice) GetPowerManagementLimit() (uint32, nvml.Return)       { return 700_000, nvml.SUCCESS }
func (zeroDevice) GetPowerManagementDefaultLimit() (uint32, nvml.Return) {
	return 700_000, nvml.SUCCESS
}
func (zeroDevice) GetPowerManagementLimitConstraints() (uint32, uint32, nvml.Return) {
	return 200_000, 700_000, nvml.SUCCESS
}
func (zeroDevice) GetCurrentClocksEventReasons() (uint64, nvml.Return) { return 0, nvml.SUCCESS }
func (zeroDevice) GetPcieThroughput(nvml.PcieUtilCounter) (uint32, nvml.Return) {
	return 1000, nvml.SUCCESS
}
func (zeroDevice) GetTotalEccErrors(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
	return 0, nvml.SUCCESS
}
func (zeroDevice) GetFanSpeed() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
func (zeroDevice) GetPerformanceState() (nvml.Pstates, nvml.Return) {
	return nvml.PSTATE_0, nvml.SUCCESS
}
func (zeroDevice) GetSupportedEventTypes() (uint64, nvml.Return) { return 0, nvml.SUCCESS }
func (zeroDevice) GetRemappedRows() (int, int, bool, bool, nvml.Return) {
	return 0, 0, false, false, nvml.SUCCESS
}
func (zeroDevice) GetPcieReplayCounter() (int, nvml.Return) { return 0, nvml.SUCCESS }
func (zeroDevice) GetViolationStatus(nvml.PerfPolicyType) (nvml.ViolationTime, nvml.Return) {
	return nvml.ViolationTime{}, nvml.SUCCESS
}
func (zeroDevice) GpmQueryDeviceSupport() (nvml.GpmSupport, nvml.Return) {
	return nvml.GpmSupport{IsSupportedDevice: 1}, nvml.SUCCESS
}
func (zeroDevice) GpmSampleGet(nvml.GpmSample) nvml.Return { return nvml.SUCCESS }
func (zeroDevice) GetMigMode() (int, int, nvml.Return) {
	return nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_DISABLE, nvml.SUCCESS
}
func (zeroDevice) GetNvLinkState(int) (nvml.EnableState, nvml.Return) {
	return 0, nvml.ERROR_NOT_SUPPORTED
}
func (zeroDevice) GetFieldValues(fv []nvml.FieldValue) nvml.Return {
	for i := range fv {
		fv[i].ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_INT)
		binary.LittleEndian.PutUint32(fv[i].Value[:], 1)
	}
	return nvml.SUCCESS
}

type zeroSample struct{ nvml.GpmSample }

func (zeroSample) Free() nvml.Return { return nvml.SUCCESS }

// zeroLib is the library of eight zero-cost devices.
type zeroLib struct {
	nvml.Interface
	devs [8]zeroDevice
}

func (*zeroLib) SystemGetDriverVersion() (string, nvml.Return) { return "570.133.20", nvml.SUCCESS }
func (l *zeroLib) DeviceGetCount() (int, nvml.Return)          { return len(l.devs), nvml.SUCCESS }
func (*zeroLib) EventSetCreate() (nvml.EventSet, nvml.Return)  { return nil, nvml.ERROR_NOT_SUPPORTED }
func (*zeroLib) GpmSampleAlloc() (nvml.GpmSample, nvml.Return) { return zeroSample{}, nvml.SUCCESS }
func (l *zeroLib) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	return &l.devs[i], nvml.SUCCESS
}
func (*zeroLib) GpmMetricsGet(mg *nvml.GpmMetricsGetType) nvml.Return {
	for i := range mg.Metrics[:mg.NumMetrics] {
		mg.Metrics[i].Value = 50
	}
	return nvml.SUCCESS
}

// benchCollect runs one collection per iteration into alternating batches, as the runner does,
// and reports allocations per data point.
func benchCollect(b *testing.B, c *Collector, advance func()) {
	ctx := context.Background()
	batches := [2]*sample.Batch{{}, {}}
	cur := 0
	iteration := func() {
		advance()
		bt := batches[cur]
		bt.Reset(Name, time.Time{})
		if err := c.Collect(ctx, bt); err != nil {
			b.Fatal(err)
		}
		cur ^= 1
	}
	iteration()
	iteration()
	points := len(batches[cur^1].Points)
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for b.Loop() {
		iteration()
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N)/float64(points), "allocs/point")
	b.ReportMetric(float64(points), "points")
}

// BenchmarkCollectZeroCostDevices is the collector's own cost: one collection of eight
// zero-cost GPUs (every query, GPM on), no simulator physics.
func BenchmarkCollectZeroCostDevices(b *testing.B) {
	c, err := New(&zeroLib{}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		b.Fatal(err)
	}
	benchCollect(b, c, func() {})
}

// BenchmarkCollectSimH100 is one collection of eight simulated H100s a second apart, the sim's
// physics included.
func BenchmarkCollectSimH100(b *testing.B) {
	c, _, clk := simCollector(b, sim.Options{Model: "H100", Count: 8, Trace: "training", Seed: 1}, slog.New(slog.DiscardHandler))
	benchCollect(b, c, func() { clk.Advance(time.Second) })
}
