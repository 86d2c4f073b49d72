package hostfixtures

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
)

// Write lays out every fixture host under dir: dir/HOST/sys. The values are the ones real
// machines show.
func Write(dir string) error {
	for _, host := range Hosts {
		l := &layout{root: filepath.Join(dir, host)}
		switch host {
		case Intel:
			l.intel()
		case AMD:
			l.amd()
		case Big:
			l.big()
		}
		if l.err != nil {
			return fmt.Errorf("writing the %s fixture host: %w", host, l.err)
		}
	}
	return nil
}

// layout writes one host's tree; the first error sticks and stops every later write, so the
// builders below read as the list of files they are.
type layout struct {
	root string
	err  error
	hw   string // the hwmon directory made last, for the chip's sensors
}

// w writes value and a newline to the file at rel (slash-separated, below root), making its
// directories, as sysfs shows an attribute.
func (l *layout) w(rel string, value any) {
	if l.err != nil {
		return
	}
	p := filepath.Join(l.root, filepath.FromSlash(rel))
	if l.err = os.MkdirAll(filepath.Dir(p), 0o755); l.err != nil {
		return
	}
	l.err = os.WriteFile(p, fmt.Appendf(nil, "%v\n", value), 0o644)
}

// link makes rel a symbolic link to target (relative, as the kernel's links are).
func (l *layout) link(target, rel string) {
	if l.err != nil {
		return
	}
	p := filepath.Join(l.root, filepath.FromSlash(rel))
	if l.err = os.MkdirAll(filepath.Dir(p), 0o755); l.err != nil {
		return
	}
	l.err = os.Symlink(target, p)
}

func (l *layout) mkdir(rel string) {
	if l.err == nil {
		l.err = os.MkdirAll(filepath.Join(l.root, filepath.FromSlash(rel)), 0o755)
	}
}

// cpu is one logical CPU with its own cpufreq policy, as intel_pstate and acpi-cpufreq lay it
// out on servers (cpuN/cpufreq is a link to ../cpufreq/policyN).
func (l *layout) cpu(n, pkg, core int, driver string, cur int, siblings, cores string) {
	c := fmt.Sprintf("sys/devices/system/cpu/cpu%d", n)
	p := fmt.Sprintf("sys/devices/system/cpu/cpufreq/policy%d", n)
	if n != 0 {
		l.w(c+"/online", 1)
	}
	l.w(c+"/topology/physical_package_id", pkg)
	l.w(c+"/topology/core_id", core)
	l.w(c+"/topology/thread_siblings_list", siblings)
	l.w(c+"/topology/core_siblings_list", cores)
	l.mkdir(p)
	l.link(fmt.Sprintf("../cpufreq/policy%d", n), c+"/cpufreq")
	l.w(p+"/affected_cpus", n)
	l.w(p+"/related_cpus", n)
	l.w(p+"/scaling_driver", driver)
	l.w(p+"/scaling_cur_freq", cur)
	switch driver {
	case "intel_pstate":
		l.w(p+"/cpuinfo_min_freq", 800000)
		l.w(p+"/cpuinfo_max_freq", 3800000)
		l.w(p+"/cpuinfo_transition_latency", 0)
		l.w(p+"/scaling_min_freq", 800000)
		l.w(p+"/scaling_max_freq", 3800000)
		l.w(p+"/scaling_governor", "powersave")
		l.w(p+"/scaling_available_governors", "performance powersave")
		l.w(p+"/scaling_setspeed", "<unsupported>")
		l.w(p+"/energy_performance_preference", "balance_performance")
		l.w(p+"/energy_performance_available_preferences", "default performance balance_performance balance_power power")
		l.w(c+"/thermal_throttle/core_throttle_count", n*3)
		l.w(c+"/thermal_throttle/core_throttle_max_time_ms", 12)
		l.w(c+"/thermal_throttle/core_throttle_total_time_ms", n*40)
		l.w(c+"/thermal_throttle/package_throttle_count", pkg*7+2)
		l.w(c+"/thermal_throttle/package_throttle_max_time_ms", 30)
		l.w(c+"/thermal_throttle/package_throttle_total_time_ms", 210)
	case "acpi-cpufreq":
		l.w(p+"/cpuinfo_min_freq", 1500000)
		l.w(p+"/cpuinfo_max_freq", 2450000)
		l.w(p+"/cpuinfo_cur_freq", cur+1000)
		l.w(p+"/cpuinfo_transition_latency", 0)
		l.w(p+"/scaling_min_freq", 1500000)
		l.w(p+"/scaling_max_freq", 2450000)
		l.w(p+"/scaling_governor", "schedutil")
		l.w(p+"/scaling_available_governors", "conservative ondemand userspace powersave performance schedutil")
		l.w(p+"/scaling_available_frequencies", "2450000 2000000 1500000")
		l.w(p+"/scaling_setspeed", "<unsupported>")
	}
}

