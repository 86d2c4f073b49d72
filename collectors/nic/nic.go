// Package nic collects network interface counters and link state through rtnetlink (one link dump
// per collection, not /proc/net/dev), carrier transitions through an rtnetlink subscription, link
// speed and driver from sysfs, and InfiniBand/RoCE port counters from sysfs.
package nic

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/procfs/sysfs"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/sys/unix"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/sysattr"
)

// Name is the collector's name in flags and metrics.
const Name = "nic"

func init() {
	collectors.Register(collectors.Factory{
		Name:                Name,
		EnabledByDefault:    true,
		Interval:            5 * time.Second,
		CreateDefaultConfig: func() collectors.Config { return &Config{Exclude: DefaultExclude} },
		New: func(set collectors.Settings, cfg collectors.Config) (collectors.Collector, error) {
			c := cfg.(*Config)
			include, err := compileFilter("nic.include", c.Include)
			if err != nil {
				return nil, err
			}
			exclude, err := compileFilter("nic.exclude", c.Exclude)
			if err != nil {
				return nil, err
			}
			return New(Options{Sysfs: set.Sysfs, Include: include, Exclude: exclude,
				Netns: netns.None(), Logger: set.Logger})
		},
	})
}

// Config selects the network interfaces the collector reports, by name (keys nic.include and
// nic.exclude): an interface is reported when Include is empty or matches, and Exclude is empty
// or does not match.
type Config struct {
	Include string `yaml:"include" format:"regexp" help:"regular expression of the network interface names the nic collector reports; empty means all"`
	Exclude string `yaml:"exclude" format:"regexp" help:"regular expression of the network interface names the nic collector leaves out; empty leaves out none"`
}

// DefaultExclude leaves out loopback and the per-container links of container runtimes and
// CNI plugins, whose number follows the pods and would swamp a node's series.
const DefaultExclude = `^(lo|veth.*|cali.*|lxc.*|docker.*)$`

// compileFilter compiles a name filter; config validation has already checked it.
func compileFilter(key, expr string) (*regexp.Regexp, error) {
	if expr == "" {
		return nil, nil
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("compiling %s %q: %w", key, expr, err)
	}
	return re, nil
}

// Options is what a Collector is built from.
type Options struct {
	// Sysfs is the mount point of sysfs (--path.sysfs); speed, driver and InfiniBand come from it.
	// Mounted in another network namespace than Netns, it shows other links: their sysfs
	// attributes are then missing, which is not an error.
	Sysfs string
	// Include and Exclude filter interfaces by name; nil filters nothing.
	Include, Exclude *regexp.Regexp
	// Netns is the network namespace whose links are read: netns.None() (the agent's own) in
	// the agent, a test's own namespace in tests.
	Netns  netns.NsHandle
	Logger *slog.Logger
}

// Collector reads every network interface of a network namespace.
type Collector struct {
	log              *slog.Logger
	sysfs            string
	include, exclude *regexp.Regexp
	conn             conn
	pid              uint32 // the socket's netlink port id, which answers carry
	dumpPending      bool   // a dump on conn was abandoned before its end; drained first
	watcher          *carrierWatcher
	ib               *infiniband

	mu    sync.Mutex // one collection at a time: link state is not shared
	links map[int32]*link
	msgs  []linkMsg // this collection's dump, reused
	gen   uint64    // collections so far; a link not seen in the latest is gone
	// retired holds, by name, the last cumulative values of links gone since: a link created
	// again under the same name (a pod's veth, a driver reset) continues from them.
	retired   map[string]*retired
	logged    logKinds // repeated conditions already logged, by kind
	afterDump func()   // test seam: runs between the dump and the sysfs reads
}

