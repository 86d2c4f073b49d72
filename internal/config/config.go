// Package config is Capstan's configuration: one YAML file whose every key is also a flag of the
// same dotted name (`otlp.endpoint` in the file is `--otlp.endpoint` on the command line).
//
// Precedence is Default() < the --config.file < flags given on the command line: BindFlags
// registers the flags, Resolve combines the three and validates. Every problem a user can fix
// is an *Error naming the file and line, or the flag, the dotted key, the value and what is
// allowed.
package config

import (
	"fmt"
	"os"
	"reflect"
	"time"

	"github.com/capstan-power/capstan/collectors"
)

// Config is the whole agent configuration. The yaml tags are the keys of the file; nested
// structs make dotted keys (gpu.sim.model). Each key's help and what it allows are declared once,
// at its field, in tags that the flags, Validate and docs/configuration.md all read; the
// collectors' own options (Sections) are declared the same way in their packages:
//
//	help:"…"          the flag's help; {allowed} stands for what the tags below allow, else it
//	                  is appended (", 1 to 64" for a range, ": a, b or c" for a list); in a
//	                  struct used twice (TLS), {peer} is the help of the field holding it and
//	                  {sibling:key} the flag of a sibling key
//	range:"lo,hi"     integer or duration bounds, inclusive
//	zero:"…"          0 is also allowed, and means what the tag says ("to turn it off")
//	oneof:"a,b"       allowed values; fold:"true" compares them case-insensitively, or:"…"
//	                  names what else a hand-written rule accepts
//	format:"…"        regexp (RE2), hostport (host:port or empty) or name (an etcd key segment)
//	required:"hint"   must not be empty; the hint says what to set
//	if:"key"          checked only while the sibling boolean key is true
//	check:"manual"    the bounds are applied by a hand-written rule in validate.go (the rule
//	                  depends on other keys), which reads them from here
//	doc-default:"…"   the default as the reference states it, when it depends on the host
type Config struct {
	Node       Node                 `yaml:"node"`
	Log        Log                  `yaml:"log"`
	Memory     Memory               `yaml:"memory"`
	Path       Path                 `yaml:"path"`
	GPU        GPU                  `yaml:"gpu"`
	Collectors map[string]Collector `yaml:"collector"`
	// Sections holds the options of the collectors that declare their own (nic, workload), by
	// top-level key; the file and the flags show them here, between collector and otlp.
	Sections Sections `yaml:"-"`
	// Metrics turns single metrics on or off: metrics.NAME.enabled.
	Metrics MetricToggles `yaml:"metrics" help:"turns single metrics on or off by name, as metrics.NAME.enabled in the file; on the command line NAME=true or NAME=false, repeatable"`
	OTLP    OTLP          `yaml:"otlp"`
	Web     Web           `yaml:"web"`
	Stdout  Stdout        `yaml:"stdout"`
	Summary Summary       `yaml:"summary"`
	Capping Capping       `yaml:"capping"`
	Budget  Budget        `yaml:"budget"`
	Etcd    Etcd          `yaml:"etcd"`

	// src remembers where values came from, so that Validate can point at the line or flag.
	src sources
}

// Sections maps a collector's section key to its options, the collectors.Config its factory's
// CreateDefaultConfig made (a pointer to a struct).
type Sections map[string]collectors.Config

// Node names this host in every export.
type Node struct {
	// Name defaults to $NODE_NAME (the DaemonSet sets it from the downward API), else the hostname.
	Name string `yaml:"name" required:"set it, or $NODE_NAME" doc-default:"$NODE_NAME, else the hostname" help:"name of this host in every export; unset, it is $NODE_NAME, else the hostname"`
}

// Log configures the agent's own logs.
type Log struct {
	Level  string `yaml:"level" oneof:"debug,info,warn,error" help:"log level"`
	Format string `yaml:"format" oneof:"logfmt,json" help:"log format"`
}

