package workload

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// raplReader reads package energy from powercap (intel-rapl:N, package level only).
type raplReader struct {
	zones []*raplZone
}

type raplZone struct {
	energy   string
	maxUJ    uint64 // max_energy_range_uj; 0 when it could not be read
	last     uint64
	haveLast bool
}

var packageZone = regexp.MustCompile(`^intel-rapl:[0-9]+$`)

func newRAPL(sysfs string) *raplReader {
	r := &raplReader{}
	dirs, _ := filepath.Glob(filepath.Join(sysfs, "class", "powercap", "intel-rapl:*"))
	for _, d := range dirs {
		if !packageZone.MatchString(filepath.Base(d)) {
			continue
		}
		z := &raplZone{energy: filepath.Join(d, "energy_uj")}
		z.maxUJ, _ = readUint(filepath.Join(d, "max_energy_range_uj"))
		if _, err := readUint(z.energy); err != nil {
			continue
		}
		r.zones = append(r.zones, z)
	}
	return r
}

func (r *raplReader) ok() bool { return len(r.zones) > 0 }

// delta returns the package energy since the last call in joules; false on the first call,
// without RAPL, or when a zone's counter went back and its range is unknown.
func (r *raplReader) delta() (float64, bool) {
	if !r.ok() {
		return 0, false
	}
	var uj float64
	complete := true
	for _, z := range r.zones {
		v, err := readUint(z.energy)
		if err != nil {
			complete = false
			continue
		}
		switch {
		case !z.haveLast:
			complete = false
		case v >= z.last:
			uj += float64(v - z.last)
		case z.maxUJ > 0:
			// The counter wrapped: it counts 0..max_energy_range_uj, so from last to max, one
			// step to 0, then v.
			uj += float64(z.maxUJ - z.last + 1 + v)
		default:
			// Without the range a decrease cannot be told from a reset: the interval is
			// skipped rather than given a wrap of ~2^64 µJ.
			complete = false
		}
		z.last, z.haveLast = v, true
	}
	return uj / 1e6, complete
}

func readUint(path string) (uint64, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
}
