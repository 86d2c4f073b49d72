package config

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// configFileFlag is the one flag that is not a key: it names the file the keys come from.
const configFileFlag = "config.file"

// flagHelp is the help text of each key's flag; pflag appends the default.
var flagHelp = map[string]string{
	"node.name":                     "name of this host in every export; unset, it is $NODE_NAME, else the hostname",
	"log.level":                     "log level: debug, info, warn or error",
	"log.format":                    "log format: logfmt or json",
	"path.sysfs":                    "mount point of sysfs; point it at the host's /sys when running in a container",
	"path.procfs":                   "mount point of procfs; point it at the host's /proc when running in a container",
	"gpu.backend":                   "GPU backend: auto (NVML when it loads, else none), nvml, sim (simulated GPUs) or none",
	"gpu.sim.model":                 "simulated GPU model: A100, H100, H200 or B200",
	"gpu.sim.count":                 "number of simulated GPUs, 1 to 64",
	"gpu.sim.trace":                 "simulated workload: steady, bursty, training, inference, imbalanced, or a .csv trace file",
	"gpu.sim.seed":                  "seed of the simulation's randomness; the same seed gives the same run",
	"nic.include":                   "regular expression of the network interface names the nic collector reports; empty means all",
	"nic.exclude":                   "regular expression of the network interface names the nic collector leaves out; empty leaves out none",
	"workload.max-series":           "most cgroups the workload collector exports per collection, the busiest first, 1 to 100000",
	"workload.active-intervals":     "the workload collector exports a cgroup while it was active in this many last collections, 1 to 100",
	"workload.pod-resources-socket": "kubelet pod-resources socket naming the pods that hold GPUs; empty or absent: not used",
	"otlp.endpoint":                 "OTLP receiver to push metrics to (host:port, or an http:// or https:// URL); empty turns OTLP off",
	"otlp.protocol":                 "OTLP transport: grpc or http",
	"otlp.insecure":                 "push OTLP without TLS (a host:port endpoint; a URL's scheme decides by itself)",
	"otlp.interval":                 "how often to push metrics, 1s to 1h",
	"otlp.timeout":                  "deadline of one push, 1s to 5m",
	"otlp.headers":                  "header sent with every push, as key=value; repeat the flag for more",
	"otlp.headers-file":             "file of key=value lines sent as headers; its keys win over --otlp.headers",
	"otlp.compression":              "compression of pushes: gzip or none",
	"otlp.temporality":              "temporality of sums and histograms: cumulative or delta",
	"otlp.tls.ca-file":              "PEM CA bundle that verifies the OTLP receiver (default: the system roots)",
	"otlp.tls.cert-file":            "PEM client certificate for mutual TLS; needs --otlp.tls.key-file",
	"otlp.tls.key-file":             "PEM private key of --otlp.tls.cert-file",
	"web.listen-address":            "address serving /metrics, /healthz and /readyz; empty turns it off",
	"web.config.file":               "exporter-toolkit web configuration file (TLS, basic auth) for the web endpoint",
	"stdout.enabled":                "print metrics to stdout as OTLP JSON lines, for debugging",
	"stdout.interval":               "how often to print metrics to stdout, 1s to 1h",
	"summary.interval":              "how often to print a table of the GPUs on the terminal, 1s to 1h; 0 turns it off",

	"capping.enabled":                  "cap GPU power to keep the node inside its budget (off: telemetry only)",
	"capping.dry-run":                  "compute and export limits but write none",
	"capping.period":                   "control period, 100ms to 10s",
	"capping.scope":                    "what the budget covers: gpu (GPU power) or node (GPU plus RAPL package power)",
	"capping.guard-band-percent":       "share of the budget kept free: setpoint = budget × (1 − guard band), 0 to 50",
	"capping.oversubscription-percent": "how far Σ GPU limits may exceed the budget while GPUs draw less than their limits, 0 to 100",
	"capping.headroom-watts":           "watts above its draw a GPU that is not power-bound gets, 0 to 200",
	"capping.deadband-watts":           "limit changes smaller than this are not written, 0 to 100",
	"capping.ramp-percent":             "most the total cap rises per period, in % of the GPUs' Σ max, 1 to 100",
	"capping.lost-periods":             "periods of missing power readings before failsafe caps (budget / GPUs), 1 to 100",
	"capping.state-file":               "file holding the GPUs' original limits, written before the first limit",
	"capping.on-exit":                  "on SIGTERM: restore the original limits, or keep the current ones",
	"capping.after-crash":              "at start, with a state file left by a crash: restore the original limits, or adopt the current ones",
	"capping.weights":                  "priority weight of a GPU, as INDEX=WEIGHT or UUID=WEIGHT (1 to 1000; default 1); repeat the flag for more",
	"budget.source":                    "where the node budget comes from: static (--budget.watts), file (--budget.file) or etcd (the group's allocation, --etcd.*)",
	"budget.watts":                     "static node budget in watts",
	"budget.file":                      "YAML or JSON file {watts: N, ttl: DURATION}, re-read within one period of a change",
	"budget.fallback-watts":            "budget once the budget's TTL ran out; 0 means the GPUs' Σ min",
	"etcd.endpoints":                   "comma-separated etcd client URLs of the cluster budget (budget.source etcd)",
	"etcd.group":                       "group whose power budget this node shares (a row, a PDU, a job)",
	"etcd.tls.ca-file":                 "PEM CA bundle that verifies the etcd servers",
	"etcd.tls.cert-file":               "PEM client certificate for etcd; needs --etcd.tls.key-file",
	"etcd.tls.key-file":                "PEM private key of --etcd.tls.cert-file",
	"etcd.username":                    "etcd user of this node; needs --etcd.password-file",
	"etcd.password-file":               "file holding the etcd user's password",
	"etcd.lease-ttl":                   "TTL of the node's lease, whole seconds, 1s to 10m: a node cut off from etcd holds its grant this long, then drops to its floor",
	"etcd.prefix":                      "etcd key prefix of Capstan's records",
	"etcd.priority":                    "this node's weight when the group budget is shared, 1 to 1000",
}

