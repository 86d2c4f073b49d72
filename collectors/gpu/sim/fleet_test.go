package sim

import (
	"encoding/binary"
	"math"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/clock"
)

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// newFleet builds an initialised fleet on a manual clock.
func newFleet(t testing.TB, model, trace string, count int) (*Fleet, *clock.Manual) {
	t.Helper()
	clock := clock.NewManual(epoch)
	f, err := New(Options{Model: model, Count: count, Trace: trace, Seed: 7, Clock: clock})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if ret := f.Init(); ret != nvml.SUCCESS {
		t.Fatalf("Init: %v", ret)
	}
	return f, clock
}

func mustOK(t *testing.T, what string, ret nvml.Return) {
	t.Helper()
	if ret != nvml.SUCCESS {
		t.Fatalf("%s: %v", what, ret)
	}
}

func cstr(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

// deviceCalls is every nvml.Device method the package models, each reduced to its Return, so the
// lost and uninitialised cases can walk all of them.
var deviceCalls = map[string]func(d nvml.Device) nvml.Return{
	"GetUUID":                   func(d nvml.Device) nvml.Return { _, r := d.GetUUID(); return r },
	"GetName":                   func(d nvml.Device) nvml.Return { _, r := d.GetName(); return r },
	"GetSerial":                 func(d nvml.Device) nvml.Return { _, r := d.GetSerial(); return r },
	"GetIndex":                  func(d nvml.Device) nvml.Return { _, r := d.GetIndex(); return r },
	"GetMinorNumber":            func(d nvml.Device) nvml.Return { _, r := d.GetMinorNumber(); return r },
	"GetPciInfo":                func(d nvml.Device) nvml.Return { _, r := d.GetPciInfo(); return r },
	"GetArchitecture":           func(d nvml.Device) nvml.Return { _, r := d.GetArchitecture(); return r },
	"GetPowerUsage":             func(d nvml.Device) nvml.Return { _, r := d.GetPowerUsage(); return r },
	"GetFieldValues":            func(d nvml.Device) nvml.Return { return d.GetFieldValues(make([]nvml.FieldValue, 1)) },
	"GetTotalEnergyConsumption": func(d nvml.Device) nvml.Return { _, r := d.GetTotalEnergyConsumption(); return r },
	"GetTemperature":            func(d nvml.Device) nvml.Return { _, r := d.GetTemperature(nvml.TEMPERATURE_GPU); return r },
	"GetUtilizationRates":       func(d nvml.Device) nvml.Return { _, r := d.GetUtilizationRates(); return r },
	"GetEncoderUtilization":     func(d nvml.Device) nvml.Return { _, _, r := d.GetEncoderUtilization(); return r },
	"GetDecoderUtilization":     func(d nvml.Device) nvml.Return { _, _, r := d.GetDecoderUtilization(); return r },
	"GetMemoryInfo":             func(d nvml.Device) nvml.Return { _, r := d.GetMemoryInfo(); return r },
	"GetMemoryInfo_v2":          func(d nvml.Device) nvml.Return { _, r := d.GetMemoryInfo_v2(); return r },
	"GetClockInfo":              func(d nvml.Device) nvml.Return { _, r := d.GetClockInfo(nvml.CLOCK_SM); return r },
	"GetMaxClockInfo":           func(d nvml.Device) nvml.Return { _, r := d.GetMaxClockInfo(nvml.CLOCK_SM); return r },
	"GetEnforcedPowerLimit":     func(d nvml.Device) nvml.Return { _, r := d.GetEnforcedPowerLimit(); return r },
	"GetPowerManagementLimit":   func(d nvml.Device) nvml.Return { _, r := d.GetPowerManagementLimit(); return r },
	"GetPowerManagementDefaultLimit": func(d nvml.Device) nvml.Return {
		_, r := d.GetPowerManagementDefaultLimit()
		return r
	},
	"GetPowerManagementLimitConstraints": func(d nvml.Device) nvml.Return {
		_, _, r := d.GetPowerManagementLimitConstraints()
		return r
	},
	"SetPowerManagementLimit":      func(d nvml.Device) nvml.Return { return d.SetPowerManagementLimit(300000) },
	"GetCurrentClocksEventReasons": func(d nvml.Device) nvml.Return { _, r := d.GetCurrentClocksEventReasons(); return r },
	"GetCurrentClocksThrottleReasons": func(d nvml.Device) nvml.Return {
		_, r := d.GetCurrentClocksThrottleReasons()
		return r
	},
	"GetPcieThroughput": func(d nvml.Device) nvml.Return { _, r := d.GetPcieThroughput(nvml.PCIE_UTIL_RX_BYTES); return r },
	"GetTotalEccErrors": func(d nvml.Device) nvml.Return {
		_, r := d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC)
		return r
	},
	"GetFanSpeed":            func(d nvml.Device) nvml.Return { _, r := d.GetFanSpeed(); return r },
	"GetPerformanceState":    func(d nvml.Device) nvml.Return { _, r := d.GetPerformanceState(); return r },
	"GetSupportedEventTypes": func(d nvml.Device) nvml.Return { _, r := d.GetSupportedEventTypes(); return r },
	"RegisterEvents":         func(d nvml.Device) nvml.Return { return d.RegisterEvents(nvml.EventTypeXidCriticalError, nil) },
	"GetComputeRunningProcesses": func(d nvml.Device) nvml.Return {
		_, r := d.GetComputeRunningProcesses()
		return r
	},
	"GetProcessUtilization": func(d nvml.Device) nvml.Return { _, r := d.GetProcessUtilization(0); return r },
}