// Memory tunes the Go runtime's memory use for a long-lived daemon.
type Memory struct {
	// SoftLimitMiB is the runtime's soft memory limit (debug.SetMemoryLimit): near it, the
	// garbage collector runs more often rather than let the heap grow. It bounds the runtime's
	// own memory (heap, stacks), not the binary's pages, which most of the RSS is.
	SoftLimitMiB int `yaml:"soft-limit-mib" range:"8,65536" zero:"leaves the runtime's default ($GOMEMLIMIT, else none)" help:"soft limit of the Go runtime's memory in MiB: near it the garbage collector works harder instead of growing the heap; set it below a container's memory limit"`
	// GCPercent is the garbage collector's target (debug.SetGCPercent, $GOGC): the heap may
	// grow this many percent over what the last collection kept before the next one runs.
	GCPercent int `yaml:"gc-percent" range:"10,1000" zero:"is $GOGC when set, else 100 with OTLP on and 50 without" help:"garbage collector target in percent of the live heap (GOGC): lower keeps the heap smaller for more CPU; without OTLP the agent's default 50 rather than Go's 100 trims its resident memory for a few CPU ticks a minute; with OTLP on, the agent collects right after each export (at most every 5 s; never while the collector is off), which bounds the heap, and 100 spares a second cycle inside each export"`
}

// Path locates the kernel's pseudo-filesystems, so that a container can read the host's.
type Path struct {
	Sysfs  string `yaml:"sysfs" required:"the default is /sys" help:"mount point of sysfs; point it at the host's /sys when running in a container"`
	Procfs string `yaml:"procfs" required:"the default is /proc" help:"mount point of procfs; point it at the host's /proc when running in a container"`
}

// GPU selects the GPU backend, which the agent opens once for the GPU collector, the workload
// collector and the capping controller.
type GPU struct {
	// Backend is auto (NVML when it loads, else no GPU collection), nvml, sim or none.
	Backend string `yaml:"backend" oneof:"auto,nvml,sim,none" help:"GPU backend: {allowed}; auto is NVML when it loads, else none; sim is simulated GPUs"`
	Sim     GPUSim `yaml:"sim"`
	// PowerSmoothing is applied to every GPU that supports it when the backend opens.
	PowerSmoothing GPUPowerSmoothing `yaml:"power-smoothing"`
}

// GPUPowerSmoothing sets the firmware power smoothing of Blackwell and later GPUs (NVML
// PowerSmoothing*): the board holds a floor of power and limits how fast its draw rises and
// falls, per the active preset profile. GPUs without it are left alone.
type GPUPowerSmoothing struct {
	State   string `yaml:"state" oneof:"unchanged,enabled,disabled" help:"firmware power smoothing when the agent starts: {allowed} (unchanged: leave the GPUs as they are)"`
	Profile int    `yaml:"profile" range:"-1,4" help:"preset profile to activate when the agent starts, {allowed}; -1 leaves the active one"`
}

// GPUSim configures the simulated fleet of the sim backend.
type GPUSim struct {
	Model string `yaml:"model" oneof:"A100,H100,H200,B200" fold:"true" help:"simulated GPU model"`
	Count int    `yaml:"count" range:"1,64" help:"number of simulated GPUs"`
	Trace string `yaml:"trace" oneof:"steady,bursty,training,inference,imbalanced,lockstep,roleswap" or:"a path ending in .csv" check:"manual" help:"simulated workload"`
	Seed  int64  `yaml:"seed" help:"seed of the simulation's randomness; the same seed gives the same run"`
	// StateFile makes the simulated GPUs keep their limits across agent restarts, as hardware
	// does; FaultFile injects NVML faults. Both are for tests and soak runs.
	StateFile string `yaml:"state-file" help:"JSON file where the simulated GPUs keep their state (limits survive agent restarts, as on hardware); rewritten on every limit change and every 100 ms; empty is off"`
	FaultFile string `yaml:"fault-file" help:"JSON file of NVML faults to inject into the simulated GPUs (errors, hangs, lost GPUs, out-of-band limits, refused writes, driver reloads), re-read when it changes; empty is off"`
	MIG       string `yaml:"mig" check:"manual" help:"MIG layout of every simulated GPU (7x1g.10gb; 3g.40gb,2x2g.20gb; on; off), or one per GPU separated by ';'; empty is MIG off"`
}

// Collector is the per-collector part of the config, under collector.<name>.
type Collector struct {
	Enabled  bool          `yaml:"enabled"`
	Interval time.Duration `yaml:"interval"`
	// Timeout bounds one collection; zero means the interval.
	Timeout time.Duration `yaml:"timeout"`
}