// boundValue is a flag bound to one key of the Config given to BindFlags.
type boundValue interface {
	pflag.Value
	// configKey is the dotted key the flag sets.
	configKey() string
	// copyTo copies the key's value from src, the bound Config, into dst.
	copyTo(dst, src *Config)
}

// BindFlags registers a flag for every key, named like the key (--gpu.sim.count), bound to cfg
// and showing cfg's values as defaults; for each registered collector --collector.<name>,
// --no-collector.<name>, --collector.<name>.interval and --collector.<name>.timeout; and
// --config.file. Pass cfg = Default() and later hand the same cfg to Resolve.
func BindFlags(fs *pflag.FlagSet, cfg *Config) {
	fs.String(configFileFlag, "", "YAML configuration file; flags given on the command line override its values")
	bindStruct(fs, cfg, reflect.TypeFor[Config](), "", nil)
	for _, name := range RegisteredCollectors() {
		key := join("collector", name)
		on := fs.VarPF(&collectorFlag{cfg: cfg, name: name, field: "enabled"}, key, "",
			"enable the "+name+" collector")
		on.NoOptDefVal = "true"
		off := fs.VarPF(&collectorFlag{cfg: cfg, name: name, field: "enabled", negate: true}, "no-"+key, "",
			"disable the "+name+" collector")
		off.NoOptDefVal, off.DefValue = "true", "false"
		fs.Var(&collectorFlag{cfg: cfg, name: name, field: "interval"}, key+".interval",
			fmt.Sprintf("how often the %s collector runs, %s to %s", name,
				formatDuration(minCollectorInterval), formatDuration(maxCollectorInterval)))
		fs.Var(&collectorFlag{cfg: cfg, name: name, field: "timeout"}, key+".timeout",
			"deadline of one "+name+" collection; 0 means the interval")
	}
}

// bindStruct registers the flags of t's fields, recursing into nested structs.
func bindStruct(fs *pflag.FlagSet, cfg *Config, t reflect.Type, prefix string, index []int) {
	for i := range t.NumField() {
		f := t.Field(i)
		name := yamlName(f)
		if name == "" {
			continue
		}
		key, idx := join(prefix, name), append(slices.Clone(index), i)
		switch {
		case f.Type == reflect.TypeFor[map[string]Collector]():
			// Bound per registered collector by BindFlags.
		case f.Type == reflect.TypeFor[map[string]string]():
			fs.Var(&mapFlag{cfg: cfg, key: key, index: idx}, key, flagHelp[key])
		case f.Type.Kind() == reflect.Struct:
			bindStruct(fs, cfg, f.Type, key, idx)
		case kindOf(f.Type) == kindBool:
			fl := fs.VarPF(&boolFlag{fieldFlag{cfg: cfg, key: key, index: idx}}, key, "", flagHelp[key])
			fl.NoOptDefVal = "true"
		default:
			fs.Var(&fieldFlag{cfg: cfg, key: key, index: idx}, key, flagHelp[key])
		}
	}
}