var (
	uuidPattern      = regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	busIDPattern     = regexp.MustCompile(`^[0-9A-F]{8}:[0-9A-F]{2}:00\.0$`)
	legacyBusPattern = regexp.MustCompile(`^[0-9A-F]{4}:[0-9A-F]{2}:00\.0$`)
	serialPattern    = regexp.MustCompile(`^[0-9]{13}$`)
)

// TestEveryModelAnswersLikeNVML calls every modelled method on every model, as the agent's
// collector and capping controller would, and checks the answers are plausible.
func TestEveryModelAnswersLikeNVML(t *testing.T) {
	for _, name := range Models() {
		t.Run(name, func(t *testing.T) {
			f, clock := newFleet(t, name, "training", 3)
			m := f.Model()
			clock.Advance(5 * time.Second) // inside the compute phase of a training step

			n, ret := f.DeviceGetCount()
			mustOK(t, "DeviceGetCount", ret)
			if n != 3 {
				t.Fatalf("DeviceGetCount = %d, want 3", n)
			}
			driver, ret := f.SystemGetDriverVersion()
			mustOK(t, "SystemGetDriverVersion", ret)
			nvmlVersion, ret := f.SystemGetNVMLVersion()
			mustOK(t, "SystemGetNVMLVersion", ret)
			cuda, ret := f.SystemGetCudaDriverVersion()
			mustOK(t, "SystemGetCudaDriverVersion", ret)
			if driver != DefaultDriverVersion || nvmlVersion != "12."+driver || cuda != 12080 {
				t.Errorf("versions: driver %q, NVML %q, CUDA %d", driver, nvmlVersion, cuda)
			}
			if s := f.ErrorString(nvml.ERROR_GPU_IS_LOST); s != "ERROR_GPU_IS_LOST" {
				t.Errorf("ErrorString = %q", s)
			}
			if _, ret := f.DeviceGetHandleByIndex(3); ret != nvml.ERROR_INVALID_ARGUMENT {
				t.Errorf("DeviceGetHandleByIndex(3) = %v, want ERROR_INVALID_ARGUMENT", ret)
			}
			if _, ret := f.DeviceGetHandleByUUID("GPU-nope"); ret != nvml.ERROR_NOT_FOUND {
				t.Errorf("DeviceGetHandleByUUID(unknown) = %v, want ERROR_NOT_FOUND", ret)
			}

			uuids := map[string]bool{}
			for i := range n {
				d, ret := f.DeviceGetHandleByIndex(i)
				mustOK(t, "DeviceGetHandleByIndex", ret)
				if d != nvml.Device(f.GPU(i)) {
					t.Fatalf("handle %d is not GPU(%d)", i, i)
				}
				checkIdentity(t, f, d, i, uuids)
				checkTelemetry(t, m, d, f.GPU(i).State())
				checkLimits(t, m, d)
			}
		})
	}
}

func checkIdentity(t *testing.T, f *Fleet, d nvml.Device, i int, uuids map[string]bool) {
	t.Helper()
	m := f.Model()
	uuid, ret := d.GetUUID()
	mustOK(t, "GetUUID", ret)
	if !uuidPattern.MatchString(uuid) || uuids[uuid] {
		t.Errorf("GPU %d UUID %q is malformed or repeated", i, uuid)
	}
	uuids[uuid] = true
	if byUUID, ret := f.DeviceGetHandleByUUID(uuid); ret != nvml.SUCCESS || byUUID != d {
		t.Errorf("DeviceGetHandleByUUID(%s) = %v, %v", uuid, byUUID, ret)
	}
	name, ret := d.GetName()
	mustOK(t, "GetName", ret)
	if !strings.HasPrefix(name, "NVIDIA "+m.Name) {
		t.Errorf("GetName = %q, want the %s product name", name, m.Name)
	}
	serial, ret := d.GetSerial()
	mustOK(t, "GetSerial", ret)
	if !serialPattern.MatchString(serial) {
		t.Errorf("GetSerial = %q, want 13 digits", serial)
	}
	index, ret := d.GetIndex()
	mustOK(t, "GetIndex", ret)
	minor, ret := d.GetMinorNumber()
	mustOK(t, "GetMinorNumber", ret)
	if index != i || minor != i {
		t.Errorf("GetIndex, GetMinorNumber = %d, %d, want %d", index, minor, i)
	}
	pci, ret := d.GetPciInfo()
	mustOK(t, "GetPciInfo", ret)
	busID, legacy := cstr(pci.BusId[:]), cstr(pci.BusIdLegacy[:])
	if !busIDPattern.MatchString(busID) || !legacyBusPattern.MatchString(legacy) || pci.PciDeviceId != m.PCIDeviceID {
		t.Errorf("GetPciInfo: BusId %q, BusIdLegacy %q, device id %#x", busID, legacy, pci.PciDeviceId)
	}
	if byBus, ret := f.DeviceGetHandleByPciBusId(busID); ret != nvml.SUCCESS || byBus != d {
		t.Errorf("DeviceGetHandleByPciBusId(%s) = %v, %v", busID, byBus, ret)
	}
	arch, ret := d.GetArchitecture()
	mustOK(t, "GetArchitecture", ret)
	if arch != m.Architecture {
		t.Errorf("GetArchitecture = %v, want %v", arch, m.Architecture)
	}
}

