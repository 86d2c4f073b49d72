package gpu

import (
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
)

// Every NVML call the collector makes is modelled by the sim: none falls through to the
// "not supported" answer of the sim's generated methods, which would hide a missing model.
func TestCollectorCallsOnlyModelledMethods(t *testing.T) {
	for _, model := range sim.Models() {
		t.Run(model, func(t *testing.T) {
			clk := clock.NewManual(time.Unix(1_700_000_000, 0))
			m, err := sim.LookupModel(model)
			if err != nil {
				t.Fatal(err)
			}
			// One GPU whole, one split: MIG devices and GPU instances are asked too.
			fleet, err := sim.New(sim.Options{Model: model, Count: 2, Trace: "training", Seed: 5, Clock: clk,
				MIG: "off;2x" + m.MIGProfiles()[0].Name})
			if err != nil {
				t.Fatal(err)
			}
			if ret := fleet.Init(); ret != nvml.SUCCESS {
				t.Fatal(ret)
			}
			c, err := New(fleet, nil, clk.Now)
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				clk.Advance(time.Second)
				collect(t, c)
			}
			if calls := fleet.UnmodelledCalls(); len(calls) > 0 {
				t.Errorf("calls the sim does not model: %v", calls)
			}
		})
	}
}
