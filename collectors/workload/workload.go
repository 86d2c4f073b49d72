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
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/rapl"
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
		CreateDefaultConfig: func() collectors.Config {
			return &Config{MaxSeries: DefaultMaxSeries, ActiveIntervals: DefaultActiveIntervals,
				PodResourcesSocket: DefaultPodResourcesSocket}
		},
		New: func(set collectors.Settings, cfg collectors.Config) (collectors.Collector, error) {
			w := cfg.(*Config)
			// Without a GPU backend the collector attributes CPU and network only.
			lib, err := collectors.Lookup[nvml.Interface](set)
			if err != nil && set.Logger != nil {
				set.Logger.Debug("workload collector without GPU energy", "reason", err)
			}
			return New(Options{Procfs: set.Procfs, Sysfs: set.Sysfs, Logger: set.Logger,
				NVML: lib, MaxSeries: w.MaxSeries, ActiveIntervals: w.ActiveIntervals,
				PodResourcesSocket: w.PodResourcesSocket, Now: set.Now, MetricEnabled: set.MetricEnabled})
		},
	})
}

// Config bounds what the collector exports and says where the kubelet is (keys workload.*).
type Config struct {
	// MaxSeries is the most cgroups exported per collection, the busiest first; the rest are
	// counted in capstan.workload.series.dropped.
	MaxSeries int `yaml:"max-series" range:"1,100000" help:"most cgroups the workload collector exports per collection, the busiest first"`
	// ActiveIntervals: a cgroup is exported while it was active in this many last collections.
	ActiveIntervals int `yaml:"active-intervals" range:"1,100" help:"the workload collector exports a cgroup while it was active in this many last collections"`
	// PodResourcesSocket is the kubelet's pod-resources API, used when it exists; empty: not used.
	PodResourcesSocket string `yaml:"pod-resources-socket" help:"kubelet pod-resources socket naming the pods that hold GPUs; empty or absent: not used"`
}

// Defaults of Config.
const (
	DefaultMaxSeries          = 2000
	DefaultActiveIntervals    = 5
	DefaultPodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"
)

// Options configure the collector.
type Options struct {
	Procfs, Sysfs string
	Logger        *slog.Logger
	// NoBPF forces the cpu.stat source.
	NoBPF bool
	// MaxSeries bounds the cgroups exported per collection, the busiest first (0: the default,
	// DefaultMaxSeries).
	MaxSeries int
	// ActiveIntervals: a cgroup is exported while it was active in this many last collections
	// (0: DefaultActiveIntervals).
	ActiveIntervals int
	// NVML, when set, splits GPU energy across workloads.
	NVML nvml.Interface
	// PodResourcesSocket is the kubelet's pod-resources socket; used when it exists.
	PodResourcesSocket string
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// MetricEnabled is the metric selection (nil: the defaults); the per-process GPU series are
	// built only when selected.
	MetricEnabled func(*metrics.Def) bool
}

// Collector is the workload collector.
type Collector struct {
	log       *slog.Logger
	root      string
	sysfs     string
	bpf       *bpfSource // nil on the cpu.stat source
	source    string
	maxSeries int
	// mapFullLogged: more cgroups than the eBPF maps hold was said once.
	mapFullLogged bool
	active        uint64 // ActiveIntervals
	cgroups       map[uint64]*cgroup
	round         uint64
	rapl          *rapl.Packages
	cgroupsS      *sample.Series
	droppedS      *sample.Series
	missedS       [len(bpfPrograms)]*sample.Series
	dropped       float64
	gpu           *gpuEnergy
	unknown       map[uint64]uint64 // ids in the maps with no cgroup, and the round first seen
	pods          *PodResources
	// Cgroups the last walk found removed (reaped at the end of the collection) or new (given
	// the totals of a cgroup removed at the same path), and the totals of removed cgroups by
	// path with the round they were removed in.
	dead, fresh []*cgroup
	retired     map[string]retiredTotals
	// ids the eBPF maps hold that no known cgroup has, read before the walk that finds them.
	pendCPU []pendingCPU
	pendNet []pendingNet
}

type pendingCPU struct {
	id uint64
	k  cpuCounters
}

type pendingNet struct {
	id uint64
	k  netCounters
}

// totals are a cgroup's exported cumulative values: CPU seconds, joules, bytes and packets.
type totals struct{ cpuSeconds, joules, rxB, txB, rxP, txP float64 }