// link is one interface, identified by its index; a rename builds it anew.
type link struct {
	index    int32
	name     string
	kind     string
	excluded bool
	seen     uint64

	speedPath string
	// speedAt is the carrier-change count at which speed was last read: a NIC renegotiates its
	// speed only across a carrier change, so it is read again only after one (bonds and teams,
	// whose speed follows their members, are read every collection).
	speedAt    int64
	speedRead  bool
	speedBps   float64 // bytes per second; 0 while unknown
	readSpeed  bool    // whether the kind has a speed worth reading every collection
	speedFails bool    // the last read failed for another reason than "unknown"; logged once

	// offset is what earlier incarnations of the name had counted (see retired), added to each
	// cumulative value; last holds the cumulative values last exported, offset included.
	offset, last [numCumulative]float64

	info                                   *sample.Series
	rxBytes, txBytes, rxPackets, txPackets *sample.Series
	rxErrors, txErrors, rxDropped, txDrops *sample.Series
	up, operState, carrier, mtu            *sample.Series
	carrierChanges, transitions, bandwidth *sample.Series
}

// The cumulative values of a link, as indexes of link.offset and link.last.
const (
	cumRxBytes = iota
	cumTxBytes
	cumRxPackets
	cumTxPackets
	cumRxErrors
	cumTxErrors
	cumRxDropped
	cumTxDropped
	cumCarrierChanges
	cumTransitions
	numCumulative
)

// retired is what a gone link had counted, kept for a new incarnation of its name.
type retired struct {
	last  [numCumulative]float64
	gen   uint64 // the collection that found it gone
	index int32  // the same index again is the same link, missed by an interrupted dump
}

// retiredKeep is how many collections a gone link's values wait for a new link of its name
// (an hour at the default interval); the map holds only names that recently went away.
const retiredKeep = 720

// New opens an rtnetlink socket in o.Netns and subscribes to its link changes.
func New(o Options) (*Collector, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("collector", Name)
	s, err := nl.GetNetlinkSocketAt(o.Netns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening an rtnetlink socket: %w", err)
	}
	pid, err := s.GetPid()
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("reading the rtnetlink socket's port id: %w", err)
	}
	sfs, err := sysfs.NewFS(o.Sysfs)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("opening sysfs at %s: %w", o.Sysfs, err)
	}
	c := &Collector{
		log: log, sysfs: o.Sysfs, include: o.Include, exclude: o.Exclude, conn: s, pid: pid,
		watcher: newCarrierWatcher(o.Netns, log),
		ib:      newInfiniband(sfs, log),
		links:   map[int32]*link{},
		retired: map[string]*retired{},
	}
	if err := c.watcher.start(); err != nil {
		// Counters and the kernel's carrier-change count still work; the next collection retries.
		c.logged.first(kindSubscribe)
		log.Warn("carrier transitions are not counted until the link subscription starts", "err", err)
	}
	return c, nil
}

// Close ends the subscription and closes the socket.
func (c *Collector) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watcher.stop()
	c.conn.Close()
	return nil
}

// Collect dumps every link once and adds its points, then InfiniBand ports. A failed dump fails
// the collection; an interface that vanished between the dump and the sysfs reads is reported
// from the dump alone.
func (c *Collector) Collect(ctx context.Context, b *sample.Batch) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Once until it starts, whatever errno each try meets.
	if err := c.watcher.start(); err != nil {
		if c.logged.first(kindSubscribe) {
			c.log.Warn("carrier transitions are not counted until the link subscription starts", "err", err)
		}
	} else {
		c.logged.forget(kindSubscribe)
	}

	c.msgs = c.msgs[:0]
	epoch := c.watcher.mark()
	var parseErr error
	err := dumpLinks(ctx, c.conn, c.pid, &c.dumpPending, func(data []byte) {
		c.msgs = append(c.msgs, linkMsg{})
		if err := parseLink(data, &c.msgs[len(c.msgs)-1]); err != nil {
			c.msgs = c.msgs[:len(c.msgs)-1]
			parseErr = err
		}
	})
	switch {
	case errors.Is(err, errDumpInterrupted):
		c.log.Debug("link dump interrupted; reporting the links it held", "err", err)
	case err != nil:
		return fmt.Errorf("dumping network links over rtnetlink: %w", err)
	}
	// Once: each malformed message names its own link and lengths.
	if parseErr != nil && c.logged.first(kindMalformedDump) {
		c.log.Warn("skipping a malformed link message", "err", parseErr)
	}
	if c.afterDump != nil {
		c.afterDump()
	}

	c.gen++
	// Links gone (or renamed) are retired before new ones are built, so that a name deleted and
	// created again between two collections continues from what it had counted.
	for i := range c.msgs {
		m := &c.msgs[i]
		if l := c.links[m.index]; l != nil && string(m.name) == l.name {
			l.seen = c.gen
		}
	}
	for index, l := range c.links {
		if l.seen != c.gen {
			if !l.excluded {
				c.retired[l.name] = &retired{last: l.last, gen: c.gen, index: l.index}
			}
			delete(c.links, index)
		}
	}
	for i := range c.msgs {
		m := &c.msgs[i]
		l := c.links[m.index]
		if l == nil {
			l = c.newLink(m)
			c.links[m.index] = l
			l.seen = c.gen
		}
		if !l.excluded {
			c.add(b, l, m)
		}
	}
	if c.gen%64 == 0 {
		for name, r := range c.retired {
			if c.gen-r.gen > retiredKeep {
				delete(c.retired, name)
			}
		}
	}
	// An interrupted dump, or one with a malformed message, may miss links: only a complete one
	// tells the watcher which are gone.
	if err == nil && parseErr == nil {
		c.watcher.prune(epoch, func(index int32) bool { return c.links[index] != nil })
	}
	c.ib.collect(b)
	return nil
}

