package sim

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// MIG (multi-instance GPU, A100 and later) splits a GPU into up to seven GPU instances, each
// with its own compute slices and memory; the sim gives every GPU instance one compute
// instance over all its slices, as `nvidia-smi mig -cgi … -C` does. A layout names the
// profiles ("7x1g.10gb", "3g.40gb,2x2g.20gb"); an empty layout is MIG off.

// MIGProfile is one GPU-instance profile of a model.
type MIGProfile struct {
	Name         string // as nvidia-smi shows it: 1g.10gb
	ID           int    // NVML GPU_INSTANCE_PROFILE_*
	Slices       int    // compute slices (of 7)
	MemorySlices int    // memory slices (of 8)
	MemoryMiB    uint64
	SMs          uint32
	Count        int // instances of this profile a GPU holds at most
}

// maxComputeSlices and maxMemorySlices bound a layout, as the hardware does.
const (
	maxComputeSlices = 7
	maxMemorySlices  = 8
)

// migProfiles lists each model's GPU-instance profiles (memory sizes are what NVML reports,
// whose GiB rounded up give the profile's name).
var migProfiles = map[string][]MIGProfile{
	"A100": {
		{"1g.10gb", nvml.GPU_INSTANCE_PROFILE_1_SLICE, 1, 1, 9728, 14, 7},
		{"1g.20gb", nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2, 1, 2, 19968, 14, 4},
		{"2g.20gb", nvml.GPU_INSTANCE_PROFILE_2_SLICE, 2, 2, 19968, 28, 3},
		{"3g.40gb", nvml.GPU_INSTANCE_PROFILE_3_SLICE, 3, 4, 40192, 42, 2},
		{"4g.40gb", nvml.GPU_INSTANCE_PROFILE_4_SLICE, 4, 4, 40192, 56, 1},
		{"7g.80gb", nvml.GPU_INSTANCE_PROFILE_7_SLICE, 7, 8, 80384, 98, 1},
	},
	"H100": {
		{"1g.10gb", nvml.GPU_INSTANCE_PROFILE_1_SLICE, 1, 1, 9856, 16, 7},
		{"1g.20gb", nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2, 1, 2, 19968, 16, 4},
		{"2g.20gb", nvml.GPU_INSTANCE_PROFILE_2_SLICE, 2, 2, 19968, 32, 3},
		{"3g.40gb", nvml.GPU_INSTANCE_PROFILE_3_SLICE, 3, 4, 40192, 60, 2},
		{"4g.40gb", nvml.GPU_INSTANCE_PROFILE_4_SLICE, 4, 4, 40192, 64, 1},
		{"7g.80gb", nvml.GPU_INSTANCE_PROFILE_7_SLICE, 7, 8, 80384, 132, 1},
	},
	"H200": {
		{"1g.18gb", nvml.GPU_INSTANCE_PROFILE_1_SLICE, 1, 1, 18176, 16, 7},
		{"1g.35gb", nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2, 1, 2, 35456, 16, 4},
		{"2g.35gb", nvml.GPU_INSTANCE_PROFILE_2_SLICE, 2, 2, 35456, 32, 3},
		{"3g.71gb", nvml.GPU_INSTANCE_PROFILE_3_SLICE, 3, 4, 72192, 60, 2},
		{"4g.71gb", nvml.GPU_INSTANCE_PROFILE_4_SLICE, 4, 4, 72192, 64, 1},
		{"7g.141gb", nvml.GPU_INSTANCE_PROFILE_7_SLICE, 7, 8, 143616, 132, 1},
	},
	"B200": {
		{"1g.23gb", nvml.GPU_INSTANCE_PROFILE_1_SLICE, 1, 1, 23040, 18, 7},
		{"1g.45gb", nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2, 1, 2, 46080, 18, 4},
		{"2g.45gb", nvml.GPU_INSTANCE_PROFILE_2_SLICE, 2, 2, 46080, 36, 3},
		{"3g.90gb", nvml.GPU_INSTANCE_PROFILE_3_SLICE, 3, 4, 92160, 54, 2},
		{"4g.90gb", nvml.GPU_INSTANCE_PROFILE_4_SLICE, 4, 4, 92160, 72, 1},
		{"7g.180gb", nvml.GPU_INSTANCE_PROFILE_7_SLICE, 7, 8, 183300, 148, 1},
	},
}

// MIGProfiles lists the GPU-instance profiles of a model.
func (m *Model) MIGProfiles() []MIGProfile { return migProfiles[m.Name] }

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

