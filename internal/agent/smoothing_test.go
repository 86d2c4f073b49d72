package agent

import (
	"encoding/binary"
	"io"
	"log/slog"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// gpu.power-smoothing is applied to the GPUs when the backend opens: a B200 fleet comes up with
// the configured state and profile; left unchanged, the GPUs keep theirs.
func TestPipelineAppliesPowerSmoothing(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		state       string
		profile     int
		wantOn      uint32
		wantProfile uint32
	}{
		{"enabled", 4, 1, 4},
		{"unchanged", -1, 0, 0},
		{"disabled", 2, 0, 2},
	} {
		cfg := simConfig("gpu")
		cfg.GPU.Sim.Model = "B200"
		cfg.GPU.PowerSmoothing.State, cfg.GPU.PowerSmoothing.Profile = tc.state, tc.profile
		p, err := NewPipeline(cfg, log, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range cfg.GPU.Sim.Count {
			v := []nvml.FieldValue{{FieldId: nvml.FI_PWR_SMOOTHING_ENABLED}, {FieldId: nvml.FI_PWR_SMOOTHING_ACTIVE_PRESET_PROFILE}}
			if ret := p.GPU.Sim.GPU(i).GetFieldValues(v); ret != nvml.SUCCESS {
				t.Fatal(ret)
			}
			on, profile := binary.LittleEndian.Uint32(v[0].Value[:]), binary.LittleEndian.Uint32(v[1].Value[:])
			if on != tc.wantOn || profile != tc.wantProfile {
				t.Errorf("%s/%d: GPU %d smoothing on=%d profile %d, want %d, %d", tc.state, tc.profile, i, on, profile, tc.wantOn, tc.wantProfile)
			}
		}
		p.Close()
	}
}
