// Package rapl reads RAPL energy counters through Linux powercap (class/powercap/intel-rapl*;
// AMD's RAPL shows there too): it finds the zones, follows each counter across its wraps with
// one rule, and turns energy into power between two readings. The thermal collector (every
// zone), the workload collector (package energy) and the capping controller (package power)
// all read RAPL through it, each with its own Counters, since each reads at its own pace.
package rapl

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/capstan-power/capstan/internal/sysattr"
)

// Zone is one powercap zone of a RAPL control type.
type Zone struct {
	// ID is the zone's directory name: intel-rapl:0, intel-rapl:0:0, intel-rapl-mmio:0.
	ID string
	// Name is the domain without its package number ("package-1" is "package"): package,
	// core, uncore, dram, psys.
	Name string
	// Dir is the zone's directory.
	Dir string
	// Energy is energy_uj, the zone's counter in microjoules.
	Energy *sysattr.File
	// MaxMicrojoules is max_energy_range_uj, the counter's range: it wraps to 0 after it. Zero
	// when it did not read (a wrap then costs one interval).
	MaxMicrojoules uint64
}

// Package reports whether the zone is a whole CPU package: a top-level zone of the intel-rapl
// control type named package. The intel-rapl-mmio zones of some parts repeat the packages, and
// psys covers the whole platform, so neither is a package to add.
func (z *Zone) Package() bool {
	n, ok := strings.CutPrefix(z.ID, "intel-rapl:")
	if !ok || z.Name != "package" {
		return false
	}
	_, err := strconv.Atoi(n)
	return err == nil
}

// Find lists the zones of the RAPL control types under the sysfs root, in directory order,
// reading their names and ranges through r. A host without powercap has no zones and no error.
// A zone whose name does not read is skipped, and one whose max_energy_range_uj does not read is
// kept with its range unknown; both are logged. The error is for a powercap class that exists but
// does not list.
func Find(sysfs string, r *sysattr.Reader, log *slog.Logger) ([]*Zone, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	class := filepath.Join(sysfs, "class", "powercap")
	entries, err := os.ReadDir(class)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing powercap zones: %w", err)
	}
	var zones []*Zone
	for _, e := range entries {
		id := e.Name()
		if !strings.Contains(id, "rapl") {
			continue // other powercap control types (dtpm) have no energy counter
		}
		dir := filepath.Join(class, id)
		nameFile := filepath.Join(dir, "name")
		if _, err := os.Stat(nameFile); err != nil {
			continue // the control type itself (intel-rapl), not a zone
		}
		name, err := r.String(nameFile)
		if err != nil || name == "" {
			log.Warn("skipping a RAPL zone whose name does not read", "zone", id, "err", err)
			continue
		}
		// The domain without its package number, as procfs named it; the ID tells the
		// packages apart.
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		maxMicrojoules, err := r.UintOnce(filepath.Join(dir, "max_energy_range_uj"))
		if err != nil {
			log.Warn("RAPL zone's counter range does not read; reading it with the range unknown", "zone", id, "err", err)
			maxMicrojoules = 0
		}
		zones = append(zones, &Zone{ID: id, Name: name, Dir: dir, Energy: sysattr.NewFile(filepath.Join(dir, "energy_uj")),
			MaxMicrojoules: maxMicrojoules})
	}
	return zones, nil
}

// Delta is the energy between two readings of a counter whose range is maxMicrojoules: it
// counts up and wraps to 0 after the range, so a reading below the previous one is a wrap. Without
// a known range a decrease cannot be told from a reset, and Delta reports false rather than a
// wrap of about 2^64 µJ.
func Delta(prev, cur, maxMicrojoules uint64) (uint64, bool) {
	if cur >= prev {
		return cur - prev, true
	}
	if maxMicrojoules == 0 || prev > maxMicrojoules {
		return 0, false
	}
	return maxMicrojoules - prev + cur, true
}

// Counter follows one zone's energy counter from reading to reading. The zero value is ready.
type Counter struct {
	have        bool
	last        uint64
	lastTime    time.Time
	microjoules float64 // the first reading plus every delta since, wraps included
}

// Step is what one reading of a counter gives.
type Step struct {
	// Joules is the zone's energy: the counter's first reading plus all energy since, across
	// wraps, so it never goes back.
	Joules float64
	// DeltaJ and Seconds are the energy and time since the previous reading, when Interval.
	DeltaJ, Seconds float64
	// Interval is false on the first reading and when the counter went back with its range
	// unknown (Reset): the next reading starts a new interval.
	Interval bool
	Reset    bool
}

// Watts is the power over the step's interval; false without an interval or without time passed.
func (s Step) Watts() (float64, bool) {
	if !s.Interval || s.Seconds <= 0 {
		return 0, false
	}
	return s.DeltaJ / s.Seconds, true
}

// Update takes a reading uj of the zone's counter at now.
func (c *Counter) Update(z *Zone, uj uint64, now time.Time) Step {
	if !c.have {
		c.have, c.last, c.lastTime, c.microjoules = true, uj, now, float64(uj)
		return Step{Joules: c.microjoules / 1e6}
	}
	delta, ok := Delta(c.last, uj, z.MaxMicrojoules)
	seconds := now.Sub(c.lastTime).Seconds()
	c.last, c.lastTime = uj, now
	if !ok {
		return Step{Joules: c.microjoules / 1e6, Reset: true}
	}
	c.microjoules += float64(delta)
	return Step{Joules: c.microjoules / 1e6, DeltaJ: float64(delta) / 1e6, Seconds: seconds, Interval: true}
}