func (l *layout) cpusCommon(last int) {
	for _, f := range []string{"online", "possible", "present"} {
		l.w("sys/devices/system/cpu/"+f, fmt.Sprintf("0-%d", last))
	}
	l.w("sys/devices/system/cpu/offline", "")
}

// trip is a thermal zone's trip point.
type trip struct {
	temp int
	kind string
}

func (l *layout) zone(n int, kind string, temp int, trips ...trip) {
	z := fmt.Sprintf("sys/class/thermal/thermal_zone%d", n)
	l.w(z+"/type", kind)
	l.w(z+"/temp", temp)
	l.w(z+"/policy", "step_wise")
	l.w(z+"/mode", "enabled")
	for i, t := range trips {
		l.w(fmt.Sprintf("%s/trip_point_%d_temp", z, i), t.temp)
		l.w(fmt.Sprintf("%s/trip_point_%d_type", z, i), t.kind)
	}
}

func (l *layout) cooling(n int, kind string, cur, maxState int) {
	d := fmt.Sprintf("sys/class/thermal/cooling_device%d", n)
	l.w(d+"/type", kind)
	l.w(d+"/cur_state", cur)
	l.w(d+"/max_state", maxState)
}

// hwmon makes chip n under device dev: the class link points at the device's hwmon directory,
// and the chip's device link at its parent device, as the kernel lays it out. Sensors written
// with l.hw go into it.
func (l *layout) hwmon(n int, name, dev string) {
	l.hw = fmt.Sprintf("sys/devices/%s/hwmon/hwmon%d", dev, n)
	l.w(l.hw+"/name", name)
	l.link("../../../"+path.Base(dev), l.hw+"/device")
	l.link(fmt.Sprintf("../../devices/%s/hwmon/hwmon%d", dev, n), fmt.Sprintf("sys/class/hwmon/hwmon%d", n))
}

// sensor writes attributes of the chip hwmon made last.
func (l *layout) sensor(attr string, value any) { l.w(l.hw+"/"+attr, value) }

func (l *layout) rapl(zone, name string, energyUJ, rangeUJ int64) {
	z := "sys/class/powercap/" + zone
	l.w(z+"/name", name)
	l.w(z+"/energy_uj", energyUJ)
	l.w(z+"/max_energy_range_uj", rangeUJ)
	l.w(z+"/enabled", 1)
}

func (l *layout) constraint(zone string, i int, name string, limitUW, windowUS, maxUW int64) {
	z := fmt.Sprintf("sys/class/powercap/%s/constraint_%d", zone, i)
	l.w(z+"_name", name)
	l.w(z+"_power_limit_uw", limitUW)
	l.w(z+"_time_window_us", windowUS)
	l.w(z+"_max_power_uw", maxUW)
}