func (t totals) plus(o totals) totals {
	return totals{t.cpuSeconds + o.cpuSeconds, t.joules + o.joules, t.rxB + o.rxB, t.txB + o.txB, t.rxP + o.rxP, t.txP + o.txP}
}

type retiredTotals struct {
	totals
	round uint64
}

type cgroup struct {
	cid   uint64 // the kernel's id, its key in Collector.cgroups
	path  string
	id    Identity
	alive bool // found by the last walk
	// gone: the last walk did not find it. It stays in Collector.cgroups until the end of that
	// collection, so its last eBPF counters are read and take their energy share.
	gone bool
	// kernel totals at the last collection (ns, cycles, bytes, packets) and what was exported.
	cpu        cpuCounters
	net        netCounters
	seen       bool
	lastActive uint64
	// own counts since this cgroup was made; carried is what cgroups removed at the same path
	// counted (a restarted systemd service gets a new cgroup at the old path, and its series
	// must not go back).
	own, carried      totals
	deltaNs, deltaCyc uint64
	// cpu.stat source: usage (ns) at the last successful read (read: there was one), the
	// parent it is subtracted from, and the last readings of this cgroup's removed children,
	// whose usage the kernel keeps in this cgroup's usage.
	usage, goneChildren    uint64
	read                   bool
	parent                 *cgroup
	cpuS, energyS          *sample.Series
	rxBS, txBS, rxPS, txPS *sample.Series
}

// total is what the cgroup's series say.
func (g *cgroup) total() totals { return g.own.plus(g.carried) }

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
		maxSeries: DefaultMaxSeries, active: DefaultActiveIntervals, cgroups: map[uint64]*cgroup{}, unknown: map[uint64]uint64{}, retired: map[string]retiredTotals{}, rapl: rapl.OpenPackages(o.Sysfs, nil, nil),
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
	for i, name := range bpfPrograms {
		c.missedS[i] = sample.NewSeries(metrics.WorkloadBPFMissed, attribute.String(metrics.AttrBPFProgram, name))
	}
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
		c.gpu = newGPUEnergy(o.NVML, o.Procfs, c.pods, o.Now, c.active, o.MetricEnabled)
		c.gpu.findCgroup = c.cgroupByTail
	}
	args := []any{"cgroup2", root, "source", c.source, "rapl_packages", c.rapl.Len()}
	if c.bpf != nil {
		args = append(args, "map_entries", c.bpf.entries)
	}
	c.log.Info("workload collector started", args...)
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
	errs = append(errs, c.rapl.Close())
	return errors.Join(errs...)
}

// rescan walks the hierarchy: cgroups it finds are made, cgroups it does not find are marked gone
// (reap retires them at the end of the collection) and dropped from the maps.
func (c *Collector) rescan() error {
	for _, g := range c.cgroups {
		g.alive = false
	}
	err := walkCgroups(c.root, func(id uint64, rel string) {
		old := c.cgroups[id]
		if old != nil && old.path == rel && !old.gone {
			old.alive = true
			return
		}
		if old != nil {
			c.bury(old) // its id (an inode number) was reused
		}
		g := c.newCgroup(id, rel)
		g.alive = true
		c.cgroups[id] = g
		c.fresh = append(c.fresh, g)
	})
	if err != nil {
		return fmt.Errorf("walking cgroups under %s: %w", c.root, err)
	}
	for id, g := range c.cgroups {
		if !g.alive && !g.gone {
			c.bury(g)
			if c.bpf != nil {
				c.bpf.forget(id)
			}
		}
	}
	return nil
}

// bury marks a cgroup removed; reap retires it.
func (c *Collector) bury(g *cgroup) {
	if !g.gone {
		g.gone = true
		c.dead = append(c.dead, g)
	}
}

