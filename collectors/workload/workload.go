// Package workload attributes CPU time, network traffic and CPU energy to cgroups (and through
// their paths to containers, Kubernetes pods and Slurm jobs). With privilege and kernel BTF it
// reads the eBPF programs of package bpf; otherwise it falls back to each cgroup's cpu.stat and
// says so in capstan.workload.source.
package workload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// Name is the collector's name in flags and metrics.
const Name = "workload"

// Sources of CPU time.
const (
	SourceEBPF    = "ebpf"
	SourceCPUStat = "cpu.stat"
)

func init() {
	collectors.Register(collectors.Factory{
		Name:             Name,
		EnabledByDefault: false,
		Interval:         10 * time.Second,
		New: func(o collectors.Options) (collectors.Collector, error) {
			w := o.Config.Workload
			return New(Options{Procfs: o.Config.Path.Procfs, Sysfs: o.Config.Path.Sysfs, Logger: o.Logger,
				NVML: o.NVML, MaxSeries: w.MaxSeries, ActiveIntervals: w.ActiveIntervals,
				PodResourcesSocket: w.PodResourcesSocket, Now: o.Now})
		},
	})
}

// Options configure the collector.
type Options struct {
	Procfs, Sysfs string
	Logger        *slog.Logger
	// NoBPF forces the cpu.stat source.
	NoBPF bool
	// MaxSeries bounds the cgroups exported per collection, the busiest first (0: the default,
	// config.DefaultWorkloadMaxSeries).
	MaxSeries int
	// ActiveIntervals: a cgroup is exported while it was active in this many last collections
	// (0: config.DefaultWorkloadActiveIntervals).
	ActiveIntervals int
	// NVML, when set, splits GPU energy across workloads.
	NVML nvml.Interface
	// PodResourcesSocket is the kubelet's pod-resources socket; used when it exists.
	PodResourcesSocket string
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Collector is the workload collector.
type Collector struct {
	log       *slog.Logger
	root      string
	sysfs     string
	bpf       *bpfSource // nil on the cpu.stat source
	source    string
	maxSeries int
	active    uint64 // ActiveIntervals
	cgroups   map[uint64]*cgroup
	round     uint64
	rapl      *raplReader
	cgroupsS  *sample.Series
	droppedS  *sample.Series
	dropped   float64
	known     bool // the id→path map is current
	gpu       *gpuEnergy
	unknown   map[uint64]uint64 // ids in the maps with no cgroup, and the round first seen
	pods      *PodResources
}

type cgroup struct {
	path  string
	id    Identity
	alive bool
	// kernel totals at the last collection (ns, cycles, bytes, packets) and what was exported.
	cpu                    cpuCounters
	net                    netCounters
	seen                   bool
	lastActive             uint64
	cpuSeconds, joules     float64
	rxB, txB, rxP, txP     float64
	deltaNs, deltaCyc      uint64
	cpuS, energyS          *sample.Series
	rxBS, txBS, rxPS, txPS *sample.Series
}

// New builds the collector: BPF when it loads, else cpu.stat.
func New(o Options) (*Collector, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	root, err := V2Mount(o.Procfs, o.Sysfs)
	if err != nil {
		return nil, fmt.Errorf("finding the cgroup v2 hierarchy: %w", errors.Join(err, collectors.ErrNoSource))
	}
	c := &Collector{
		log: o.Logger.With("collector", Name), root: root, sysfs: o.Sysfs,
		maxSeries: config.DefaultWorkloadMaxSeries, active: config.DefaultWorkloadActiveIntervals, cgroups: map[uint64]*cgroup{}, unknown: map[uint64]uint64{}, rapl: newRAPL(o.Sysfs),
	}
	if o.MaxSeries > 0 {
		c.maxSeries = o.MaxSeries
	}
	if o.ActiveIntervals > 0 {
		c.active = uint64(o.ActiveIntervals)
	}
	c.source = SourceCPUStat
	if !o.NoBPF {
		s, err := loadBPF(root, o.Sysfs)
		if err != nil {
			c.log.Info("eBPF unavailable, using cgroup cpu.stat", "err", err)
		} else {
			c.bpf, c.source = s, SourceEBPF
		}
	}
	src := attribute.String(metrics.AttrWorkloadSource, c.source)
	c.cgroupsS = sample.NewSeries(metrics.WorkloadCgroups, src)
	c.droppedS = sample.NewSeries(metrics.WorkloadSeriesDropped, src)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.PodResourcesSocket != "" {
		if _, err := os.Stat(o.PodResourcesSocket); err == nil {
			if c.pods, err = NewPodResources(o.PodResourcesSocket); err != nil {
				c.log.Info("kubelet pod-resources unavailable", "err", err)
			}
		}
	}
	if o.NVML != nil {
		c.gpu = newGPUEnergy(o.NVML, o.Procfs, c.pods, o.Now)
	}
	c.log.Info("workload collector started", "cgroup2", root, "source", c.source, "rapl_packages", len(c.rapl.zones))
	return c, nil
}

// Source says where CPU time comes from: ebpf or cpu.stat.
func (c *Collector) Source() string { return c.source }

// Close detaches the programs.
func (c *Collector) Close() error {
	var errs []error
	if c.pods != nil {
		errs = append(errs, c.pods.Close())
	}
	if c.bpf != nil {
		errs = append(errs, c.bpf.Close())
	}
	return errors.Join(errs...)
}

// rescan rebuilds the id→path map; cgroups that are gone are forgotten, in the maps too.
func (c *Collector) rescan() error {
	for _, g := range c.cgroups {
		g.alive = false
	}
	err := walkCgroups(c.root, func(id uint64, rel string) {
		g := c.cgroups[id]
		if g == nil || g.path != rel {
			g = c.newCgroup(rel)
			c.cgroups[id] = g
		}
		g.alive = true
	})
	if err != nil {
		return fmt.Errorf("walking cgroups under %s: %w", c.root, err)
	}
	for id, g := range c.cgroups {
		if !g.alive {
			delete(c.cgroups, id)
			if c.bpf != nil {
				c.bpf.forget(id)
			}
		}
	}
	c.known = true
	return nil
}

func (c *Collector) newCgroup(rel string) *cgroup {
	g := &cgroup{path: rel, id: ParseIdentity(rel)}
	attrs := []attribute.KeyValue{
		attribute.String(metrics.AttrCgroupPath, rel),
		attribute.String(metrics.AttrWorkloadSource, c.source),
	}
	if g.id.ContainerID != "" {
		attrs = append(attrs, attribute.String(metrics.AttrContainerID, g.id.ContainerID))
	}
	if g.id.PodUID != "" {
		attrs = append(attrs, attribute.String(metrics.AttrPodUID, g.id.PodUID))
	}
	if g.id.SlurmJobID != "" {
		attrs = append(attrs, attribute.String(metrics.AttrSlurmJobID, g.id.SlurmJobID))
	}
	base := sample.NewSeries(metrics.WorkloadCPUTime, attrs...)
	dir := func(def *metrics.Def, d string) *sample.Series {
		return base.With(def, attribute.String(metrics.AttrIODirection, d))
	}
	g.cpuS = base
	g.energyS = base.With(metrics.WorkloadEnergy, attribute.String(metrics.AttrHWType, "cpu"))
	g.rxBS, g.txBS = dir(metrics.WorkloadNetworkIO, "receive"), dir(metrics.WorkloadNetworkIO, "transmit")
	g.rxPS, g.txPS = dir(metrics.WorkloadNetworkPackets, "receive"), dir(metrics.WorkloadNetworkPackets, "transmit")
	return g
}

// lookup finds a cgroup by id, rescanning once per collection when an id is unknown. An id that
// two rescans in a row did not find belongs to a removed cgroup: it is deleted from the maps, so
// it cannot cause a rescan every collection.
func (c *Collector) lookup(id uint64) *cgroup {
	if g := c.cgroups[id]; g != nil {
		return g
	}
	if !c.known {
		if err := c.rescan(); err != nil {
			c.log.Debug("rescanning cgroups", "err", err)
		}
	}
	if g := c.cgroups[id]; g != nil {
		delete(c.unknown, id)
		return g
	}
	if first, ok := c.unknown[id]; !ok {
		c.unknown[id] = c.round
	} else if first < c.round && c.bpf != nil {
		c.bpf.forget(id)
		delete(c.unknown, id)
	}
	return nil
}

// Collect reads the counters, attributes RAPL energy by cycle (or time) share, and writes the
// active cgroups' series, at most maxSeries of them.
func (c *Collector) Collect(ctx context.Context, b *sample.Batch) error {
	c.round++
	c.known = false
	if len(c.cgroups) == 0 {
		if err := c.rescan(); err != nil {
			return err
		}
	}
	for _, g := range c.cgroups {
		g.deltaNs, g.deltaCyc = 0, 0
	}
	if c.bpf != nil {
		if err := c.collectBPF(); err != nil {
			return err
		}
	} else if err := c.collectCPUStat(ctx); err != nil {
		return err
	}
	c.attributeEnergy()

	active := make([]*cgroup, 0, len(c.cgroups))
	for _, g := range c.cgroups {
		if g.seen && c.round-g.lastActive < c.active {
			active = append(active, g)
		}
	}
	if len(active) > c.maxSeries {
		sort.Slice(active, func(i, j int) bool { return active[i].cpuSeconds > active[j].cpuSeconds })
		c.dropped += float64(len(active) - c.maxSeries)
		active = active[:c.maxSeries]
	}
	for _, g := range active {
		b.Add(g.cpuS, g.cpuSeconds)
		if c.rapl.ok() {
			b.Add(g.energyS, g.joules)
		}
		if c.bpf != nil {
			b.Add(g.rxBS, g.rxB)
			b.Add(g.txBS, g.txB)
			b.Add(g.rxPS, g.rxP)
			b.Add(g.txPS, g.txP)
		}
	}
	if c.gpu != nil {
		c.gpu.collect(ctx, b, c.log.Debug)
	}
	b.Add(c.cgroupsS, float64(len(active)))
	b.Add(c.droppedS, c.dropped)
	return nil
}

func (c *Collector) collectBPF() error {
	defer c.bpf.flush()
	err := c.bpf.readCPU(func(id uint64, k cpuCounters) {
		g := c.lookup(id)
		if g == nil {
			return
		}
		if g.seen || g.cpu != (cpuCounters{}) {
			g.deltaNs, g.deltaCyc = k.ns-g.cpu.ns, k.cycles-g.cpu.cycles
		} else {
			g.deltaNs, g.deltaCyc = k.ns, k.cycles
		}
		if g.deltaNs > 0 {
			g.lastActive = c.round
		}
		g.cpu = k
		g.seen = true
		g.cpuSeconds = float64(k.ns) / 1e9
	})
	if err != nil {
		return fmt.Errorf("reading cpu_usage map: %w", err)
	}
	err = c.bpf.readNet(func(id uint64, k netCounters) {
		g := c.lookup(id)
		if g == nil {
			return
		}
		if k != g.net {
			g.lastActive = c.round
		}
		g.net = k
		g.seen = true
		g.rxB, g.txB = float64(k.rxBytes), float64(k.txBytes)
		g.rxP, g.txP = float64(k.rxPackets), float64(k.txPackets)
	})
	if err != nil {
		return fmt.Errorf("reading net_usage map: %w", err)
	}
	return nil
}

// collectCPUStat reads usage_usec of every cgroup. cpu.stat is hierarchical (a parent's usage
// includes its children's), so each cgroup is given its own tasks' time: its usage minus its
// children's, which is what the eBPF source measures.
func (c *Collector) collectCPUStat(ctx context.Context) error {
	if err := c.rescan(); err != nil {
		return err
	}
	usage := make(map[string]uint64, len(c.cgroups))
	for _, g := range c.cgroups {
		if err := ctx.Err(); err != nil {
			return err
		}
		usec, err := readUsageUsec(filepath.Join(c.root, g.path, "cpu.stat"))
		if err != nil {
			continue // removed meanwhile
		}
		usage[g.path] = usec * 1000
	}
	own := make(map[string]int64, len(usage))
	for p, ns := range usage {
		own[p] += int64(ns)
		if p != "/" {
			own[filepath.Dir(p)] -= int64(ns)
		}
	}
	for _, g := range c.cgroups {
		if _, read := usage[g.path]; !read {
			continue
		}
		// A child that exited (or was read after its parent) takes its usage away from the
		// parent's own time: a counter never goes back.
		ns := g.cpu.ns
		if v := own[g.path]; v > 0 && uint64(v) > ns {
			ns = uint64(v)
		}
		if g.seen {
			g.deltaNs = ns - g.cpu.ns
		}
		if g.deltaNs > 0 || !g.seen {
			g.lastActive = c.round
		}
		g.cpu.ns = ns
		g.seen = true
		g.cpuSeconds = float64(ns) / 1e9
	}
	return nil
}

// readUsageUsec reads usage_usec from a cgroup v2 cpu.stat.
func readUsageUsec(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "usage_usec "); ok {
			return strconv.ParseUint(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("%s has no usage_usec", path)
}

// attributeEnergy splits this interval's RAPL package energy by each cgroup's share of cycles
// (of on-CPU time when no frequency is known).
func (c *Collector) attributeEnergy() {
	joules, ok := c.rapl.delta()
	if !ok {
		return
	}
	var totNs, totCyc uint64
	for _, g := range c.cgroups {
		totNs += g.deltaNs
		totCyc += g.deltaCyc
	}
	for _, g := range c.cgroups {
		switch {
		case totCyc > 0:
			g.joules += joules * float64(g.deltaCyc) / float64(totCyc)
		case totNs > 0:
			g.joules += joules * float64(g.deltaNs) / float64(totNs)
		}
	}
}
