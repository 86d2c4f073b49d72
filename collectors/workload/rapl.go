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
	maxUJ    uint64
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

// delta returns the package energy since the last call in joules; false on the first call or
// without RAPL.
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
		if z.haveLast {
			d := v - z.last
			if v < z.last { // the counter wrapped
				d = z.maxUJ - z.last + v
			}
			uj += float64(d)
		} else {
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