// reap retires the cgroups this collection found removed, after their last counters were read
// and the interval's energy split, and gives cgroups made at the same path their totals, so
// a series never goes back when a cgroup is replaced (a systemd service restart makes a new
// cgroup, with a new id and zeroed counters, at the old path). Totals wait for a new cgroup at
// their path for the activity window, then are dropped: memory stays bounded under churn.
func (c *Collector) reap() {
	for _, g := range c.dead {
		if c.cgroups[g.cid] == g {
			delete(c.cgroups, g.cid)
		}
		// The kernel keeps a removed child's usage in its parent's: from now on the parent's
		// own time subtracts the child's last reading (cpu.stat source; zero on eBPF).
		if g.parent != nil {
			g.parent.goneChildren += g.usage
		}
		c.retired[g.path] = retiredTotals{totals: g.total(), round: c.round}
	}
	clear(c.dead)
	c.dead = c.dead[:0]
	for p, r := range c.retired {
		if c.round-r.round >= c.active {
			delete(c.retired, p)
		}
	}
	for _, g := range c.fresh {
		if r, ok := c.retired[g.path]; ok && !g.gone {
			g.carried = r.totals
			delete(c.retired, g.path)
		}
	}
	clear(c.fresh)
	c.fresh = c.fresh[:0]
}

func (c *Collector) newCgroup(id uint64, rel string) *cgroup {
	g := &cgroup{cid: id, path: rel, id: ParseIdentity(rel)}
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

// lookup finds the cgroup of an id the maps hold, after a walk. An id that two walks in a row
// did not find belongs to a removed cgroup: it is deleted from the maps, so it cannot cause a
// walk every collection.
func (c *Collector) lookup(id uint64) *cgroup {
	if g := c.cgroups[id]; g != nil {
		delete(c.unknown, id)
		return g
	}
	if first, ok := c.unknown[id]; !ok {
		c.unknown[id] = c.round
	} else if first < c.round {
		c.bpf.forget(id)
		delete(c.unknown, id)
	}
	return nil
}

// Collect reads the counters, attributes RAPL energy by cycle (or time) share, and writes the
// active cgroups' series, at most maxSeries of them.
func (c *Collector) Collect(ctx context.Context, b *sample.Batch) error {
	c.round++
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
		if !c.mapFullLogged && len(c.cgroups) > c.bpf.entries {
			c.log.Warn("more cgroups than the eBPF maps hold: those the maps have no room for are not attributed",
				"cgroups", len(c.cgroups), "map_entries", c.bpf.entries)
			c.mapFullLogged = true
		}
	} else if err := c.collectCPUStat(ctx); err != nil {
		return err
	}
	c.attributeEnergy()
	c.reap()

	active := make([]*cgroup, 0, len(c.cgroups))
	for _, g := range c.cgroups {
		if g.seen && c.round-g.lastActive < c.active {
			active = append(active, g)
		}
	}
	if len(active) > c.maxSeries {
		sort.Slice(active, func(i, j int) bool { return active[i].total().cpuSeconds > active[j].total().cpuSeconds })
		c.dropped += float64(len(active) - c.maxSeries)
		active = active[:c.maxSeries]
	}
	for _, g := range active {
		t := g.total()
		b.Add(g.cpuS, t.cpuSeconds)
		if c.rapl.Len() > 0 {
			b.Add(g.energyS, t.joules)
		}
		if c.bpf != nil {
			b.Add(g.rxBS, t.rxB)
			b.Add(g.txBS, t.txB)
			b.Add(g.rxPS, t.rxP)
			b.Add(g.txPS, t.txP)
		}
	}
	if c.gpu != nil {
		c.gpu.collect(ctx, b, c.log.Debug)
	}
	b.Add(c.cgroupsS, float64(len(active)))
	b.Add(c.droppedS, c.dropped)
	var missed [len(bpfPrograms)]uint64
	if c.bpf != nil && c.bpf.missed(&missed) {
		for i, n := range missed {
			b.Add(c.missedS[i], float64(n))
		}
	}
	return nil
}

