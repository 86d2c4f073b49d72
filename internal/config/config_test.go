package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/collectors/nic"
	"github.com/capstan-power/capstan/collectors/workload"
)

// examplePath is the documented example with every key, which the packages install.
const examplePath = "../../docs/capstan.example.yaml"

// sameConfig compares two configs, ignoring where their values came from.
func sameConfig(a, b *Config) bool {
	x, y := *a, *b
	x.src, y.src = sources{}, sources{}
	return reflect.DeepEqual(x, y)
}

// leafKeys lists every dotted key that is not under collector, in file order, the collectors'
// sections included.
func leafKeys() []string {
	var keys []string
	for _, l := range leaves(reflect.ValueOf(Default()).Elem()) {
		keys = append(keys, l.key)
	}
	return keys
}

func TestDefault(t *testing.T) {
	c := Default()
	want := &Config{
		Node: Node{Name: "test-node"},
		Log:  Log{Level: "info", Format: "logfmt"},
		Path: Path{Sysfs: "/sys", Procfs: "/proc"},
		GPU: GPU{Backend: "auto", Sim: GPUSim{Model: "H100", Count: 8, Trace: "training", Seed: 1},
			PowerSmoothing: GPUPowerSmoothing{State: "unchanged", Profile: -1}},
		Collectors: map[string]Collector{
			"gpu":      {Enabled: true, Interval: time.Second},
			"cpufreq":  {Enabled: false, Interval: 10 * time.Second},
			"nic":      {Enabled: true, Interval: 5 * time.Second},
			"workload": {Enabled: false, Interval: 10 * time.Second},
		},
		Sections: Sections{
			"nic":      &nic.Config{Exclude: `^(lo|veth.*|cali.*|lxc.*|docker.*)$`},
			"workload": &workload.Config{MaxSeries: 2000, ActiveIntervals: 5, PodResourcesSocket: "/var/lib/kubelet/pod-resources/kubelet.sock"},
		},
		Metrics: MetricToggles{},
		OTLP: OTLP{Protocol: "grpc", Interval: 10 * time.Second, Timeout: 10 * time.Second, ShutdownTimeout: 3 * time.Second,
			Compression: "gzip", Temporality: "cumulative"},
		Web:    Web{ListenAddress: "127.0.0.1:9400"},
		Stdout: Stdout{Interval: 10 * time.Second},
		Capping: Capping{
			Period: time.Second, Scope: "gpu", GuardBandPercent: 3, OversubscriptionPercent: 5,
			HeadroomWatts: 15, DeadbandWatts: 5, RampPercent: 5, LostPeriods: 3,
			StateFile: "/var/lib/capstan/state.json", OnExit: "restore", AfterCrash: "restore",
			Weights: map[string]string{},
		},
		Budget: Budget{Source: "static"},
		Etcd:   Etcd{LeaseTTL: 10 * time.Second, Prefix: "/capstan/v1", Priority: 1},
	}
	if !sameConfig(c, want) {
		t.Errorf("Default() =\n%+v\nwant\n%+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Default() does not validate: %v", err)
	}
	// Each call returns its own maps, so that one caller's changes do not leak into another's.
	c.Collectors["gpu"] = Collector{}
	if Default().Collectors["gpu"].Interval != time.Second {
		t.Error("Default() shares its collector map between calls")
	}
}

func TestDefaultNodeNameFallsBackToHostname(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	host, err := os.Hostname()
	if err != nil {
		t.Skip("no hostname:", err)
	}
	if got := Default().Node.Name; got != host {
		t.Errorf("node.name = %q, want the hostname %q", got, host)
	}
}

func TestRegisteredCollectorsSorted(t *testing.T) {
	if got, want := RegisteredCollectors(), []string{"cpufreq", "gpu", "nic", "workload"}; !reflect.DeepEqual(got, want) {
		t.Errorf("RegisteredCollectors() = %v, want %v", got, want)
	}
}

func TestRegisterCollectorConcurrently(t *testing.T) {
	var names []string
	for i := range 16 {
		names = append(names, fmt.Sprintf("race%02d", i))
	}
	defer collectors.Unregister(names...)
	before := len(RegisteredCollectors())
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Go(func() {
			registerStandIn(n, false, time.Minute)
			_ = RegisteredCollectors()
			_ = Default()
		})
	}
	wg.Wait()
	got := RegisteredCollectors()
	if len(got) != before+16 {
		t.Errorf("registered %d collectors, want %d: %v", len(got), before+16, got)
	}
	if c := Default().Collectors["race07"]; c.Enabled || c.Interval != time.Minute {
		t.Errorf("collector.race07 = %+v, want its registered defaults", c)
	}
}

