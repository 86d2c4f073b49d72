package gpu

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// MIG devices (a compute instance in its GPU instance) are devices of their own: the collector
// finds them on every MIG-capable GPU, again every migRediscoverEvery (and at once after a MIG
// call says an instance is gone), so a reconfiguration shows without an agent restart. An
// instance that is gone is no longer exported, so its series go stale at the next collection.
//
// Discovery walks the MIG device handles (GetMigDeviceHandleByIndex), which need no privilege;
// where the driver does not give them it walks the GPU and compute instances instead, which
// gives the profile and ids but no UUID or memory.

// migRediscoverEvery is the pace of MIG discovery: a reconfiguration takes an operator tens of
// seconds, and discovery costs tens of NVML calls per GPU.
const migRediscoverEvery = 10 * time.Second

// migState is one GPU's MIG bookkeeping.
type migState struct {
	mode, pendingMode *sample.Series
	enabled           bool
	// pending: the GPU takes the other mode at its next reset.
	pending      bool
	discoveredAt time.Time
	stale        bool // an instance disappeared: discover again at the next collection
	// giProfiles are the GPU's GPU-instance profiles, for the instance walk (asked once).
	giProfiles   []nvml.GpuInstanceProfileInfo
	haveProfiles bool
	instances    []*migInstance
	known        map[migKey]*migInstance // series built once per instance identity
	gpm          map[migGPMKey]*migGPM   // per GPU instance
}

// migGPMKey is a GPU instance as GPM samples it. Ids are reused when an operator reconfigures
// the GPU, so the profile is part of it: a new 3g.40gb at the id of an old 1g.10gb is another
// instance, with series of its own.
type migGPMKey struct {
	gi      int
	profile string
}

type migKey struct {
	gi, ci  int
	profile string
	uuid    string
}

type migInstance struct {
	key              migKey
	handle           nvml.Device // nil when the driver gives no MIG device handle
	info             *sample.Series
	memUsage, memCap *sample.Series
	processes        *sample.Series
}

// migGPM is one GPU instance's GPM state, as gpm is a GPU's.
type migGPM struct {
	gi int
	// uuid is the first MIG device found in the instance: when it changes, the instance was
	// made again (same id and profile) and its last sample is of the old one.
	uuid         string
	samples      [2]nvml.GpmSample
	latest       int
	havePrevious bool
	ids          []nvml.GpmMetricId // the metrics asked for, in request order
	engine       [len(gpmEngines)]*sample.Series
	engineSlots  [len(gpmEngines)][]int // indexes in ids
	seen         bool                   // the GPU instance is in the current layout
}

// collectMIG reports the GPU's MIG mode and each MIG device.
func (c *Collector) collectMIG(d *device, b *sample.Batch) {
	if !d.want(probeMIGMode) {
		return
	}
	st := d.mig
	if st == nil {
		st = &migState{mode: d.base.With(metrics.GPUMIGMode), pendingMode: d.base.With(metrics.GPUMIGModePending),
			known: map[migKey]*migInstance{}, gpm: map[migGPMKey]*migGPM{}}
		d.mig = st
	}
	now := c.now()
	if st.stale || st.discoveredAt.IsZero() || now.Sub(st.discoveredAt) >= migRediscoverEvery {
		mode, pendingMode, ret := d.dev.GetMigMode()
		if !c.ok(d, probeMIGMode, ret) {
			return
		}
		st.enabled = mode == nvml.DEVICE_MIG_ENABLE
		if pending := pendingMode != mode; pending != st.pending {
			st.pending = pending
			if pending {
				c.log.Info("GPU MIG mode changes at the GPU's next reset", "gpu", d.index, "mig", st.enabled, "pending_mig", !st.enabled)
			}
		}
		c.discoverMIG(d, st)
		st.discoveredAt, st.stale = now, false
	}
	b.Add(st.mode, boolValue(st.enabled))
	b.Add(st.pendingMode, boolValue(st.pending))
	for _, in := range st.instances {
		c.collectMIGDevice(d, st, in, b)
	}
	c.collectMIGGPM(d, st, b)
}

// collectMIGDevice exports one MIG device: its info, memory and processes. A device found gone
// by a call is left out of this collection (and discovery runs at the next).
func (c *Collector) collectMIGDevice(d *device, st *migState, in *migInstance, b *sample.Batch) {
	if in.handle == nil {
		b.Add(in.info, 1)
		return
	}
	if d.want(probeMIGMemory) {
		m, ret := in.handle.GetMemoryInfo()
		if c.migGone(st, ret) {
			return
		}
		if c.okPart(d, probeMIGMemory, "gpu_instance", in.key.gi, ret) {
			b.Add(in.memUsage, float64(m.Used))
			b.Add(in.memCap, float64(m.Total))
		}
	}
	if c.migProcesses && d.want(probeMIGProcesses) {
		procs, ret := in.handle.GetComputeRunningProcesses()
		if c.migGone(st, ret) {
			return
		}
		if c.okPart(d, probeMIGProcesses, "gpu_instance", in.key.gi, ret) {
			b.Add(in.processes, float64(len(procs)))
		}
	}
	b.Add(in.info, 1)
}

