package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Exit statuses.
const (
	exitOK       = 0
	exitFailed   = 1
	exitNoDriver = 2
)

// check is one run of the hardware check; its sources are injected so that tests run it over
// the simulated fleet.
type check struct {
	lib         nvml.Interface
	out, errOut io.Writer
	gpu         int  // the GPU whose limit is written
	noWrite     bool // skip the limit write
	interrupted func() bool
	// collect returns `capstan collect --json` with the NVML backend.
	collect func() ([]byte, error)
	// smi returns nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits.
	smi func(query string) ([]byte, error)

	failed bool
}

// point is one element of `capstan collect --json`.
type point struct {
	Name       string            `json:"name"`
	Value      float64           `json:"value"`
	Attributes map[string]string `json:"attributes"`
}

// comparison is one quantity Capstan reports and nvidia-smi too, with how far apart the two may
// be: they are read a moment apart, so quantities that move (power, clocks, utilisation) get a
// tolerance that covers a second of change, quantities that do not (limits, totals) almost none.
type comparison struct {
	label    string
	smiField string
	// capstan finds Capstan's value, converted to nvidia-smi's unit, among one GPU's points.
	capstan func(p gpuPoints) (float64, bool)
	// tolerance is the largest difference that passes, given nvidia-smi's value.
	tolerance     func(smi float64) float64
	toleranceText string
}

type gpuPoints map[string][]point // by metric name

func (g gpuPoints) find(name string, attrs ...string) (float64, bool) {
	for _, p := range g[name] {
		match := true
		for i := 0; i+1 < len(attrs); i += 2 {
			if p.Attributes[attrs[i]] != attrs[i+1] {
				match = false
				break
			}
		}
		if match {
			return p.Value, true
		}
	}
	return 0, false
}

func scaled(f func(gpuPoints) (float64, bool), k float64) func(gpuPoints) (float64, bool) {
	return func(g gpuPoints) (float64, bool) {
		v, ok := f(g)
		return v * k, ok
	}
}

func metric(name string, attrs ...string) func(gpuPoints) (float64, bool) {
	return func(g gpuPoints) (float64, bool) { return g.find(name, attrs...) }
}

const mib = 1 << 20

var comparisons = []comparison{
	{"power draw (W)", "power.draw", metric("hw.power"),
		func(s float64) float64 { return max(15, 0.1*s) }, "15 W or 10 %"},
	{"GPU temperature (°C)", "temperature.gpu", metric("hw.temperature", "hw.sensor_location", "gpu"),
		func(float64) float64 { return 3 }, "3 °C"},
	{"SM clock (MHz)", "clocks.sm", scaled(metric("capstan.gpu.clock", "capstan.clock.domain", "sm"), 1e-6),
		func(s float64) float64 { return max(100, 0.1*s) }, "100 MHz or 10 %"},
	{"memory clock (MHz)", "clocks.mem", scaled(metric("capstan.gpu.clock", "capstan.clock.domain", "memory"), 1e-6),
		func(s float64) float64 { return max(50, 0.05*s) }, "50 MHz or 5 %"},
	{"memory total (MiB)", "memory.total", scaled(metric("hw.gpu.memory.limit"), 1.0/mib),
		func(float64) float64 { return 1 }, "1 MiB"},
	{"memory used (MiB)", "memory.used", memoryUsed,
		func(s float64) float64 { return max(256, 0.02*s) }, "256 MiB or 2 %"},
	{"utilisation (%)", "utilization.gpu", scaled(metric("hw.gpu.utilization", "hw.gpu.task", "general"), 100),
		func(float64) float64 { return 20 }, "20 points"},
	{"enforced power limit (W)", "enforced.power.limit", metric("capstan.gpu.power.limit", "capstan.limit.kind", "enforced"),
		func(float64) float64 { return 1 }, "1 W"},
	{"requested power limit (W)", "power.limit", metric("capstan.gpu.power.limit", "capstan.limit.kind", "requested"),
		func(float64) float64 { return 1 }, "1 W"},
}

// memoryUsed is Capstan's used memory as nvidia-smi counts it: drivers differ on whether the
// driver's reserved memory is "used", so the reserved part is added when that is closer (the
// caller compares both ways through memoryUsedWithReserved).
func memoryUsed(g gpuPoints) (float64, bool) {
	used, ok := g.find("hw.gpu.memory.usage")
	return used / mib, ok
}

func memoryUsedWithReserved(g gpuPoints) (float64, bool) {
	used, ok := g.find("hw.gpu.memory.usage")
	reserved, _ := g.find("capstan.gpu.memory.reserved")
	return (used + reserved) / mib, ok
}

func (c *check) printf(format string, args ...any) { fmt.Fprintf(c.out, format, args...) }

