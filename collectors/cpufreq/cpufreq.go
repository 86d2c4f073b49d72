// Package cpufreq collects per-CPU frequency, frequency limits, governor, driver,
// energy-performance preference and thermal throttle counters from sysfs.
package cpufreq

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/procfs/sysfs"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/sysattr"
)

// Name is the collector's name in flags and metrics.
const Name = "cpufreq"

func init() {
	collectors.Register(collectors.Factory{
		Name:             Name,
		EnabledByDefault: true,
		Interval:         5 * time.Second,
		New: func(set collectors.Settings, _ collectors.Config) (collectors.Collector, error) {
			return New(set.Sysfs, set.Logger, nil)
		},
	})
}

// Collector reads every logical CPU that has a cpufreq policy.
type Collector struct {
	log      *slog.Logger
	r        *sysattr.Reader
	cpus     []*cpu
	packages []*pkg
	// failing holds the files whose last read failed, so a persistent failure is logged once.
	failing map[string]bool
}

type cpu struct {
	num int
	// curPath is cpuinfo_cur_freq when readable at start (the hardware's frequency), else
	// scaling_cur_freq (the driver's last request or estimate).
	cur                              *sysattr.File
	scalingMin, scalingMax, governor *sysattr.File
	eppFile                          *sysattr.File // nil when the driver has no EPP
	coreThrottleFile                 *sysattr.File // nil without thermal_throttle (AMD, VMs)
	hwMinHz, hwMaxHz                 float64
	hasHWMin, hasHWMax               bool
	driver, governorName, epp        string
	freq, hwMin, hwMax, scMin, scMax *sample.Series
	info, coreThrottle               *sample.Series
}

// pkg is one CPU package; its throttle counter is the same in every CPU of the package, so it is
// read once, from the package's first CPU.
type pkg struct {
	file   *sysattr.File
	series *sample.Series
}

// New finds every CPU with a cpufreq policy under the sysfs root. read is the file-reading seam
// (nil: the real filesystem).
func New(sysfsRoot string, log *slog.Logger, read sysattr.ReadFunc) (*Collector, error) {
	if log == nil {
		log = slog.Default()
	}
	sfs, err := sysfs.NewFS(sysfsRoot)
	if err != nil {
		return nil, fmt.Errorf("opening sysfs at %s: %w", sysfsRoot, err)
	}
	found, err := sfs.CPUs()
	if err != nil {
		return nil, fmt.Errorf("listing CPUs under %s: %w", sysfsRoot, err)
	}
	c := &Collector{log: log.With("collector", Name), r: sysattr.NewReader(read), failing: map[string]bool{}}
	packages := map[string]*pkg{}
	for _, fc := range found {
		num, err := strconv.Atoi(fc.Number())
		if err != nil {
			continue
		}
		dir := filepath.Join(string(fc), "cpufreq")
		if _, err := os.Stat(dir); err != nil {
			continue // no cpufreq driver for this CPU (VM, offline at boot)
		}
		p := c.newCPU(num, dir, string(fc))
		c.cpus = append(c.cpus, p)
		if p.coreThrottleFile == nil {
			continue
		}
		// The package counter needs the package id: read through procfs's topology reader.
		topo, err := fc.Topology()
		if err != nil {
			continue
		}
		if _, ok := packages[topo.PhysicalPackageID]; !ok {
			packages[topo.PhysicalPackageID] = &pkg{
				file: sysattr.NewFile(filepath.Join(string(fc), "thermal_throttle", "package_throttle_count")),
				series: sample.NewSeries(metrics.CPUThrottleEvents,
					attribute.String(metrics.AttrThrottleScope, "package"),
					attribute.String(metrics.AttrCPUPackage, topo.PhysicalPackageID)),
			}
		}
	}
	if len(c.cpus) == 0 {
		return nil, fmt.Errorf("no CPU under %s has a cpufreq policy: %w", sysfsRoot, collectors.ErrNoSource)
	}
	sort.Slice(c.cpus, func(i, j int) bool { return c.cpus[i].num < c.cpus[j].num })
	ids := make([]string, 0, len(packages))
	for id := range packages {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		c.packages = append(c.packages, packages[id])
	}
	c.log.Info("cpufreq collector started", "cpus", len(c.cpus), "driver", c.cpus[0].driver)
	return c, nil
}

