// Package hostfixtures locates the committed sysfs trees of real server layouts that the host
// collectors (cpufreq, thermal) and the end-to-end tests run on. testdata/gen.sh writes them.
package hostfixtures

import (
	"path/filepath"
	"runtime"
)

// The fixture hosts.
const (
	// Intel is a 2-socket Xeon (4 CPUs shown): intel_pstate, coretemp, intel-rapl package and
	// dram, NVMe and PSU hwmon chips, a PSU sensor whose reads fail, a RAPL counter about to wrap.
	Intel = "intel"
	// AMD is an EPYC (8 CPUs shown): acpi-cpufreq, k10temp, AMD RAPL package and core, NVMe.
	AMD = "amd"
	// Big is a 2-socket Xeon with 192 logical CPUs and 96 coretemp core sensors.
	Big = "big"
)

// Hosts lists every fixture host.
var Hosts = []string{Intel, AMD, Big}

// Sysfs returns the absolute path of host's sysfs tree.
func Sysfs(host string) string {
	return filepath.Join(dir(), "testdata", host, "sys")
}

// Procfs returns the absolute path of host's procfs tree (empty: these collectors read sysfs).
func Procfs(host string) string {
	return filepath.Join(dir(), "testdata", host, "proc")
}

func dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}