// collectBPF reads the maps. Ids no known cgroup has are kept aside and looked up after one walk
// of the hierarchy, made once every known cgroup's counters were read: a cgroup that walk finds
// removed (say, replaced by a new cgroup at its path, whose id is the unknown one) has had its
// last counters read.
func (c *Collector) collectBPF() error {
	defer c.bpf.flush()
	c.pendCPU, c.pendNet = c.pendCPU[:0], c.pendNet[:0]
	err := c.bpf.readCPU(func(id uint64, k cpuCounters) {
		if g := c.cgroups[id]; g != nil {
			c.addCPU(g, k)
		} else {
			c.pendCPU = append(c.pendCPU, pendingCPU{id, k})
		}
	})
	if err != nil {
		return fmt.Errorf("reading cpu_usage map: %w", err)
	}
	err = c.bpf.readNet(func(id uint64, k netCounters) {
		if g := c.cgroups[id]; g != nil {
			c.addNet(g, k)
		} else {
			c.pendNet = append(c.pendNet, pendingNet{id, k})
		}
	})
	if err != nil {
		return fmt.Errorf("reading net_usage map: %w", err)
	}
	if len(c.pendCPU)+len(c.pendNet) == 0 {
		return nil
	}
	if err := c.rescan(); err != nil {
		c.log.Debug("rescanning cgroups", "err", err)
	}
	for _, p := range c.pendCPU {
		if g := c.lookup(p.id); g != nil {
			c.addCPU(g, p.k)
		}
	}
	for _, p := range c.pendNet {
		if g := c.lookup(p.id); g != nil {
			c.addNet(g, p.k)
		}
	}
	return nil
}

func (c *Collector) addCPU(g *cgroup, k cpuCounters) {
	g.deltaNs, g.deltaCyc = k.ns-g.cpu.ns, k.cycles-g.cpu.cycles
	if g.deltaNs > 0 {
		g.lastActive = c.round
	}
	g.cpu = k
	g.seen = true
	g.own.cpuSeconds = float64(k.ns) / 1e9
}

func (c *Collector) addNet(g *cgroup, k netCounters) {
	if k != g.net {
		g.lastActive = c.round
	}
	g.net = k
	g.seen = true
	g.own.rxB, g.own.txB = float64(k.rxBytes), float64(k.txBytes)
	g.own.rxP, g.own.txP = float64(k.rxPackets), float64(k.txPackets)
}

// collectCPUStat reads usage_usec of every cgroup. cpu.stat is hierarchical (a parent's usage
// includes its children's, removed children's too), so each cgroup is given its own tasks'
// time: its usage minus its children's and its removed children's last readings, which is
// what the eBPF source measures.
func (c *Collector) collectCPUStat(ctx context.Context) error {
	if err := c.rescan(); err != nil {
		return err
	}
	byPath := make(map[string]*cgroup, len(c.cgroups))
	for _, g := range c.cgroups {
		if !g.gone {
			byPath[g.path] = g
		}
	}
	for _, g := range c.cgroups {
		if err := ctx.Err(); err != nil {
			return err
		}
		// A removed cgroup keeps its last reading and parent: until reap moves the reading to
		// the parent's goneChildren, it is still subtracted from the parent as a child.
		if g.gone {
			continue
		}
		g.parent = nil
		if g.path != "/" {
			g.parent = byPath[filepath.Dir(g.path)]
		}
		usec, err := readUsageUsec(filepath.Join(c.root, g.path, "cpu.stat"))
		if err != nil {
			continue // removed meanwhile: its last reading stands
		}
		g.usage, g.read = usec*1000, true
	}
	own := make(map[*cgroup]int64, len(c.cgroups))
	for _, g := range c.cgroups {
		if !g.read {
			continue
		}
		own[g] += int64(g.usage) - int64(g.goneChildren)
		if g.parent != nil {
			own[g.parent] -= int64(g.usage)
		}
	}
	for g, v := range own {
		if !g.read || g.gone {
			continue
		}
		// A child read after its parent (or a removed child's reading above the parent's
		// share) takes its usage away from the parent's own time: a counter never goes back.
		ns := g.cpu.ns
		if v > 0 && uint64(v) > ns {
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
		g.own.cpuSeconds = float64(ns) / 1e9
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
	joules, ok := c.rapl.Delta()
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
			g.own.joules += joules * float64(g.deltaCyc) / float64(totCyc)
		case totNs > 0:
			g.own.joules += joules * float64(g.deltaNs) / float64(totNs)
		}
	}
}

// cgroupByTail finds the cgroup the last walk found whose path ends with tail (a whole path
// component onwards) at depth; two such cgroups are no answer.
func (c *Collector) cgroupByTail(tail string, depth int) (string, bool) {
	found := ""
	for _, g := range c.cgroups {
		if g.gone || pathDepth(g.path) != depth {
			continue
		}
		if tail == "/" || strings.HasSuffix(g.path, tail) {
			if found != "" && found != g.path {
				return "", false
			}
			found = g.path
		}
	}
	return found, found != ""
}
