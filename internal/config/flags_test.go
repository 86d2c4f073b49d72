package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// writeFile writes a configuration file into a temporary directory and returns its path.
func writeFile(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "capstan.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestEveryKeyIsAFlagWithHelp(t *testing.T) {
	fs := pflag.NewFlagSet("capstan", pflag.ContinueOnError)
	BindFlags(fs, Default())
	want := leafKeys()
	for _, name := range RegisteredCollectors() {
		want = append(want, "collector."+name, "no-collector."+name,
			"collector."+name+".interval", "collector."+name+".timeout")
	}
	want = append(want, "config.file")
	for _, name := range want {
		f := fs.Lookup(name)
		if f == nil {
			t.Errorf("no flag --%s", name)
			continue
		}
		if f.Usage == "" {
			t.Errorf("--%s has no help", name)
		}
	}
	n := 0
	fs.VisitAll(func(*pflag.Flag) { n++ })
	if n != len(want) {
		t.Errorf("%d flags, want %d", n, len(want))
	}
	// Every placeholder of a declared help text was filled in.
	fs.VisitAll(func(f *pflag.Flag) {
		if strings.ContainsAny(f.Usage, "{}") && f.Name != "budget.file" {
			t.Errorf("--%s help has a placeholder left: %q", f.Name, f.Usage)
		}
	})
}

func TestFlagUsageShowsDefaults(t *testing.T) {
	fs := pflag.NewFlagSet("capstan", pflag.ContinueOnError)
	BindFlags(fs, Default())
	usage := fs.FlagUsages()
	for _, want := range []string{
		"--otlp.interval duration",
		"how often to push metrics, 1s to 1h (default 10s)",
		"--gpu.sim.count int",
		"number of simulated GPUs, 1 to 64 (default 8)",
		`--gpu.backend string`,
		`(default "auto")`,
		"--otlp.headers key=value",
		"--collector.gpu.interval duration",
		"how often the gpu collector runs, 100ms to 1h (default 1s)",
		"enable the gpu collector (default true)",
		`--node.name string`,
		`(default "test-node")`,
	} {
		if !strings.Contains(usage, want) {
			t.Errorf("usage lacks %q:\n%s", want, usage)
		}
	}
	for _, line := range strings.Split(usage, "\n") {
		if strings.Contains(line, "--no-collector.") && strings.Contains(line, "default") {
			t.Errorf("a --no-collector flag shows a default: %s", line)
		}
		if strings.Contains(line, "--otlp.insecure") && strings.Contains(line, "[=") {
			t.Errorf("a boolean flag shows an optional value: %s", line)
		}
	}
}

