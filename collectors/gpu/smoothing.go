package gpu

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// smoothingReader reads a GPU's firmware power smoothing (Blackwell and later) through its
// NVML fields: whether it is on, the active preset profile and the floor it holds. A GPU that
// answers ERROR_NOT_SUPPORTED is not asked again.
type smoothingReader struct {
	unsupported bool
	fields      [3]nvml.FieldValue
	state       map[int64]*sample.Series // by active profile, built when first seen
	floor       *sample.Series
}

func (c *Collector) collectSmoothing(d *device, b *sample.Batch) {
	s := &d.smoothing
	if s.unsupported || d.lost || d.dev == nil {
		return
	}
	s.fields = [3]nvml.FieldValue{{FieldId: nvml.FI_PWR_SMOOTHING_ENABLED},
		{FieldId: nvml.FI_PWR_SMOOTHING_ACTIVE_PRESET_PROFILE}, {FieldId: nvml.FI_PWR_SMOOTHING_APPLIED_TMP_FLOOR}}
	switch ret := d.dev.GetFieldValues(s.fields[:]); ret {
	case nvml.SUCCESS:
	case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_FUNCTION_NOT_FOUND:
		s.unsupported = true
		return
	default:
		return // the other queries report a failing or lost GPU
	}
	if nvml.Return(s.fields[0].NvmlReturn) == nvml.ERROR_NOT_SUPPORTED {
		s.unsupported = true
		c.log.Debug("GPU has no firmware power smoothing", "gpu", d.index)
		return
	}
	on, ok := fieldValue(&s.fields[0])
	profile, okProfile := fieldValue(&s.fields[1])
	if !ok || !okProfile {
		return
	}
	series := s.state[int64(profile)]
	if series == nil {
		if s.state == nil {
			s.state = map[int64]*sample.Series{}
			s.floor = d.base.With(metrics.GPUPowerSmoothingFloor)
		}
		series = d.base.With(metrics.GPUPowerSmoothing, attribute.Int64(metrics.AttrPowerSmoothingProfile, int64(profile)))
		s.state[int64(profile)] = series
	}
	b.Add(series, on)
	if floor, ok := fieldValue(&s.fields[2]); ok {
		b.Add(s.floor, floor)
	}
}

// ApplyPowerSmoothing sets firmware power smoothing on every GPU of lib as the configuration
// asks: the preset profile (0–4; -1 leaves it) is activated first, then the state ("enabled" or
// "disabled"; "unchanged" leaves it), so smoothing starts with the wanted profile. GPUs without
// the feature are left alone. It returns how many GPUs took the settings and how many lack the
// feature; err joins the failures of the others (no permission, a lost GPU), which leave the
// agent running.
func ApplyPowerSmoothing(lib nvml.Interface, state string, profile int, log *slog.Logger) (applied, unsupported int, err error) {
	if state == "" {
		state = "unchanged"
	}
	if state == "unchanged" && profile < 0 {
		return 0, 0, nil
	}
	var enable *nvml.PowerSmoothingState
	switch state {
	case "enabled", "disabled":
		enable = &nvml.PowerSmoothingState{State: uint32(nvml.FEATURE_DISABLED)}
		if state == "enabled" {
			enable.State = uint32(nvml.FEATURE_ENABLED)
		}
		enable.Version = nvml.STRUCT_VERSION(*enable, 1)
	case "unchanged":
	default:
		return 0, 0, fmt.Errorf("power smoothing state %q is not one of unchanged, enabled, disabled", state)
	}
	if profile >= nvml.POWER_SMOOTHING_MAX_NUM_PROFILES {
		return 0, 0, fmt.Errorf("power smoothing profile %d is out of range: -1 to %d", profile, nvml.POWER_SMOOTHING_MAX_NUM_PROFILES-1)
	}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return 0, 0, fmt.Errorf("counting GPUs to set power smoothing: %w", ret)
	}
	var errs []error
	for i := range n {
		dev, ret := lib.DeviceGetHandleByIndex(i)
		if ret == nvml.SUCCESS && profile >= 0 {
			p := &nvml.PowerSmoothingProfile{ProfileId: uint32(profile)}
			p.Version = nvml.STRUCT_VERSION(*p, 1)
			ret = dev.PowerSmoothingActivatePresetProfile(p)
		}
		if ret == nvml.SUCCESS && enable != nil {
			ret = dev.PowerSmoothingSetState(enable)
		}
		switch ret {
		case nvml.SUCCESS:
			applied++
		case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_FUNCTION_NOT_FOUND:
			unsupported++
		default:
			errs = append(errs, fmt.Errorf("setting power smoothing of GPU %d: %w", i, ret))
		}
	}
	err = errors.Join(errs...)
	switch {
	case err != nil:
		log.Warn("could not set firmware power smoothing on every GPU", "state", state, "profile", profile,
			"applied", applied, "unsupported", unsupported, "err", err)
	case applied == 0:
		log.Info("no GPU has firmware power smoothing; gpu.power-smoothing left them alone", "gpus", n)
	default:
		log.Info("firmware power smoothing set", "state", state, "profile", profile, "gpus", applied, "unsupported", unsupported)
	}
	return applied, unsupported, err
}
