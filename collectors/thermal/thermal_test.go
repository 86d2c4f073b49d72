package thermal

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/internal/hostfixtures"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

func collect(t *testing.T, c *Collector) *sample.Batch {
	t.Helper()
	return testkit.Collect(t, Name, c)
}

var (
	id    = func(s string) attribute.KeyValue { return attribute.String(metrics.AttrHWID, s) }
	limit = func(s string) attribute.KeyValue { return attribute.String(metrics.AttrLimitType, s) }
	str   = attribute.String
)

func TestFixtureHosts(t *testing.T) {
	type want struct {
		def   *metrics.Def
		attrs []attribute.KeyValue
		value float64
	}
	cases := []struct {
		host  string
		wants []want
	}{
		{hostfixtures.Intel, []want{
			// Thermal zones and their trip points, millidegrees to degrees.
			{metrics.HWTemperature, []attribute.KeyValue{id("thermal_zone1"), str(metrics.AttrHWName, "x86_pkg_temp")}, 52},
			{metrics.HWTemperatureLimit, []attribute.KeyValue{id("thermal_zone0"), limit("critical"), attribute.Int(metrics.AttrTripPoint, 0)}, 105},
			{metrics.ThermalCoolingState, []attribute.KeyValue{id("cooling_device4"), str(metrics.AttrHWName, "intel_powerclamp")}, -1},
			{metrics.ThermalCoolingStateMax, []attribute.KeyValue{id("cooling_device4")}, 50},
			// coretemp, with its label, limits and alarm; chip named as libsensors names it.
			{metrics.HWTemperature, []attribute.KeyValue{id("coretemp-isa-0001/temp1"), str(metrics.AttrSensorLocation, "Package id 1")}, 49},
			{metrics.HWTemperatureLimit, []attribute.KeyValue{id("coretemp-isa-0000/temp2"), limit("crit")}, 101},
			{metrics.HWTemperatureLimit, []attribute.KeyValue{id("coretemp-isa-0000/temp2"), limit("max")}, 91},
			{metrics.HWAlarm, []attribute.KeyValue{id("coretemp-isa-0000/temp2"), limit("crit")}, 0},
			{metrics.HWTemperature, []attribute.KeyValue{id("acpitz-acpi-0/temp1")}, 27.8},
			// NVMe below its PCI function.
			{metrics.HWTemperature, []attribute.KeyValue{id("nvme-pci-00b8/temp1"), str(metrics.AttrSensorLocation, "Composite")}, 38.85},
			{metrics.HWTemperatureLimit, []attribute.KeyValue{id("nvme-pci-00b8/temp1"), limit("min")}, -273.15},
			// The PSU on I2C bus 7, address 0x58: every sensor type, in SI units.
			{metrics.HWVoltage, []attribute.KeyValue{id("dps460-i2c-7-58/in1"), str(metrics.AttrSensorLocation, "vin")}, 230.25},
			{metrics.HWVoltageLimit, []attribute.KeyValue{id("dps460-i2c-7-58/in1"), limit("lcrit")}, 90},
			{metrics.HWAlarm, []attribute.KeyValue{id("dps460-i2c-7-58/in1"), limit("min")}, 0},
			{metrics.HWCurrent, []attribute.KeyValue{id("dps460-i2c-7-58/curr2")}, 30.5},
			{metrics.HWCurrentLimit, []attribute.KeyValue{id("dps460-i2c-7-58/curr2"), limit("max")}, 38},
			{metrics.HWPower, []attribute.KeyValue{id("dps460-i2c-7-58/power1"), str(metrics.AttrHWType, "power_supply")}, 411},
			{metrics.HWPowerLimit, []attribute.KeyValue{id("dps460-i2c-7-58/power2"), limit("cap")}, 460},
			{metrics.HWFanSpeed, []attribute.KeyValue{id("dps460-i2c-7-58/fan1")}, 5120},
			{metrics.HWAlarm, []attribute.KeyValue{id("dps460-i2c-7-58/fan1"), limit("any")}, 0},
			// RAPL: energy in joules, constraints in watts and seconds.
			{metrics.HWEnergy, []attribute.KeyValue{id("intel-rapl:0"), str(metrics.AttrHWType, "cpu")}, 123456.789012},
			{metrics.HWEnergy, []attribute.KeyValue{id("intel-rapl:0:0"), str(metrics.AttrHWType, "memory"), str(metrics.AttrHWName, "dram")}, 23456.789012},
			{metrics.RAPLPowerLimit, []attribute.KeyValue{id("intel-rapl:1"), str(metrics.AttrRAPLConstraint, "short_term")}, 246},
			{metrics.RAPLTimeWindow, []attribute.KeyValue{id("intel-rapl:1"), str(metrics.AttrRAPLConstraint, "long_term")}, 0.999424},
		}},
		{hostfixtures.AMD, []want{
			{metrics.HWTemperature, []attribute.KeyValue{id("k10temp-pci-00c3/temp1"), str(metrics.AttrSensorLocation, "Tctl")}, 45.5},
			{metrics.HWTemperature, []attribute.KeyValue{id("k10temp-pci-00c3/temp4"), str(metrics.AttrSensorLocation, "Tccd2")}, 42},
			{metrics.HWTemperature, []attribute.KeyValue{id("nvme-pci-4019/temp1")}, 38.85},
			{metrics.HWEnergy, []attribute.KeyValue{id("intel-rapl:0:0"), str(metrics.AttrHWName, "core"), str(metrics.AttrHWType, "cpu")}, 3456.789012},
		}},
		{hostfixtures.Big, []want{
			{metrics.HWTemperature, []attribute.KeyValue{id("coretemp-isa-0001/temp49"), str(metrics.AttrSensorLocation, "Core 47")}, 57},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.host, func(t *testing.T) {
			c, err := New(Options{Sysfs: hostfixtures.Sysfs(tc.host)})
			if err != nil {
				t.Fatal(err)
			}
			b := collect(t, c)
			for _, w := range tc.wants {
				got, ok := b.Find(w.def, w.attrs...)
				if !ok {
					t.Errorf("%s %v missing", w.def.Name, w.attrs)
				} else if math.Abs(got-w.value) > 1e-9*math.Max(1, math.Abs(w.value)) {
					t.Errorf("%s %v = %v, want %v", w.def.Name, w.attrs, got, w.value)
				}
			}
			if _, ok := b.Find(metrics.HWPower, str(metrics.AttrHWType, "cpu")); ok {
				t.Error("RAPL power reported on the first collection: it needs two readings")
			}
		})
	}
}

// The PSU's temp3_input is a directory in the fixture: its read fails like a sensor returning
// EIO, and the sensor is skipped while everything else is reported.
func TestUnreadableFixtureSensorIsSkipped(t *testing.T) {
	var logs bytes.Buffer
	c, err := New(Options{Sysfs: hostfixtures.Sysfs(hostfixtures.Intel), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var b *sample.Batch
	for range 3 {
		b = collect(t, c)
	}
	if _, ok := b.Find(metrics.HWTemperature, id("dps460-i2c-7-58/temp3")); ok {
		t.Error("the unreadable sensor was reported")
	}
	if _, ok := b.Find(metrics.HWTemperature, id("dps460-i2c-7-58/temp2")); !ok {
		t.Error("the chip's other sensors are missing")
	}
	if n := strings.Count(logs.String(), "skipping a sensor"); n != 1 {
		t.Errorf("%d log lines over 3 collections, want 1:\n%s", n, logs.String())
	}
}

func TestSensorErrorsAreSkippedForTheCycle(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EIO, syscall.ENODATA, syscall.ENXIO, syscall.ENODEV} {
		t.Run(errno.Error(), func(t *testing.T) {
			var logs bytes.Buffer
			f := &hostfixtures.Faults{Err: errno, Suffixes: []string{"hwmon1/temp2_input", "thermal_zone1/temp", "cooling_device0/cur_state"}}
			c, err := New(Options{Sysfs: hostfixtures.Sysfs(hostfixtures.Intel), Logger: slog.New(slog.NewTextHandler(&logs, nil)), Read: f.Read})
			if err != nil {
				t.Fatal(err)
			}
			collect(t, c)
			b := collect(t, c)
			if _, ok := b.Find(metrics.HWTemperature, id("coretemp-isa-0000/temp2")); ok {
				t.Error("failing hwmon sensor reported")
			}
			if _, ok := b.Find(metrics.HWTemperatureLimit, id("coretemp-isa-0000/temp2")); ok {
				t.Error("limits of a failing sensor reported: the sensor is skipped whole for the cycle")
			}
			if _, ok := b.Find(metrics.HWTemperature, id("thermal_zone1")); ok {
				t.Error("failing zone reported")
			}
			if _, ok := b.Find(metrics.ThermalCoolingState, id("cooling_device0")); ok {
				t.Error("failing cooling device reported")
			}
			if _, ok := b.Find(metrics.HWTemperature, id("coretemp-isa-0000/temp3")); !ok {
				t.Error("a healthy sensor of the same chip is missing")
			}
			if n := strings.Count(logs.String(), "skipping a sensor"); n != 4 { // 3 injected + the fixture's directory
				t.Errorf("%d failure log lines over 2 collections, want 4:\n%s", n, logs.String())
			}
			f.Suffixes = nil
			b = collect(t, c)
			if v, ok := b.Find(metrics.HWTemperature, id("coretemp-isa-0000/temp2")); !ok || v != 49 {
				t.Errorf("recovered sensor = %v, %v; want 49", v, ok)
			}
		})
	}
}

func TestEverySensorFailingFailsTheCollection(t *testing.T) {
	f := &hostfixtures.Faults{Err: syscall.EIO}
	c, err := New(Options{Sysfs: hostfixtures.Sysfs(hostfixtures.AMD), Logger: slog.New(slog.DiscardHandler), Read: f.Read})
	if err != nil {
		t.Fatal(err)
	}
	// Discovery reads names and ranges through the same seam: fail every read after it.
	f.Suffixes = []string{""}
	if err := c.Collect(context.Background(), &sample.Batch{}); !errors.Is(err, syscall.EIO) {
		t.Fatalf("collect with every read failing: %v, want an error wrapping EIO", err)
	}
}

// energy_uj is root-only on current kernels; as root a 0400 file still reads, so the denial is
// injected through the reader seam.
func TestRAPLPermissionDeniedSaysSoOnceAndReportsLimits(t *testing.T) {
	var logs bytes.Buffer
	f := &hostfixtures.Faults{Err: syscall.EACCES, Suffixes: []string{"energy_uj"}}
	c, err := New(Options{Sysfs: hostfixtures.Sysfs(hostfixtures.Intel), Logger: slog.New(slog.NewTextHandler(&logs, nil)), Read: f.Read})
	if err != nil {
		t.Fatal(err)
	}
	var b *sample.Batch
	for range 3 {
		b = collect(t, c)
	}
	if _, ok := b.Find(metrics.HWEnergy, id("intel-rapl:0")); ok {
		t.Error("energy reported without permission")
	}
	if v, ok := b.Find(metrics.RAPLPowerLimit, id("intel-rapl:0"), str(metrics.AttrRAPLConstraint, "long_term")); !ok || v != 205 {
		t.Errorf("power limit %v, %v; want 205 W while energy is denied", v, ok)
	}
	if _, ok := b.Find(metrics.HWTemperature, id("thermal_zone0")); !ok {
		t.Error("temperatures missing while RAPL energy is denied")
	}
	if n := strings.Count(logs.String(), "readable by root only"); n != 1 {
		t.Errorf("permission denial logged %d times over 3 collections, want once:\n%s", n, logs.String())
	}
}

// package-1's counter sits 300 J below its range; the next reading has wrapped.
func TestRAPLCounterWrapAcrossTwoCollections(t *testing.T) {
	root := hostfixtures.Copy(t, hostfixtures.Intel)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c, err := New(Options{Sysfs: root, Now: func() time.Time { return now }, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	first := collect(t, c)
	e0, _ := first.Find(metrics.HWEnergy, id("intel-rapl:1"))

	// 5 s later: 1000 J spent, so the counter wrapped and reads 700 J.
	now = now.Add(5 * time.Second)
	energy := filepath.Join(root, "class/powercap/intel-rapl:1/energy_uj")
	hostfixtures.WriteAttr(t, energy, "700000000")
	// package-0 moved by 1025 J without wrapping.
	hostfixtures.WriteAttr(t, filepath.Join(root, "class/powercap/intel-rapl:0/energy_uj"), "124481789012")
	second := collect(t, c)
	e1, _ := second.Find(metrics.HWEnergy, id("intel-rapl:1"))
	if got := e1 - e0; math.Abs(got-1000) > 1e-6 {
		t.Errorf("energy across the wrap grew by %v J, want 1000", got)
	}
	if p, ok := second.Find(metrics.HWPower, id("intel-rapl:1")); !ok || math.Abs(p-200) > 1e-9 {
		t.Errorf("power across the wrap %v W (reported %v), want 200", p, ok)
	}
	if p, ok := second.Find(metrics.HWPower, id("intel-rapl:0")); !ok || math.Abs(p-205) > 1e-9 {
		t.Errorf("package-0 power %v W (reported %v), want 205", p, ok)
	}
	if p, ok := second.Find(metrics.HWPower, id("intel-rapl:0:0")); !ok || p != 0 {
		t.Errorf("idle dram power %v W (reported %v), want 0", p, ok)
	}

	// A third reading continues from the wrapped value.
	now = now.Add(5 * time.Second)
	hostfixtures.WriteAttr(t, energy, "1700000000")
	third := collect(t, c)
	if e2, _ := third.Find(metrics.HWEnergy, id("intel-rapl:1")); math.Abs(e2-e1-1000) > 1e-6 {
		t.Errorf("energy after the wrap grew by %v J, want 1000", e2-e1)
	}
}

func TestMissingFilesAfterStart(t *testing.T) {
	root := hostfixtures.Copy(t, hostfixtures.Intel)
	var logs bytes.Buffer
	c, err := New(Options{Sysfs: root, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	// The NVMe drive is removed and a RAPL constraint file disappears.
	if err := os.RemoveAll(filepath.Join(root, "devices/pci0000:00/0000:00:17.0/nvme")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "class/powercap/intel-rapl:0/constraint_1_power_limit_uw")); err != nil {
		t.Fatal(err)
	}
	b := collect(t, c)
	if _, ok := b.Find(metrics.HWTemperature, id("nvme-pci-00b8/temp1")); ok {
		t.Error("removed drive still reported")
	}
	if _, ok := b.Find(metrics.RAPLPowerLimit, id("intel-rapl:0"), str(metrics.AttrRAPLConstraint, "short_term")); ok {
		t.Error("removed constraint still reported")
	}
	if _, ok := b.Find(metrics.RAPLTimeWindow, id("intel-rapl:0"), str(metrics.AttrRAPLConstraint, "short_term")); !ok {
		t.Error("the constraint's remaining window is missing")
	}
	if _, ok := b.Find(metrics.HWTemperature, id("coretemp-isa-0000/temp1")); !ok {
		t.Error("other chips are missing")
	}
	if !strings.Contains(logs.String(), "level=INFO msg=\"skipping a sensor") {
		t.Errorf("a vanished file is logged at info (the device went away), got:\n%s", logs.String())
	}
}

func TestNothingToReadIsNoSource(t *testing.T) {
	_, err := New(Options{Sysfs: t.TempDir()})
	if !errors.Is(err, collectors.ErrNoSource) {
		t.Fatalf("New on an empty sysfs: %v, want ErrNoSource", err)
	}
}

func TestChipID(t *testing.T) {
	root := t.TempDir()
	mk := func(hw, dev string) string {
		t.Helper()
		dir := filepath.Join(root, "class", hw)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if dev != "" {
			target := filepath.Join(root, "devices", dev)
			if err := os.MkdirAll(target, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, filepath.Join(dir, "device")); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	cases := []struct{ name, hw, dev, want string }{
		{"coretemp", "hwmon1", "platform/coretemp.0", "coretemp-isa-0000"},
		{"k10temp", "hwmon2", "pci0000:00/0000:00:18.3", "k10temp-pci-00c3"},
		{"nvme", "hwmon3", "pci0000:00/0000:00:01.1/0000:01:00.0/nvme/nvme0", "nvme-pci-0100"},
		{"dps460", "hwmon4", "pci0000:00/0000:00:1f.4/i2c-7/7-0058", "dps460-i2c-7-58"},
		{"acpitz", "hwmon5", "LNXSYSTM:00/LNXSYBUS:00/LNXTHERM:00", "acpitz-acpi-0"},
		{"iwlwifi_1", "hwmon6", "", "iwlwifi_1-virtual-6"},
	}
	for _, tc := range cases {
		if got := chipID(tc.name, mk(tc.hw, tc.dev), tc.hw); got != tc.want {
			t.Errorf("chipID(%s at %s) = %q, want %q", tc.name, tc.dev, got, tc.want)
		}
	}
}

// One cooling device or RAPL zone whose attributes do not read at start must not drop the
// others (procfs's listings failed as a whole).
func TestOneBadDeviceAtStartKeepsTheOthers(t *testing.T) {
	garbage := func(path string) func(*testing.T, string) {
		return func(t *testing.T, root string) { hostfixtures.WriteAttr(t, filepath.Join(root, path), "garbage") }
	}
	empty := func(path string) func(*testing.T, string) {
		return func(t *testing.T, root string) { hostfixtures.WriteAttr(t, filepath.Join(root, path), "") }
	}
	none := func(*testing.T, string) {}
	cases := []struct {
		name    string
		spoil   func(*testing.T, string)
		fail    string // a path suffix whose reads fail with EIO
		gone    []attribute.KeyValue
		kept    []attribute.KeyValue
		def     *metrics.Def
		wantLen int
	}{
		{"cooling cur_state garbage", garbage("class/thermal/cooling_device2/cur_state"), "", nil,
			[]attribute.KeyValue{id("cooling_device4")}, metrics.ThermalCoolingStateMax, 5},
		{"cooling max_state garbage", garbage("class/thermal/cooling_device2/max_state"), "", []attribute.KeyValue{id("cooling_device2")},
			[]attribute.KeyValue{id("cooling_device4")}, metrics.ThermalCoolingStateMax, 4},
		{"cooling type EIO", none, "cooling_device1/type", []attribute.KeyValue{id("cooling_device1")},
			[]attribute.KeyValue{id("cooling_device0")}, metrics.ThermalCoolingStateMax, 4},
		{"rapl dram range empty", empty("class/powercap/intel-rapl:0:0/max_energy_range_uj"), "", nil,
			[]attribute.KeyValue{id("intel-rapl:1")}, metrics.HWEnergy, 4},
		{"rapl name EIO", none, "intel-rapl:1:0/name", []attribute.KeyValue{id("intel-rapl:1:0")},
			[]attribute.KeyValue{id("intel-rapl:0:0")}, metrics.HWEnergy, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := hostfixtures.Copy(t, hostfixtures.Intel)
			tc.spoil(t, root)
			f := &hostfixtures.Faults{Err: syscall.EIO}
			if tc.fail != "" {
				f.Suffixes = []string{tc.fail}
			}
			var logs bytes.Buffer
			c, err := New(Options{Sysfs: root, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Read: f.Read})
			if err != nil {
				t.Fatal(err)
			}
			f.Suffixes = nil
			b := collect(t, c)
			if n := b.Count(tc.def); n != tc.wantLen {
				t.Errorf("%d %s points, want %d\n%s", n, tc.def.Name, tc.wantLen, logs.String())
			}
			if _, ok := b.Find(tc.def, tc.kept...); !ok {
				t.Errorf("%s %v missing", tc.def.Name, tc.kept)
			}
			if tc.gone != nil {
				if _, ok := b.Find(tc.def, tc.gone...); ok {
					t.Errorf("%s %v reported although it does not read", tc.def.Name, tc.gone)
				}
			}
		})
	}
}