// migGone reports whether ret says a MIG instance no longer exists, and marks the layout for
// discovery: an operator reconfigured the GPU.
func (c *Collector) migGone(st *migState, ret nvml.Return) bool {
	if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
		st.stale = true
		return true
	}
	return false
}

// discoverMIG rebuilds the GPU's list of MIG devices.
func (c *Collector) discoverMIG(d *device, st *migState) {
	prev := len(st.instances)
	st.instances = st.instances[:0]
	for _, g := range st.gpm {
		g.seen = false
	}
	if st.enabled {
		if !c.discoverMIGHandles(d, st) {
			c.discoverMIGInstances(d, st)
		}
	}
	for id, g := range st.gpm {
		if !g.seen {
			c.freeMIGGPM(g)
			delete(st.gpm, id)
		}
	}
	if len(st.instances) != prev {
		c.log.Info("GPU MIG layout", "gpu", d.index, "mig", st.enabled, "instances", len(st.instances))
	}
}

// discoverMIGHandles walks the MIG device handles; false when the driver has none to give.
func (c *Collector) discoverMIGHandles(d *device, st *migState) bool {
	n, ret := d.dev.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return false
	}
	for i := range n {
		h, ret := d.dev.GetMigDeviceHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue // NOT_FOUND: no MIG device at this index
		}
		gi, ret1 := h.GetGpuInstanceId()
		ci, ret2 := h.GetComputeInstanceId()
		uuid, ret3 := h.GetUUID()
		if ret1 != nvml.SUCCESS || ret2 != nvml.SUCCESS || ret3 != nvml.SUCCESS {
			continue
		}
		profile := ""
		if name, ret := h.GetName(); ret == nvml.SUCCESS {
			if _, p, ok := strings.Cut(name, " MIG "); ok {
				profile = p
			}
		}
		if profile == "" {
			if a, ret := h.GetAttributes(); ret == nvml.SUCCESS {
				profile = profileName(a.GpuInstanceSliceCount, a.MemorySizeMB)
			}
		}
		st.add(d, migKey{gi: gi, ci: ci, profile: profile, uuid: uuid}, h)
	}
	return true
}