func checkTelemetry(t *testing.T, m Model, d nvml.Device, s GPUState) {
	t.Helper()
	mw, ret := d.GetPowerUsage()
	mustOK(t, "GetPowerUsage", ret)
	if w := float64(mw) / 1000; w < 0.8*m.MaxLimitW || w > m.MaxLimitW {
		t.Errorf("GetPowerUsage = %.0f W while training, want 80–100 %% of %.0f W", w, m.MaxLimitW)
	}
	fields := []nvml.FieldValue{{FieldId: nvml.FI_DEV_POWER_INSTANT}, {FieldId: nvml.FI_DEV_MEMORY_TEMP}, {FieldId: 9999}}
	mustOK(t, "GetFieldValues", d.GetFieldValues(fields))
	for _, fv := range fields[:2] {
		if nvml.Return(fv.NvmlReturn) != nvml.SUCCESS || nvml.ValueType(fv.ValueType) != nvml.VALUE_TYPE_UNSIGNED_INT {
			t.Errorf("field %d: return %v, type %d", fv.FieldId, nvml.Return(fv.NvmlReturn), fv.ValueType)
		}
	}
	if instant := float64(binary.LittleEndian.Uint32(fields[0].Value[:])) / 1000; math.Abs(instant-s.DrawnW) > 0.02*s.DrawnW {
		t.Errorf("instant power %.1f W, drawn %.1f W: noise above 2 %%", instant, s.DrawnW)
	}
	if memTemp := binary.LittleEndian.Uint32(fields[1].Value[:]); memTemp < 30 || memTemp > 90 {
		t.Errorf("memory temperature %d °C", memTemp)
	}
	if nvml.Return(fields[2].NvmlReturn) != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("unknown field: %v, want ERROR_NOT_SUPPORTED", nvml.Return(fields[2].NvmlReturn))
	}
	mj, ret := d.GetTotalEnergyConsumption()
	mustOK(t, "GetTotalEnergyConsumption", ret)
	if j := float64(mj) / 1000; j < 5*0.4*m.MaxLimitW || j > 5*m.MaxLimitW {
		t.Errorf("energy after 5 s = %.0f J", j)
	}
	temp, ret := d.GetTemperature(nvml.TEMPERATURE_GPU)
	mustOK(t, "GetTemperature", ret)
	if temp < 60 || temp > 86 {
		t.Errorf("GetTemperature = %d °C while training", temp)
	}
	util, ret := d.GetUtilizationRates()
	mustOK(t, "GetUtilizationRates", ret)
	if util.Gpu != 100 || util.Memory == 0 || util.Memory > 100 {
		t.Errorf("GetUtilizationRates = %+v while computing", util)
	}
	enc, encPeriod, ret := d.GetEncoderUtilization()
	mustOK(t, "GetEncoderUtilization", ret)
	dec, decPeriod, ret := d.GetDecoderUtilization()
	mustOK(t, "GetDecoderUtilization", ret)
	if enc != 0 || dec != 0 || encPeriod == 0 || decPeriod == 0 {
		t.Errorf("encoder %d, decoder %d while training (periods %d, %d µs)", enc, dec, encPeriod, decPeriod)
	}
	mem, ret := d.GetMemoryInfo_v2()
	mustOK(t, "GetMemoryInfo_v2", ret)
	if mem.Total != m.MemoryBytes || mem.Used+mem.Reserved+mem.Free != mem.Total || mem.Used < mem.Total*8/10 {
		t.Errorf("GetMemoryInfo_v2 = %+v, want training to use ~90 %% of %d", mem, m.MemoryBytes)
	}
	mem1, ret := d.GetMemoryInfo()
	mustOK(t, "GetMemoryInfo", ret)
	if mem1.Used+mem1.Free != mem1.Total || mem1.Used != mem.Used+mem.Reserved {
		t.Errorf("GetMemoryInfo = %+v, inconsistent with %+v", mem1, mem)
	}
	sm, ret := d.GetClockInfo(nvml.CLOCK_SM)
	mustOK(t, "GetClockInfo(SM)", ret)
	memClock, ret := d.GetClockInfo(nvml.CLOCK_MEM)
	mustOK(t, "GetClockInfo(MEM)", ret)
	if sm != m.MaxSMClockMHz || memClock != m.MaxMemClockMHz {
		t.Errorf("clocks SM %d, memory %d MHz uncapped, want %d, %d", sm, memClock, m.MaxSMClockMHz, m.MaxMemClockMHz)
	}
	maxSM, ret := d.GetMaxClockInfo(nvml.CLOCK_SM)
	mustOK(t, "GetMaxClockInfo(SM)", ret)
	maxMem, ret := d.GetMaxClockInfo(nvml.CLOCK_MEM)
	mustOK(t, "GetMaxClockInfo(MEM)", ret)
	if maxSM != m.MaxSMClockMHz || maxMem != m.MaxMemClockMHz {
		t.Errorf("max clocks %d, %d", maxSM, maxMem)
	}
	reasons, ret := d.GetCurrentClocksEventReasons()
	mustOK(t, "GetCurrentClocksEventReasons", ret)
	old, ret := d.GetCurrentClocksThrottleReasons()
	mustOK(t, "GetCurrentClocksThrottleReasons", ret)
	if reasons != 0 || old != reasons {
		t.Errorf("clock-event reasons %#x (old name %#x), want none while uncapped and cool", reasons, old)
	}
	tx, ret := d.GetPcieThroughput(nvml.PCIE_UTIL_TX_BYTES)
	mustOK(t, "GetPcieThroughput(TX)", ret)
	rx, ret := d.GetPcieThroughput(nvml.PCIE_UTIL_RX_BYTES)
	mustOK(t, "GetPcieThroughput(RX)", ret)
	if rx == 0 || tx == 0 || rx > 64<<20 || tx > 64<<20 {
		t.Errorf("PCIe rx %d, tx %d KB/s", rx, tx)
	}
	for _, kind := range []nvml.MemoryErrorType{nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.MEMORY_ERROR_TYPE_UNCORRECTED} {
		ecc, ret := d.GetTotalEccErrors(kind, nvml.VOLATILE_ECC)
		mustOK(t, "GetTotalEccErrors", ret)
		if ecc != 0 {
			t.Errorf("ECC errors %d, want 0", ecc)
		}
	}
	if _, ret := d.GetFanSpeed(); ret != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("GetFanSpeed on an SXM board = %v, want ERROR_NOT_SUPPORTED", ret)
	}
	pstate, ret := d.GetPerformanceState()
	mustOK(t, "GetPerformanceState", ret)
	if pstate != nvml.PSTATE_0 {
		t.Errorf("GetPerformanceState = %v while busy, want P0", pstate)
	}
	events, ret := d.GetSupportedEventTypes()
	mustOK(t, "GetSupportedEventTypes", ret)
	if events&nvml.EventTypeXidCriticalError == 0 {
		t.Errorf("GetSupportedEventTypes = %#x lacks XID", events)
	}
	procs, ret := d.GetComputeRunningProcesses()
	if ret != nvml.SUCCESS || len(procs) != 0 {
		t.Errorf("GetComputeRunningProcesses = %v, %v, want none", procs, ret)
	}
	if _, ret := d.GetProcessUtilization(0); ret != nvml.ERROR_NOT_FOUND {
		t.Errorf("GetProcessUtilization = %v, want ERROR_NOT_FOUND", ret)
	}
}