// OTLP configures the OTLP push exporter; it is off while Endpoint is empty.
type OTLP struct {
	Endpoint string        `yaml:"endpoint" help:"OTLP receiver to push metrics to (host:port, or an http:// or https:// URL); empty turns OTLP off"`
	Protocol string        `yaml:"protocol" oneof:"grpc,http" help:"OTLP transport"`
	Insecure bool          `yaml:"insecure" help:"push OTLP without TLS (a host:port endpoint; a URL's scheme decides by itself)"`
	Interval time.Duration `yaml:"interval" range:"1s,1h" help:"how often to push metrics"`
	Timeout  time.Duration `yaml:"timeout" range:"1s,5m" help:"deadline of one push"`
	// ShutdownTimeout bounds the last push on a stop: with the receiver down, a stop would
	// otherwise wait out the whole push timeout, too close to systemd's and Kubernetes' stop
	// timeouts, which then kill the agent.
	ShutdownTimeout time.Duration     `yaml:"shutdown-timeout" range:"100ms,1m" help:"deadline of the last push when the agent stops; a receiver that is down delays the stop by at most this"`
	Headers         map[string]string `yaml:"headers" help:"header sent with every push, as key=value; repeat the flag for more"`
	HeadersFile     string            `yaml:"headers-file" help:"file of key=value lines sent as headers; its keys win over --otlp.headers"`
	Compression     string            `yaml:"compression" oneof:"gzip,none" help:"compression of pushes"`
	Temporality     string            `yaml:"temporality" oneof:"cumulative,delta" help:"temporality of sums and histograms"`
	TLS             TLS               `yaml:"tls" help:"OTLP receiver"`
}

// TLS names PEM files for a TLS client. The help of its keys names the peer, from the help of
// the TLS field that holds it.
type TLS struct {
	CAFile   string `yaml:"ca-file" help:"PEM CA bundle that verifies the {peer}"`
	CertFile string `yaml:"cert-file" help:"PEM client certificate for mutual TLS with the {peer}; needs {sibling:key-file}"`
	KeyFile  string `yaml:"key-file" help:"PEM private key of {sibling:cert-file}"`
}

// Web configures the Prometheus pull endpoint.
type Web struct {
	// ListenAddress is where /metrics, /healthz and /readyz are served; empty turns it off.
	ListenAddress string `yaml:"listen-address" format:"hostport" help:"address serving /metrics, /healthz and /readyz; empty turns it off"`
	// Config is the exporter-toolkit web config (TLS, basic auth).
	Config WebConfig `yaml:"config"`
}

// WebConfig points at the exporter-toolkit web configuration file.
type WebConfig struct {
	File string `yaml:"file" help:"exporter-toolkit web configuration file (TLS, basic auth) for the web endpoint"`
}

// Stdout configures the stdout exporter (OTLP JSON lines), for debugging.
type Stdout struct {
	Enabled  bool          `yaml:"enabled" help:"print metrics to stdout as OTLP JSON lines, for debugging"`
	Interval time.Duration `yaml:"interval" range:"1s,1h" if:"enabled" help:"how often to print metrics to stdout"`
}

// Summary configures the human-readable table on the terminal.
type Summary struct {
	// Interval between tables; zero turns the summary off.
	Interval time.Duration `yaml:"interval" range:"1s,1h" zero:"to turn it off" help:"how often to print a table of the GPUs on the terminal"`
}

