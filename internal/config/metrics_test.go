package config

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/capstan-power/capstan/internal/metrics"
)

// metrics.NAME.enabled in the file turns a metric off; --metrics NAME=BOOL wins per name; the
// effective configuration writes them back the same way.
func TestMetricToggles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "capstan.yaml")
	file := "metrics:\n  capstan.gpu.activity:\n    enabled: false\n  hw.power:\n    enabled: false\n"
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := resolveArgs("--config.file="+path, "--metrics=hw.power=true", "--metrics", "capstan.gpu.health=false")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		def  *metrics.Def
		want bool
	}{
		{metrics.GPUActivity, false},  // the file
		{metrics.HWPower, true},       // the flag over the file
		{metrics.GPUHealth, false},    // the flag alone
		{metrics.HWTemperature, true}, // neither: the default
	} {
		if got := cfg.Metrics.Enabled(tc.def); got != tc.want {
			t.Errorf("%s enabled = %v, want %v", tc.def.Name, got, tc.want)
		}
	}
	out, err := cfg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse("effective.yaml", out)
	if err != nil {
		t.Fatalf("the effective configuration does not parse back: %v\n%s", err, out)
	}
	if !sameConfig(back, cfg) {
		t.Errorf("round trip changed the toggles: %v, want %v", back.Metrics, cfg.Metrics)
	}
}
