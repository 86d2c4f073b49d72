// Package config is Capstan's configuration: one YAML file whose every key is also a flag of the
// same dotted name (`otlp.endpoint` in the file is `--otlp.endpoint` on the command line).
//
// Precedence is Default() < the --config.file < flags given on the command line: BindFlags
// registers the flags, Resolve combines the three and validates. Every problem a user can fix
// is an *Error naming the file and line, or the flag, the dotted key, the value and what is
// allowed.
package config

import (
	"os"
	"time"
)

// Config is the whole agent configuration. The yaml tags are the keys of the file; nested
// structs make dotted keys (gpu.sim.model).
type Config struct {
	Node       Node                 `yaml:"node"`
	Log        Log                  `yaml:"log"`
	Path       Path                 `yaml:"path"`
	GPU        GPU                  `yaml:"gpu"`
	Collectors map[string]Collector `yaml:"collector"`
	NIC        NIC                  `yaml:"nic"`
	Workload   Workload             `yaml:"workload"`
	OTLP       OTLP                 `yaml:"otlp"`
	Web        Web                  `yaml:"web"`
	Stdout     Stdout               `yaml:"stdout"`
	Summary    Summary              `yaml:"summary"`
	Capping    Capping              `yaml:"capping"`
	Budget     Budget               `yaml:"budget"`
	Etcd       Etcd                 `yaml:"etcd"`

	// src remembers where values came from, so that Validate can point at the line or flag.
	src sources
}

// Node names this host in every export.
type Node struct {
	// Name defaults to $NODE_NAME (the DaemonSet sets it from the downward API), else the hostname.
	Name string `yaml:"name"`
}

// Log configures the agent's own logs.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // logfmt, json
}

// Path locates the kernel's pseudo-filesystems, so that a container can read the host's.
type Path struct {
	Sysfs  string `yaml:"sysfs"`
	Procfs string `yaml:"procfs"`
}

// GPU selects the GPU backend.
type GPU struct {
	// Backend is auto (NVML when it loads, else no GPU collection), nvml, sim or none.
	Backend string `yaml:"backend"`
	Sim     GPUSim `yaml:"sim"`
}

// GPUSim configures the simulated fleet of the sim backend.
type GPUSim struct {
	Model string `yaml:"model"` // A100, H100, H200, B200
	Count int    `yaml:"count"`
	Trace string `yaml:"trace"` // steady, bursty, training, inference, imbalanced, or a CSV file
	Seed  int64  `yaml:"seed"`
}

// Collector is the per-collector part of the config, under collector.<name>.
type Collector struct {
	Enabled  bool          `yaml:"enabled"`
	Interval time.Duration `yaml:"interval"`
	// Timeout bounds one collection; zero means the interval.
	Timeout time.Duration `yaml:"timeout"`
}

// NIC selects the network interfaces the nic collector reports, by name: an interface is
// reported when Include is empty or matches, and Exclude is empty or does not match.
type NIC struct {
	Include string `yaml:"include"` // Go regular expression (RE2)
	Exclude string `yaml:"exclude"`
}

// DefaultNICExclude leaves out loopback and the per-container links of container runtimes and
// CNI plugins, whose number follows the pods and would swamp a node's series.
const DefaultNICExclude = `^(lo|veth.*|cali.*|lxc.*|docker.*)$`

// Workload bounds what the workload collector exports and says where the kubelet is.
type Workload struct {
	// MaxSeries is the most cgroups exported per collection, the busiest first; the rest are
	// counted in capstan.workload.series.dropped.
	MaxSeries int `yaml:"max-series"`
	// ActiveIntervals: a cgroup is exported while it was active in this many last collections.
	ActiveIntervals int `yaml:"active-intervals"`
	// PodResourcesSocket is the kubelet's pod-resources API, used when it exists; empty: not used.
	PodResourcesSocket string `yaml:"pod-resources-socket"`
}

// Workload defaults.
const (
	DefaultWorkloadMaxSeries       = 2000
	DefaultWorkloadActiveIntervals = 5
	DefaultPodResourcesSocket      = "/var/lib/kubelet/pod-resources/kubelet.sock"
)

// OTLP configures the OTLP push exporter; it is off while Endpoint is empty.
type OTLP struct {
	Endpoint    string            `yaml:"endpoint"`
	Protocol    string            `yaml:"protocol"` // grpc, http
	Insecure    bool              `yaml:"insecure"`
	Interval    time.Duration     `yaml:"interval"`
	Timeout     time.Duration     `yaml:"timeout"`
	Headers     map[string]string `yaml:"headers"`
	HeadersFile string            `yaml:"headers-file"`
	Compression string            `yaml:"compression"` // gzip, none
	Temporality string            `yaml:"temporality"` // cumulative, delta
	TLS         TLS               `yaml:"tls"`
}

