package gpu

import (
	"log/slog"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/metrics"
)

// zeroMIGDevice is a zero-cost GPU in MIG mode with seven 1g.10gb instances and 18 NVLink links.
type zeroMIGDevice struct {
	zeroDevice
	mig [7]zeroMIGInstance
}

type zeroMIGInstance struct {
	nvml.Device
	gi int
}

func (*zeroMIGDevice) GetMigMode() (int, int, nvml.Return) {
	return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS
}
func (*zeroMIGDevice) GetMaxMigDeviceCount() (int, nvml.Return) { return 7, nvml.SUCCESS }
func (d *zeroMIGDevice) GetMigDeviceHandleByIndex(i int) (nvml.Device, nvml.Return) {
	d.mig[i].gi = i + 1
	return &d.mig[i], nvml.SUCCESS
}
func (*zeroMIGDevice) GpmMigSampleGet(int, nvml.GpmSample) nvml.Return { return nvml.SUCCESS }
func (*zeroMIGDevice) GetNvLinkState(l int) (nvml.EnableState, nvml.Return) {
	if l < 18 {
		return nvml.FEATURE_ENABLED, nvml.SUCCESS
	}
	return 0, nvml.ERROR_INVALID_ARGUMENT
}
func (*zeroMIGDevice) GetNvLinkVersion(int) (uint32, nvml.Return) { return 4, nvml.SUCCESS }
func (*zeroMIGDevice) GetNvLinkRemoteDeviceType(int) (nvml.IntNvLinkDeviceType, nvml.Return) {
	return nvml.NVLINK_DEVICE_TYPE_SWITCH, nvml.SUCCESS
}
func (*zeroMIGDevice) GetNvLinkErrorCounter(int, nvml.NvLinkErrorCounter) (uint64, nvml.Return) {
	return 0, nvml.SUCCESS
}

func (m *zeroMIGInstance) GetGpuInstanceId() (int, nvml.Return)   { return m.gi, nvml.SUCCESS }
func (*zeroMIGInstance) GetComputeInstanceId() (int, nvml.Return) { return 0, nvml.SUCCESS }
func (*zeroMIGInstance) GetUUID() (string, nvml.Return)           { return "MIG-zero", nvml.SUCCESS }
func (*zeroMIGInstance) GetName() (string, nvml.Return) {
	return "NVIDIA H100 80GB HBM3 MIG 1g.10gb", nvml.SUCCESS
}
func (*zeroMIGInstance) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return nil, nvml.SUCCESS
}
func (m *zeroMIGInstance) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	return nvml.Memory{Total: 9856 << 20, Used: 4 << 30}, nvml.SUCCESS
}

type zeroMIGLib struct {
	zeroLib
	devs [8]zeroMIGDevice
}

func (l *zeroMIGLib) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	return &l.devs[i], nvml.SUCCESS
}

// BenchmarkCollectZeroCostMIGNVLink is the collector's own cost at the target: eight zero-cost
// GPUs in MIG mode with seven instances each (GPM per instance), 18 NVLink links each with every
// per-link series on, every other query.
func BenchmarkCollectZeroCostMIGNVLink(b *testing.B) {
	all := func(*metrics.Def) bool { return true }
	c, err := newCollector(&zeroMIGLib{}, slog.New(slog.DiscardHandler), nil, all)
	if err != nil {
		b.Fatal(err)
	}
	benchCollect(b, c, func() {})
}

// BenchmarkCollectSimH100MIGNVLink is the same on eight simulated H100s, the sim's physics
// included.
func BenchmarkCollectSimH100MIGNVLink(b *testing.B) {
	fleet, clk := simOn(b, sim.Options{Model: "H100", Count: 8, Trace: "training", Seed: 1, MIG: "7x1g.10gb"})
	all := func(*metrics.Def) bool { return true }
	c, err := newCollector(fleet, slog.New(slog.DiscardHandler), clk.Now, all)
	if err != nil {
		b.Fatal(err)
	}
	benchCollect(b, c, func() { clk.Advance(time.Second) })
}