// ParseMIGLayout checks a layout against a model: comma-separated profiles, each optionally
// preceded by a count ("7x1g.10gb", "3g.40gb,2x2g.20gb"); empty or "off" is MIG off, "on" is
// MIG on with no instance. The instances must fit the GPU's 7 compute and 8 memory slices.
func ParseMIGLayout(model, layout string) (enabled bool, profiles []MIGProfile, err error) {
	m, err := LookupModel(model)
	if err != nil {
		return false, nil, err
	}
	layout = strings.TrimSpace(layout)
	switch strings.ToLower(layout) {
	case "", "off":
		return false, nil, nil
	case "on":
		return true, nil, nil
	}
	known := m.MIGProfiles()
	names := make([]string, len(known))
	for i, p := range known {
		names[i] = p.Name
	}
	count := map[string]int{}
	compute, memory := 0, 0
	for item := range strings.SplitSeq(layout, ",") {
		item = strings.TrimSpace(item)
		n := 1
		if k, rest, ok := strings.Cut(item, "x"); ok {
			v, err := strconv.Atoi(k)
			if err != nil || v < 1 || v > maxComputeSlices {
				return false, nil, fmt.Errorf("MIG layout %q: count %q of %q must be 1 to %d", layout, k, item, maxComputeSlices)
			}
			n, item = v, rest
		}
		var p *MIGProfile
		for i := range known {
			if strings.EqualFold(known[i].Name, item) {
				p = &known[i]
			}
		}
		if p == nil {
			return false, nil, fmt.Errorf("MIG layout %q: %s has no profile %q: use %s", layout, m.Name, item, strings.Join(names, ", "))
		}
		for range n {
			profiles = append(profiles, *p)
		}
		count[p.Name] += n
		if count[p.Name] > p.Count {
			return false, nil, fmt.Errorf("MIG layout %q: at most %d instances of %s fit a GPU", layout, p.Count, p.Name)
		}
		compute += n * p.Slices
		memory += n * p.MemorySlices
	}
	if compute > maxComputeSlices || memory > maxMemorySlices {
		return false, nil, fmt.Errorf("MIG layout %q needs %d compute and %d memory slices; a GPU has %d and %d",
			layout, compute, memory, maxComputeSlices, maxMemorySlices)
	}
	return true, profiles, nil
}

// migState is a GPU's MIG configuration; guarded by the GPU's lock.
type migState struct {
	enabled    bool
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
	m.enabled = enabled
	m.instances = m.instances[:0:0]
	for i, p := range profiles {
		id := i + 1
		d := &MigDevice{Device: &mock.Device{}, parent: g, profile: p, giID: id, ciID: 0}
		d.uuid = migUUID(g.uuid, id, m.generation)
		answerUnmodelled(d.Device, d.ready)
		d.gi = &GpuInstance{GpuInstance: &mock.GpuInstance{}, dev: d}
		answerUnmodelled(d.gi.GpuInstance, d.ready)
		d.ci = &ComputeInstance{ComputeInstance: &mock.ComputeInstance{}, dev: d}
		answerUnmodelled(d.ci.ComputeInstance, d.ready)
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
	*mock.Device
	parent     *GPU
	profile    MIGProfile
	giID, ciID int
	uuid       string
	gi         *GpuInstance
	ci         *ComputeInstance
	gone       atomic.Bool // destroyed by a new layout: its handle answers ERROR_NOT_FOUND
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
	*mock.GpuInstance
	dev *MigDevice
}

// ComputeInstance is a simulated compute instance; it implements nvml.ComputeInstance.
type ComputeInstance struct {
	*mock.ComputeInstance
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

// GetMigMode reports the current and pending MIG mode (the sim applies a mode at once).
func (g *GPU) GetMigMode() (int, int, nvml.Return) {
	if ret := g.migReady(); ret != nvml.SUCCESS {
		return 0, 0, ret
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	mode := nvml.DEVICE_MIG_DISABLE
	if g.mig.enabled {
		mode = nvml.DEVICE_MIG_ENABLE
	}
	return mode, mode, nvml.SUCCESS
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
			return p.info(), nvml.SUCCESS
		}
	}
	return nvml.GpuInstanceProfileInfo{}, nvml.ERROR_NOT_SUPPORTED
}

func (p MIGProfile) info() nvml.GpuInstanceProfileInfo {
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

// GpmMigSampleGet takes a GPM sample of one GPU instance. The sim spreads the GPU's work evenly
// over its instances, so an instance's activity is the GPU's.
func (g *GPU) GpmMigSampleGet(giID int, sample nvml.GpmSample) nvml.Return {
	if ret := g.migReady(); ret != nvml.SUCCESS {
		return ret
	}
	g.mu.Lock()
	found := false
	for _, d := range g.mig.instances {
		found = found || d.giID == giID
	}
	g.mu.Unlock()
	if !found {
		return nvml.ERROR_NOT_FOUND
	}
	return g.GpmSampleGet(sample)
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

// ParseMIGLayouts reads the layouts of a fleet of count GPUs: one layout for every GPU, or one
// per GPU separated by ";" ("7x1g.10gb;3g.40gb,4g.40gb;off"), as many as there are GPUs.
func ParseMIGLayouts(model, spec string, count int) ([][]MIGProfile, []bool, error) {
	parts := strings.Split(spec, ";")
	if len(parts) != 1 && len(parts) != count {
		return nil, nil, fmt.Errorf("MIG layouts %q: %d layouts for %d GPUs: give one for every GPU or one per GPU", spec, len(parts), count)
	}
	layouts := make([][]MIGProfile, count)
	enabled := make([]bool, count)
	for i := range count {
		p := parts[0]
		if len(parts) > 1 {
			p = parts[i]
		}
		on, profiles, err := ParseMIGLayout(model, p)
		if err != nil {
			if len(parts) > 1 {
				return nil, nil, fmt.Errorf("GPU %d: %w", i, err)
			}
			return nil, nil, err
		}
		layouts[i], enabled[i] = profiles, on
	}
	return layouts, enabled, nil
}
