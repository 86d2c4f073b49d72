// Package thermal collects thermal zones and cooling devices, every hwmon chip and sensor, and
// RAPL energy and power limits through powercap.
package thermal

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"time"

	"github.com/prometheus/procfs/sysfs"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/sysattr"
)

// Name is the collector's name in flags and metrics.
const Name = "thermal"

func init() {
	collectors.Register(collectors.Factory{
		Name:             Name,
		EnabledByDefault: true,
		Interval:         5 * time.Second,
		New: func(set collectors.Settings, _ collectors.Config) (collectors.Collector, error) {
			return New(Options{Sysfs: set.Sysfs, Logger: set.Logger, Now: set.Now})
		},
	})
}

// Options configures a Collector.
type Options struct {
	// Sysfs is the sysfs root (/sys, or /host/sys in a container, or a fixture tree).
	Sysfs  string
	Logger *slog.Logger
	Now    func() time.Time
	// Read is the file-reading seam; nil reads the filesystem.
	Read sysattr.ReadFunc
}

// Collector reads thermal zones, cooling devices, hwmon chips and RAPL zones found at start.
type Collector struct {
	log *slog.Logger
	now func() time.Time
	r   *sysattr.Reader

	zones   []*zone
	cooling []*coolingDevice
	sensors []*sensor
	rapl    []*raplZone

	// failing holds the files whose last read failed, so a persistent failure is logged once.
	failing map[string]bool
	// raplDenied is set once energy_uj was unreadable for lack of permission (root-only since
	// kernel 5.10), so that is said once.
	raplDenied bool
}

// New discovers every sensor under the sysfs root.
func New(o Options) (*Collector, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	sfs, err := sysfs.NewFS(o.Sysfs)
	if err != nil {
		return nil, fmt.Errorf("opening sysfs at %s: %w", o.Sysfs, err)
	}
	c := &Collector{
		log:     o.Logger.With("collector", Name),
		now:     o.Now,
		r:       sysattr.NewReader(o.Read),
		failing: map[string]bool{},
	}
	if err := c.findZones(sfs, o.Sysfs); err != nil {
		return nil, err
	}
	if err := c.findCooling(o.Sysfs); err != nil {
		return nil, err
	}
	if err := c.findHwmon(o.Sysfs); err != nil {
		return nil, err
	}
	if err := c.findRAPL(o.Sysfs); err != nil {
		return nil, err
	}
	if len(c.zones)+len(c.cooling)+len(c.sensors)+len(c.rapl) == 0 {
		return nil, fmt.Errorf("no thermal zone, cooling device, hwmon chip or powercap zone under %s: %w", o.Sysfs, collectors.ErrNoSource)
	}
	c.log.Info("thermal collector started", "zones", len(c.zones), "cooling_devices", len(c.cooling),
		"hwmon_sensors", len(c.sensors), "rapl_zones", len(c.rapl))
	return c, nil
}

// Close releases the sysfs files the collector holds open.
func (c *Collector) Close() error { return c.r.Close() }

// Collect reads every sensor. A sensor that fails to read (EIO, ENODATA: common on real boards)
// is skipped for this collection and logged once; the collection fails only when sensors exist
// and not one could be read.
func (c *Collector) Collect(ctx context.Context, b *sample.Batch) error {
	var s stats
	c.collectZones(ctx, b, &s)
	c.collectCooling(ctx, b, &s)
	c.collectHwmon(ctx, b, &s)
	c.collectRAPL(ctx, b, &s)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("reading thermal sensors: %w", err)
	}
	if s.read == 0 && s.failed > 0 {
		return fmt.Errorf("reading thermal sensors: all %d reads failed, the first: %w", s.failed, s.firstErr)
	}
	return nil
}

// stats counts one collection's reads.
type stats struct {
	read, failed int
	firstErr     error
}

// ok reports whether a read succeeded, logging the first failure of each file and its recovery.
func (c *Collector) ok(s *stats, f *sysattr.File, err error) bool {
	if err == nil {
		s.read++
		if len(c.failing) > 0 && c.failing[f.Path] {
			delete(c.failing, f.Path)
			c.log.Info("sensor readable again", "file", f.Path)
		}
		return true
	}
	s.failed++
	if s.firstErr == nil {
		s.firstErr = err
	}
	if !c.failing[f.Path] {
		c.failing[f.Path] = true
		level := slog.LevelWarn
		if errors.Is(err, fs.ErrNotExist) {
			level = slog.LevelInfo // the device went away
		}
		c.log.Log(context.Background(), level, "skipping a sensor while it fails to read", "file", f.Path, "err", err)
	}
	return false
}
