package sim

import (
	"fmt"
	"math"
	"sync/atomic"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu/sim/miglayout"
)

// MIG (multi-instance GPU, A100 and later) splits a GPU into up to seven GPU instances, each
// with its own compute slices and memory; the sim gives every GPU instance one compute
// instance over all its slices, as `nvidia-smi mig -cgi … -C` does. A layout names the
// profiles ("7x1g.10gb", "3g.40gb,2x2g.20gb"); an empty layout is MIG off.

// MIGProfile is one GPU-instance profile of a model.
type MIGProfile = miglayout.Profile

// maxComputeSlices is the most MIG devices (and compute slices) a GPU has.
const maxComputeSlices = miglayout.MaxComputeSlices

// MIGProfiles lists the GPU-instance profiles of a model.
func (m *Model) MIGProfiles() []MIGProfile { return miglayout.Profiles(m.Name) }

// computeProfileOf is the compute-instance profile spanning a GPU instance of that many slices.
func computeProfileOf(slices int) int {
	switch slices {
	case 1:
		return nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE
	case 2:
		return nvml.COMPUTE_INSTANCE_PROFILE_2_SLICE
	case 3:
		return nvml.COMPUTE_INSTANCE_PROFILE_3_SLICE
	case 4:
		return nvml.COMPUTE_INSTANCE_PROFILE_4_SLICE
	}
	return nvml.COMPUTE_INSTANCE_PROFILE_7_SLICE
}

// ParseMIGLayout checks a layout against a model (see miglayout.Parse).
func ParseMIGLayout(model, layout string) (enabled bool, profiles []MIGProfile, err error) {
	return miglayout.Parse(model, layout)
}

// ParseMIGLayouts reads the layouts of a fleet of count GPUs (see miglayout.ParseAll).
func ParseMIGLayouts(model, spec string, count int) ([][]MIGProfile, []bool, error) {
	return miglayout.ParseAll(model, spec, count)
}

// migState is a GPU's MIG configuration; guarded by the GPU's lock.
type migState struct {
	enabled bool
	// pending is the mode SetMigMode asked for, taken at the GPU's next reset (a driver reload
	// fault); it equals enabled when no change waits.
	pending    bool
	instances  []*MigDevice
	generation int // layouts applied, so that a new layout gives new UUIDs
}

// SetMIGLayout reconfigures GPU gpu's MIG layout (see ParseMIGLayout) while it runs, as an
// operator's `nvidia-smi mig` would: the old instances disappear and the new ones appear.
func (f *Fleet) SetMIGLayout(gpu int, layout string) error {
	enabled, profiles, err := ParseMIGLayout(f.model.Name, layout)
	if err != nil {
		return err
	}
	g := f.GPU(gpu)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.setMIG(enabled, profiles)
	return nil
}

func (g *GPU) setMIG(enabled bool, profiles []MIGProfile) {
	if enabled && !g.fleet.model.migSupported() {
		enabled, profiles = false, nil
	}
	m := &g.mig
	g.procs = nil // a new layout ends every process, as a reconfiguration requires
	for _, old := range m.instances {
		old.gone.Store(true)
	}
	m.generation++
	m.enabled, m.pending = enabled, enabled
	m.instances = m.instances[:0:0]
	for i, p := range profiles {
		id := i + 1
		d := &MigDevice{parent: g, profile: p, giID: id, ciID: 0}
		d.unmodelledDevice = unmodelledDevice{d}
		d.uuid = migUUID(g.uuid, id, m.generation)
		d.gi = &GpuInstance{unmodelledGpuInstance: unmodelledGpuInstance{d}, dev: d}
		d.ci = &ComputeInstance{unmodelledComputeInstance: unmodelledComputeInstance{d}, dev: d}
		m.instances = append(m.instances, d)
	}
}

// migSupported reports whether the model has MIG: A100 and later all do.
func (m *Model) migSupported() bool { return len(m.MIGProfiles()) > 0 }