func TestCollector(t *testing.T) {
	c := Default()
	if got, want := c.Collector("gpu"), (Collector{Enabled: true, Interval: time.Second, Timeout: time.Second}); got != want {
		t.Errorf("Collector(gpu) = %+v, want %+v (timeout defaulted to the interval)", got, want)
	}
	c.Collectors["gpu"] = Collector{Enabled: true, Interval: 2 * time.Second, Timeout: 500 * time.Millisecond}
	if got := c.Collector("gpu").Timeout; got != 500*time.Millisecond {
		t.Errorf("Collector(gpu).Timeout = %v, want the one set", got)
	}
	// A Config built by hand, without Default, still gets the registered defaults.
	bare := &Config{}
	if got, want := bare.Collector("cpufreq"), (Collector{Interval: 10 * time.Second, Timeout: 10 * time.Second}); got != want {
		t.Errorf("Collector(cpufreq) of an empty Config = %+v, want %+v", got, want)
	}
	if got := bare.Collector("nope"); got != (Collector{}) {
		t.Errorf("Collector(nope) = %+v, want the zero value", got)
	}
}

func TestParseEmptyIsDefault(t *testing.T) {
	for _, doc := range []string{"", "\n", "# nothing but a comment\n", "---\n", "~\n", "null\n", "{}\n",
		"otlp:\ncollector:\n", "collector:\n  gpu:\n"} {
		c, err := Parse("capstan.yaml", []byte(doc))
		if err != nil {
			t.Errorf("Parse(%q): %v", doc, err)
			continue
		}
		if !sameConfig(c, Default()) {
			t.Errorf("Parse(%q) = %+v, want the defaults", doc, c)
		}
	}
}

