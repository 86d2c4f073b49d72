package sim

import (
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func smoothingState(on bool) *nvml.PowerSmoothingState {
	s := &nvml.PowerSmoothingState{State: uint32(nvml.FEATURE_DISABLED)}
	if on {
		s.State = uint32(nvml.FEATURE_ENABLED)
	}
	s.Version = nvml.STRUCT_VERSION(*s, 1)
	return s
}

func smoothingProfileArg(id, param uint32, value float64) *nvml.PowerSmoothingProfile {
	p := &nvml.PowerSmoothingProfile{ProfileId: id, ParamId: param, Value: value}
	p.Version = nvml.STRUCT_VERSION(*p, 1)
	return p
}

// readSmoothing returns the enabled flag, the active profile and the applied floor (W).
func readSmoothing(t *testing.T, d nvml.Device) (fields [3]float64, rets [3]nvml.Return) {
	t.Helper()
	v := []nvml.FieldValue{{FieldId: nvml.FI_PWR_SMOOTHING_ENABLED}, {FieldId: nvml.FI_PWR_SMOOTHING_ACTIVE_PRESET_PROFILE},
		{FieldId: nvml.FI_PWR_SMOOTHING_APPLIED_TMP_FLOOR}}
	mustOK(t, "GetFieldValues", d.GetFieldValues(v))
	for i := range v {
		rets[i] = nvml.Return(v[i].NvmlReturn)
		fields[i] = float64(binary.LittleEndian.Uint32(v[i].Value[:]))
	}
	return fields, rets
}

// TestPowerSmoothingOnlyOnBlackwell checks the boards without power smoothing answer
// ERROR_NOT_SUPPORTED to every call and field of it, and a B200 answers them.
func TestPowerSmoothingOnlyOnBlackwell(t *testing.T) {
	for _, model := range Models() {
		f, _ := newFleet(t, model, "steady", 1)
		d := f.GPU(0)
		want := nvml.ERROR_NOT_SUPPORTED
		if model == "B200" {
			want = nvml.SUCCESS
		}
		if ret := f.DevicePowerSmoothingSetState(d, smoothingState(true)); ret != want {
			t.Errorf("%s: PowerSmoothingSetState = %v, want %v", model, ret, want)
		}
		if ret := f.DevicePowerSmoothingActivatePresetProfile(d, smoothingProfileArg(2, 0, 0)); ret != want {
			t.Errorf("%s: PowerSmoothingActivatePresetProfile = %v, want %v", model, ret, want)
		}
		if ret := f.DevicePowerSmoothingUpdatePresetProfileParam(d, smoothingProfileArg(2, nvml.POWER_SMOOTHING_PROFILE_PARAM_RAMP_UP_RATE, 800)); ret != want {
			t.Errorf("%s: PowerSmoothingUpdatePresetProfileParam = %v, want %v", model, ret, want)
		}
		_, rets := readSmoothing(t, d)
		for i, r := range rets {
			if r != want {
				t.Errorf("%s: smoothing field %d answers %v, want %v", model, i, r, want)
			}
		}
	}
}

// TestPowerSmoothingCalls checks the state and profile read back, and that bad arguments are
// refused as NVML refuses them, changing nothing.
func TestPowerSmoothingCalls(t *testing.T) {
	f, clk := newFleet(t, "B200", "steady", 1)
	d := f.GPU(0)
	if got, _ := readSmoothing(t, d); got[0] != 0 || got[1] != 0 || got[2] != 0 {
		t.Fatalf("a fresh B200 reads enabled %v, profile %v, floor %v W; want off, 0, 0", got[0], got[1], got[2])
	}
	bad := []struct {
		name string
		ret  nvml.Return
		want nvml.Return
	}{
		{"state without version", d.PowerSmoothingSetState(&nvml.PowerSmoothingState{State: 1}), nvml.ERROR_ARGUMENT_VERSION_MISMATCH},
		{"state 7", d.PowerSmoothingSetState(func() *nvml.PowerSmoothingState { s := smoothingState(true); s.State = 7; return s }()), nvml.ERROR_INVALID_ARGUMENT},
		{"nil state", d.PowerSmoothingSetState(nil), nvml.ERROR_INVALID_ARGUMENT},
		{"profile 5", d.PowerSmoothingActivatePresetProfile(smoothingProfileArg(5, 0, 0)), nvml.ERROR_INVALID_ARGUMENT},
		{"floor 101 %", d.PowerSmoothingUpdatePresetProfileParam(smoothingProfileArg(1, nvml.POWER_SMOOTHING_PROFILE_PARAM_PERCENT_TMP_FLOOR, 101)), nvml.ERROR_INVALID_ARGUMENT},
		{"ramp 0 W/s", d.PowerSmoothingUpdatePresetProfileParam(smoothingProfileArg(1, nvml.POWER_SMOOTHING_PROFILE_PARAM_RAMP_DOWN_RATE, 0)), nvml.ERROR_INVALID_ARGUMENT},
		{"NaN hysteresis", d.PowerSmoothingUpdatePresetProfileParam(smoothingProfileArg(1, nvml.POWER_SMOOTHING_PROFILE_PARAM_RAMP_DOWN_HYSTERESIS, math.NaN())), nvml.ERROR_INVALID_ARGUMENT},
		{"unknown parameter", d.PowerSmoothingUpdatePresetProfileParam(smoothingProfileArg(1, 9, 1)), nvml.ERROR_INVALID_ARGUMENT},
	}
	for _, b := range bad {
		if b.ret != b.want {
			t.Errorf("%s: %v, want %v", b.name, b.ret, b.want)
		}
	}
	if got, _ := readSmoothing(t, d); got[0] != 0 || got[1] != 0 {
		t.Errorf("refused calls changed the state: enabled %v, profile %v", got[0], got[1])
	}
	mustOK(t, "PowerSmoothingUpdatePresetProfileParam", d.PowerSmoothingUpdatePresetProfileParam(
		smoothingProfileArg(3, nvml.POWER_SMOOTHING_PROFILE_PARAM_PERCENT_TMP_FLOOR, 55)))
	mustOK(t, "PowerSmoothingActivatePresetProfile", d.PowerSmoothingActivatePresetProfile(smoothingProfileArg(3, 0, 0)))
	mustOK(t, "PowerSmoothingSetState", d.PowerSmoothingSetState(smoothingState(true)))
	clk.Advance(2 * time.Second)
	got, _ := readSmoothing(t, d)
	if got[0] != 1 || got[1] != 3 || got[2] != 550 {
		t.Errorf("after enabling profile 3 with a 55 %% floor under a 1000 W limit: enabled %v, profile %v, floor %v W; want 1, 3, 550", got[0], got[1], got[2])
	}
	v := []nvml.FieldValue{{FieldId: nvml.FI_PWR_SMOOTHING_PROFILE_PERCENT_TMP_FLOOR, ScopeId: 3}}
	mustOK(t, "GetFieldValues", d.GetFieldValues(v))
	if pct := math.Float64frombits(binary.LittleEndian.Uint64(v[0].Value[:])); pct != 55 {
		t.Errorf("profile 3's floor reads %v %%, want 55", pct)
	}
}

// TestPowerSmoothingShapesTheDraw runs a lock-step job on B200s with smoothing off and on for
// every preset profile: on, the draw never falls under the profile's floor, never rises or
// falls faster than its ramp rates, and the node burns more energy for no more work.
func TestPowerSmoothingShapesTheDraw(t *testing.T) {
	run := func(profile int) (maxRise, maxFall, minDraw, energy, work float64) {
		f, clk := seededFleet(t, "B200", "lockstep", 2, 4)
		d := f.GPU(1)
		if profile >= 0 {
			mustOK(t, "activate", d.PowerSmoothingActivatePresetProfile(smoothingProfileArg(uint32(profile), 0, 0)))
			mustOK(t, "enable", d.PowerSmoothingSetState(smoothingState(true)))
		}
		clk.Advance(5 * time.Second)
		start := d.State()
		prev, minDraw := start.DrawnW, math.Inf(1)
		for range 3000 {
			clk.Advance(10 * time.Millisecond)
			s := d.State()
			maxRise, maxFall = max(maxRise, s.DrawnW-prev), max(maxFall, prev-s.DrawnW)
			minDraw = min(minDraw, s.DrawnW)
			prev = s.DrawnW
		}
		end := d.State()
		return maxRise, maxFall, minDraw, end.EnergyJ - start.EnergyJ, end.WorkSeconds - start.WorkSeconds
	}
	offRise, offFall, offMin, offEnergy, offWork := run(-1)
	if offRise < 500 || offFall < 500 {
		t.Fatalf("without smoothing the lock-step job swings only +%.0f/−%.0f W in 10 ms", offRise, offFall)
	}
	for k, p := range smoothingPresets {
		rise, fall, lo, energy, work := run(k)
		const eps = 1e-6
		if rise > p.rampUpWps*substepS+eps || fall > p.rampDownWps*substepS+eps {
			t.Errorf("profile %d: the draw moved +%.1f/−%.1f W in 10 ms, ramps allow +%.1f/−%.1f", k, rise, fall,
				p.rampUpWps*substepS, p.rampDownWps*substepS)
		}
		if floor := p.floorPct / 100 * 1000; lo < min(floor, offMin)-eps {
			t.Errorf("profile %d: the draw fell to %.1f W, under its %.0f W floor", k, lo, floor)
		}
		if energy <= offEnergy || work > offWork+eps {
			t.Errorf("profile %d: energy %.0f J (off: %.0f), work %.3f (off: %.3f); smoothing burns power for no work", k, energy, offEnergy, work, offWork)
		}
	}
}