// newLink builds a link's series when first seen; its driver is read from sysfs once.
func (c *Collector) newLink(m *linkMsg) *link {
	name := string(m.name)
	l := &link{index: m.index, name: name, kind: kindOf(m)}
	if c.include != nil && !c.include.MatchString(name) || c.exclude != nil && c.exclude.MatchString(name) {
		l.excluded = true
		return l
	}
	if r := c.retired[name]; r != nil {
		if r.index != m.index { // a new incarnation; the same index kept its own counts
			l.offset, l.last = r.last, r.last
		}
		delete(c.retired, name)
	}
	dir := filepath.Join(c.sysfs, "class", "net", name)
	l.speedPath = filepath.Join(dir, "speed")
	l.readSpeed = l.kind == "bond" || l.kind == "team"
	driver := ""
	if target, err := os.Readlink(filepath.Join(dir, "device", "driver")); err == nil {
		driver = filepath.Base(target)
	}
	ifname := attribute.String(metrics.AttrInterfaceName, name)
	dirSeries := func(def *metrics.Def, d string) *sample.Series {
		return sample.NewSeries(def, ifname, attribute.String(metrics.AttrIODirection, d))
	}
	l.info = sample.NewSeries(metrics.NetworkInfo, ifname,
		attribute.String(metrics.AttrLinkKind, l.kind), attribute.String(metrics.AttrLinkDriver, driver))
	l.rxBytes, l.txBytes = dirSeries(metrics.NetworkIO, "receive"), dirSeries(metrics.NetworkIO, "transmit")
	l.rxPackets, l.txPackets = dirSeries(metrics.NetworkPackets, "receive"), dirSeries(metrics.NetworkPackets, "transmit")
	l.rxErrors, l.txErrors = dirSeries(metrics.NetworkErrors, "receive"), dirSeries(metrics.NetworkErrors, "transmit")
	l.rxDropped, l.txDrops = dirSeries(metrics.NetworkDropped, "receive"), dirSeries(metrics.NetworkDropped, "transmit")
	l.up = sample.NewSeries(metrics.NetworkUp, ifname)
	l.operState = sample.NewSeries(metrics.NetworkOperState, ifname)
	l.carrier = sample.NewSeries(metrics.NetworkCarrier, ifname)
	l.carrierChanges = sample.NewSeries(metrics.NetworkCarrierChanges, ifname)
	l.transitions = sample.NewSeries(metrics.NetworkCarrierTransitions, ifname)
	l.mtu = sample.NewSeries(metrics.NetworkMTU, ifname)
	l.bandwidth = sample.NewSeries(metrics.NetworkBandwidthLimit, ifname)
	return l
}

// kindOf names a link's kind: the rtnetlink kind (veth, bond, vlan, bridge, ipoib …) of a
// software link, else loopback or physical.
func kindOf(m *linkMsg) string {
	switch {
	case len(m.kind) > 0:
		return string(m.kind)
	case m.flags&unix.IFF_LOOPBACK != 0:
		return "loopback"
	}
	return "physical"
}