// TLS names PEM files for a TLS client.
type TLS struct {
	CAFile   string `yaml:"ca-file"`
	CertFile string `yaml:"cert-file"`
	KeyFile  string `yaml:"key-file"`
}

// Web configures the Prometheus pull endpoint.
type Web struct {
	// ListenAddress is where /metrics, /healthz and /readyz are served; empty turns it off.
	ListenAddress string `yaml:"listen-address"`
	// Config is the exporter-toolkit web config (TLS, basic auth).
	Config WebConfig `yaml:"config"`
}

// WebConfig points at the exporter-toolkit web configuration file.
type WebConfig struct {
	File string `yaml:"file"`
}

// Stdout configures the stdout exporter (OTLP JSON lines), for debugging.
type Stdout struct {
	Enabled  bool          `yaml:"enabled"`
	Interval time.Duration `yaml:"interval"`
}

// Summary configures the human-readable table on the terminal.
type Summary struct {
	// Interval between tables; zero turns the summary off.
	Interval time.Duration `yaml:"interval"`
}

// Capping configures the GPU power-capping controller (package capping). It is off unless
// Enabled: telemetry only is the safe default.
type Capping struct {
	Enabled bool `yaml:"enabled"`
	// DryRun computes and exports limits but writes none.
	DryRun bool          `yaml:"dry-run"`
	Period time.Duration `yaml:"period"`
	// Scope is gpu (measured power is the GPUs' sum) or node (plus RAPL package power).
	Scope                   string `yaml:"scope"`
	GuardBandPercent        int    `yaml:"guard-band-percent"`
	OversubscriptionPercent int    `yaml:"oversubscription-percent"`
	HeadroomWatts           int    `yaml:"headroom-watts"`
	DeadbandWatts           int    `yaml:"deadband-watts"`
	// RampPercent is the most the total cap rises per period, in % of the GPUs' Σ max.
	RampPercent int `yaml:"ramp-percent"`
	// LostPeriods of missing power readings switch to failsafe caps (budget / GPUs).
	LostPeriods int    `yaml:"lost-periods"`
	StateFile   string `yaml:"state-file"`
	OnExit      string `yaml:"on-exit"`     // restore, keep
	AfterCrash  string `yaml:"after-crash"` // restore, adopt
	// Weights maps a GPU index or UUID to its priority weight, an integer 1 to 1000.
	Weights map[string]string `yaml:"weights"`
}

// Budget configures where the node's power budget comes from (package capping/budget).
type Budget struct {
	Source string `yaml:"source"` // static, file
	Watts  int    `yaml:"watts"`  // the static budget
	// File is a YAML or JSON file {watts: N, ttl: DURATION}, re-read when it changes.
	File string `yaml:"file"`
	// FallbackWatts applies once a budget's TTL ran out; 0 means the GPUs' Σ min.
	FallbackWatts int `yaml:"fallback-watts"`
}

// Etcd locates the etcd cluster and the group of budget.source etcd (package capping/cluster).
type Etcd struct {
	// Endpoints is a comma-separated list of etcd client URLs.
	Endpoints    string `yaml:"endpoints"`
	Group        string `yaml:"group"`
	TLS          TLS    `yaml:"tls"`
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password-file"`
	// LeaseTTL bounds how long a node cut off from etcd holds its grant; whole seconds.
	LeaseTTL time.Duration `yaml:"lease-ttl"`
	Prefix   string        `yaml:"prefix"`
	// Priority is the node's weight in the group's water-filling, 1 to 1000.
	Priority int `yaml:"priority"`
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
		Node:       Node{Name: defaultNodeName()},
		Log:        Log{Level: "info", Format: "logfmt"},
		Path:       Path{Sysfs: "/sys", Procfs: "/proc"},
		GPU:        GPU{Backend: "auto", Sim: GPUSim{Model: "H100", Count: 8, Trace: "training", Seed: 1}},
		Collectors: map[string]Collector{},
		NIC:        NIC{Exclude: DefaultNICExclude},
		Workload: Workload{
			MaxSeries: DefaultWorkloadMaxSeries, ActiveIntervals: DefaultWorkloadActiveIntervals,
			PodResourcesSocket: DefaultPodResourcesSocket,
		},
		OTLP: OTLP{
			Protocol:    "grpc",
			Interval:    10 * time.Second,
			Timeout:     10 * time.Second,
			Compression: "gzip",
			Temporality: "cumulative",
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
	for _, r := range registrations() {
		c.Collectors[r.name] = Collector{Enabled: r.enabled, Interval: r.interval}
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
	if r, ok := lookupRegistration(name); ok {
		return Collector{Enabled: r.enabled, Interval: r.interval}
	}
	return Collector{}
}