func checkLimits(t *testing.T, m Model, d nvml.Device) {
	t.Helper()
	maxMW, minMW := uint32(m.MaxLimitW*1000), uint32(m.MinLimitW*1000)
	lo, hi, ret := d.GetPowerManagementLimitConstraints()
	mustOK(t, "GetPowerManagementLimitConstraints", ret)
	def, ret := d.GetPowerManagementDefaultLimit()
	mustOK(t, "GetPowerManagementDefaultLimit", ret)
	if lo != minMW || hi != maxMW || def != maxMW {
		t.Errorf("constraints %d–%d mW, default %d mW, want %d–%d, default %d", lo, hi, def, minMW, maxMW, maxMW)
	}
	mustOK(t, "SetPowerManagementLimit", d.SetPowerManagementLimit(minMW))
	requested, ret := d.GetPowerManagementLimit()
	mustOK(t, "GetPowerManagementLimit", ret)
	enforced, ret := d.GetEnforcedPowerLimit()
	mustOK(t, "GetEnforcedPowerLimit", ret)
	if requested != minMW || enforced != minMW {
		t.Errorf("after setting %d mW: requested %d, enforced %d", minMW, requested, enforced)
	}
}

// TestLostGPUFailsEveryCall checks a GPU that fell off the bus answers ERROR_GPU_IS_LOST to
// everything, and that the others are untouched.
func TestLostGPUFailsEveryCall(t *testing.T) {
	f, _ := newFleet(t, "H100", "steady", 2)
	set, ret := f.EventSetCreate()
	mustOK(t, "EventSetCreate", ret)
	lost := f.GPU(0)
	f.SetLost(0, true)
	for name, call := range deviceCalls {
		if name == "RegisterEvents" {
			call = func(d nvml.Device) nvml.Return { return d.RegisterEvents(nvml.EventTypeXidCriticalError, set) }
		}
		if ret := call(lost); ret != nvml.ERROR_GPU_IS_LOST {
			t.Errorf("%s on a lost GPU = %v, want ERROR_GPU_IS_LOST", name, ret)
		}
	}
	if _, ret := f.DeviceGetHandleByIndex(0); ret != nvml.ERROR_GPU_IS_LOST {
		t.Errorf("DeviceGetHandleByIndex(lost) = %v, want ERROR_GPU_IS_LOST", ret)
	}
	if _, ret := f.DeviceGetHandleByUUID(lost.uuid); ret != nvml.ERROR_GPU_IS_LOST {
		t.Errorf("DeviceGetHandleByUUID(lost) = %v, want ERROR_GPU_IS_LOST", ret)
	}
	if _, ret := f.GPU(1).GetPowerUsage(); ret != nvml.SUCCESS {
		t.Errorf("the other GPU: GetPowerUsage = %v", ret)
	}
	if !lost.State().Lost {
		t.Error("State().Lost is false for a lost GPU")
	}
	f.SetLost(0, false)
	if _, ret := lost.GetPowerUsage(); ret != nvml.SUCCESS {
		t.Errorf("after recovery GetPowerUsage = %v", ret)
	}
}

