package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/capstan-power/capstan/collectors"
)

// probeConfig is the options of a collector registered by the test: one bounded by its tags,
// one checked by its own Validate.
type probeConfig struct {
	Depth int    `yaml:"depth" range:"1,9" help:"how deep the probe looks"`
	Mode  string `yaml:"mode" help:"probe mode"`
}

func (c *probeConfig) Validate() error {
	if c.Mode == "loud" && c.Depth > 3 {
		return &collectors.FieldError{Key: "mode", Problem: "is not allowed with depth above 3"}
	}
	return nil
}

// registerProbe registers the probe collector, with its section, for one test.
func registerProbe(t *testing.T) {
	t.Helper()
	collectors.Register(collectors.Factory{Name: "probe", Interval: time.Second, Section: "probing",
		CreateDefaultConfig: func() collectors.Config { return &probeConfig{Depth: 2, Mode: "quiet"} },
		New:                 func(collectors.Settings, collectors.Config) (collectors.Collector, error) { return nil, nil }})
	t.Cleanup(func() { collectors.Unregister("probe") })
}

// A collector's section comes from its factory alone: its keys, flags, help, defaults, checks and
// place in the file.
func TestCollectorSection(t *testing.T) {
	registerProbe(t)
	fs := pflag.NewFlagSet("capstan", pflag.ContinueOnError)
	BindFlags(fs, Default())
	if f := fs.Lookup("probing.depth"); f == nil || f.Usage != "how deep the probe looks, 1 to 9" || f.DefValue != "2" {
		t.Fatalf("--probing.depth = %+v, want the declared help and default", f)
	}
	cfg, err := resolveArgs("--probing.mode=loud")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.CollectorConfig("probe").(*probeConfig); *got != (probeConfig{Depth: 2, Mode: "loud"}) {
		t.Errorf("probe options = %+v, want the flag over the defaults", *got)
	}
	out, err := cfg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if i, j, k := strings.Index(string(out), "\ncollector:"), strings.Index(string(out), "\nprobing:"), strings.Index(string(out), "\notlp:"); i < 0 || i >= j || j >= k {
		t.Errorf("probing is not between collector and otlp:\n%s", out)
	}

	path := filepath.Join(t.TempDir(), "capstan.yaml")
	if err := os.WriteFile(path, []byte("probing:\n  depth: 5\n  mode: loud\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--probing.depth=12"}, "--probing.depth: 12 is out of range (allowed: 1 to 9)"},
		{[]string{"--probing.depth=5", "--probing.mode=loud"}, `--probing.mode: "loud" is not allowed with depth above 3`},
		{[]string{"--config.file=" + path}, path + `:3: probing.mode: "loud" is not allowed with depth above 3`},
	} {
		if _, err := resolveArgs(tc.args...); err == nil || err.Error() != tc.want {
			t.Errorf("%v: error = %v, want %s", tc.args, err, tc.want)
		}
	}
}
