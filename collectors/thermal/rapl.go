package thermal

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/rapl"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/sysattr"
)

// raplZone is one powercap zone of a RAPL control type with its series.
type raplZone struct {
	zone          *rapl.Zone
	counter       rapl.Counter
	energy, power *sample.Series
	constraints   []constraint
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

// findRAPL lists the zones of the RAPL control types (package rapl) and their constraints.
func (c *Collector) findRAPL(root string) error {
	zones, err := rapl.Find(root, c.r, c.log)
	if err != nil {
		c.log.Warn("not reading RAPL: listing powercap zones failed", "err", err)
		return nil
	}
	for _, z := range zones {
		kv := []attribute.KeyValue{
			attribute.String(metrics.AttrHWType, raplType(z.Name)),
			attribute.String(metrics.AttrHWID, z.ID),
			attribute.String(metrics.AttrHWName, z.Name),
		}
		rz := &raplZone{
			zone:   z,
			energy: sample.NewSeries(metrics.HWEnergy, kv...),
			power:  sample.NewSeries(metrics.HWPower, kv...),
		}
		names, _ := filepath.Glob(filepath.Join(z.Dir, "constraint_*_name"))
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
	uj, err := c.r.Uint(z.zone.Energy)
	if errors.Is(err, fs.ErrPermission) {
		// energy_uj is root-only since kernel 5.10 (a power side channel): not a sensor fault.
		if !c.raplDenied {
			c.raplDenied = true
			c.log.Warn("RAPL energy counters are readable by root only; reporting RAPL power limits without energy and power",
				"file", z.zone.Energy.Path, "err", err)
		}
		return
	}
	if !c.ok(s, z.zone.Energy, err) {
		return
	}
	step := z.counter.Update(z.zone, uj, now)
	if step.Reset {
		// A counter that went backwards without a known range: restart the power baseline.
		c.log.Warn("RAPL counter went backwards and its range is unknown; skipping one power reading",
			"file", z.zone.Energy.Path, "now_uj", uj)
	}
	b.Add(z.energy, step.Joules)
	if w, ok := step.Watts(); ok {
		b.Add(z.power, w)
	}
}