func (c *Collector) newCPU(num int, dir, cpuDir string) *cpu {
	n := attribute.Int(metrics.AttrCPULogicalNumber, num)
	limit := func(kind string) *sample.Series {
		return sample.NewSeries(metrics.CPUFrequencyLimit, n, attribute.String(metrics.AttrLimitKind, kind))
	}
	p := &cpu{
		num:          num,
		cur:          sysattr.NewFile(filepath.Join(dir, "cpuinfo_cur_freq")),
		scalingMin:   sysattr.NewFile(filepath.Join(dir, "scaling_min_freq")),
		scalingMax:   sysattr.NewFile(filepath.Join(dir, "scaling_max_freq")),
		governor:     sysattr.NewFile(filepath.Join(dir, "scaling_governor")),
		freq:         sample.NewSeries(metrics.CPUFrequency, n),
		hwMin:        limit("hardware_min"),
		hwMax:        limit("hardware_max"),
		scMin:        limit("scaling_min"),
		scMax:        limit("scaling_max"),
		coreThrottle: sample.NewSeries(metrics.CPUThrottleEvents, attribute.String(metrics.AttrThrottleScope, "core"), n),
	}
	// cpuinfo_cur_freq is root-only and absent under intel_pstate: fall back once, at start.
	if _, err := c.r.UintOnce(p.cur.Path); err != nil {
		p.cur = sysattr.NewFile(filepath.Join(dir, "scaling_cur_freq"))
	}
	// Hardware limits do not change while the driver is loaded.
	if khz, err := c.r.UintOnce(filepath.Join(dir, "cpuinfo_min_freq")); err == nil {
		p.hwMinHz, p.hasHWMin = float64(khz)*1e3, true
	}
	if khz, err := c.r.UintOnce(filepath.Join(dir, "cpuinfo_max_freq")); err == nil {
		p.hwMaxHz, p.hasHWMax = float64(khz)*1e3, true
	}
	p.driver, _ = c.r.String(filepath.Join(dir, "scaling_driver"))
	if epp := filepath.Join(dir, "energy_performance_preference"); exists(epp) {
		p.eppFile = sysattr.NewFile(epp)
	}
	if t := filepath.Join(cpuDir, "thermal_throttle", "core_throttle_count"); exists(t) {
		p.coreThrottleFile = sysattr.NewFile(t)
	}
	return p
}

// Close releases the sysfs files the collector holds open.
func (c *Collector) Close() error { return c.r.Close() }

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Collect reads every CPU. A file that fails to read is skipped for this collection and logged
// once; the collection fails only when no CPU's frequency could be read.
func (c *Collector) Collect(ctx context.Context, b *sample.Batch) error {
	var firstErr error
	read := 0
	for _, p := range c.cpus {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("reading CPU %d: %w", p.num, err)
		}
		if khz, err := c.r.Uint(p.cur); c.ok(p.cur, err) {
			b.Add(p.freq, float64(khz)*1e3)
			read++
		} else if firstErr == nil {
			firstErr = err
		}
		if p.hasHWMin {
			b.Add(p.hwMin, p.hwMinHz)
		}
		if p.hasHWMax {
			b.Add(p.hwMax, p.hwMaxHz)
		}
		if khz, err := c.r.Uint(p.scalingMin); c.ok(p.scalingMin, err) {
			b.Add(p.scMin, float64(khz)*1e3)
		}
		if khz, err := c.r.Uint(p.scalingMax); c.ok(p.scalingMax, err) {
			b.Add(p.scMax, float64(khz)*1e3)
		}
		if c.readInfo(p) {
			b.Add(p.info, 1)
		}
		if p.coreThrottleFile != nil {
			if n, err := c.r.Uint(p.coreThrottleFile); c.ok(p.coreThrottleFile, err) {
				b.Add(p.coreThrottle, float64(n))
			}
		}
	}
	for _, k := range c.packages {
		if n, err := c.r.Uint(k.file); c.ok(k.file, err) {
			b.Add(k.series, float64(n))
		}
	}
	if read == 0 {
		return fmt.Errorf("reading the frequency of %d CPUs: every read failed, the first: %w", len(c.cpus), firstErr)
	}
	return nil
}

// readInfo reads the governor and EPP, rebuilding the info series only when one changed, so a
// steady collection allocates nothing here. The names are saved only together with the series
// they label: a read that fails half way leaves both as they were, so the change is seen again
// on the next collection.
func (c *Collector) readInfo(p *cpu) bool {
	gov, err := c.r.Bytes(p.governor)
	if !c.ok(p.governor, err) {
		return false
	}
	// gov is the reader's buffer, which the EPP read overwrites: copy it, only when it changed.
	governorName, epp := p.governorName, p.epp
	changed := p.info == nil || string(gov) != p.governorName
	if changed {
		governorName = string(gov)
	}
	if p.eppFile != nil {
		b, err := c.r.Bytes(p.eppFile)
		if !c.ok(p.eppFile, err) {
			return false
		}
		if string(b) != p.epp {
			epp, changed = string(b), true
		}
	}
	if changed {
		p.governorName, p.epp = governorName, epp
		attrs := []attribute.KeyValue{
			attribute.Int(metrics.AttrCPULogicalNumber, p.num),
			attribute.String(metrics.AttrCPUGovernor, p.governorName),
			attribute.String(metrics.AttrCPUFreqDriver, p.driver),
		}
		if p.eppFile != nil {
			attrs = append(attrs, attribute.String(metrics.AttrCPUEPP, p.epp))
		}
		p.info = sample.NewSeries(metrics.CPUGovernor, attrs...)
	}
	return true
}

// ok reports whether a read succeeded, logging the first failure of each file and its recovery.
func (c *Collector) ok(f *sysattr.File, err error) bool {
	if err == nil {
		if len(c.failing) > 0 && c.failing[f.Path] {
			delete(c.failing, f.Path)
			c.log.Info("sysfs file readable again", "file", f.Path)
		}
		return true
	}
	if !c.failing[f.Path] {
		c.failing[f.Path] = true
		level := slog.LevelWarn
		if errors.Is(err, fs.ErrNotExist) {
			level = slog.LevelInfo // the CPU went offline
		}
		c.log.Log(context.Background(), level, "skipping a sysfs file while it fails to read", "file", f.Path, "err", err)
	}
	return false
}