// discoverMIGInstances walks the GPU and compute instances, profile by profile.
func (c *Collector) discoverMIGInstances(d *device, st *migState) {
	if !st.haveProfiles {
		st.haveProfiles = true
		for id := range nvml.GPU_INSTANCE_PROFILE_COUNT {
			if info, ret := d.dev.GetGpuInstanceProfileInfo(id); ret == nvml.SUCCESS && info.InstanceCount > 0 {
				st.giProfiles = append(st.giProfiles, info)
			}
		}
	}
	for i := range st.giProfiles {
		p := &st.giProfiles[i]
		gis, ret := d.dev.GetGpuInstances(p)
		if ret != nvml.SUCCESS {
			continue
		}
		name := profileName(p.SliceCount, p.MemorySizeMB)
		for _, gi := range gis {
			gInfo, ret := gi.GetInfo()
			if ret != nvml.SUCCESS {
				continue
			}
			for cp := range nvml.COMPUTE_INSTANCE_PROFILE_COUNT {
				cInfo, ret := gi.GetComputeInstanceProfileInfo(cp, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
				if ret != nvml.SUCCESS {
					continue
				}
				cis, ret := gi.GetComputeInstances(&cInfo)
				if ret != nvml.SUCCESS {
					continue
				}
				for _, ci := range cis {
					if info, ret := ci.GetInfo(); ret == nvml.SUCCESS {
						st.add(d, migKey{gi: int(gInfo.Id), ci: int(info.Id), profile: name}, nil)
					}
				}
			}
		}
	}
}

// profileName is a GPU instance's profile as nvidia-smi names it: compute slices and memory in
// GiB rounded up (9856 MiB: 1g.10gb).
func profileName(slices uint32, memoryMiB uint64) string {
	return fmt.Sprintf("%dg.%dgb", slices, int(math.Ceil(float64(memoryMiB)/1024)))
}

// add lists one MIG device, reusing its series when it was seen before.
func (st *migState) add(d *device, k migKey, h nvml.Device) {
	in := st.known[k]
	if in == nil {
		attrs := []attribute.KeyValue{
			attribute.Int(metrics.AttrMIGGPUInstance, k.gi), attribute.Int(metrics.AttrMIGComputeInstance, k.ci),
			attribute.String(metrics.AttrMIGProfile, k.profile), attribute.String(metrics.AttrMIGUUID, k.uuid),
		}
		in = &migInstance{key: k,
			info:      d.base.With(metrics.GPUMIGInfo, attrs...),
			memUsage:  d.base.With(metrics.GPUMIGMemoryUsage, attrs...),
			memCap:    d.base.With(metrics.GPUMIGMemoryLimit, attrs...),
			processes: d.base.With(metrics.GPUMIGProcesses, attrs...),
		}
		if len(st.known) > 4*maxMIGDevices {
			clear(st.known) // many reconfigurations: forget the old identities
		}
		st.known[k] = in
	}
	in.handle = h
	st.instances = append(st.instances, in)
	gk := migGPMKey{gi: k.gi, profile: k.profile}
	g := st.gpm[gk]
	if g == nil {
		g = &migGPM{gi: k.gi}
		g.build(d.base, k.gi, k.profile)
		st.gpm[gk] = g
	}
	if !g.seen { // the instance's first MIG device in this discovery
		if g.uuid != k.uuid {
			g.havePrevious = false
		}
		g.uuid, g.seen = k.uuid, true
	}
}

// maxMIGDevices is the most MIG devices a GPU holds.
const maxMIGDevices = 7

func (g *migGPM) build(base *sample.Series, gi int, profile string) {
	g.ids = make([]nvml.GpmMetricId, 0, gpmEngineMetrics())
	for i, e := range gpmEngines {
		g.engine[i] = base.With(metrics.GPUMIGActivity, attribute.Int(metrics.AttrMIGGPUInstance, gi),
			attribute.String(metrics.AttrMIGProfile, profile), attribute.String(metrics.AttrGPUEngine, e.name))
		g.engineSlots[i] = make([]int, 0, len(e.metrics))
		for _, id := range e.metrics {
			g.engineSlots[i] = append(g.engineSlots[i], len(g.ids))
			g.ids = append(g.ids, id)
		}
	}
}

// collectMIGGPM takes one GPM sample per GPU instance and exports the activity between it and
// the previous one, on GPUs with GPM.
func (c *Collector) collectMIGGPM(d *device, st *migState, b *sample.Batch) {
	if d.gpm == nil || !d.gpm.isSupported || !st.enabled || !d.want(probeMIGGPM) || !c.exports(metrics.GPUMIGActivity) {
		return
	}
	if st.stale {
		// An instance is gone: the ids may be another instance's now; sample after discovery.
		return
	}
	for _, g := range st.gpm {
		gi := g.gi
		if g.samples[0] == nil {
			if !c.allocMIGGPM(d, g) {
				return
			}
			// A first sample now, so that this collection already has an interval.
			if ret := d.dev.GpmMigSampleGet(gi, g.samples[0]); ret == nvml.SUCCESS {
				g.latest, g.havePrevious = 0, true
			}
		}
		next := 1 - g.latest
		ret := d.dev.GpmMigSampleGet(gi, g.samples[next])
		if c.migGone(st, ret) {
			g.havePrevious = false
			return // the layout changed: the other ids may be new instances'
		}
		if !c.okPart(d, probeMIGGPM, "gpu_instance", gi, ret) {
			g.havePrevious = false
			continue
		}
		previous, had := g.latest, g.havePrevious
		g.latest, g.havePrevious = next, true
		if !had {
			continue
		}
		req, ret := c.gpmMetrics(g.ids, g.samples[previous], g.samples[next])
		if !c.okPart(d, probeGPMMetrics, "gpu_instance", gi, ret) {
			continue
		}
		for i, slots := range g.engineSlots {
			sum, n := 0.0, 0
			for _, k := range slots {
				if m := &req.Metrics[k]; nvml.Return(m.NvmlReturn) == nvml.SUCCESS {
					sum += m.Value
					n++
				}
			}
			if n > 0 {
				b.Add(g.engine[i], sum/float64(n)/100)
			}
		}
	}
}

func (c *Collector) allocMIGGPM(d *device, g *migGPM) bool {
	for i := range g.samples {
		s, ret := c.lib.GpmSampleAlloc()
		if ret != nvml.SUCCESS {
			c.log.Warn("allocating a GPM sample for a GPU instance; no MIG activity for this GPU", "gpu", d.index, "err", ret)
			c.freeMIGGPM(g)
			d.unsupported[probeMIGGPM] = true
			return false
		}
		g.samples[i] = s
	}
	return true
}

func (c *Collector) freeMIGGPM(g *migGPM) {
	for i, s := range g.samples {
		if s != nil {
			if ret := s.Free(); ret != nvml.SUCCESS {
				c.log.Debug("freeing a GPM sample", "err", ret)
			}
			g.samples[i] = nil
		}
	}
	g.havePrevious, g.latest = false, 0
}

// closeMIG frees every GPU instance's samples.
func (c *Collector) closeMIG() {
	for _, d := range c.devices {
		if d.mig != nil {
			for _, g := range d.mig.gpm {
				c.freeMIGGPM(g)
			}
		}
	}
}