// TestCallsBeforeInitFail checks the library refuses work until Init, and counts Init and
// Shutdown as NVML does.
func TestCallsBeforeInitFail(t *testing.T) {
	f, err := New(Options{Model: "A100", Count: 1, Trace: "steady", Clock: clock.NewManual(epoch)})
	if err != nil {
		t.Fatal(err)
	}
	uninitialised := func(when string) {
		t.Helper()
		if _, ret := f.DeviceGetCount(); ret != nvml.ERROR_UNINITIALIZED {
			t.Errorf("%s: DeviceGetCount = %v", when, ret)
		}
		if _, ret := f.SystemGetDriverVersion(); ret != nvml.ERROR_UNINITIALIZED {
			t.Errorf("%s: SystemGetDriverVersion = %v", when, ret)
		}
		if _, ret := f.EventSetCreate(); ret != nvml.ERROR_UNINITIALIZED {
			t.Errorf("%s: EventSetCreate = %v", when, ret)
		}
		for name, call := range deviceCalls {
			if ret := call(f.GPU(0)); ret != nvml.ERROR_UNINITIALIZED {
				t.Errorf("%s: %s = %v, want ERROR_UNINITIALIZED", when, name, ret)
			}
		}
	}
	uninitialised("before Init")
	if ret := f.Shutdown(); ret != nvml.ERROR_UNINITIALIZED {
		t.Errorf("Shutdown before Init = %v", ret)
	}
	mustOK(t, "Init", f.Init())
	mustOK(t, "Init", f.Init())
	mustOK(t, "Shutdown", f.Shutdown())
	if _, ret := f.DeviceGetCount(); ret != nvml.SUCCESS {
		t.Errorf("after Init, Init, Shutdown: DeviceGetCount = %v", ret)
	}
	mustOK(t, "Shutdown", f.Shutdown())
	uninitialised("after the last Shutdown")
}

func TestNewRefusesBadOptions(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want []string
	}{
		{"no GPUs", Options{Model: "H100", Count: 0, Trace: "steady"}, []string{"count 0", "1..64"}},
		{"too many GPUs", Options{Model: "H100", Count: 65, Trace: "steady"}, []string{"count 65", "1..64"}},
		{"unknown model", Options{Model: "V100", Count: 1, Trace: "steady"}, []string{`"V100"`, "A100, H100, H200, B200"}},
		{"unknown trace", Options{Model: "H100", Count: 1, Trace: "spiky"}, []string{`"spiky"`, "steady, bursty, training, inference, imbalanced, lockstep, roleswap", ".csv"}},
		{"no trace", Options{Model: "H100", Count: 1}, []string{"no trace", "steady"}},
		{"missing CSV", Options{Model: "H100", Count: 1, Trace: "testdata/absent.csv"}, []string{"testdata/absent.csv"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.o)
			if err == nil {
				t.Fatal("New accepted the options")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	if _, err := New(Options{Model: "h200", Count: 64, Trace: "Training"}); err != nil {
		t.Errorf("names should be case-insensitive: %v", err)
	}
}

// TestSetPowerLimit checks NVML's argument checking and what the user then sees: the enforced
// limit changes, drawn power settles under it within about half a second, and the 1 s average
// trails the instant value.
func TestSetPowerLimit(t *testing.T) {
	tests := []struct {
		name     string
		mw       uint32
		want     nvml.Return
		enforced uint32
	}{
		{"below the minimum", 199999, nvml.ERROR_INVALID_ARGUMENT, 700000},
		{"zero", 0, nvml.ERROR_INVALID_ARGUMENT, 700000},
		{"above the maximum", 700001, nvml.ERROR_INVALID_ARGUMENT, 700000},
		{"the minimum", 200000, nvml.SUCCESS, 200000},
		{"inside", 350000, nvml.SUCCESS, 350000},
		{"the maximum", 700000, nvml.SUCCESS, 700000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, _ := newFleet(t, "H100", "steady", 1)
			d := f.GPU(0)
			if ret := d.SetPowerManagementLimit(tt.mw); ret != tt.want {
				t.Fatalf("SetPowerManagementLimit(%d) = %v, want %v", tt.mw, ret, tt.want)
			}
			enforced, _ := d.GetEnforcedPowerLimit()
			requested, _ := d.GetPowerManagementLimit()
			if enforced != tt.enforced || requested != tt.enforced {
				t.Errorf("enforced %d, requested %d mW, want %d", enforced, requested, tt.enforced)
			}
		})
	}

	f, clock := newFleet(t, "H100", "steady", 1)
	d := f.GPU(0)
	before := d.State()
	const limitW = 350.0
	mustOK(t, "SetPowerManagementLimit", d.SetPowerManagementLimit(limitW*1000))

	clock.Advance(200 * time.Millisecond)
	s := d.State()
	if s.AveragePowerW < s.DrawnW+100 {
		t.Errorf("200 ms after capping %.0f W to %.0f W: 1 s average %.0f W should still trail the drawn %.0f W",
			before.DrawnW, limitW, s.AveragePowerW, s.DrawnW)
	}
	clock.Advance(300 * time.Millisecond)
	if s := d.State(); s.DrawnW > limitW*1.01 {
		t.Errorf("500 ms after capping: drawn %.1f W, want under %.0f W (+1 %%)", s.DrawnW, limitW)
	}
	clock.Advance(2 * time.Second)
	mw, _ := d.GetPowerUsage()
	if w := float64(mw) / 1000; w > limitW+1 || w < limitW-5 {
		t.Errorf("2.5 s after capping: GetPowerUsage %.1f W, want about %.0f W", w, limitW)
	}
	reasons, _ := d.GetCurrentClocksEventReasons()
	if reasons&nvml.ClocksEventReasonSwPowerCap == 0 {
		t.Errorf("reasons %#x lack SwPowerCap while the cap binds", reasons)
	}
}

// TestLimitOverride checks an out-of-band limit is enforced without changing the requested one.
func TestLimitOverride(t *testing.T) {
	tests := []struct {
		name                  string
		requestedW, overrideW float64
		wantEnforcedW         float64
	}{
		{"override below the request", 700, 300, 300},
		{"override above the request", 400, 600, 400},
		{"cleared", 700, 0, 700},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, clock := newFleet(t, "H100", "steady", 1)
			d := f.GPU(0)
			mustOK(t, "SetPowerManagementLimit", d.SetPowerManagementLimit(uint32(tt.requestedW*1000)))
			f.SetLimitOverride(0, 250)
			f.SetLimitOverride(0, tt.overrideW)
			clock.Advance(2 * time.Second)
			enforced, _ := d.GetEnforcedPowerLimit()
			requested, _ := d.GetPowerManagementLimit()
			if float64(enforced)/1000 != tt.wantEnforcedW || float64(requested)/1000 != tt.requestedW {
				t.Errorf("enforced %d mW, requested %d mW, want %.0f W and %.0f W", enforced, requested, tt.wantEnforcedW, tt.requestedW)
			}
			if s := d.State(); s.DrawnW > tt.wantEnforcedW+0.5 {
				t.Errorf("drawn %.1f W above the enforced %.0f W", s.DrawnW, tt.wantEnforcedW)
			}
		})
	}
}

