package gpu

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
)

// mockCalls lists the methods of a go-nvml moq mock that were called, with their count.
func mockCalls(m any) map[string]int {
	out := map[string]int{}
	v := reflect.ValueOf(m)
	for i := range v.NumMethod() {
		name := v.Type().Method(i).Name
		if !strings.HasSuffix(name, "Calls") || v.Method(i).Type().NumIn() != 0 {
			continue
		}
		if n := v.Method(i).Call(nil)[0].Len(); n > 0 {
			out[strings.TrimSuffix(name, "Calls")] = n
		}
	}
	return out
}

// Every NVML call the collector makes is modelled by the sim: none falls through to the
// "not supported" answer of go-nvml's mocks, which would hide a missing model (and whose call
// records grow with every call).
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
			if calls := mockCalls(fleet.Interface); len(calls) > 0 {
				t.Errorf("library calls the sim does not model: %v", calls)
			}
			if calls := fleet.UnmodelledCalls(); len(calls) > 0 {
				t.Errorf("device, MIG and GPM calls the sim does not model: %v", calls)
			}
		})
	}
}
