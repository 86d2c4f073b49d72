package gpu

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/metrics"
)

// TestApplyPowerSmoothing sets power smoothing from the configuration on B200s and reads it
// back through the collector's metrics; on boards without the feature it changes nothing and
// reports no error.
func TestApplyPowerSmoothing(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	c, fleet, clk := simCollector(t, sim.Options{Model: "B200", Count: 2, Trace: "lockstep", Seed: 3}, log)
	clk.Advance(time.Second)
	b := collect(t, c)
	for i := range 2 {
		gpu := attribute.Int(metrics.AttrGPUIndex, i)
		if v, ok := b.Find(metrics.GPUPowerSmoothing, gpu, attribute.Int64(metrics.AttrPowerSmoothingProfile, 0)); !ok || v != 0 {
			t.Fatalf("GPU %d before: smoothing %v (found %v), want 0 with profile 0", i, v, ok)
		}
	}
	applied, unsupported, err := ApplyPowerSmoothing(fleet, "enabled", 3, log)
	if applied != 2 || unsupported != 0 || err != nil {
		t.Fatalf("ApplyPowerSmoothing = %d applied, %d unsupported, %v; want 2, 0, nil", applied, unsupported, err)
	}
	clk.Advance(time.Second)
	b = collect(t, c)
	for i := range 2 {
		gpu := attribute.Int(metrics.AttrGPUIndex, i)
		if v, ok := b.Find(metrics.GPUPowerSmoothing, gpu, attribute.Int64(metrics.AttrPowerSmoothingProfile, 3)); !ok || v != 1 {
			t.Errorf("GPU %d after: smoothing %v (found %v), want 1 with profile 3", i, v, ok)
		}
		if floor, _ := b.Find(metrics.GPUPowerSmoothingFloor, gpu); floor != 700 {
			t.Errorf("GPU %d: floor %v W, want 700 (profile 3: 70 %% of the 1000 W limit)", i, floor)
		}
	}
	if applied, _, err := ApplyPowerSmoothing(fleet, "disabled", -1, log); applied != 2 || err != nil {
		t.Fatalf("disabling: %d applied, %v", applied, err)
	}
	clk.Advance(time.Second)
	b = collect(t, c)
	if v, ok := b.Find(metrics.GPUPowerSmoothing, attribute.Int(metrics.AttrGPUIndex, 0), attribute.Int64(metrics.AttrPowerSmoothingProfile, 3)); !ok || v != 0 {
		t.Errorf("after disabling: smoothing %v (found %v), want 0, profile 3 kept", v, ok)
	}

	h100, _ := simOn(t, sim.Options{Model: "H100", Count: 4, Trace: "lockstep", Seed: 3})
	if applied, unsupported, err := ApplyPowerSmoothing(h100, "enabled", 2, log); applied != 0 || unsupported != 4 || err != nil {
		t.Errorf("on H100s: %d applied, %d unsupported, %v; want 0, 4, nil", applied, unsupported, err)
	}
	if applied, unsupported, err := ApplyPowerSmoothing(h100, "unchanged", -1, log); applied+unsupported != 0 || err != nil {
		t.Errorf("unchanged: %d applied, %d unsupported, %v; want nothing done", applied, unsupported, err)
	}
}

// TestApplyPowerSmoothingFailures checks a GPU that refuses (no permission) is reported in the
// error while the others still get their settings, and bad settings are refused before any call.
func TestApplyPowerSmoothingFailures(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	var calls int
	dev := func(ret nvml.Return) nvml.Device {
		return &mock.Device{
			PowerSmoothingActivatePresetProfileFunc: func(p *nvml.PowerSmoothingProfile) nvml.Return {
				calls++
				if p.Version != nvml.STRUCT_VERSION(nvml.PowerSmoothingProfile{}, 1) {
					return nvml.ERROR_ARGUMENT_VERSION_MISMATCH
				}
				return ret
			},
			PowerSmoothingSetStateFunc: func(s *nvml.PowerSmoothingState) nvml.Return {
				calls++
				if s.Version != nvml.STRUCT_VERSION(nvml.PowerSmoothingState{}, 1) {
					return nvml.ERROR_ARGUMENT_VERSION_MISMATCH
				}
				return ret
			},
		}
	}
	devs := []nvml.Device{dev(nvml.SUCCESS), dev(nvml.ERROR_NO_PERMISSION), dev(nvml.SUCCESS)}
	lib := &mock.Interface{
		DeviceGetCountFunc:         func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) { return devs[i], nvml.SUCCESS },
	}
	applied, _, err := ApplyPowerSmoothing(lib, "enabled", 1, log)
	if applied != 2 || !errors.Is(err, nvml.ERROR_NO_PERMISSION) {
		t.Errorf("%d applied, err %v; want 2 and GPU 1's ERROR_NO_PERMISSION", applied, err)
	}
	calls = 0
	for _, bad := range []struct {
		state   string
		profile int
	}{{"on", 1}, {"enabled", 5}} {
		if _, _, err := ApplyPowerSmoothing(lib, bad.state, bad.profile, log); err == nil {
			t.Errorf("state %q profile %d accepted", bad.state, bad.profile)
		}
	}
	if calls != 0 {
		t.Errorf("bad settings made %d NVML calls, want none", calls)
	}
}