// TestEnergyIsIntegralOfPower checks the energy counter never falls and equals the integral of
// the drawn power, and that the 1 s average is the energy of the last second.
func TestEnergyIsIntegralOfPower(t *testing.T) {
	f, clock := newFleet(t, "B200", "bursty", 2)
	d := f.GPU(1)
	start := d.State()
	sum := 0.0
	var last uint64
	for i := range 3000 {
		clock.Advance(10 * time.Millisecond)
		s := d.State()
		sum += s.DrawnW * 0.010
		if i%10 == 0 {
			mj, ret := d.GetTotalEnergyConsumption()
			mustOK(t, "GetTotalEnergyConsumption", ret)
			if mj < last {
				t.Fatalf("energy fell from %d to %d mJ", last, mj)
			}
			last = mj
		}
	}
	end := d.State()
	if got := end.EnergyJ - start.EnergyJ; math.Abs(got-sum) > 1e-6*sum {
		t.Errorf("energy grew %.3f J over 30 s, integral of drawn power is %.3f J", got, sum)
	}
	// The last second's energy is what the 1 s average reports, give or take the 10 ms
	// the clock is past the last 100 ms mark.
	oneSecond := 0.0
	for range 100 {
		clock.Advance(10 * time.Millisecond)
		oneSecond += d.State().DrawnW * 0.010
	}
	if avg := d.State().AveragePowerW; math.Abs(avg-oneSecond) > 1e-6*oneSecond {
		t.Errorf("1 s average %.3f W, energy of the last second %.3f J", avg, oneSecond)
	}
}

// TestTemperatureTimeConstant steps a GPU from idle to 700 W and checks the temperature covers
// 63 % of the way to its steady state in one time constant (20 s).
func TestTemperatureTimeConstant(t *testing.T) {
	f, clock := newFleet(t, "H100", "testdata/step.csv", 1)
	d := f.GPU(0)
	clock.Advance(600 * time.Second)
	cold := d.State()
	m := f.Model()
	hotC := cold.AmbientC + m.ThermalResistanceCPerW*700
	if want := cold.AmbientC + m.ThermalResistanceCPerW*100; math.Abs(cold.TemperatureC-want) > 0.2 {
		t.Fatalf("idle at 100 W: %.2f °C, want %.2f", cold.TemperatureC, want)
	}
	prev := cold.TemperatureC
	for range 20 {
		clock.Advance(time.Second)
		temp := d.State().TemperatureC
		if temp < prev {
			t.Fatalf("temperature fell from %.2f to %.2f while heating", prev, temp)
		}
		prev = temp
	}
	if share := (prev - cold.TemperatureC) / (hotC - cold.TemperatureC); share < 0.60 || share > 0.66 {
		t.Errorf("after 20 s at 700 W the temperature covered %.0f %% of the step, want 63 %%", 100*share)
	}
	clock.Advance(100 * time.Second)
	c, _ := d.GetTemperature(nvml.TEMPERATURE_GPU)
	if math.Abs(float64(c)-hotC) > 1 || hotC < 75 || hotC > 86 {
		t.Errorf("after 2 min at 700 W: %d °C, want the steady %.1f °C (75–85 °C at full power)", c, hotC)
	}
}