func (l *layout) coretemp(n, pkg, cores, base int) {
	l.hwmon(n, "coretemp", fmt.Sprintf("platform/coretemp.%d", pkg))
	l.sensor("temp1_label", fmt.Sprintf("Package id %d", pkg))
	l.sensor("temp1_input", base)
	l.sensor("temp1_max", 91000)
	l.sensor("temp1_crit", 101000)
	l.sensor("temp1_crit_alarm", 0)
	for c := range cores {
		s := c + 2
		l.sensor(fmt.Sprintf("temp%d_label", s), fmt.Sprintf("Core %d", c))
		l.sensor(fmt.Sprintf("temp%d_input", s), base-3000+(c%5)*1000)
		l.sensor(fmt.Sprintf("temp%d_max", s), 91000)
		l.sensor(fmt.Sprintf("temp%d_crit", s), 101000)
		l.sensor(fmt.Sprintf("temp%d_crit_alarm", s), 0)
	}
}

func (l *layout) nvme(n int, ctrl, pci string) {
	l.hwmon(n, "nvme", "pci0000:00/"+pci+"/nvme/"+ctrl)
	l.sensor("temp1_label", "Composite")
	l.sensor("temp1_input", 38850)
	l.sensor("temp1_min", -273150)
	l.sensor("temp1_max", 81850)
	l.sensor("temp1_crit", 84850)
	l.sensor("temp1_alarm", 0)
	l.sensor("temp2_label", "Sensor 1")
	l.sensor("temp2_input", 38850)
	l.sensor("temp2_min", -273150)
	l.sensor("temp2_max", 65261850)
}

// intel is a 2-socket Xeon with 2 CPUs shown per socket.
func (l *layout) intel() {
	l.cpusCommon(3)
	l.cpu(0, 0, 0, "intel_pstate", 2300000, "0", "0-1")
	l.cpu(1, 0, 1, "intel_pstate", 3100000, "1", "0-1")
	l.cpu(2, 1, 0, "intel_pstate", 800000, "2", "2-3")
	l.cpu(3, 1, 1, "intel_pstate", 1200000, "3", "2-3")
	l.zone(0, "acpitz", 27800, trip{105000, "critical"})
	l.zone(1, "x86_pkg_temp", 52000, trip{0, "passive"}, trip{0, "passive"})
	l.zone(2, "x86_pkg_temp", 49000, trip{0, "passive"}, trip{0, "passive"})
	for i := range 4 {
		l.cooling(i, "Processor", 0, 3)
	}
	l.cooling(4, "intel_powerclamp", -1, 50)
	l.hwmon(0, "acpitz", "LNXSYSTM:00/LNXSYBUS:00/LNXTHERM:00")
	l.sensor("temp1_input", 27800)
	l.sensor("temp1_crit", 105000)
	l.coretemp(1, 0, 2, 52000)
	l.coretemp(2, 1, 2, 49000)
	l.nvme(3, "nvme0", "0000:00:17.0")
	// A Delta DPS-460 PSU through PMBus: input and output voltage, current and power, its fan,
	// two temperatures; temp3 stands for a sensor that fails every read (the file is a
	// directory, so read(2) fails with EISDIR; unit tests inject EIO and ENODATA through the
	// reader seam).
	l.hwmon(4, "dps460", "pci0000:00/0000:00:1f.4/i2c-7/7-0058")
	for _, a := range []struct {
		attr  string
		value any
	}{
		{"in1_label", "vin"}, {"in1_input", 230250}, {"in1_lcrit", 90000}, {"in1_crit", 264000}, {"in1_min_alarm", 0},
		{"in2_label", "vout1"}, {"in2_input", 12102}, {"in2_crit", 13500},
		{"curr1_label", "iin"}, {"curr1_input", 1790}, {"curr1_max", 4200},
		{"curr2_label", "iout1"}, {"curr2_input", 30500}, {"curr2_max", 38000}, {"curr2_max_alarm", 0},
		{"power1_label", "pin"}, {"power1_input", 411000000}, {"power1_alarm", 0},
		{"power2_label", "pout1"}, {"power2_input", 369000000}, {"power2_cap", 460000000},
		{"fan1_input", 5120}, {"fan1_alarm", 0},
		{"temp1_input", 31000}, {"temp1_max", 60000}, {"temp2_input", 37500},
	} {
		l.sensor(a.attr, a.value)
	}
	l.mkdir(l.hw + "/temp3_input")
	if l.err == nil {
		l.err = os.WriteFile(filepath.Join(l.root, filepath.FromSlash(l.hw), "temp3_input", ".keep"), nil, 0o644)
	}
	l.sensor("temp3_label", "hotspot")
	l.w("sys/class/powercap/intel-rapl/enabled", 1)
	for pkg, energy := range []int64{123456789012, 261843328850} {
		zone := fmt.Sprintf("intel-rapl:%d", pkg)
		// package-1's counter is 300 J short of its range: the next reading wraps.
		l.rapl(zone, fmt.Sprintf("package-%d", pkg), energy, 262143328850)
		l.constraint(zone, 0, "long_term", 205000000, 999424, 205000000)
		l.constraint(zone, 1, "short_term", 246000000, 2440, 478000000)
		l.rapl(zone+":0", "dram", []int64{23456789012, 22222222222}[pkg], 65712999613)
		l.constraint(zone+":0", 0, "long_term", 0, 976, 0)
	}
}

