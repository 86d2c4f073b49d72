package sim

import (
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu/sim/miglayout"
)

// miglayout keeps NVML's GPU-instance profile ids as numbers (so the configuration need not link
// NVML); they must be go-nvml's.
func TestMIGProfileIDsAreNVMLs(t *testing.T) {
	for got, want := range map[int]int{
		miglayout.Profile1Slice: nvml.GPU_INSTANCE_PROFILE_1_SLICE, miglayout.Profile2Slice: nvml.GPU_INSTANCE_PROFILE_2_SLICE,
		miglayout.Profile3Slice: nvml.GPU_INSTANCE_PROFILE_3_SLICE, miglayout.Profile4Slice: nvml.GPU_INSTANCE_PROFILE_4_SLICE,
		miglayout.Profile7Slice: nvml.GPU_INSTANCE_PROFILE_7_SLICE, miglayout.Profile1SliceRev2: nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2,
	} {
		if got != want {
			t.Errorf("profile id %d, go-nvml says %d", got, want)
		}
	}
	for _, m := range Models() {
		if len(miglayout.Profiles(m)) == 0 {
			t.Errorf("model %s has no MIG profiles", m)
		}
	}
}
