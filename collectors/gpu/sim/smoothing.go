package sim

import (
	"encoding/binary"
	"math"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Firmware power smoothing (Blackwell and later): while it is on, the board keeps its draw from
// swinging as fast as its workload. It holds a floor of power (a share of its power limit,
// burnt without doing work when the workload wants less), lets the draw rise no faster than the
// active profile's ramp-up rate, and lets it fall only after the profile's hysteresis, no
// faster than its ramp-down rate. NVML sets it with PowerSmoothingSetState and
// PowerSmoothingActivatePresetProfile and reads it back through field values
// (FI_PWR_SMOOTHING_*); other boards answer ERROR_NOT_SUPPORTED.

// smoothingProfile is one preset profile's parameters.
type smoothingProfile struct {
	floorPct     float64 // floor, % of the power limit
	rampUpWps    float64 // fastest rise, W/s
	rampDownWps  float64 // fastest fall, W/s
	hysteresisMs float64 // how long a fall waits before it starts, ms
}

// smoothingPresets are the preset profiles a board starts with, from gentle (0) to strong (4).
// NVIDIA documents the parameters, not the factory values: these are assumptions.
var smoothingPresets = [nvml.POWER_SMOOTHING_MAX_NUM_PROFILES]smoothingProfile{
	{floorPct: 20, rampUpWps: 5000, rampDownWps: 5000, hysteresisMs: 50},
	{floorPct: 40, rampUpWps: 2500, rampDownWps: 2500, hysteresisMs: 100},
	{floorPct: 60, rampUpWps: 1000, rampDownWps: 1000, hysteresisMs: 250},
	{floorPct: 70, rampUpWps: 500, rampDownWps: 500, hysteresisMs: 500},
	{floorPct: 80, rampUpWps: 250, rampDownWps: 250, hysteresisMs: 1000},
}

// smoothing is a board's power smoothing state; it starts off, with profile 0 active.
type smoothing struct {
	on      bool
	profile uint32
	presets [nvml.POWER_SMOOTHING_MAX_NUM_PROFILES]smoothingProfile
	// envelopeW is the draw smoothing let through at the last step, holdUntil the step until
	// which a fall is held, floorW the floor it applied.
	envelopeW float64
	holdUntil int64
	floorW    float64
}

// shape returns the draw smoothing lets through at a step of n substeps starting at step, when
// the demand and the power controller ask for askW, allowW is the most the controller allows
// and limitW the limit in force; and the most the draw could have been (for the clock).
func (s *smoothing) shape(askW, allowW, limitW float64, step, n int64, dtS float64) (drawnW, ceilingW float64) {
	p := &s.presets[s.profile]
	s.floorW = min(p.floorPct/100*limitW, allowW)
	ceilingW = min(allowW, s.envelopeW+p.rampUpWps*dtS)
	w := min(askW, ceilingW)
	switch {
	case w >= s.envelopeW:
		s.holdUntil = step + n + int64(math.Ceil(p.hysteresisMs/1000/substepS))
	case step < s.holdUntil:
		w = min(s.envelopeW, allowW)
	default:
		w = max(w, s.envelopeW-p.rampDownWps*dtS)
	}
	w = min(max(w, s.floorW), allowW)
	s.envelopeW = w
	return w, max(ceilingW, w)
}

// smoothingSupported answers whether the board has power smoothing; the caller holds g.mu or
// reads only the model.
func (g *GPU) smoothingSupported() bool { return g.fleet.model.PowerSmoothing }

// PowerSmoothingSetState turns power smoothing on or off.
func (g *GPU) PowerSmoothingSetState(state *nvml.PowerSmoothingState) nvml.Return {
	if state == nil {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return ret
	}
	defer g.mu.Unlock()
	switch {
	case !g.smoothingSupported():
		return nvml.ERROR_NOT_SUPPORTED
	case state.Version != nvml.STRUCT_VERSION(nvml.PowerSmoothingState{}, 1):
		return nvml.ERROR_ARGUMENT_VERSION_MISMATCH
	case nvml.EnableState(state.State) != nvml.FEATURE_ENABLED && nvml.EnableState(state.State) != nvml.FEATURE_DISABLED:
		return nvml.ERROR_INVALID_ARGUMENT
	}
	on := nvml.EnableState(state.State) == nvml.FEATURE_ENABLED
	if on && !g.smooth.on {
		g.smooth.envelopeW, g.smooth.holdUntil = g.drawnW, g.step
	}
	g.smooth.on = on
	return nvml.SUCCESS
}

// PowerSmoothingActivatePresetProfile makes profile.ProfileId the active profile; the other
// fields are ignored, as NVML does.
func (g *GPU) PowerSmoothingActivatePresetProfile(profile *nvml.PowerSmoothingProfile) nvml.Return {
	if profile == nil {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return ret
	}
	defer g.mu.Unlock()
	if ret := g.checkProfile(profile); ret != nvml.SUCCESS {
		return ret
	}
	g.smooth.profile = profile.ProfileId
	return nvml.SUCCESS
}

// PowerSmoothingUpdatePresetProfileParam sets one parameter of a preset profile: the floor in
// % (0–100), a ramp rate in W/s (above 0) or the ramp-down hysteresis in ms (0 or more).
func (g *GPU) PowerSmoothingUpdatePresetProfileParam(profile *nvml.PowerSmoothingProfile) nvml.Return {
	if profile == nil {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return ret
	}
	defer g.mu.Unlock()
	if ret := g.checkProfile(profile); ret != nvml.SUCCESS {
		return ret
	}
	p := &g.smooth.presets[profile.ProfileId]
	v := profile.Value
	switch profile.ParamId {
	case nvml.POWER_SMOOTHING_PROFILE_PARAM_PERCENT_TMP_FLOOR:
		if !(v >= 0 && v <= 100) {
			return nvml.ERROR_INVALID_ARGUMENT
		}
		p.floorPct = v
	case nvml.POWER_SMOOTHING_PROFILE_PARAM_RAMP_UP_RATE, nvml.POWER_SMOOTHING_PROFILE_PARAM_RAMP_DOWN_RATE:
		if !(v > 0) || math.IsInf(v, 0) {
			return nvml.ERROR_INVALID_ARGUMENT
		}
		if profile.ParamId == nvml.POWER_SMOOTHING_PROFILE_PARAM_RAMP_UP_RATE {
			p.rampUpWps = v
		} else {
			p.rampDownWps = v
		}
	case nvml.POWER_SMOOTHING_PROFILE_PARAM_RAMP_DOWN_HYSTERESIS:
		if !(v >= 0) || math.IsInf(v, 0) {
			return nvml.ERROR_INVALID_ARGUMENT
		}
		p.hysteresisMs = v
	default:
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return nvml.SUCCESS
}

// checkProfile is the check the profile calls share; the caller holds g.mu.
func (g *GPU) checkProfile(profile *nvml.PowerSmoothingProfile) nvml.Return {
	switch {
	case !g.smoothingSupported():
		return nvml.ERROR_NOT_SUPPORTED
	case profile.Version != nvml.STRUCT_VERSION(nvml.PowerSmoothingProfile{}, 1):
		return nvml.ERROR_ARGUMENT_VERSION_MISMATCH
	case profile.ProfileId >= nvml.POWER_SMOOTHING_MAX_NUM_PROFILES:
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return nvml.SUCCESS
}

// smoothingField fills v when it is a power smoothing field this board answers, and reports
// whether it was; the per-profile fields take the profile from v.ScopeId. The caller holds g.mu.
func (g *GPU) smoothingField(v *nvml.FieldValue) bool {
	if !g.smoothingSupported() {
		return false
	}
	s := &g.smooth
	profile := func() *smoothingProfile {
		if v.ScopeId >= nvml.POWER_SMOOTHING_MAX_NUM_PROFILES {
			return nil
		}
		return &s.presets[v.ScopeId]
	}
	switch v.FieldId {
	case nvml.FI_PWR_SMOOTHING_ENABLED:
		on := uint32(0)
		if s.on {
			on = 1
		}
		putUint32(v, on)
	case nvml.FI_PWR_SMOOTHING_ACTIVE_PRESET_PROFILE:
		putUint32(v, s.profile)
	case nvml.FI_PWR_SMOOTHING_MAX_NUM_PRESET_PROFILES:
		putUint32(v, nvml.POWER_SMOOTHING_MAX_NUM_PROFILES)
	case nvml.FI_PWR_SMOOTHING_APPLIED_TMP_FLOOR:
		floor := 0.0
		if s.on {
			floor = s.floorW
		}
		putUint32(v, uint32(math.Round(floor)))
	case nvml.FI_PWR_SMOOTHING_PROFILE_PERCENT_TMP_FLOOR, nvml.FI_PWR_SMOOTHING_PROFILE_RAMP_UP_RATE,
		nvml.FI_PWR_SMOOTHING_PROFILE_RAMP_DOWN_RATE, nvml.FI_PWR_SMOOTHING_PROFILE_RAMP_DOWN_HYST_VAL:
		p := profile()
		if p == nil {
			v.NvmlReturn = uint32(nvml.ERROR_INVALID_ARGUMENT)
			return true
		}
		switch v.FieldId {
		case nvml.FI_PWR_SMOOTHING_PROFILE_PERCENT_TMP_FLOOR:
			v.ValueType = uint32(nvml.VALUE_TYPE_DOUBLE)
			binary.LittleEndian.PutUint64(v.Value[:], math.Float64bits(p.floorPct))
		case nvml.FI_PWR_SMOOTHING_PROFILE_RAMP_UP_RATE:
			putUint32(v, milli(p.rampUpWps)) // mW/s
		case nvml.FI_PWR_SMOOTHING_PROFILE_RAMP_DOWN_RATE:
			putUint32(v, milli(p.rampDownWps))
		default:
			putUint32(v, uint32(math.Round(p.hysteresisMs)))
		}
	default:
		return false
	}
	return true
}

// The library-level calls go to the device, as NVML's do.

func (f *Fleet) DevicePowerSmoothingSetState(d nvml.Device, state *nvml.PowerSmoothingState) nvml.Return {
	if d == nil {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return d.PowerSmoothingSetState(state)
}

func (f *Fleet) DevicePowerSmoothingActivatePresetProfile(d nvml.Device, profile *nvml.PowerSmoothingProfile) nvml.Return {
	if d == nil {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return d.PowerSmoothingActivatePresetProfile(profile)
}

func (f *Fleet) DevicePowerSmoothingUpdatePresetProfileParam(d nvml.Device, profile *nvml.PowerSmoothingProfile) nvml.Return {
	if d == nil {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return d.PowerSmoothingUpdatePresetProfileParam(profile)
}