// amd is an EPYC with 4 cores x 2 threads shown: acpi-cpufreq, k10temp, AMD RAPL.
func (l *layout) amd() {
	l.cpusCommon(7)
	for n := range 8 {
		core := n % 4
		l.cpu(n, 0, core, "acpi-cpufreq", 1500000+(n%3)*475000, fmt.Sprintf("%d,%d", core, core+4), "0-7")
	}
	l.hwmon(0, "k10temp", "pci0000:00/0000:00:18.3")
	l.sensor("temp1_label", "Tctl")
	l.sensor("temp1_input", 45500)
	l.sensor("temp3_label", "Tccd1")
	l.sensor("temp3_input", 41250)
	l.sensor("temp4_label", "Tccd2")
	l.sensor("temp4_input", 42000)
	l.nvme(1, "nvme0", "0000:40:03.1")
	l.w("sys/class/powercap/intel-rapl/enabled", 1)
	l.rapl("intel-rapl:0", "package-0", 98765432109, 65712999613)
	l.rapl("intel-rapl:0:0", "core", 3456789012, 65712999613)
}

// big is a 2-socket Xeon with 192 logical CPUs: 48 cores x 2 threads per socket.
func (l *layout) big() {
	l.cpusCommon(191)
	for n := range 192 {
		pkg := (n / 48) % 2
		cores := fmt.Sprintf("%d-%d,%d-%d", pkg*48, pkg*48+47, pkg*48+96, pkg*48+143)
		l.cpu(n, pkg, n%48, "intel_pstate", 2000000+(n%7)*100000, fmt.Sprintf("%d,%d", n%96, n%96+96), cores)
	}
	l.zone(0, "x86_pkg_temp", 61000, trip{0, "passive"}, trip{0, "passive"})
	l.zone(1, "x86_pkg_temp", 58000, trip{0, "passive"}, trip{0, "passive"})
	l.cooling(0, "intel_powerclamp", -1, 50)
	l.coretemp(0, 0, 48, 61000)
	l.coretemp(1, 1, 48, 58000)
	l.nvme(2, "nvme0", "0000:00:17.0")
	l.w("sys/class/powercap/intel-rapl/enabled", 1)
	for pkg, energy := range []int64{123456789012, 133456789012} {
		zone := fmt.Sprintf("intel-rapl:%d", pkg)
		l.rapl(zone, fmt.Sprintf("package-%d", pkg), energy, 262143328850)
		l.constraint(zone, 0, "long_term", 350000000, 999424, 350000000)
		l.rapl(zone+":0", "dram", []int64{23456789012, 21456789012}[pkg], 65712999613)
	}
}