func TestParseOverlaysDefaults(t *testing.T) {
	c, err := Parse("capstan.yaml", []byte(`
gpu:
  sim:
    count: 2
collector:
  cpufreq:
    enabled: true
otlp:
  headers:
    x-api-key: secret
    x-tenant: "42"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.GPU.Sim.Count = 2
	want.Collectors["cpufreq"] = Collector{Enabled: true, Interval: 10 * time.Second}
	want.OTLP.Headers = map[string]string{"x-api-key": "secret", "x-tenant": "42"}
	if !sameConfig(c, want) {
		t.Errorf("got\n%+v\nwant\n%+v", c, want)
	}
}

func TestParseAnchorsAliasesAndMerges(t *testing.T) {
	c, err := Parse("capstan.yaml", []byte(`
collector:
  gpu: &slow
    interval: 30s
    timeout: 5s
  cpufreq:
    <<: *slow
    enabled: true
    timeout: 1s
otlp:
  headers:
    <<: [{a: first, b: first}, {a: second, c: second}]
    b: own
`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Collectors["gpu"], (Collector{Enabled: true, Interval: 30 * time.Second, Timeout: 5 * time.Second}); got != want {
		t.Errorf("collector.gpu = %+v, want %+v", got, want)
	}
	if got, want := c.Collectors["cpufreq"], (Collector{Enabled: true, Interval: 30 * time.Second, Timeout: time.Second}); got != want {
		t.Errorf("collector.cpufreq = %+v, want %+v (own keys win over merged ones)", got, want)
	}
	if got, want := c.OTLP.Headers, map[string]string{"a": "first", "b": "own", "c": "second"}; !reflect.DeepEqual(got, want) {
		t.Errorf("otlp.headers = %v, want %v (earlier merged mappings win)", got, want)
	}
}

func TestErrorIsAsAndUnwraps(t *testing.T) {
	_, err := Load("testdata/errors/missing-file.yaml")
	var cfgErr *Error
	if !errors.As(err, &cfgErr) {
		t.Fatalf("Load of a missing file: %T %v, want *Error", err, err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing file: %v does not wrap fs.ErrNotExist", err)
	}
	if cfgErr.File != "testdata/errors/missing-file.yaml" || cfgErr.Line != 0 {
		t.Errorf("File, Line = %q, %d", cfgErr.File, cfgErr.Line)
	}

	_, err = Parse("capstan.yaml", []byte("gpu:\n  sim:\n    count: eight\n"))
	if !errors.As(err, &cfgErr) {
		t.Fatalf("%T %v, want *Error", err, err)
	}
	want := Error{File: "capstan.yaml", Line: 3, Key: "gpu.sim.count", Value: `"eight"`, Problem: "is not an integer"}
	if got := *cfgErr; got.File != want.File || got.Line != want.Line || got.Key != want.Key ||
		got.Value != want.Value || got.Problem != want.Problem {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestValidateReportsTheFirstProblemInFileOrder(t *testing.T) {
	c := Default()
	c.Summary.Interval = time.Millisecond // last in file order
	c.GPU.Sim.Count = 0
	c.Log.Level = "loud" // first in file order
	err := c.Validate()
	var cfgErr *Error
	if !errors.As(err, &cfgErr) {
		t.Fatalf("Validate() = %T %v, want *Error", err, err)
	}
	// Set in code, the value has no file position.
	if got, want := err.Error(), `log.level: "loud" is not allowed (allowed: debug, info, warn, error)`; got != want {
		t.Errorf("Validate() = %q, want %q", got, want)
	}
	c.Log.Level = "debug"
	if got := c.Validate().Error(); !strings.HasPrefix(got, "gpu.sim.count: 0 ") {
		t.Errorf("after fixing log.level, Validate() = %q, want gpu.sim.count next", got)
	}
}

func TestValidateAccepts(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"model in lower case":   func(c *Config) { c.GPU.Sim.Model = "h200" },
		"trace in another case": func(c *Config) { c.GPU.Sim.Trace = "Imbalanced" },
		"csv trace":             func(c *Config) { c.GPU.Sim.Trace = "/var/lib/capstan/trace.CSV" },
		"count bounds":          func(c *Config) { c.GPU.Sim.Count = 64 },
		"collector interval bounds": func(c *Config) {
			c.Collectors["gpu"] = Collector{Interval: 100 * time.Millisecond, Timeout: 10 * time.Millisecond}
		},
		"timeout equal to interval":   func(c *Config) { c.Collectors["gpu"] = Collector{Interval: time.Hour, Timeout: time.Hour} },
		"web off":                     func(c *Config) { c.Web.ListenAddress = "" },
		"web on every interface":      func(c *Config) { c.Web.ListenAddress = ":9400" },
		"web on IPv6 and port 0":      func(c *Config) { c.Web.ListenAddress = "[::1]:0" },
		"tls pair":                    func(c *Config) { c.OTLP.TLS = TLS{CertFile: "c.pem", KeyFile: "k.pem"} },
		"ca only":                     func(c *Config) { c.OTLP.TLS.CAFile = "ca.pem" },
		"headers and headers file":    func(c *Config) { c.OTLP.Headers, c.OTLP.HeadersFile = map[string]string{"a": "b"}, "/run/h" },
		"stdout off ignores interval": func(c *Config) { c.Stdout.Interval = 0 },
		"summary on":                  func(c *Config) { c.Summary.Interval = time.Hour },
		"otlp bounds":                 func(c *Config) { c.OTLP.Interval, c.OTLP.Timeout = time.Second, 5*time.Minute },
		"node name of 253 characters": func(c *Config) { c.Node.Name = strings.Repeat("n", 253) },
		"node name in UTF-8":          func(c *Config) { c.Node.Name = "nœud-7" },
	} {
		c := Default()
		mutate(c)
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestValidateUnknownCollectorEntry(t *testing.T) {
	c := Default()
	c.Collectors["gpux"] = Collector{Enabled: true, Interval: time.Second}
	if got, want := fmt.Sprint(c.Validate()), "collector.gpux: unknown collector (known: cpufreq, gpu, nic, workload)"; got != want {
		t.Errorf("Validate() = %q, want %q", got, want)
	}
}

func TestYAMLRoundTrip(t *testing.T) {
	custom := Default()
	custom.Node.Name = "true" // a string that reads as a boolean unless quoted
	custom.Log.Level = "debug"
	custom.GPU.Sim.Seed = -42
	custom.GPU.Sim.Trace = "/traces/a b: c.csv"
	custom.Collectors["gpu"] = Collector{Enabled: false, Interval: 90 * time.Minute, Timeout: 1500 * time.Millisecond}
	custom.OTLP.Endpoint = "https://otel.example.com:4318/v1/metrics"
	custom.OTLP.Headers = map[string]string{"x-api-key": "s3cr#t", "<<": "merge?", "multi": "line\nvalue", "empty": "", "n": "123"}
	custom.OTLP.TLS = TLS{CAFile: "~", CertFile: "null", KeyFile: "#k"}
	custom.Web.ListenAddress = ""
	custom.Summary.Interval = 2*time.Hour + 30*time.Second

	sample, err := Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*Config{"default": Default(), "custom": custom, "sample": sample} {
		t.Run(name, func(t *testing.T) {
			out, err := c.YAML()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse("effective.yaml", out)
			if err != nil {
				t.Fatalf("Parse(YAML()): %v\n%s", err, out)
			}
			if !sameConfig(back, c) {
				t.Errorf("Parse(YAML()) =\n%+v\nwant\n%+v\nYAML:\n%s", back, c, out)
			}
		})
	}
}

// The effective configuration states each collector's timeout in force (its interval when 0)
// and parses back to a configuration that runs every collector the same way.
func TestEffectiveYAML(t *testing.T) {
	custom := Default()
	custom.Collectors["gpu"] = Collector{Enabled: true, Interval: 2 * time.Second, Timeout: 1500 * time.Millisecond}
	custom.Collectors["cpufreq"] = Collector{Enabled: true, Interval: 30 * time.Second}
	sample, err := Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*Config{"default": Default(), "custom": custom, "sample": sample} {
		t.Run(name, func(t *testing.T) {
			out, err := c.Effective().YAML()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(out), "timeout: 0s") {
				t.Errorf("a collector's timeout is printed as 0s, not the value in force:\n%s", out)
			}
			back, err := Parse("effective.yaml", out)
			if err != nil {
				t.Fatalf("Parse(Effective().YAML()): %v\n%s", err, out)
			}
			if err := back.Validate(); err != nil {
				t.Fatalf("the effective configuration does not validate: %v\n%s", err, out)
			}
			for _, n := range RegisteredCollectors() {
				if got, want := back.Collector(n), c.Collector(n); got != want {
					t.Errorf("collector %s: %+v after the round trip, want %+v", n, got, want)
				}
				if got := back.Collectors[n].Timeout; got != c.Collector(n).Timeout {
					t.Errorf("collector %s: timeout %s printed, want the value in force %s", n, got, c.Collector(n).Timeout)
				}
			}
			if !sameConfig(back, c.Effective()) {
				t.Errorf("Parse(Effective().YAML()) =\n%+v\nwant\n%+v", back, c.Effective())
			}
		})
	}
	if out, _ := custom.Effective().YAML(); !strings.Contains(string(out), "  gpu:\n    enabled: true\n    interval: 2s\n    timeout: 1.5s\n") ||
		!strings.Contains(string(out), "  cpufreq:\n    enabled: true\n    interval: 30s\n    timeout: 30s\n") {
		t.Errorf("effective collector entries:\n%s", out)
	}
}

func TestYAMLShowsEveryKey(t *testing.T) {
	out, err := Default().YAML()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("effective.yaml", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range append(leafKeys(), "collector.gpu.enabled",
		"collector.gpu.interval", "collector.gpu.timeout", "collector.cpufreq.enabled") {
		if _, ok := c.src.lines[key]; !ok {
			t.Errorf("YAML() lacks %s:\n%s", key, out)
		}
	}
	if !strings.Contains(string(out), "interval: 10s\n") || !strings.Contains(string(out), "timeout: 0s\n") {
		t.Errorf("durations are not written as Go durations:\n%s", out)
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 500 * time.Millisecond: "500ms", time.Minute: "1m", time.Hour: "1h",
		90 * time.Minute: "1h30m", time.Hour + time.Second: "1h0m1s", -time.Minute: "-1m",
		10 * time.Minute: "10m", 1500 * time.Millisecond: "1.5s",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
		if back, err := time.ParseDuration(formatDuration(d)); err != nil || back != d {
			t.Errorf("formatDuration(%v) = %q does not parse back", d, formatDuration(d))
		}
	}
}

// TestSampleFile checks the documented example, which the packages install: it loads,
// validates, holds exactly the defaults (so that it documents them truthfully) and mentions every
// key.
func TestSampleFile(t *testing.T) {
	const path = examplePath
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	// The sample sets collector.gpu only, and lists the others in comments: this package's tests
	// register stand-ins, not the real collectors (cmd/capstan checks those).
	want := Default()
	if !sameConfig(c, want) {
		t.Errorf("the sample's values differ from Default():\n%+v\n%+v", c, want)
	}
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range append(leafKeys(),
		"collector.gpu.enabled", "collector.gpu.interval", "collector.gpu.timeout") {
		if _, set := c.src.lines[key]; set {
			continue
		}
		// A key left to its default must at least appear commented out.
		last := key[strings.LastIndex(key, ".")+1:]
		if !regexp.MustCompile(`(?m)^\s*#\s*` + regexp.QuoteMeta(last) + `:`).Match(text) {
			t.Errorf("%s does not document %s", path, key)
		}
	}
}

// Every export carries node.name (host.name, target_info in every scrape): a 10 MB name is
// refused, and the message gives its length rather than the name.
func TestNodeNameBounded(t *testing.T) {
	c := Default()
	c.Node.Name = strings.Repeat("n", 10<<20)
	want := "node.name: a name of 10485760 characters is too long (allowed: 1 to 253 characters, no control characters)"
	if err := c.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate() with a 10 MB node.name = %.300v, want %s", err, want)
	}
}

// ValidName is the one rule for group and node names, which etcd keys hold as one segment.
func TestValidName(t *testing.T) {
	for s, ok := range map[string]bool{
		"row3": true, "node-1.example:a_b": true, strings.Repeat("n", 253): true,
		"": false, "a/b": false, "a b": false, strings.Repeat("n", 254): false, "ünï": false,
	} {
		if err := ValidName(s); (err == nil) != ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", s, err, ok)
		}
	}
}