// Capping configures the GPU power-capping controller (package capping). It is off unless
// Enabled: telemetry only is the safe default.
type Capping struct {
	Enabled bool `yaml:"enabled" help:"cap GPU power to keep the node inside its budget (off: telemetry only)"`
	// DryRun computes and exports limits but writes none.
	DryRun bool          `yaml:"dry-run" help:"compute and export limits but write none"`
	Period time.Duration `yaml:"period" range:"100ms,10s" help:"control period"`
	// Scope is gpu (measured power is the GPUs' sum) or node (plus RAPL package power).
	Scope                   string `yaml:"scope" oneof:"gpu,node" help:"what the budget covers: {allowed} (gpu: GPU power; node: GPU plus RAPL package power)"`
	GuardBandPercent        int    `yaml:"guard-band-percent" range:"0,50" help:"share of the budget kept free: setpoint = budget × (1 − guard band)"`
	OversubscriptionPercent int    `yaml:"oversubscription-percent" range:"0,100" help:"how far Σ GPU limits may exceed the budget while GPUs draw less than their limits"`
	HeadroomWatts           int    `yaml:"headroom-watts" range:"0,200" help:"watts above its draw a GPU that is not power-bound gets"`
	DeadbandWatts           int    `yaml:"deadband-watts" range:"0,100" help:"limit changes smaller than this are not written"`
	// RampPercent is the most the total cap rises per period, in % of the GPUs' Σ max.
	RampPercent int `yaml:"ramp-percent" range:"1,100" help:"most the total cap rises per period, in % of the GPUs' Σ max"`
	// MaxRiseWattsPerSecond limits how fast Σ GPU limits may rise; 0 turns the limit off.
	MaxRiseWattsPerSecond int `yaml:"max-rise-watts-per-second" range:"0,1000000" help:"most Σ GPU limits may rise per second, {allowed}; 0 turns the limit off"`
	// LostPeriods of missing power readings switch to failsafe caps (budget / GPUs).
	LostPeriods int    `yaml:"lost-periods" range:"1,100" help:"periods of missing power readings before failsafe caps (budget / GPUs)"`
	StateFile   string `yaml:"state-file" required:"the default is /var/lib/capstan/state.json" check:"manual" help:"file holding the GPUs' original limits, written before the first limit (needed while capping writes limits)"`
	OnExit      string `yaml:"on-exit" oneof:"restore,keep" help:"on SIGTERM, restore the original limits or keep the current ones: {allowed}"`
	AfterCrash  string `yaml:"after-crash" oneof:"restore,adopt" help:"at start, with a state file left by a crash, restore the original limits or adopt the current ones: {allowed}"`
	// Weights maps a GPU index or UUID to its priority weight, an integer 1 to 1000.
	Weights map[string]string `yaml:"weights" range:"1,1000" check:"manual" help:"priority weight of a GPU, as INDEX=WEIGHT or UUID=WEIGHT ({allowed}; default 1); repeat the flag for more"`
}

// Budget configures where the node's power budget comes from (package capping/budget).
type Budget struct {
	Source string `yaml:"source" oneof:"static,file,etcd" help:"where the node budget comes from: {allowed} (static: --budget.watts; file: --budget.file; etcd: the group's allocation, --etcd.*)"`
	Watts  int    `yaml:"watts" range:"1,1000000" check:"manual" help:"static node budget in watts, {allowed} (needed with capping on and budget.source static)"`
	// File is a YAML or JSON file {watts: N, ttl: DURATION}, re-read when it changes.
	File string `yaml:"file" required:"budget.source file needs the file's path" check:"manual" help:"YAML or JSON file {watts: N, ttl: DURATION}, re-read within one period of a change"`
	// FallbackWatts applies once a budget's TTL ran out; 0 means the GPUs' Σ min.
	FallbackWatts int `yaml:"fallback-watts" range:"0,1000000" help:"budget once the budget's TTL ran out, {allowed}; 0 means the GPUs' Σ min"`
}

// Etcd locates the etcd cluster and the group of budget.source etcd (package capping/cluster).
// Its keys are checked only with capping on and budget.source etcd.
type Etcd struct {
	// Endpoints is a comma-separated list of etcd client URLs.
	Endpoints string `yaml:"endpoints" required:"budget.source etcd needs the etcd client URLs, e.g. https://etcd-0:2379,https://etcd-1:2379" help:"comma-separated etcd client URLs of the cluster budget (budget.source etcd)"`
	Group     string `yaml:"group" help:"group whose power budget this node shares (a row, a PDU, a job); may be left out with etcd.domain, whose first segment it is"`
	// Domain is the leaf power domain the node attaches to, a path from the group's root.
	Domain string `yaml:"domain" help:"power domain the node attaches to, a path from the group down (site/row3/rack12; its first segment is etcd.group); empty: the group itself"`
	// DomainLabels names the Kubernetes node labels whose values, in order, give the domain
	// below etcd.group; the agent reads them from its own Node (package internal/kubenode).
	DomainLabels string `yaml:"domain-labels" help:"comma-separated Kubernetes node label keys whose values, in order, are the path of the node's power domain below etcd.group (e.g. capstan.io/hall,capstan.io/row,capstan.io/rack); the agent reads its own Node (node.name) from the API server; not with etcd.domain"`
	TLS          TLS    `yaml:"tls" help:"etcd servers"`
	Username     string `yaml:"username" help:"etcd user of this node; needs --etcd.password-file"`
	PasswordFile string `yaml:"password-file" help:"file holding the etcd user's password"`
	// LeaseTTL bounds how long a node cut off from etcd holds its grant; whole seconds.
	LeaseTTL time.Duration `yaml:"lease-ttl" range:"1s,10m" help:"TTL of the node's lease, whole seconds, {allowed}: a node cut off from etcd holds its grant this long, then drops to its floor"`
	Prefix   string        `yaml:"prefix" help:"etcd key prefix of Capstan's records"`
	// Priority is the node's weight in the group's water-filling, 1 to 1000.
	Priority int `yaml:"priority" range:"1,1000" help:"this node's weight when the group budget is shared"`
}

