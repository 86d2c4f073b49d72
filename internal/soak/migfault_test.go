package soak

import (
	"strings"
	"testing"
)

// The MIG check reads a GPU's mode and devices from a /metrics page and says what keeps them
// from a layout: the mode, the profiles, or a device of the layout before still exported.
func TestMIGCheckReadsThePage(t *testing.T) {
	page := strings.Join([]string{
		`# TYPE capstan_gpu_mig_mode gauge`,
		`capstan_gpu_mig_mode{gpu_index="0",hw_id="GPU-a",hw_type="gpu"} 1`,
		`capstan_gpu_mig_mode{gpu_index="1",hw_id="GPU-b",hw_type="gpu"} 0`,
		`capstan_gpu_mig_info{capstan_mig_profile="3g.40gb",capstan_mig_uuid="MIG-1",gpu_index="0"} 1`,
		`capstan_gpu_mig_info{capstan_mig_profile="4g.40gb",capstan_mig_uuid="MIG-2",gpu_index="0"} 1`,
		`capstan_gpu_nvlink_errors_total{error_type="crc_data",gpu_index="1"} 12`,
		`capstan_gpu_nvlink_errors_total{error_type="replay",gpu_index="1"} 3`,
	}, "\n")
	mode, devices := migSeries(page, 0)
	want := map[string]int{"3g.40gb": 1, "4g.40gb": 1}
	for _, tc := range []struct {
		name string
		want map[string]int
		old  map[string]bool
		ok   bool
	}{
		{"the layout", want, nil, true},
		{"another layout", map[string]int{"1g.10gb": 7}, nil, false},
		{"a device of the layout before", want, map[string]bool{"MIG-2": true}, false},
		{"MIG off", map[string]int{}, nil, false},
	} {
		if got := migMismatch(mode, devices, tc.want, tc.old); (got == "") != tc.ok {
			t.Errorf("%s: mismatch %q, want a match %v", tc.name, got, tc.ok)
		}
	}
	if mode, devices := migSeries(page, 1); migMismatch(mode, devices, map[string]int{}, nil) != "" {
		t.Errorf("GPU 1 (MIG off, no device) does not match MIG off: mode %q, devices %v", mode, devices)
	}
	if v, ok := nvlinkCRCData(page, 1); !ok || v != 12 {
		t.Errorf("GPU 1 CRC-data errors %v (%v), want 12", v, ok)
	}
	if _, ok := nvlinkCRCData(page, 0); ok {
		t.Error("GPU 0 has no CRC-data counter on the page, yet one was read")
	}
}