// run checks the node and prints the report; it returns the exit status.
func (c *check) run() int {
	c.printf("# Capstan hardware check\n\n")
	if ret := c.lib.Init(); ret != nvml.SUCCESS {
		// After a failed Init no other NVML call may be made: with the library missing, any
		// call but Init kills the process.
		c.printf("NVML did not initialise: %v.\n", ret)
		if errors.Is(ret, nvml.ERROR_LIBRARY_NOT_FOUND) || errors.Is(ret, nvml.ERROR_DRIVER_NOT_LOADED) {
			c.printf("\nNo NVIDIA driver on this host: nothing to check.\n")
			return exitNoDriver
		}
		return exitFailed
	}
	defer func() { _ = c.lib.Shutdown() }()

	driver, _ := c.lib.SystemGetDriverVersion()
	nvmlVersion, _ := c.lib.SystemGetNVMLVersion()
	n, ret := c.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		c.printf("Counting GPUs failed: %v.\n", ret)
		return exitFailed
	}
	c.printf("Run %s; driver %s, NVML %s, %d GPUs.\n\n", time.Now().UTC().Format(time.RFC3339), driver, nvmlVersion, n)

	c.support(n)
	c.compare()
	if c.noWrite {
		c.printf("## Power limit write\n\nSkipped (--no-write).\n\n")
	} else {
		c.limitWrite(n)
	}
	if c.failed {
		c.printf("**Result: FAILED** (see the rows marked FAIL).\n")
		return exitFailed
	}
	c.printf("**Result: passed.**\n")
	return exitOK
}

func (c *check) fail() string {
	c.failed = true
	return "FAIL"
}

// support reports each GPU's identity, GPM and MIG support.
func (c *check) support(n int) {
	c.printf("## GPUs\n\n| index | name | UUID | GPM | MIG |\n| --- | --- | --- | --- | --- |\n")
	for i := range n {
		dev, ret := c.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			c.printf("| %d | (%v) | | | |\n", i, ret)
			continue
		}
		name, _ := dev.GetName()
		uuid, _ := dev.GetUUID()
		gpm := "no"
		if s, ret := dev.GpmQueryDeviceSupport(); ret != nvml.SUCCESS {
			gpm = "unknown (" + ret.Error() + ")"
		} else if s.IsSupportedDevice != 0 {
			gpm = "yes"
		}
		mig := "not supported"
		if current, pending, ret := dev.GetMigMode(); ret == nvml.SUCCESS {
			mig = "disabled"
			if current == nvml.DEVICE_MIG_ENABLE {
				mig = "enabled"
			}
			if pending != current {
				mig += " (change pending a reset)"
			}
		} else if ret != nvml.ERROR_NOT_SUPPORTED {
			mig = "unknown (" + ret.Error() + ")"
		}
		c.printf("| %d | %s | %s | %s | %s |\n", i, name, uuid, gpm, mig)
	}
	c.printf("\n")
}

// compare runs capstan collect and nvidia-smi and compares what both report, per GPU.
func (c *check) compare() {
	c.printf("## Capstan against nvidia-smi\n\n")
	out, err := c.collect()
	if err != nil {
		c.printf("`capstan collect` failed: %v. %s\n\n", err, c.fail())
		return
	}
	var points []point
	if err := json.Unmarshal(out, &points); err != nil {
		c.printf("`capstan collect --json` printed no JSON array: %v. %s\n\n", err, c.fail())
		return
	}
	byGPU := map[string]gpuPoints{}
	for _, p := range points {
		if p.Attributes["hw.type"] != "gpu" || p.Attributes["hw.id"] == "" {
			continue
		}
		id := p.Attributes["hw.id"]
		if byGPU[id] == nil {
			byGPU[id] = gpuPoints{}
		}
		byGPU[id][p.Name] = append(byGPU[id][p.Name], p)
	}
	fields := []string{"index", "uuid"}
	for _, cmp := range comparisons {
		fields = append(fields, cmp.smiField)
	}
	raw, err := c.smi(strings.Join(fields, ","))
	if err != nil {
		c.printf("nvidia-smi failed: %v. %s\n\n", err, c.fail())
		return
	}
	rows, err := csv.NewReader(strings.NewReader(string(raw))).ReadAll()
	if err != nil {
		c.printf("nvidia-smi printed no CSV: %v. %s\n\n", err, c.fail())
		return
	}
	c.printf("Tolerances: what may differ between two readings a moment apart.\n\n")
	c.printf("| GPU | quantity | Capstan | nvidia-smi | difference | tolerance | result |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	for _, row := range rows {
		if len(row) != len(fields) {
			c.printf("| ? | nvidia-smi row with %d fields, want %d | | | | | %s |\n", len(row), len(fields), c.fail())
			continue
		}
		for i := range row {
			row[i] = strings.TrimSpace(row[i])
		}
		index, uuid := row[0], row[1]
		g, ok := byGPU[uuid]
		if !ok {
			c.printf("| %s | Capstan reports no GPU %s | | | | | %s |\n", index, uuid, c.fail())
			continue
		}
		for k, cmp := range comparisons {
			c.compareOne(index, cmp, g, row[k+2])
		}
	}
	c.printf("\n")
}