// sources maps dotted keys to where their values were set: a line of file, or a flag.
type sources struct {
	file  string
	lines map[string]int
	flags map[string]string
}

// Default returns the configuration that applies when neither a file nor a flag says otherwise,
// with one collector.<name> entry per registered collector.
func Default() *Config {
	c := &Config{
		Node: Node{Name: defaultNodeName()},
		Log:  Log{Level: "info", Format: "logfmt"},
		Path: Path{Sysfs: "/sys", Procfs: "/proc"},
		GPU: GPU{Backend: "auto", Sim: GPUSim{Model: "H100", Count: 8, Trace: "training", Seed: 1},
			PowerSmoothing: GPUPowerSmoothing{State: "unchanged", Profile: -1}},
		Collectors: map[string]Collector{},
		Sections:   Sections{},
		Metrics:    MetricToggles{},
		OTLP: OTLP{
			Protocol:        "grpc",
			Interval:        10 * time.Second,
			Timeout:         10 * time.Second,
			ShutdownTimeout: 3 * time.Second,
			Compression:     "gzip",
			Temporality:     "cumulative",
		},
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
	for _, f := range collectors.Factories() {
		c.Collectors[f.Name] = Collector{Enabled: f.EnabledByDefault, Interval: f.Interval}
		if key := f.SectionKey(); key != "" {
			if _, clash := fieldIndex(reflect.ValueOf(c).Elem(), key); clash {
				panic(fmt.Sprintf("config: collector %q declares section %q, which is a key of its own", f.Name, key))
			}
			opts := f.CreateDefaultConfig()
			if t := reflect.TypeOf(opts); t == nil || t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
				panic(fmt.Sprintf("config: collector %q: CreateDefaultConfig returns %T, want a pointer to a struct", f.Name, opts))
			}
			c.Sections[key] = opts
		}
	}
	return c
}

// defaultNodeName prefers $NODE_NAME because in Kubernetes the pod's hostname is not the node's.
func defaultNodeName() string {
	if name := os.Getenv("NODE_NAME"); name != "" {
		return name
	}
	name, err := os.Hostname()
	if err != nil {
		return "" // Validate then asks for node.name, which beats guessing a name.
	}
	return name
}

// Collector returns the effective settings of the named collector: its entry, else its
// registered defaults, with a zero Timeout replaced by the Interval.
func (c *Config) Collector(name string) Collector {
	cc := c.collectorEntry(name)
	if cc.Timeout == 0 {
		cc.Timeout = cc.Interval
	}
	return cc
}

// collectorEntry returns collector.<name> as set (Timeout 0 kept), else the registered defaults.
func (c *Config) collectorEntry(name string) Collector {
	if cc, ok := c.Collectors[name]; ok {
		return cc
	}
	if f, ok := collectors.FactoryOf(name); ok {
		return Collector{Enabled: f.EnabledByDefault, Interval: f.Interval}
	}
	return Collector{}
}

// CollectorConfig returns the named collector's own options, validated with the rest: its
// section, else its defaults; nil when it has none.
func (c *Config) CollectorConfig(name string) collectors.Config {
	f, ok := collectors.FactoryOf(name)
	if !ok || f.SectionKey() == "" {
		return nil
	}
	if opts, ok := c.Sections[f.SectionKey()]; ok {
		return opts
	}
	return f.CreateDefaultConfig()
}

// RegisteredCollectors returns the names of the registered collectors, sorted.
func RegisteredCollectors() []string {
	fs := collectors.Factories()
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.Name
	}
	return names
}