// operUp is IF_OPER_UP; operUnknown is what links without operational state (loopback,
// dummies, tunnels) report.
const (
	operUnknown = 0
	operUp      = 6
)

func (c *Collector) add(b *sample.Batch, l *link, m *linkMsg) {
	b.Add(l.info, 1)
	if m.hasStats {
		s := &m.stats
		l.addCum(b, l.rxBytes, cumRxBytes, s.rxBytes)
		l.addCum(b, l.txBytes, cumTxBytes, s.txBytes)
		l.addCum(b, l.rxPackets, cumRxPackets, s.rxPackets)
		l.addCum(b, l.txPackets, cumTxPackets, s.txPackets)
		l.addCum(b, l.rxErrors, cumRxErrors, s.rxErrors)
		l.addCum(b, l.txErrors, cumTxErrors, s.txErrors)
		l.addCum(b, l.rxDropped, cumRxDropped, s.rxDropped)
		l.addCum(b, l.txDrops, cumTxDropped, s.txDropped)
	}
	hasCarrier := m.carrier == 1 || m.carrier < 0 && m.flags&unix.IFF_LOWER_UP != 0
	up := m.flags&unix.IFF_UP != 0 && hasCarrier &&
		(m.operState == operUp || m.operState == operUnknown)
	b.Add(l.up, boolValue(up))
	b.Add(l.operState, float64(m.operState))
	b.Add(l.carrier, boolValue(hasCarrier))
	if m.carrierChanges >= 0 {
		l.addCum(b, l.carrierChanges, cumCarrierChanges, uint64(m.carrierChanges))
	}
	// A link the live subscription has not listed yet has had no transition it could see.
	if n, ok := c.watcher.transitions(m.index); ok || c.watcher.isLive() {
		l.addCum(b, l.transitions, cumTransitions, n)
	}
	b.Add(l.mtu, float64(m.mtu))
	if hasCarrier {
		c.updateSpeed(l, m.carrierChanges)
		if l.speedBps > 0 {
			b.Add(l.bandwidth, l.speedBps)
		}
	}
}

// updateSpeed rereads sysfs speed after a carrier change (or always, for bonds). Unknown speed
// (-1, EINVAL from virtual links and links without carrier) and a vanished interface (ENOENT,
// ENODEV) leave it unknown without a log line.
func (c *Collector) updateSpeed(l *link, carrierChanges int64) {
	if l.speedRead && !l.readSpeed && carrierChanges >= 0 && carrierChanges == l.speedAt {
		return
	}
	// The markers are set only by an answer that holds until the next carrier change: a speed, or
	// a link that has none. A transient failure (EIO, EBUSY while the driver resets) or a speed
	// not negotiated yet (-1 right after carrier up) is read again at the next collection.
	l.speedBps = 0
	var buf [32]byte
	n, err := sysattr.ReadFile(l.speedPath, buf[:])
	if err != nil {
		if errors.Is(err, syscall.EINVAL) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENODEV) {
			l.speedRead, l.speedAt = true, carrierChanges
			return
		}
		if !l.speedFails {
			l.speedFails = true
			c.log.Debug("reading link speed", "interface", l.name, "err", err)
		}
		return
	}
	l.speedFails = false
	mbps, err := strconv.ParseInt(string(trimSpace(buf[:n])), 10, 64)
	if err != nil || mbps <= 0 || mbps == 1<<32-1 { // -1 or (old kernels) SPEED_UNKNOWN as u32
		return
	}
	l.speedRead, l.speedAt = true, carrierChanges
	l.speedBps = float64(mbps) * 1e6 / 8
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// addCum adds a cumulative value, continuing from earlier incarnations of the link's name.
func (l *link) addCum(b *sample.Batch, s *sample.Series, i int, v uint64) {
	l.last[i] = l.offset[i] + float64(v)
	b.Add(s, l.last[i])
}

func boolValue(v bool) float64 {
	if v {
		return 1
	}
	return 0
}
