package sim

import (
	"fmt"
	"math"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

const mib = 1 << 20

// Model describes one GPU product: the limits and constants the simulated physics runs on.
type Model struct {
	// Name is the short name LookupModel accepts (A100, H100, H200, B200).
	Name string
	// ProductName is what NVML's GetName reports, e.g. "NVIDIA H100 80GB HBM3".
	ProductName string

	MinLimitW, MaxLimitW, DefaultLimitW float64
	// IdleW is what the board draws with nothing running.
	IdleW float64

	MaxSMClockMHz, MaxMemClockMHz uint32
	// IdleSMClockMHz is the SM clock when the GPU has nothing to do.
	IdleSMClockMHz uint32

	MemoryBytes  uint64
	Architecture nvml.DeviceArchitecture
	// HasFan is false for SXM boards, which NVML answers ERROR_NOT_SUPPORTED for fan speed.
	HasFan bool
	// PowerSmoothing is true for boards with firmware power smoothing (Blackwell).
	PowerSmoothing bool

	// ThermalResistanceCPerW is the steady-state rise of the GPU over its inlet air per watt.
	ThermalResistanceCPerW float64
	// SlowdownTempC is where the firmware starts to shed power to hold the temperature.
	SlowdownTempC float64
	// HWSlowdownTempC is where the hardware slowdown engages.
	HWSlowdownTempC float64

	PCIDeviceID, PCISubsystemID uint32
}

var models = []Model{
	{
		Name: "A100", ProductName: "NVIDIA A100-SXM4-80GB",
		MinLimitW: 100, MaxLimitW: 400, DefaultLimitW: 400, IdleW: 55,
		MaxSMClockMHz: 1410, MaxMemClockMHz: 1593, IdleSMClockMHz: 210,
		MemoryBytes: 81920 * mib, Architecture: nvml.DEVICE_ARCH_AMPERE,
		ThermalResistanceCPerW: 0.13, SlowdownTempC: 85, HWSlowdownTempC: 90,
		PCIDeviceID: 0x20B210DE, PCISubsystemID: 0x147F10DE,
	},
	{
		Name: "H100", ProductName: "NVIDIA H100 80GB HBM3",
		MinLimitW: 200, MaxLimitW: 700, DefaultLimitW: 700, IdleW: 70,
		MaxSMClockMHz: 1980, MaxMemClockMHz: 2619, IdleSMClockMHz: 345,
		MemoryBytes: 81559 * mib, Architecture: nvml.DEVICE_ARCH_HOPPER,
		ThermalResistanceCPerW: 0.075, SlowdownTempC: 87, HWSlowdownTempC: 90,
		PCIDeviceID: 0x233010DE, PCISubsystemID: 0x16C110DE,
	},
	{
		Name: "H200", ProductName: "NVIDIA H200",
		MinLimitW: 200, MaxLimitW: 700, DefaultLimitW: 700, IdleW: 75,
		MaxSMClockMHz: 1980, MaxMemClockMHz: 3201, IdleSMClockMHz: 345,
		MemoryBytes: 143771 * mib, Architecture: nvml.DEVICE_ARCH_HOPPER,
		ThermalResistanceCPerW: 0.072, SlowdownTempC: 87, HWSlowdownTempC: 90,
		PCIDeviceID: 0x233510DE, PCISubsystemID: 0x18BE10DE,
	},
	{
		Name: "B200", ProductName: "NVIDIA B200",
		MinLimitW: 200, MaxLimitW: 1000, DefaultLimitW: 1000, IdleW: 140,
		MaxSMClockMHz: 1965, MaxMemClockMHz: 3996, IdleSMClockMHz: 345,
		MemoryBytes: 183359 * mib, Architecture: nvml.DEVICE_ARCH_BLACKWELL, PowerSmoothing: true,
		ThermalResistanceCPerW: 0.052, SlowdownTempC: 87, HWSlowdownTempC: 90,
		PCIDeviceID: 0x290110DE, PCISubsystemID: 0x199910DE,
	},
}

// Models lists the names LookupModel accepts.
func Models() []string {
	names := make([]string, len(models))
	for i, m := range models {
		names[i] = m.Name
	}
	return names
}

// LookupModel returns the model with the given short name, ignoring case.
func LookupModel(name string) (Model, error) {
	for _, m := range models {
		if strings.EqualFold(m.Name, strings.TrimSpace(name)) {
			return m, nil
		}
	}
	return Model{}, fmt.Errorf("unknown GPU model %q: use one of %s", name, strings.Join(Models(), ", "))
}

// maxDemandW bounds what a trace may ask for: a little above the top limit, so that the default
// limit can still bind.
func (m *Model) maxDemandW() float64 { return 1.05 * m.MaxLimitW }

// clampDemand keeps a trace's demand physical; NaN counts as idle.
func (m *Model) clampDemand(w float64) float64 {
	if !(w >= m.IdleW) {
		return m.IdleW
	}
	return min(w, m.maxDemandW())
}

// busyThresholdW is the demand above which the GPU counts as running work.
func (m *Model) busyThresholdW() float64 { return m.IdleW + 0.02*m.MaxLimitW }

// utilization is the busy fraction the demand implies: a GPU drawing half its top limit or more
// has kernels running all the time.
func (m *Model) utilization(demandW float64) float64 {
	if demandW <= m.busyThresholdW() {
		return 0
	}
	return min(1, (demandW-m.IdleW)/(0.5*m.MaxLimitW-m.IdleW))
}

// BusyDemand returns the demand a GPU of this model runs at for a trace's value (kept
// physical) and the busy share it implies.
func (m Model) BusyDemand(demandW float64) (watts, busy float64) {
	w := m.clampDemand(demandW)
	return w, m.utilization(w)
}

// WorkRate is the work a GPU of this model does per second at a trace's demand under a limit
// that has held for a while, in fully busy GPU-seconds at the top clock: the rate at which
// GPUState.WorkSeconds grows. A baseline that plans limits plans with it, so that it plans
// with the physics the fleet runs.
func (m Model) WorkRate(demandW, limitW float64) float64 {
	d, busy := m.BusyDemand(demandW)
	if d <= m.busyThresholdW() || d <= limitW {
		return busy
	}
	return busy * max(float64(m.IdleSMClockMHz)/float64(m.MaxSMClockMHz), math.Cbrt(max(0, limitW)/d))
}
