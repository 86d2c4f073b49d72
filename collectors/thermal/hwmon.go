package thermal

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/sysattr"
)

// sensorKind is one hwmon sensor type: its file prefix, the scale from sysfs units to the
// metric's unit, and its metrics.
type sensorKind struct {
	prefix       string
	scale        float64
	value, limit *metrics.Def
	hwType       string // "" when hw.type comes from the chip (power, energy)
}

// The kernel's hwmon ABI units (Documentation/hwmon/sysfs-interface.rst): millidegrees
// Celsius, RPM, millivolts, milliamperes, microwatts, microjoules.
var sensorKinds = []sensorKind{
	{"temp", 1e-3, metrics.HWTemperature, metrics.HWTemperatureLimit, "temperature"},
	{"fan", 1, metrics.HWFanSpeed, metrics.HWFanSpeedLimit, "fan"},
	{"in", 1e-3, metrics.HWVoltage, metrics.HWVoltageLimit, "voltage"},
	{"curr", 1e-3, metrics.HWCurrent, metrics.HWCurrentLimit, "current"},
	{"power", 1e-6, metrics.HWPower, metrics.HWPowerLimit, ""},
	{"energy", 1e-6, metrics.HWEnergy, nil, ""},
}

// limitItems are the threshold attributes exported as limits, by their file suffix.
var limitItems = map[string]bool{"min": true, "max": true, "lcrit": true, "crit": true, "emergency": true, "cap": true}

var sensorFile = regexp.MustCompile(`^(temp|fan|in|curr|power|energy)([0-9]+)_([a-z_]+)$`)

type sensor struct {
	file   *sysattr.File // the value file (_input, or _average for power meters without one)
	scale  float64
	value  *sample.Series
	limits []reading
	alarms []reading
}

type reading struct {
	file   *sysattr.File
	series *sample.Series
}

// findHwmon lists every chip under class/hwmon and every sensor the chip exposes.
func (c *Collector) findHwmon(root string) error {
	class := filepath.Join(root, "class", "hwmon")
	entries, err := os.ReadDir(class)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing hwmon chips in %s: %w", class, err)
	}
	for _, e := range entries {
		dir := filepath.Join(class, e.Name())
		// Old drivers put the chip's files in the device directory rather than hwmonN itself.
		if _, err := os.Stat(filepath.Join(dir, "name")); err != nil {
			if _, derr := os.Stat(filepath.Join(dir, "device", "name")); derr != nil {
				c.log.Warn("skipping an hwmon chip without a name", "chip", dir)
				continue
			}
			dir = filepath.Join(dir, "device")
		}
		name, err := c.r.String(filepath.Join(dir, "name"))
		if err != nil {
			c.log.Warn("skipping an hwmon chip whose name does not read", "chip", dir, "err", err)
			continue
		}
		if err := c.addChip(dir, name, chipID(name, dir, e.Name())); err != nil {
			c.log.Warn("skipping an hwmon chip", "chip", dir, "err", err)
		}
	}
	return nil
}

func (c *Collector) addChip(dir, name, id string) error {
	files, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("listing sensors: %w", err)
	}
	type key struct {
		kind  int
		index int
	}
	items := map[key]map[string]string{} // sensor → item (input, label, max, …) → path
	for _, f := range files {
		m := sensorFile.FindStringSubmatch(f.Name())
		if m == nil {
			continue
		}
		k := key{kind: kindIndex(m[1])}
		k.index, _ = strconv.Atoi(m[2])
		if items[k] == nil {
			items[k] = map[string]string{}
		}
		items[k][m[3]] = filepath.Join(dir, f.Name())
	}
	keys := make([]key, 0, len(items))
	for k := range items {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].kind != keys[j].kind {
			return keys[i].kind < keys[j].kind
		}
		return keys[i].index < keys[j].index
	})
	for _, k := range keys {
		kind, files := sensorKinds[k.kind], items[k]
		input := files["input"]
		if input == "" {
			input = files["average"] // power meters (acpi_power_meter, fam15h_power)
		}
		if input == "" {
			continue
		}
		sensorName := kind.prefix + strconv.Itoa(k.index)
		location := sensorName
		if path := files["label"]; path != "" {
			if l, err := c.r.String(path); err == nil && l != "" {
				location = l
			}
		}
		hwType := kind.hwType
		if hwType == "" {
			hwType = chipType(name)
		}
		kv := []attribute.KeyValue{
			attribute.String(metrics.AttrHWType, hwType),
			attribute.String(metrics.AttrHWID, id+"/"+sensorName),
			attribute.String(metrics.AttrHWName, name),
			attribute.String(metrics.AttrSensorLocation, location),
		}
		s := &sensor{file: sysattr.NewDeviceFile(input), scale: kind.scale, value: sample.NewSeries(kind.value, kv...)}
		items := make([]string, 0, len(files))
		for item := range files {
			items = append(items, item)
		}
		sort.Strings(items)
		for _, item := range items {
			path := files[item]
			switch {
			case kind.limit != nil && limitItems[item]:
				s.limits = append(s.limits, reading{sysattr.NewDeviceFile(path), sample.NewSeries(kind.limit,
					append(kv, attribute.String(metrics.AttrLimitType, item))...)})
			case item == "alarm" || strings.HasSuffix(item, "_alarm"):
				which := strings.TrimSuffix(item, "_alarm")
				if item == "alarm" {
					which = "any"
				}
				s.alarms = append(s.alarms, reading{sysattr.NewDeviceFile(path), sample.NewSeries(metrics.HWAlarm,
					append(kv, attribute.String(metrics.AttrLimitType, which))...)})
			}
		}
		c.sensors = append(c.sensors, s)
	}
	return nil
}