func migUUID(parent string, gi, generation int) string {
	h := uint64(14695981039346656037)
	for _, c := range fmt.Sprintf("%s/%d/%d", parent, gi, generation) {
		h = (h ^ uint64(c)) * 1099511628211
	}
	h2 := h*0x9e3779b97f4a7c15 + 1
	return fmt.Sprintf("MIG-%08x-%04x-%04x-%04x-%012x", h>>32, (h>>16)&0xffff, h&0xffff, h2>>48, h2&0xffffffffffff)
}

// MigDevice is one MIG device (a compute instance in its GPU instance) of a simulated GPU; it
// implements nvml.Device, as NVML's MIG device handles do.
type MigDevice struct {
	unmodelledDevice
	parent     *GPU
	profile    MIGProfile
	giID, ciID int
	uuid       string
	gi         *GpuInstance
	ci         *ComputeInstance
	gone       atomic.Bool // destroyed by a new layout: its handle answers ERROR_NOT_FOUND
	// gpm integrates the instance's own activity since it was made (guarded by the GPU's
	// lock): its share of the GPU's work (instanceShare).
	gpm gpmCounters
}

// ready is the parent's check, and then whether the instance still exists.
func (d *MigDevice) ready() nvml.Return {
	if ret := d.parent.ready(); ret != nvml.SUCCESS {
		return ret
	}
	if d.gone.Load() {
		return nvml.ERROR_NOT_FOUND
	}
	return nvml.SUCCESS
}

// GpuInstance is a simulated GPU instance; it implements nvml.GpuInstance.
type GpuInstance struct {
	unmodelledGpuInstance
	dev *MigDevice
}

// ComputeInstance is a simulated compute instance; it implements nvml.ComputeInstance.
type ComputeInstance struct {
	unmodelledComputeInstance
	dev *MigDevice
}

var (
	_ nvml.Device          = (*MigDevice)(nil)
	_ nvml.GpuInstance     = (*GpuInstance)(nil)
	_ nvml.ComputeInstance = (*ComputeInstance)(nil)
)

// migReady is ready for a MIG call: the GPU must be in MIG mode.
func (g *GPU) migReady() nvml.Return {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return ret
	}
	if !g.fleet.model.migSupported() {
		return nvml.ERROR_NOT_SUPPORTED
	}
	return nvml.SUCCESS
}