// Resolve computes the effective configuration after the command line was parsed: Default(),
// then the --config.file (if given), then every flag the user set (Changed), then Validate.
// flags is the Config that BindFlags bound, which holds the flags' values. An error from a
// flag's value names the flag: "--gpu.sim.count: 0 is out of range (allowed: 1 to 64)".
// Call it again to reload the file; the command line still wins.
func Resolve(fs *pflag.FlagSet, flags *Config) (*Config, error) {
	cfg := Default()
	if path, err := fs.GetString(configFileFlag); err == nil && path != "" {
		loaded, err := Load(path)
		if err != nil {
			return nil, err
		}
		cfg = loaded
	}
	cfg.src.flags = map[string]string{}
	// VisitAll and Changed, not Visit: cobra parses persistent flags through a child's FlagSet,
	// so the FlagSet that defined them never learns they were set, but the *Flag does.
	fs.VisitAll(func(f *pflag.Flag) {
		if b, ok := f.Value.(boundValue); ok && f.Changed {
			b.copyTo(cfg, flags)
			cfg.src.flags[b.configKey()] = f.Name
		}
	})
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// fieldFlag binds a flag to a string, integer or duration field, found by its index path.
type fieldFlag struct {
	cfg   *Config
	key   string
	index []int
}

func (f *fieldFlag) field(c *Config) reflect.Value {
	return reflect.ValueOf(c).Elem().FieldByIndex(f.index)
}

func (f *fieldFlag) Set(s string) error {
	if p := setLeaf(f.field(f.cfg), s, true); p != "" {
		return fmt.Errorf("%s %s", quote(s), p)
	}
	return nil
}

func (f *fieldFlag) String() string {
	if f.cfg == nil {
		return ""
	}
	return formatLeaf(f.field(f.cfg))
}

func (f *fieldFlag) Type() string {
	switch kindOf(reflect.TypeFor[Config]().FieldByIndex(f.index).Type) {
	case kindInt:
		return "int"
	case kindBool:
		return "bool"
	case kindDuration:
		return "duration"
	}
	return "string"
}

func (f *fieldFlag) configKey() string { return f.key }

func (f *fieldFlag) copyTo(dst, src *Config) { f.field(dst).Set(f.field(src)) }

// boolFlag is a fieldFlag that may be given without a value (--otlp.insecure).
type boolFlag struct{ fieldFlag }

func (*boolFlag) IsBoolFlag() bool { return true }

// mapFlag binds a repeatable key=value flag to a map[string]string field; given keys are added
// to the file's, winning per key.
type mapFlag struct {
	cfg   *Config
	key   string
	index []int
}

func (f *mapFlag) field(c *Config) reflect.Value {
	return reflect.ValueOf(c).Elem().FieldByIndex(f.index)
}

func (f *mapFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%s is not key=value", quote(s))
	}
	m := f.field(f.cfg)
	if m.IsNil() {
		m.Set(reflect.MakeMap(m.Type()))
	}
	m.SetMapIndex(reflect.ValueOf(k), reflect.ValueOf(v))
	return nil
}

func (f *mapFlag) String() string {
	if f.cfg == nil {
		return ""
	}
	m, _ := f.field(f.cfg).Interface().(map[string]string)
	pairs := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		pairs = append(pairs, k+"="+m[k])
	}
	return strings.Join(pairs, ",")
}

func (*mapFlag) Type() string { return "key=value" }

func (f *mapFlag) configKey() string { return f.key }

func (f *mapFlag) copyTo(dst, src *Config) {
	from, to := f.field(src), f.field(dst)
	if from.Len() == 0 {
		return
	}
	if to.IsNil() {
		to.Set(reflect.MakeMap(to.Type()))
	}
	iter := from.MapRange()
	for iter.Next() {
		to.SetMapIndex(iter.Key(), iter.Value())
	}
}

// collectorFlag binds a flag to one field of collector.<name>; negate makes --no-collector.<name>.
type collectorFlag struct {
	cfg    *Config
	name   string
	field  string // enabled, interval or timeout
	negate bool
}

func (f *collectorFlag) Set(s string) error {
	c := f.cfg.collectorEntry(f.name)
	switch f.field {
	case "enabled":
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%s %s", quote(s), notBoolean)
		}
		c.Enabled = b != f.negate
	default:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%s %s", quote(s), notDuration)
		}
		if f.field == "interval" {
			c.Interval = d
		} else {
			c.Timeout = d
		}
	}
	if f.cfg.Collectors == nil {
		f.cfg.Collectors = map[string]Collector{}
	}
	f.cfg.Collectors[f.name] = c
	return nil
}

func (f *collectorFlag) String() string {
	if f.cfg == nil {
		return ""
	}
	c := f.cfg.collectorEntry(f.name)
	switch f.field {
	case "enabled":
		return strconv.FormatBool(c.Enabled != f.negate)
	case "interval":
		return formatDuration(c.Interval)
	}
	return formatDuration(c.Timeout)
}

func (f *collectorFlag) Type() string {
	if f.field == "enabled" {
		return "bool"
	}
	return "duration"
}

func (f *collectorFlag) IsBoolFlag() bool { return f.field == "enabled" }

func (f *collectorFlag) configKey() string { return join("collector", f.name) + "." + f.field }

func (f *collectorFlag) copyTo(dst, src *Config) {
	from, to := src.collectorEntry(f.name), dst.collectorEntry(f.name)
	switch f.field {
	case "enabled":
		to.Enabled = from.Enabled
	case "interval":
		to.Interval = from.Interval
	default:
		to.Timeout = from.Timeout
	}
	if dst.Collectors == nil {
		dst.Collectors = map[string]Collector{}
	}
	dst.Collectors[f.name] = to
}
