package thermal

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/sysattr"
)

// raplZone is one powercap zone of the intel-rapl control type (AMD's RAPL shows there too).
type raplZone struct {
	energyFile *sysattr.File
	// maxMicrojoules is max_energy_range_uj: the counter wraps to 0 after it.
	maxMicrojoules uint64
	energy, power  *sample.Series
	constraints    []constraint

	have        bool
	last        uint64
	lastTime    time.Time
	microjoules float64 // accumulated since the agent started, wrap-arounds included
}

type constraint struct {
	limitFile, windowFile *sysattr.File
	limit, window         *sample.Series
}

// raplType is the hw.type of a RAPL domain: what the domain's energy is spent in.
func raplType(domain string) string {
	switch domain {
	case "dram":
		return "memory"
	case "uncore":
		return "gpu" // the integrated graphics of client parts
	case "psys":
		return "enclosure" // the whole platform
	}
	return "cpu" // package, core
}

// findRAPL lists the powercap zones of the RAPL control types. A zone whose name does not read
// is skipped and logged; one whose max_energy_range_uj does not read is kept, its counter's range
// unknown (a wrap then costs one power reading), and logged. The other zones are kept either way.
func (c *Collector) findRAPL(root string) error {
	class := filepath.Join(root, "class", "powercap")
	entries, err := os.ReadDir(class)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		c.log.Warn("not reading RAPL: listing powercap zones failed", "err", err)
		return nil
	}
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
		name, err := c.r.String(nameFile)
		if err != nil || name == "" {
			c.log.Warn("skipping a RAPL zone whose name does not read", "zone", id, "err", err)
			continue
		}
		// hw.name is the domain without its package number ("package-1" is "package"), as
		// procfs named it; hw.id tells the packages apart.
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		maxMicrojoules, err := c.r.UintOnce(filepath.Join(dir, "max_energy_range_uj"))
		if err != nil {
			c.log.Warn("RAPL zone's counter range does not read; reading it with the range unknown", "zone", id, "err", err)
			maxMicrojoules = 0
		}
		kv := []attribute.KeyValue{
			attribute.String(metrics.AttrHWType, raplType(name)),
			attribute.String(metrics.AttrHWID, id),
			attribute.String(metrics.AttrHWName, name),
		}
		rz := &raplZone{
			energyFile:     sysattr.NewFile(filepath.Join(dir, "energy_uj")),
			maxMicrojoules: maxMicrojoules,
			energy:         sample.NewSeries(metrics.HWEnergy, kv...),
			power:          sample.NewSeries(metrics.HWPower, kv...),
		}
		names, _ := filepath.Glob(filepath.Join(dir, "constraint_*_name"))
		sort.Strings(names)
		for _, n := range names {
			constraintName, err := c.r.String(n)
			if err != nil {
				continue
			}
			prefix := strings.TrimSuffix(n, "name")
			ckv := append(kv, attribute.String(metrics.AttrRAPLConstraint, constraintName))
			rz.constraints = append(rz.constraints, constraint{
				limitFile:  sysattr.NewFile(prefix + "power_limit_uw"),
				windowFile: sysattr.NewFile(prefix + "time_window_us"),
				limit:      sample.NewSeries(metrics.RAPLPowerLimit, ckv...),
				window:     sample.NewSeries(metrics.RAPLTimeWindow, ckv...),
			})
		}
		c.rapl = append(c.rapl, rz)
	}
	return nil
}

func (c *Collector) collectRAPL(ctx context.Context, b *sample.Batch, s *stats) {
	now := c.now()
	for _, z := range c.rapl {
		if ctx.Err() != nil {
			return
		}
		c.readEnergy(z, now, b, s)
		for _, k := range z.constraints {
			if v, err := c.r.Uint(k.limitFile); c.ok(s, k.limitFile, err) {
				b.Add(k.limit, float64(v)/1e6)
			}
			if v, err := c.r.Uint(k.windowFile); c.ok(s, k.windowFile, err) {
				b.Add(k.window, float64(v)/1e6)
			}
		}
	}
}

// readEnergy adds the zone's energy, and from the second reading on its power over the interval.
func (c *Collector) readEnergy(z *raplZone, now time.Time, b *sample.Batch, s *stats) {
	uj, err := c.r.Uint(z.energyFile)
	if errors.Is(err, fs.ErrPermission) {
		// energy_uj is root-only since kernel 5.10 (a power side channel): not a sensor fault.
		if !c.raplDenied {
			c.raplDenied = true
			c.log.Warn("RAPL energy counters are readable by root only; reporting RAPL power limits without energy and power",
				"file", z.energyFile.Path, "err", err)
		}
		return
	}
	if !c.ok(s, z.energyFile, err) {
		return
	}
	if !z.have {
		z.have, z.last, z.lastTime, z.microjoules = true, uj, now, float64(uj)
		b.Add(z.energy, z.microjoules/1e6)
		return
	}
	delta, ok := energyDelta(z.last, uj, z.maxMicrojoules)
	if !ok {
		// A counter that went backwards without a known range: restart the power baseline.
		c.log.Warn("RAPL counter went backwards and its range is unknown; skipping one power reading",
			"file", z.energyFile.Path, "previous_uj", z.last, "now_uj", uj)
		z.last, z.lastTime = uj, now
		b.Add(z.energy, z.microjoules/1e6)
		return
	}
	z.microjoules += float64(delta)
	b.Add(z.energy, z.microjoules/1e6)
	if dt := now.Sub(z.lastTime).Seconds(); dt > 0 {
		b.Add(z.power, float64(delta)/1e6/dt)
	}
	z.last, z.lastTime = uj, now
}

// energyDelta is the energy between two readings of a counter that wraps to 0 after max.
func energyDelta(prev, cur, maxMicrojoules uint64) (uint64, bool) {
	if cur >= prev {
		return cur - prev, true
	}
	if maxMicrojoules == 0 || prev > maxMicrojoules {
		return 0, false
	}
	return maxMicrojoules - prev + cur, true
}