func kindIndex(prefix string) int {
	for i, k := range sensorKinds {
		if k.prefix == prefix {
			return i
		}
	}
	return -1
}

// chipType is the hw.type of a chip's power and energy sensors: the component they measure.
func chipType(name string) string {
	switch name {
	case "coretemp", "k10temp", "zenpower", "fam15h_power", "amd_energy":
		return "cpu"
	case "nvme", "drivetemp":
		return "physical_disk"
	}
	return "power_supply"
}

var (
	pciAddr = regexp.MustCompile(`^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$`)
	i2cAddr = regexp.MustCompile(`^([0-9]+)-([0-9a-f]{4})$`)
	devInst = regexp.MustCompile(`^[a-zA-Z0-9_]+\.([0-9]+)$`)
)

// chipID names a chip the way libsensors does from the kernel's device link, so hw.id matches
// what `sensors` prints and stays stable across reboots (hwmonN numbers do not):
// coretemp-isa-0000, k10temp-pci-00c3, nvme-pci-0100, dps460-i2c-7-58, acpitz-acpi-0.
func chipID(name, dir, hwmonN string) string {
	dev, err := filepath.EvalSymlinks(filepath.Join(dir, "device"))
	if err != nil {
		return name + "-virtual-" + strings.TrimPrefix(hwmonN, "hwmon")
	}
	base := filepath.Base(dev)
	if m := i2cAddr.FindStringSubmatch(base); m != nil {
		addr, _ := strconv.ParseUint(m[2], 16, 16)
		return fmt.Sprintf("%s-i2c-%s-%02x", name, m[1], addr)
	}
	// A PCI function, or a class device (nvme0) below one: the nearest PCI address.
	for p := dev; p != "/" && p != "."; p = filepath.Dir(p) {
		if m := pciAddr.FindStringSubmatch(filepath.Base(p)); m != nil {
			bus, _ := strconv.ParseUint(m[2], 16, 8)
			slot, _ := strconv.ParseUint(m[3], 16, 8)
			fn, _ := strconv.ParseUint(m[4], 16, 8)
			return fmt.Sprintf("%s-pci-%04x", name, bus<<8|slot<<3|fn)
		}
		if filepath.Base(p) == "devices" {
			break
		}
	}
	if strings.HasPrefix(base, "LNX") || strings.HasPrefix(base, "PNP") || strings.Contains(base, ":") {
		return name + "-acpi-0"
	}
	if m := devInst.FindStringSubmatch(base); m != nil {
		n, _ := strconv.Atoi(m[1])
		return fmt.Sprintf("%s-isa-%04d", name, n)
	}
	return name + "-virtual-" + strings.TrimPrefix(hwmonN, "hwmon")
}

func (c *Collector) collectHwmon(ctx context.Context, b *sample.Batch, s *stats) {
	for _, sn := range c.sensors {
		if ctx.Err() != nil {
			return
		}
		v, err := c.r.Int(sn.file)
		if !c.ok(s, sn.file, err) {
			continue // a sensor that reads back an error is skipped, with its limits
		}
		b.Add(sn.value, float64(v)*sn.scale)
		for _, l := range sn.limits {
			if v, err := c.r.Int(l.file); c.ok(s, l.file, err) {
				b.Add(l.series, float64(v)*sn.scale)
			}
		}
		for _, a := range sn.alarms {
			if v, err := c.r.Int(a.file); c.ok(s, a.file, err) {
				b.Add(a.series, float64(v))
			}
		}
	}
}
