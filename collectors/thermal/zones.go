package thermal

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/procfs/sysfs"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/sysattr"
)

type zone struct {
	tempFile *sysattr.File
	temp     *sample.Series
	trips    []trip
}

type trip struct {
	file   *sysattr.File
	series *sample.Series
}

type coolingDevice struct {
	curFile  *sysattr.File
	maxState float64
	cur, max *sample.Series
}

// findZones lists thermal zones through procfs, which reads each zone's type; temperatures and
// trip points are read on each collection.
func (c *Collector) findZones(sfs sysfs.FS, root string) error {
	found, err := sfs.ClassThermalZoneStats()
	if err != nil {
		return fmt.Errorf("listing thermal zones under %s: %w", root, err)
	}
	for _, z := range found {
		if z.Type == "" {
			c.log.Warn("skipping a thermal zone without a type", "zone", z.Name, "err", z.ReadErrors)
			continue
		}
		dir := filepath.Join(root, "class", "thermal", "thermal_zone"+z.Name)
		id := "thermal_zone" + z.Name
		kv := []attribute.KeyValue{
			attribute.String(metrics.AttrHWType, "temperature"),
			attribute.String(metrics.AttrHWID, id),
			attribute.String(metrics.AttrHWName, z.Type),
			attribute.String(metrics.AttrSensorLocation, z.Type),
		}
		zn := &zone{tempFile: sysattr.NewDeviceFile(filepath.Join(dir, "temp")), temp: sample.NewSeries(metrics.HWTemperature, kv...)}
		types, _ := filepath.Glob(filepath.Join(dir, "trip_point_*_type"))
		sort.Slice(types, func(i, j int) bool { return tripIndex(types[i]) < tripIndex(types[j]) })
		for _, tp := range types {
			kind, err := c.r.String(tp)
			if err != nil {
				continue
			}
			i := tripIndex(tp)
			zn.trips = append(zn.trips, trip{
				file: sysattr.NewDeviceFile(filepath.Join(dir, fmt.Sprintf("trip_point_%d_temp", i))),
				series: sample.NewSeries(metrics.HWTemperatureLimit, append(kv,
					attribute.String(metrics.AttrLimitType, kind), attribute.Int(metrics.AttrTripPoint, i))...),
			})
		}
		c.zones = append(c.zones, zn)
	}
	sort.SliceStable(c.zones, func(i, j int) bool { return c.zones[i].tempFile.Path < c.zones[j].tempFile.Path })
	return nil
}

func tripIndex(path string) int {
	s := strings.TrimPrefix(filepath.Base(path), "trip_point_")
	i, _ := strconv.Atoi(s[:strings.IndexByte(s, '_')])
	return i
}

// findCooling lists cooling devices; their current state is read on each collection, the
// maximum is fixed by the driver. A device whose type or maximum does not read (garbage, EIO,
// ENODATA) is skipped and logged; the others are kept.
func (c *Collector) findCooling(root string) error {
	dirs, err := filepath.Glob(filepath.Join(root, "class", "thermal", "cooling_device[0-9]*"))
	if err != nil {
		return fmt.Errorf("listing cooling devices under %s: %w", root, err)
	}
	for _, dir := range dirs {
		id := filepath.Base(dir)
		typ, err := c.r.String(filepath.Join(dir, "type"))
		if err != nil {
			c.log.Warn("skipping a cooling device whose type does not read", "device", id, "err", err)
			continue
		}
		maxState, err := c.readInt(filepath.Join(dir, "max_state"))
		if err != nil {
			c.log.Warn("skipping a cooling device whose max_state does not read", "device", id, "err", err)
			continue
		}
		kv := []attribute.KeyValue{attribute.String(metrics.AttrHWID, id), attribute.String(metrics.AttrHWName, typ)}
		c.cooling = append(c.cooling, &coolingDevice{
			curFile:  sysattr.NewDeviceFile(filepath.Join(dir, "cur_state")),
			maxState: float64(maxState),
			cur:      sample.NewSeries(metrics.ThermalCoolingState, kv...),
			max:      sample.NewSeries(metrics.ThermalCoolingStateMax, kv...),
		})
	}
	return nil
}

// readInt reads a decimal integer attribute once, at discovery.
func (c *Collector) readInt(path string) (int64, error) {
	s, err := c.r.String(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", path, err)
	}
	return v, nil
}

func (c *Collector) collectZones(ctx context.Context, b *sample.Batch, s *stats) {
	for _, z := range c.zones {
		if ctx.Err() != nil {
			return
		}
		// Zones report millidegrees Celsius.
		if v, err := c.r.Int(z.tempFile); c.ok(s, z.tempFile, err) {
			b.Add(z.temp, float64(v)/1e3)
		}
		for _, t := range z.trips {
			if v, err := c.r.Int(t.file); c.ok(s, t.file, err) {
				b.Add(t.series, float64(v)/1e3)
			}
		}
	}
}

func (c *Collector) collectCooling(ctx context.Context, b *sample.Batch, s *stats) {
	for _, d := range c.cooling {
		if ctx.Err() != nil {
			return
		}
		if v, err := c.r.Int(d.curFile); c.ok(s, d.curFile, err) {
			b.Add(d.cur, float64(v))
		}
		b.Add(d.max, d.maxState)
	}
}
