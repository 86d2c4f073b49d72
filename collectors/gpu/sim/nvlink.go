package sim

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// NVLink: every GPU of the fleet sits on NVSwitches (as in a DGX/HGX board), with the model's
// links all up. The bytes each link moves are the GPU's NVLink traffic (the GPM integral, which
// follows the trace: an all-reduce phase moves bytes, a compute phase does not) spread evenly over
// the links that are up. Errors and down links are injected.

// nvlinkState is one GPU's links; guarded by the GPU's lock.
type nvlinkState struct {
	down   [nvml.NVLINK_MAX_LINKS]bool
	errors [nvml.NVLINK_MAX_LINKS][nvlinkErrorKinds]uint64
	// kib are the bytes (KiB) each link moved in each direction, integrated up to mib.
	kib      [nvml.NVLINK_MAX_LINKS]float64
	linkedAt float64 // the GPU's nvlinkMiB integral when kib was last brought up to date
}

// nvlinkErrorKinds are the error counters, in NVML's NvLinkErrorCounter order: replay,
// recovery, CRC flit, CRC data, ECC data.
const nvlinkErrorKinds = 5

// nvlinkLinks is the number of NVLink links of the model (A100: 12 NVLink 3; Hopper and B200:
// 18, NVLink 4 and 5).
func (m *Model) nvlinkLinks() int {
	switch m.Architecture {
	case nvml.DEVICE_ARCH_AMPERE:
		return 12
	}
	return 18
}

func (m *Model) nvlinkVersion() uint32 {
	switch m.Architecture {
	case nvml.DEVICE_ARCH_AMPERE:
		return 3
	case nvml.DEVICE_ARCH_HOPPER:
		return 4
	}
	return 5
}

// InjectNVLinkErrors adds n errors of one kind (nvml.NVLINK_ERROR_DL_REPLAY, _RECOVERY, _CRC_FLIT,
// _CRC_DATA, _ECC_DATA) to link link of GPU gpu.
func (f *Fleet) InjectNVLinkErrors(gpu, link int, counter nvml.NvLinkErrorCounter, n uint64) error {
	g := f.GPU(gpu)
	if link < 0 || link >= f.model.nvlinkLinks() {
		return fmt.Errorf("NVLink %d of GPU %d: a %s has links 0 to %d", link, gpu, f.model.Name, f.model.nvlinkLinks()-1)
	}
	if counter >= nvlinkErrorKinds {
		return fmt.Errorf("NVLink error counter %d is not one the sim models", counter)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.nvlink.errors[link][counter] += n
	return nil
}

// SetNVLinkDown takes link link of GPU gpu down (or brings it back up).
func (f *Fleet) SetNVLinkDown(gpu, link int, down bool) error {
	g := f.GPU(gpu)
	if link < 0 || link >= f.model.nvlinkLinks() {
		return fmt.Errorf("NVLink %d of GPU %d: a %s has links 0 to %d", link, gpu, f.model.Name, f.model.nvlinkLinks()-1)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(f.clock.Now())
	g.nvlinkSettle()
	g.nvlink.down[link] = down
	return nil
}

// nvlinkSettle brings every up link's byte counter to the GPU's NVLink integral; the caller holds
// g.mu.
func (g *GPU) nvlinkSettle() {
	g.gpmFlush()
	s := &g.nvlink
	moved := g.gpmCounters.nvlinkMiB - s.linkedAt
	s.linkedAt = g.gpmCounters.nvlinkMiB
	if moved <= 0 {
		return
	}
	n := g.fleet.model.nvlinkLinks()
	up := 0
	for l := range n {
		if !s.down[l] {
			up++
		}
	}
	if up == 0 {
		return
	}
	per := moved * 1024 / float64(up)
	for l := range n {
		if !s.down[l] {
			s.kib[l] += per
		}
	}
}

// linkArg checks a link argument; the caller has checked the GPU.
func (g *GPU) linkArg(link int) nvml.Return {
	if link < 0 || link >= g.fleet.model.nvlinkLinks() {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return nvml.SUCCESS
}

func (g *GPU) GetNvLinkState(link int) (nvml.EnableState, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	if ret := g.linkArg(link); ret != nvml.SUCCESS {
		return 0, ret
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.nvlink.down[link] {
		return nvml.FEATURE_DISABLED, nvml.SUCCESS
	}
	return nvml.FEATURE_ENABLED, nvml.SUCCESS
}

func (g *GPU) GetNvLinkVersion(link int) (uint32, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	if ret := g.linkArg(link); ret != nvml.SUCCESS {
		return 0, ret
	}
	return g.fleet.model.nvlinkVersion(), nvml.SUCCESS
}

func (g *GPU) GetNvLinkRemoteDeviceType(link int) (nvml.IntNvLinkDeviceType, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	if ret := g.linkArg(link); ret != nvml.SUCCESS {
		return 0, ret
	}
	return nvml.NVLINK_DEVICE_TYPE_SWITCH, nvml.SUCCESS
}

func (g *GPU) GetNvLinkErrorCounter(link int, counter nvml.NvLinkErrorCounter) (uint64, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return 0, ret
	}
	if ret := g.linkArg(link); ret != nvml.SUCCESS || counter >= nvlinkErrorKinds {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.nvlink.errors[link][counter], nvml.SUCCESS
}

// nvlinkField answers the NVLink fields (ScopeId is the link); false for any other field. The
// caller holds g.mu with the model advanced.
func (g *GPU) nvlinkField(v *nvml.FieldValue) bool {
	link := int(v.ScopeId)
	var counter nvml.NvLinkErrorCounter
	switch v.FieldId {
	case nvml.FI_DEV_NVLINK_LINK_COUNT:
		putUint32(v, uint32(g.fleet.model.nvlinkLinks()))
		return true
	case nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_TX, nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
		nvml.FI_DEV_NVLINK_THROUGHPUT_RAW_TX, nvml.FI_DEV_NVLINK_THROUGHPUT_RAW_RX:
	case nvml.FI_DEV_NVLINK_GET_STATE, nvml.FI_DEV_NVLINK_GET_VERSION:
	case nvml.FI_DEV_NVLINK_ERROR_DL_REPLAY:
		counter = nvml.NVLINK_ERROR_DL_REPLAY
	case nvml.FI_DEV_NVLINK_ERROR_DL_RECOVERY:
		counter = nvml.NVLINK_ERROR_DL_RECOVERY
	case nvml.FI_DEV_NVLINK_ERROR_DL_CRC:
		counter = nvml.NVLINK_ERROR_DL_CRC_FLIT
	default:
		return false
	}
	if link < 0 || link >= g.fleet.model.nvlinkLinks() {
		v.NvmlReturn = uint32(nvml.ERROR_INVALID_ARGUMENT)
		return true
	}
	switch v.FieldId {
	case nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_TX, nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
		nvml.FI_DEV_NVLINK_THROUGHPUT_RAW_TX, nvml.FI_DEV_NVLINK_THROUGHPUT_RAW_RX:
		if !g.nvlinkSettled {
			g.nvlinkSettle()
			g.nvlinkSettled = true
		}
		putUint64(v, uint64(g.nvlink.kib[link]))
	case nvml.FI_DEV_NVLINK_GET_STATE:
		state := uint32(1)
		if g.nvlink.down[link] {
			state = 0
		}
		putUint32(v, state)
	case nvml.FI_DEV_NVLINK_GET_VERSION:
		putUint32(v, g.fleet.model.nvlinkVersion())
	default:
		putUint64(v, g.nvlink.errors[link][counter])
	}
	return true
}
