// Package miglayout reads the simulated fleet's MIG layouts ("7x1g.10gb", one per GPU separated
// by ";") and knows each simulated model's GPU-instance profiles. It imports nothing of NVML, so
// the configuration can check a layout without linking the NVML library.
package miglayout

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Profile is one GPU-instance profile of a model.
type Profile struct {
	Name         string // as nvidia-smi shows it: 1g.10gb
	ID           int    // NVML's GPU_INSTANCE_PROFILE_* value
	Slices       int    // compute slices (of 7)
	MemorySlices int    // memory slices (of 8)
	MemoryMiB    uint64
	SMs          uint32
	Count        int // instances of this profile a GPU holds at most
}

// NVML's GPU-instance profile ids (nvml.GPU_INSTANCE_PROFILE_*), kept here as numbers so this
// package does not link NVML; a test of package sim checks them against go-nvml.
const (
	Profile1Slice     = 0
	Profile2Slice     = 1
	Profile3Slice     = 2
	Profile4Slice     = 3
	Profile7Slice     = 4
	Profile1SliceRev2 = 9
)

// MaxComputeSlices and MaxMemorySlices bound a layout, as the hardware does.
const (
	MaxComputeSlices = 7
	MaxMemorySlices  = 8
)

// profiles lists each model's GPU-instance profiles (memory sizes are what NVML reports, whose
// GiB rounded up give the profile's name).
var profiles = map[string][]Profile{
	"A100": {
		{"1g.10gb", Profile1Slice, 1, 1, 9728, 14, 7},
		{"1g.20gb", Profile1SliceRev2, 1, 2, 19968, 14, 4},
		{"2g.20gb", Profile2Slice, 2, 2, 19968, 28, 3},
		{"3g.40gb", Profile3Slice, 3, 4, 40192, 42, 2},
		{"4g.40gb", Profile4Slice, 4, 4, 40192, 56, 1},
		{"7g.80gb", Profile7Slice, 7, 8, 80384, 98, 1},
	},
	"H100": {
		{"1g.10gb", Profile1Slice, 1, 1, 9856, 16, 7},
		{"1g.20gb", Profile1SliceRev2, 1, 2, 19968, 16, 4},
		{"2g.20gb", Profile2Slice, 2, 2, 19968, 32, 3},
		{"3g.40gb", Profile3Slice, 3, 4, 40192, 60, 2},
		{"4g.40gb", Profile4Slice, 4, 4, 40192, 64, 1},
		{"7g.80gb", Profile7Slice, 7, 8, 80384, 132, 1},
	},
	"H200": {
		{"1g.18gb", Profile1Slice, 1, 1, 18176, 16, 7},
		{"1g.35gb", Profile1SliceRev2, 1, 2, 35456, 16, 4},
		{"2g.35gb", Profile2Slice, 2, 2, 35456, 32, 3},
		{"3g.71gb", Profile3Slice, 3, 4, 72192, 60, 2},
		{"4g.71gb", Profile4Slice, 4, 4, 72192, 64, 1},
		{"7g.141gb", Profile7Slice, 7, 8, 143616, 132, 1},
	},
	"B200": {
		{"1g.23gb", Profile1Slice, 1, 1, 23040, 18, 7},
		{"1g.45gb", Profile1SliceRev2, 1, 2, 46080, 18, 4},
		{"2g.45gb", Profile2Slice, 2, 2, 46080, 36, 3},
		{"3g.90gb", Profile3Slice, 3, 4, 92160, 54, 2},
		{"4g.90gb", Profile4Slice, 4, 4, 92160, 72, 1},
		{"7g.180gb", Profile7Slice, 7, 8, 183300, 148, 1},
	},
}

// Profiles lists the GPU-instance profiles of a model (A100, H100, H200, B200, any case).
func Profiles(model string) []Profile {
	return profiles[strings.ToUpper(strings.TrimSpace(model))]
}

// Parse checks a layout against a model: comma-separated profiles, each optionally preceded by
// a count ("7x1g.10gb", "3g.40gb,2x2g.20gb"); empty or "off" is MIG off, "on" is MIG on with no
// instance. The instances must fit the GPU's 7 compute and 8 memory slices.
func Parse(model, layout string) (enabled bool, out []Profile, err error) {
	known := Profiles(model)
	if known == nil {
		models := make([]string, 0, len(profiles))
		for m := range profiles {
			models = append(models, m)
		}
		slices.Sort(models)
		return false, nil, fmt.Errorf("unknown GPU model %q: use one of %s", model, strings.Join(models, ", "))
	}
	layout = strings.TrimSpace(layout)
	switch strings.ToLower(layout) {
	case "", "off":
		return false, nil, nil
	case "on":
		return true, nil, nil
	}
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
			if err != nil || v < 1 || v > MaxComputeSlices {
				return false, nil, fmt.Errorf("MIG layout %q: count %q of %q must be 1 to %d", layout, k, item, MaxComputeSlices)
			}
			n, item = v, rest
		}
		var p *Profile
		for i := range known {
			if strings.EqualFold(known[i].Name, item) {
				p = &known[i]
			}
		}
		if p == nil {
			return false, nil, fmt.Errorf("MIG layout %q: %s has no profile %q: use %s", layout, strings.ToUpper(model), item, strings.Join(names, ", "))
		}
		for range n {
			out = append(out, *p)
		}
		count[p.Name] += n
		if count[p.Name] > p.Count {
			return false, nil, fmt.Errorf("MIG layout %q: at most %d instances of %s fit a GPU", layout, p.Count, p.Name)
		}
		compute += n * p.Slices
		memory += n * p.MemorySlices
	}
	if compute > MaxComputeSlices || memory > MaxMemorySlices {
		return false, nil, fmt.Errorf("MIG layout %q needs %d compute and %d memory slices; a GPU has %d and %d",
			layout, compute, memory, MaxComputeSlices, MaxMemorySlices)
	}
	return true, out, nil
}

// ParseAll reads the layouts of a fleet of count GPUs: one layout for every GPU, or one per GPU
// separated by ";" ("7x1g.10gb;3g.40gb,4g.40gb;off"), as many as there are GPUs.
func ParseAll(model, spec string, count int) ([][]Profile, []bool, error) {
	parts := strings.Split(spec, ";")
	if len(parts) != 1 && len(parts) != count {
		return nil, nil, fmt.Errorf("MIG layouts %q: %d layouts for %d GPUs: give one for every GPU or one per GPU", spec, len(parts), count)
	}
	layouts := make([][]Profile, count)
	enabled := make([]bool, count)
	for i := range count {
		p := parts[0]
		if len(parts) > 1 {
			p = parts[i]
		}
		on, profiles, err := Parse(model, p)
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