// GetMigMode reports the current MIG mode and the one the GPU takes at its next reset.
func (g *GPU) GetMigMode() (int, int, nvml.Return) {
	if ret := g.migReady(); ret != nvml.SUCCESS {
		return 0, 0, ret
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return migModeValue(g.mig.enabled), migModeValue(g.mig.pending), nvml.SUCCESS
}

func migModeValue(enabled bool) int {
	if enabled {
		return nvml.DEVICE_MIG_ENABLE
	}
	return nvml.DEVICE_MIG_DISABLE
}

// SetMigMode asks for a MIG mode, which the GPU takes at its next reset (in the sim, a reload
// fault), as one in use cannot be reset at once: the activation status says it is pending.
func (g *GPU) SetMigMode(mode int) (nvml.Return, nvml.Return) {
	if ret := g.migReady(); ret != nvml.SUCCESS {
		return ret, ret
	}
	if mode != nvml.DEVICE_MIG_ENABLE && mode != nvml.DEVICE_MIG_DISABLE {
		return nvml.ERROR_INVALID_ARGUMENT, nvml.ERROR_INVALID_ARGUMENT
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.mig.pending = mode == nvml.DEVICE_MIG_ENABLE
	return nvml.ERROR_IN_USE, nvml.SUCCESS
}

// resetMIG applies a pending MIG mode, as a GPU reset does: MIG turned on has no instances yet.
func (g *GPU) resetMIG() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mig.pending != g.mig.enabled {
		g.setMIG(g.mig.pending, nil)
	}
}

// GetMaxMigDeviceCount is 7 on every MIG-capable model.
func (g *GPU) GetMaxMigDeviceCount() (int, nvml.Return) {
	if ret := g.migReady(); ret != nvml.SUCCESS {
		return 0, ret
	}
	return maxComputeSlices, nvml.SUCCESS
}

// GetMigDeviceHandleByIndex returns the i-th MIG device; an index with no device answers
// ERROR_NOT_FOUND, as NVML does.
func (g *GPU) GetMigDeviceHandleByIndex(i int) (nvml.Device, nvml.Return) {
	if ret := g.migReady(); ret != nvml.SUCCESS {
		return nil, ret
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.mig.enabled {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	if i < 0 || i >= maxComputeSlices {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	if i >= len(g.mig.instances) {
		return nil, nvml.ERROR_NOT_FOUND
	}
	return g.mig.instances[i], nvml.SUCCESS
}

// GetGpuInstanceProfileInfo describes one GPU-instance profile of the model.
func (g *GPU) GetGpuInstanceProfileInfo(profile int) (nvml.GpuInstanceProfileInfo, nvml.Return) {
	if ret := g.migReady(); ret != nvml.SUCCESS {
		return nvml.GpuInstanceProfileInfo{}, ret
	}
	if profile < 0 || profile >= nvml.GPU_INSTANCE_PROFILE_COUNT {
		return nvml.GpuInstanceProfileInfo{}, nvml.ERROR_INVALID_ARGUMENT
	}
	for _, p := range g.fleet.model.MIGProfiles() {
		if p.ID == profile {
			return profileInfo(p), nvml.SUCCESS
		}
	}
	return nvml.GpuInstanceProfileInfo{}, nvml.ERROR_NOT_SUPPORTED
}

func profileInfo(p MIGProfile) nvml.GpuInstanceProfileInfo {
	return nvml.GpuInstanceProfileInfo{
		Id: uint32(p.ID), IsP2pSupported: 1, SliceCount: uint32(p.Slices), InstanceCount: uint32(p.Count),
		MultiprocessorCount: p.SMs, CopyEngineCount: uint32(p.Slices), DecoderCount: uint32(max(1, p.Slices/2)),
		MemorySizeMB: p.MemoryMiB,
	}
}

// GetGpuInstances lists the GPU instances of one profile.
func (g *GPU) GetGpuInstances(info *nvml.GpuInstanceProfileInfo) ([]nvml.GpuInstance, nvml.Return) {
	if ret := g.migReady(); ret != nvml.SUCCESS {
		return nil, ret
	}
	if info == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.mig.enabled {
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	var out []nvml.GpuInstance
	for _, d := range g.mig.instances {
		if uint32(d.profile.ID) == info.Id {
			out = append(out, d.gi)
		}
	}
	return out, nvml.SUCCESS
}

// GpmMigSampleGet takes a GPM sample of one GPU instance: its own activity, its share of the
// GPU's work (instanceShare).
func (g *GPU) GpmMigSampleGet(giID int, sample nvml.GpmSample) nvml.Return {
	s, ok := sample.(*GpmSample)
	if !ok || s.fleet != g.fleet || s.freed {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	if ret := g.migReady(); ret != nvml.SUCCESS {
		return ret
	}
	if !g.fleet.model.gpmSupported() {
		return nvml.ERROR_NOT_SUPPORTED
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return ret
	}
	defer g.mu.Unlock()
	for _, d := range g.mig.instances {
		if d.giID == giID {
			g.fillSample(s, d)
			return nvml.SUCCESS
		}
	}
	return nvml.ERROR_NOT_FOUND
}

// instanceShare is how much of the GPU's work a GPU instance does, per second of the GPU's:
// with no process set on the GPU, the work is spread evenly and every instance is as busy as
// the GPU; with processes, an instance is as busy as its processes' SM shares say (0 without
// one). The caller holds g.mu.
func (g *GPU) instanceShare(d *MigDevice) float64 {
	if len(g.procs) == 0 {
		return 1
	}
	share := 0.0
	for _, p := range g.procs {
		if p.GPUInstance == d.giID {
			share += p.SMShare
		}
	}
	return min(1, share)
}

func (gi *GpuInstance) GetInfo() (nvml.GpuInstanceInfo, nvml.Return) {
	d := gi.dev
	if ret := d.ready(); ret != nvml.SUCCESS {
		return nvml.GpuInstanceInfo{}, ret
	}
	return nvml.GpuInstanceInfo{Device: d.parent, Id: uint32(d.giID), ProfileId: uint32(d.profile.ID)}, nvml.SUCCESS
}

func (gi *GpuInstance) GetComputeInstanceProfileInfo(profile, engine int) (nvml.ComputeInstanceProfileInfo, nvml.Return) {
	d := gi.dev
	if ret := d.ready(); ret != nvml.SUCCESS {
		return nvml.ComputeInstanceProfileInfo{}, ret
	}
	if engine != nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED || profile != computeProfileOf(d.profile.Slices) {
		return nvml.ComputeInstanceProfileInfo{}, nvml.ERROR_NOT_SUPPORTED
	}
	return nvml.ComputeInstanceProfileInfo{Id: uint32(profile), SliceCount: uint32(d.profile.Slices), InstanceCount: 1,
		MultiprocessorCount: d.profile.SMs, SharedCopyEngineCount: uint32(d.profile.Slices)}, nvml.SUCCESS
}

func (gi *GpuInstance) GetComputeInstances(info *nvml.ComputeInstanceProfileInfo) ([]nvml.ComputeInstance, nvml.Return) {
	d := gi.dev
	if ret := d.ready(); ret != nvml.SUCCESS {
		return nil, ret
	}
	if info == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	if info.Id != uint32(computeProfileOf(d.profile.Slices)) {
		return nil, nvml.SUCCESS
	}
	return []nvml.ComputeInstance{d.ci}, nvml.SUCCESS
}

func (ci *ComputeInstance) GetInfo() (nvml.ComputeInstanceInfo, nvml.Return) {
	d := ci.dev
	if ret := d.ready(); ret != nvml.SUCCESS {
		return nvml.ComputeInstanceInfo{}, ret
	}
	return nvml.ComputeInstanceInfo{Device: d.parent, GpuInstance: d.gi, Id: uint32(d.ciID),
		ProfileId: uint32(computeProfileOf(d.profile.Slices))}, nvml.SUCCESS
}

// The MIG device handle's own calls.

func (d *MigDevice) GetUUID() (string, nvml.Return) {
	if ret := d.ready(); ret != nvml.SUCCESS {
		return "", ret
	}
	return d.uuid, nvml.SUCCESS
}

func (d *MigDevice) GetName() (string, nvml.Return) {
	if ret := d.ready(); ret != nvml.SUCCESS {
		return "", ret
	}
	return d.parent.fleet.model.ProductName + " MIG " + d.profile.Name, nvml.SUCCESS
}

func (d *MigDevice) IsMigDeviceHandle() (bool, nvml.Return) { return true, d.ready() }

func (d *MigDevice) GetGpuInstanceId() (int, nvml.Return) { return d.giID, d.ready() }

func (d *MigDevice) GetComputeInstanceId() (int, nvml.Return) { return d.ciID, d.ready() }

func (d *MigDevice) GetDeviceHandleFromMigDeviceHandle() (nvml.Device, nvml.Return) {
	if ret := d.ready(); ret != nvml.SUCCESS {
		return nil, ret
	}
	return d.parent, nvml.SUCCESS
}

// GetMemoryInfo reports the instance's memory; the GPU's footprint is spread over its instances
// in proportion to their memory.
func (d *MigDevice) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	g := d.parent
	if ret := d.ready(); ret != nvml.SUCCESS {
		return nvml.Memory{}, ret
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return nvml.Memory{}, ret
	}
	defer g.mu.Unlock()
	total := d.profile.MemoryMiB * mib
	gpuTotal, _, gpuUsed := g.memory()
	used := uint64(math.Round(float64(total) * float64(gpuUsed) / float64(gpuTotal)))
	used = min(used, total)
	return nvml.Memory{Total: total, Used: used, Free: total - used}, nvml.SUCCESS
}

func (d *MigDevice) GetAttributes() (nvml.DeviceAttributes, nvml.Return) {
	if ret := d.ready(); ret != nvml.SUCCESS {
		return nvml.DeviceAttributes{}, ret
	}
	p := d.profile
	return nvml.DeviceAttributes{MultiprocessorCount: p.SMs, SharedCopyEngineCount: uint32(p.Slices),
		GpuInstanceSliceCount: uint32(p.Slices), ComputeInstanceSliceCount: uint32(p.Slices), MemorySizeMB: p.MemoryMiB}, nvml.SUCCESS
}