func (c *check) compareOne(index string, cmp comparison, g gpuPoints, smiText string) {
	smi, err := strconv.ParseFloat(smiText, 64)
	if err != nil { // [N/A], [Not Supported]
		c.printf("| %s | %s | | %s | | | not compared |\n", index, cmp.label, smiText)
		return
	}
	ours, ok := cmp.capstan(g)
	if !ok {
		c.printf("| %s | %s | missing | %g | | %s | %s |\n", index, cmp.label, smi, cmp.toleranceText, c.fail())
		return
	}
	diff := math.Abs(ours - smi)
	if cmp.smiField == "memory.used" {
		if withReserved, ok := memoryUsedWithReserved(g); ok && math.Abs(withReserved-smi) < diff {
			ours, diff = withReserved, math.Abs(withReserved-smi)
		}
	}
	result := "pass"
	if diff > cmp.tolerance(smi) {
		result = c.fail()
	}
	c.printf("| %s | %s | %.1f | %g | %.1f | %s | %s |\n", index, cmp.label, ours, smi, diff, cmp.toleranceText, result)
}

// limitWrite writes the minimum + 10 W on one GPU, reads it back and restores the limit it
// found, whatever happens in between.
func (c *check) limitWrite(n int) {
	c.printf("## Power limit write\n\n")
	if c.gpu < 0 || c.gpu >= n {
		c.printf("GPU %d does not exist (%d GPUs). %s\n\n", c.gpu, n, c.fail())
		return
	}
	dev, ret := c.lib.DeviceGetHandleByIndex(c.gpu)
	if ret != nvml.SUCCESS {
		c.printf("Opening GPU %d: %v. %s\n\n", c.gpu, ret, c.fail())
		return
	}
	lo, hi, ret := dev.GetPowerManagementLimitConstraints()
	if ret != nvml.SUCCESS {
		c.printf("Reading the limit constraints of GPU %d: %v. %s\n\n", c.gpu, ret, c.fail())
		return
	}
	original, ret := dev.GetPowerManagementLimit()
	if ret != nvml.SUCCESS {
		c.printf("Reading the power limit of GPU %d: %v. %s\n\n", c.gpu, ret, c.fail())
		return
	}
	target := lo + 10_000
	if target > hi {
		target = lo
	}
	w := func(mw uint32) string { return strconv.FormatFloat(float64(mw)/1000, 'f', -1, 64) + " W" }
	c.printf("GPU %d: constraints %s to %s, limit found %s; writing %s.\n\n", c.gpu, w(lo), w(hi), w(original), w(target))
	if c.interrupted() {
		c.printf("Interrupted before the write; nothing written.\n\n")
		c.failed = true
		return
	}
	ret = dev.SetPowerManagementLimit(target)
	if ret != nvml.SUCCESS {
		hint := ""
		if ret == nvml.ERROR_NO_PERMISSION {
			hint = " Writing a power limit needs root; run as root, or pass --no-write."
		}
		c.printf("The write was refused: %v.%s %s\n\n", ret, hint, c.fail())
		return
	}
	defer c.restore(dev, original, w)
	requested, ret1 := dev.GetPowerManagementLimit()
	enforced, ret2 := dev.GetEnforcedPowerLimit()
	result := "pass"
	switch {
	case ret1 != nvml.SUCCESS || ret2 != nvml.SUCCESS:
		result = fmt.Sprintf("reading back failed (%v, %v) %s", ret1, ret2, c.fail())
	case requested != target:
		result = c.fail()
	case enforced > target:
		result = c.fail()
	case enforced < target:
		result = "pass (an out-of-band limit holds the GPU lower)"
	}
	c.printf("| read back | value | result |\n| --- | --- | --- |\n")
	c.printf("| requested (power-management) limit | %s | %s |\n", w(requested), result)
	c.printf("| enforced limit | %s | |\n", w(enforced))
}

func (c *check) restore(dev nvml.Device, original uint32, w func(uint32) string) {
	ret := dev.SetPowerManagementLimit(original)
	back, ret2 := dev.GetPowerManagementLimit()
	switch {
	case ret != nvml.SUCCESS:
		c.printf("| restored | (refused: %v; set %s by hand) | %s |\n\n", ret, w(original), c.fail())
	case ret2 != nvml.SUCCESS || back != original:
		c.printf("| restored | %s, want %s | %s |\n\n", w(back), w(original), c.fail())
	default:
		c.printf("| restored | %s | pass |\n\n", w(back))
	}
}