// TestPrecedence checks default < file < flag, key by key, through a real FlagSet.
func TestPrecedence(t *testing.T) {
	file := writeFile(t, `
gpu:
  backend: sim
  sim:
    count: 4
    model: A100
collector:
  gpu:
    enabled: false
    interval: 5s
  cpufreq:
    enabled: true
otlp:
  insecure: true
  headers:
    a: file
    b: file
`)
	cases := []struct {
		name  string
		args  []string
		check func(*Config) string
	}{
		{"default without file", nil, func(c *Config) string {
			return diff(c.GPU.Backend, "auto") + diff(c.GPU.Sim.Count, 8)
		}},
		{"file over default", []string{"--config.file", file}, func(c *Config) string {
			return diff(c.GPU.Backend, "sim") + diff(c.GPU.Sim.Count, 4) + diff(c.Log.Level, "info")
		}},
		{"flag over file", []string{"--config.file", file, "--gpu.sim.count=16"}, func(c *Config) string {
			return diff(c.GPU.Sim.Count, 16) + diff(c.GPU.Sim.Model, "A100") + diff(c.GPU.Backend, "sim")
		}},
		{"flag before the file flag still wins", []string{"--gpu.sim.count=16", "--config.file=" + file}, func(c *Config) string {
			return diff(c.GPU.Sim.Count, 16)
		}},
		{"flag set to the default value still wins", []string{"--config.file", file, "--gpu.backend=auto", "--gpu.sim.count", "8"}, func(c *Config) string {
			return diff(c.GPU.Backend, "auto") + diff(c.GPU.Sim.Count, 8)
		}},
		{"flag over default without file", []string{"--log.level=debug"}, func(c *Config) string {
			return diff(c.Log.Level, "debug") + diff(c.GPU.Backend, "auto")
		}},
		{"bool flag without value", []string{"--config.file", file, "--stdout.enabled"}, func(c *Config) string {
			return diff(c.Stdout.Enabled, true) + diff(c.OTLP.Insecure, true)
		}},
		{"bool flag set false over file", []string{"--config.file", file, "--otlp.insecure=false"}, func(c *Config) string {
			return diff(c.OTLP.Insecure, false)
		}},
		{"collector enabled by flag over file", []string{"--config.file", file, "--collector.gpu"}, func(c *Config) string {
			return diff(c.Collectors["gpu"], Collector{Enabled: true, Interval: 5 * time.Second})
		}},
		{"collector disabled by flag over file", []string{"--config.file", file, "--no-collector.cpufreq"}, func(c *Config) string {
			return diff(c.Collectors["cpufreq"].Enabled, false)
		}},
		{"collector disabled by flag over default", []string{"--no-collector.gpu"}, func(c *Config) string {
			return diff(c.Collectors["gpu"], Collector{Enabled: false, Interval: time.Second})
		}},
		{"collector flag =false", []string{"--collector.gpu=false", "--collector.cpufreq=true"}, func(c *Config) string {
			return diff(c.Collectors["gpu"].Enabled, false) + diff(c.Collectors["cpufreq"].Enabled, true)
		}},
		{"last of --collector and --no-collector wins", []string{"--no-collector.gpu", "--collector.gpu"}, func(c *Config) string {
			return diff(c.Collectors["gpu"].Enabled, true)
		}},
		{"collector interval and timeout flags", []string{"--config.file", file, "--collector.gpu.interval=2s", "--collector.gpu.timeout=500ms"}, func(c *Config) string {
			return diff(c.Collectors["gpu"], Collector{Enabled: false, Interval: 2 * time.Second, Timeout: 500 * time.Millisecond}) +
				diff(c.Collector("gpu").Timeout, 500*time.Millisecond)
		}},
		{"header flags merge into the file's, winning per key", []string{"--config.file", file, "--otlp.headers", "a=flag", "--otlp.headers=c=x=y"}, func(c *Config) string {
			return diff(c.OTLP.Headers, map[string]string{"a": "flag", "b": "file", "c": "x=y"})
		}},
		{"empty string flag over default", []string{"--web.listen-address="}, func(c *Config) string {
			return diff(c.Web.ListenAddress, "")
		}},
		{"flag fixes a bad file value", []string{"--config.file", writeFile(t, "gpu:\n  sim:\n    count: 0\n"), "--gpu.sim.count=1"}, func(c *Config) string {
			return diff(c.GPU.Sim.Count, 1)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := resolveArgs(tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if d := tc.check(c); d != "" {
				t.Error(d)
			}
		})
	}
}

// diff returns "" when got equals want, else a note saying how they differ.
func diff(got, want any) string {
	if reflect.DeepEqual(got, want) {
		return ""
	}
	return fmt.Sprintf("got %+v, want %+v; ", got, want)
}

func TestFlagErrorsNameTheFlag(t *testing.T) {
	file := writeFile(t, "gpu:\n  sim:\n    count: 4\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--gpu.sim.count=0"}, "--gpu.sim.count: 0 is out of range (allowed: 1 to 64)"},
		{[]string{"--config.file", file, "--gpu.sim.count=65"}, "--gpu.sim.count: 65 is out of range (allowed: 1 to 64)"},
		{[]string{"--gpu.sim.model=V100"}, `--gpu.sim.model: "V100" is not allowed (allowed: A100, H100, H200, B200)`},
		{[]string{"--collector.gpu.timeout=2s"}, "--collector.gpu.timeout: 2s is out of range (allowed: 0, meaning the interval, or 10ms to the interval 1s)"},
		{[]string{"--node.name=gpu\nnode"}, `--node.name: "gpu\nnode" has a control character at byte 3 (allowed: 1 to 253 characters, no control characters)`},
	} {
		_, err := resolveArgs(tc.args...)
		var cfgErr *Error
		if !errors.As(err, &cfgErr) {
			t.Errorf("%v: %T %v, want *Error", tc.args, err, err)
			continue
		}
		if cfgErr.File != "" || cfgErr.Line != 0 {
			t.Errorf("%v: a flag's error has a file position: %+v", tc.args, cfgErr)
		}
		if got := err.Error(); got != tc.want {
			t.Errorf("%v:\n got %s\nwant %s", tc.args, got, tc.want)
		}
	}
}