// TestClocksFollowCap checks the SM clock falls with the cube root of the share of demand the
// cap allows, and that work done falls with it.
func TestClocksFollowCap(t *testing.T) {
	tests := []struct {
		limitW  float64
		capped  bool
		wantRed bool
	}{
		{limitW: 700},
		{limitW: 500, capped: true},
		{limitW: 300, capped: true},
		{limitW: 200, capped: true},
	}
	for _, tt := range tests {
		f, clock := newFleet(t, "H100", "testdata/step.csv", 1)
		d := f.GPU(0)
		clock.Advance(605 * time.Second) // 700 W of demand from 600 s on
		mustOK(t, "SetPowerManagementLimit", d.SetPowerManagementLimit(uint32(tt.limitW*1000)))
		clock.Advance(5 * time.Second)
		before := d.State()
		clock.Advance(10 * time.Second)
		s := d.State()
		want := float64(f.Model().MaxSMClockMHz)
		if tt.capped {
			want *= math.Cbrt(tt.limitW / 700)
		}
		sm, _ := d.GetClockInfo(nvml.CLOCK_SM)
		if math.Abs(float64(sm)-want) > 0.01*want {
			t.Errorf("limit %.0f W: SM clock %d MHz, want %.0f", tt.limitW, sm, want)
		}
		work := s.WorkSeconds - before.WorkSeconds
		if wantWork := 10 * want / float64(f.Model().MaxSMClockMHz); math.Abs(work-wantWork) > 0.01*wantWork {
			t.Errorf("limit %.0f W: %.2f s of work in 10 s, want %.2f", tt.limitW, work, wantWork)
		}
		reasons, _ := d.GetCurrentClocksEventReasons()
		if got := reasons&nvml.ClocksEventReasonSwPowerCap != 0; got != tt.capped {
			t.Errorf("limit %.0f W: SwPowerCap %v, want %v", tt.limitW, got, tt.capped)
		}
	}
}

// TestThermalSlowdown raises the inlet air until the GPU sheds power to hold its slowdown
// temperature, and further until even idling overheats it.
func TestThermalSlowdown(t *testing.T) {
	tests := []struct {
		ambientC float64
		want     uint64
		holds    bool
	}{
		{ambientC: 30},
		{ambientC: 50, want: nvml.ClocksEventReasonSwThermalSlowdown, holds: true},
		{ambientC: 95, want: nvml.ClocksEventReasonSwThermalSlowdown | nvml.ClocksThrottleReasonHwThermalSlowdown},
	}
	const thermal = nvml.ClocksEventReasonSwThermalSlowdown | nvml.ClocksThrottleReasonHwThermalSlowdown
	for _, tt := range tests {
		f, clock := newFleet(t, "H100", "steady", 1)
		d := f.GPU(0)
		f.SetAmbient(0, tt.ambientC)
		clock.Advance(5 * time.Minute)
		s := d.State()
		if got := s.Reasons & thermal; got != tt.want {
			t.Errorf("inlet %.0f °C at %.1f °C: thermal reasons %#x, want %#x", tt.ambientC, s.TemperatureC, got, tt.want)
		}
		if tt.holds {
			if math.Abs(s.TemperatureC-f.Model().SlowdownTempC) > 0.5 {
				t.Errorf("inlet %.0f °C: %.1f °C, want held at the slowdown %.0f °C", tt.ambientC, s.TemperatureC, f.Model().SlowdownTempC)
			}
			if s.DrawnW >= s.DemandW-10 || s.SMClockMHz >= float64(f.Model().MaxSMClockMHz) {
				t.Errorf("inlet %.0f °C: drawn %.0f of %.0f W at %.0f MHz, want power and clock shed", tt.ambientC, s.DrawnW, s.DemandW, s.SMClockMHz)
			}
		}
	}
}

// TestIdleGPU checks an idle GPU looks idle: P8, GpuIdle, low clock, no utilisation, little
// memory.
func TestIdleGPU(t *testing.T) {
	f, clock := newFleet(t, "A100", "testdata/idle.csv", 1)
	d := f.GPU(0)
	clock.Advance(10 * time.Second)
	m := f.Model()
	if p, _ := d.GetPerformanceState(); p != nvml.PSTATE_8 {
		t.Errorf("performance state %v, want P8", p)
	}
	if r, _ := d.GetCurrentClocksEventReasons(); r != nvml.ClocksEventReasonGpuIdle {
		t.Errorf("reasons %#x, want GpuIdle only", r)
	}
	if sm, _ := d.GetClockInfo(nvml.CLOCK_SM); sm != m.IdleSMClockMHz {
		t.Errorf("SM clock %d MHz, want idle %d", sm, m.IdleSMClockMHz)
	}
	if u, _ := d.GetUtilizationRates(); u.Gpu != 0 || u.Memory != 0 {
		t.Errorf("utilisation %+v, want 0", u)
	}
	if mem, _ := d.GetMemoryInfo_v2(); mem.Used > 1<<30 {
		t.Errorf("idle memory used %d B, want under 1 GiB", mem.Used)
	}
	if mw, _ := d.GetPowerUsage(); float64(mw)/1000 != m.IdleW {
		t.Errorf("idle power %d mW, want %.0f W", mw, m.IdleW)
	}
}