func TestFileErrorWhenAFlagSetsAnotherKey(t *testing.T) {
	file := writeFile(t, "gpu:\n  sim:\n    count: 0\n")
	_, err := resolveArgs("--config.file", file, "--gpu.sim.model=A100")
	if got, want := err.Error(), file+":3: gpu.sim.count: 0 is out of range (allowed: 1 to 64)"; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

func TestResolveReloadsTheFile(t *testing.T) {
	path := writeFile(t, "gpu:\n  backend: sim\n  sim:\n    count: 2\n")
	fs := pflag.NewFlagSet("capstan", pflag.ContinueOnError)
	flags := Default()
	BindFlags(fs, flags)
	if err := fs.Parse([]string{"--config.file", path, "--gpu.sim.model=B200"}); err != nil {
		t.Fatal(err)
	}
	first, err := Resolve(fs, flags)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("gpu:\n  backend: sim\n  sim:\n    count: 3\n    model: A100\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	second, err := Resolve(fs, flags)
	if err != nil {
		t.Fatal(err)
	}
	if first.GPU.Sim.Count != 2 || second.GPU.Sim.Count != 3 {
		t.Errorf("gpu.sim.count = %d then %d, want 2 then 3", first.GPU.Sim.Count, second.GPU.Sim.Count)
	}
	if second.GPU.Sim.Model != "B200" {
		t.Errorf("after a reload gpu.sim.model = %s, want the flag's B200", second.GPU.Sim.Model)
	}
	// A bad file on reload is an error, and the earlier result stays intact.
	if err := os.WriteFile(path, []byte("gpu:\n  sim:\n    count: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Resolve(fs, flags); err == nil {
		t.Error("Resolve of a broken file succeeded")
	}
	if second.GPU.Sim.Count != 3 {
		t.Error("a failed reload changed the previous config")
	}
}

// TestResolveThroughCobra binds the flags as the capstan command does, as persistent flags of
// the root command, and resolves them in a subcommand: cobra then parses through the
// subcommand's FlagSet, which is where a Visit-based Resolve would see nothing.
func TestResolveThroughCobra(t *testing.T) {
	file := writeFile(t, "log:\n  level: warn\ngpu:\n  backend: sim\n")
	flags := Default()
	root := &cobra.Command{Use: "capstan", SilenceUsage: true, SilenceErrors: true,
		RunE: func(*cobra.Command, []string) error { return nil }}
	BindFlags(root.PersistentFlags(), flags)
	var got *Config
	sub := &cobra.Command{Use: "collect", RunE: func(*cobra.Command, []string) error {
		var err error
		got, err = Resolve(root.PersistentFlags(), flags)
		return err
	}}
	root.AddCommand(sub)
	root.SetOut(&bytes.Buffer{})
	root.SetArgs([]string{"collect", "--config.file", file, "--gpu.backend=none", "--no-collector.gpu"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if d := diff(got.Log.Level, "warn") + diff(got.GPU.Backend, "none") + diff(got.Collectors["gpu"].Enabled, false); d != "" {
		t.Error(d)
	}

	root.SetArgs([]string{"collect", "--gpu.sim.count=0"})
	err := root.Execute()
	var cfgErr *Error
	if !errors.As(err, &cfgErr) || cfgErr.Key != "--gpu.sim.count" {
		t.Errorf("Execute() = %v, want a *Error naming --gpu.sim.count", err)
	}
}

func TestFlagParseErrors(t *testing.T) {
	for _, tc := range []struct{ arg, want string }{
		{"--otlp.interval=ten", `"ten" is not a duration`},
		{"--gpu.sim.count=eight", `"eight" is not an integer`},
		{"--otlp.insecure=maybe", `"maybe" is not a boolean`},
		{"--collector.gpu.interval=1", `"1" is not a duration`},
		{"--otlp.headers=novalue", `"novalue" is not key=value`},
		{"--otlp.headers==v", `"=v" is not key=value`},
		{"--gpu.bakend=sim", "unknown flag: --gpu.bakend"},
	} {
		_, err := resolveArgs(tc.arg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want it to say %s", tc.arg, err, tc.want)
		}
	}
}