// TestClockJumpCatchesUp checks a jump of hours stays cheap and lands where small steps land.
func TestClockJumpCatchesUp(t *testing.T) {
	stepped, steppedClock := newFleet(t, "H100", "training", 1)
	jumped, jumpedClock := newFleet(t, "H100", "training", 1)
	for range 3 * 3600 {
		steppedClock.Advance(time.Second)
		stepped.GPU(0).State()
	}
	jumpedClock.Advance(3 * time.Hour)
	a, b := stepped.GPU(0).State(), jumped.GPU(0).State()
	if !a.Time.Equal(b.Time) {
		t.Fatalf("states at %v and %v", a.Time, b.Time)
	}
	if math.Abs(a.EnergyJ-b.EnergyJ) > 0.01*a.EnergyJ || math.Abs(a.TemperatureC-b.TemperatureC) > 1 ||
		math.Abs(a.AveragePowerW-b.AveragePowerW) > 1e-6*a.AveragePowerW || math.Abs(a.WorkSeconds-b.WorkSeconds) > 0.01*a.WorkSeconds {
		t.Errorf("after 3 h in 1 s steps: %.0f J, %.1f °C, %.1f W, %.0f s of work; in one jump: %.0f J, %.1f °C, %.1f W, %.0f s",
			a.EnergyJ, a.TemperatureC, a.AveragePowerW, a.WorkSeconds, b.EnergyJ, b.TemperatureC, b.AveragePowerW, b.WorkSeconds)
	}
	jumpedClock.Set(epoch) // backwards: nothing changes
	if c := jumped.GPU(0).State(); c.EnergyJ != b.EnergyJ {
		t.Errorf("moving the clock back changed energy from %.0f to %.0f J", b.EnergyJ, c.EnergyJ)
	}
}

// TestFleetIsDeterministic checks two fleets with one seed and one schedule agree exactly.
func TestFleetIsDeterministic(t *testing.T) {
	a, ca := newFleet(t, "H200", "inference", 4)
	b, cb := newFleet(t, "H200", "inference", 4)
	for range 50 {
		ca.Advance(700 * time.Millisecond)
		cb.Advance(700 * time.Millisecond)
		for i := range 4 {
			if sa, sb := a.GPU(i).State(), b.GPU(i).State(); sa != sb {
				t.Fatalf("GPU %d: %+v vs %+v", i, sa, sb)
			}
		}
	}
}

// TestConcurrentUse runs readers, a capping writer and the clock at once; run it with -race.
func TestConcurrentUse(t *testing.T) {
	f, clock := newFleet(t, "H100", "bursty", 4)
	var wg sync.WaitGroup
	fields := func() []nvml.FieldValue { return []nvml.FieldValue{{FieldId: nvml.FI_DEV_POWER_INSTANT}} }
	for i := range 4 {
		wg.Go(func() {
			d, _ := f.DeviceGetHandleByIndex(i)
			fv := fields()
			for range 200 {
				_, r1 := d.GetPowerUsage()
				r2 := d.GetFieldValues(fv)
				_, r3 := d.GetTemperature(nvml.TEMPERATURE_GPU)
				if r1 != nvml.SUCCESS || r2 != nvml.SUCCESS || r3 != nvml.SUCCESS {
					t.Errorf("GPU %d readers: %v, %v, %v", i, r1, r2, r3)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for k := range 200 {
			if ret := f.GPU(k % 4).SetPowerManagementLimit(uint32(200000 + 1000*k)); ret != nvml.SUCCESS {
				t.Errorf("capping: %v", ret)
				return
			}
			f.InjectXID(k%4, 13)
		}
	})
	wg.Go(func() {
		for range 200 {
			clock.Advance(50 * time.Millisecond)
		}
	})
	wg.Wait()
}

// TestStepDoesNotAllocate checks one control period of the fleet, advance and reads, allocates
// nothing, for every kind of trace.
func TestStepDoesNotAllocate(t *testing.T) {
	for _, trace := range append(TraceNames(), "testdata/sample.csv") {
		f, clock := newFleet(t, "H100", trace, 8)
		fields := []nvml.FieldValue{{FieldId: nvml.FI_DEV_POWER_INSTANT}, {FieldId: nvml.FI_DEV_MEMORY_TEMP}}
		failed := nvml.SUCCESS
		allocs := testing.AllocsPerRun(200, func() {
			clock.Advance(100 * time.Millisecond)
			for i := range 8 {
				g := f.GPU(i)
				_, r1 := g.GetPowerUsage()
				r2 := g.GetFieldValues(fields)
				_, r3 := g.GetUtilizationRates()
				_, r4 := g.GetPcieThroughput(nvml.PCIE_UTIL_RX_BYTES)
				for _, r := range [...]nvml.Return{r1, r2, r3, r4} {
					if r != nvml.SUCCESS {
						failed = r
					}
				}
			}
		})
		if failed != nvml.SUCCESS {
			t.Fatalf("%s: a read failed: %v", trace, failed)
		}
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per 100 ms step, want 0", trace, allocs)
		}
	}
}

// BenchmarkAdvanceHour runs 8 GPUs through one simulated hour at 100 ms control steps, reading
// the 1 s average and the instant power of every GPU each step, as capstan simulate does.
func BenchmarkAdvanceHour(b *testing.B) {
	f, clock := newFleet(b, "H100", "training", 8)
	fields := []nvml.FieldValue{{FieldId: nvml.FI_DEV_POWER_INSTANT}}
	const steps = 36000
	b.ReportAllocs()
	for b.Loop() {
		for range steps {
			clock.Advance(100 * time.Millisecond)
			for i := range 8 {
				g := f.GPU(i)
				_, r1 := g.GetPowerUsage()
				if r2 := g.GetFieldValues(fields); r1 != nvml.SUCCESS || r2 != nvml.SUCCESS {
					b.Fatalf("reading GPU %d: %v, %v", i, r1, r2)
				}
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*steps), "ns/step")
}
