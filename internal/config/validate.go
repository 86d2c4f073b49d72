package config

import (
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Bounds that Validate enforces; RegisterCollector holds defaults to the collector ones too.
const (
	minCollectorInterval = 100 * time.Millisecond
	maxCollectorInterval = time.Hour
	minCollectorTimeout  = 10 * time.Millisecond
	minSimCount          = 1
	maxSimCount          = 64
)

// Allowed values, in the order messages list them.
var (
	logLevels    = []string{"debug", "info", "warn", "error"}
	logFormats   = []string{"logfmt", "json"}
	gpuBackends  = []string{"auto", "nvml", "sim", "none"}
	simModels    = []string{"A100", "H100", "H200", "B200"}
	simTraces    = []string{"steady", "bursty", "training", "inference", "imbalanced"}
	protocols    = []string{"grpc", "http"}
	compressions = []string{"gzip", "none"}
	temporality  = []string{"cumulative", "delta"}
	capScopes    = []string{"gpu", "node"}
	onExits      = []string{"restore", "keep"}
	afterCrashes = []string{"restore", "adopt"}
	budgetKinds  = []string{"static", "file", "etcd"}
)

// Capping bounds.
const (
	minCappingPeriod = 100 * time.Millisecond
	maxCappingPeriod = 10 * time.Second
	maxBudgetWatts   = 1_000_000
)

// Validate checks ranges, allowed values and keys that go together. It returns the first
// problem in file order (node, log, path, gpu, collector, nic, workload, otlp, web, stdout, summary) as an
// *Error that points at the line of the file, or the flag, that set the value.
func (c *Config) Validate() error {
	if e := c.validate(); e != nil {
		return e
	}
	return nil
}

func (c *Config) validate() *Error {
	v := &validator{c: c}
	v.nonEmpty("node.name", c.Node.Name, "set it, or $NODE_NAME")
	v.oneOf("log.level", c.Log.Level, logLevels, false)
	v.oneOf("log.format", c.Log.Format, logFormats, false)
	v.nonEmpty("path.sysfs", c.Path.Sysfs, "the default is /sys")
	v.nonEmpty("path.procfs", c.Path.Procfs, "the default is /proc")
	v.oneOf("gpu.backend", c.GPU.Backend, gpuBackends, false)
	v.oneOf("gpu.sim.model", c.GPU.Sim.Model, simModels, true)
	v.intRange("gpu.sim.count", c.GPU.Sim.Count, minSimCount, maxSimCount)
	v.trace("gpu.sim.trace", c.GPU.Sim.Trace)
	v.collectors()
	v.regexp("nic.include", c.NIC.Include)
	v.regexp("nic.exclude", c.NIC.Exclude)
	v.intRange("workload.max-series", c.Workload.MaxSeries, 1, 100_000)
	v.intRange("workload.active-intervals", c.Workload.ActiveIntervals, 1, 100)
	v.oneOf("otlp.protocol", c.OTLP.Protocol, protocols, false)
	v.durRange("otlp.interval", c.OTLP.Interval, time.Second, time.Hour, "")
	v.durRange("otlp.timeout", c.OTLP.Timeout, time.Second, 5*time.Minute, "")
	v.headers("otlp.headers", c.OTLP.Headers)
	v.oneOf("otlp.compression", c.OTLP.Compression, compressions, false)
	v.oneOf("otlp.temporality", c.OTLP.Temporality, temporality, false)
	v.pair("otlp.tls.cert-file", c.OTLP.TLS.CertFile, "otlp.tls.key-file", c.OTLP.TLS.KeyFile)
	v.pair("otlp.tls.key-file", c.OTLP.TLS.KeyFile, "otlp.tls.cert-file", c.OTLP.TLS.CertFile)
	v.hostPort("web.listen-address", c.Web.ListenAddress)
	if c.Stdout.Enabled {
		v.durRange("stdout.interval", c.Stdout.Interval, time.Second, time.Hour, "")
	}
	if c.Summary.Interval != 0 {
		v.durRange("summary.interval", c.Summary.Interval, time.Second, time.Hour, "0 to turn it off, or ")
	}
	v.capping()
	return v.err
}

// capping checks the capping and budget sections; the budget must be usable only when capping
// is on.
func (v *validator) capping() {
	cp, b := &v.c.Capping, &v.c.Budget
	v.durRange("capping.period", cp.Period, minCappingPeriod, maxCappingPeriod, "")
	v.oneOf("capping.scope", cp.Scope, capScopes, false)
	v.intRange("capping.guard-band-percent", cp.GuardBandPercent, 0, 50)
	v.intRange("capping.oversubscription-percent", cp.OversubscriptionPercent, 0, 100)
	v.intRange("capping.headroom-watts", cp.HeadroomWatts, 0, 200)
	v.intRange("capping.deadband-watts", cp.DeadbandWatts, 0, 100)
	v.intRange("capping.ramp-percent", cp.RampPercent, 1, 100)
	v.intRange("capping.lost-periods", cp.LostPeriods, 1, 100)
	v.oneOf("capping.on-exit", cp.OnExit, onExits, false)
	v.oneOf("capping.after-crash", cp.AfterCrash, afterCrashes, false)
	for _, k := range sortedKeys(cp.Weights) {
		w, err := strconv.Atoi(strings.TrimSpace(cp.Weights[k]))
		if err != nil || w < 1 || w > 1000 {
			v.fail("capping.weights."+k, quote(cp.Weights[k]), "is not a weight (allowed: an integer 1 to 1000)")
		}
	}
	v.oneOf("budget.source", b.Source, budgetKinds, false)
	v.intRange("budget.fallback-watts", b.FallbackWatts, 0, maxBudgetWatts)
	if !cp.Enabled {
		return
	}
	if !cp.DryRun {
		v.nonEmpty("capping.state-file", cp.StateFile, "the default is /var/lib/capstan/state.json")
	}
	switch b.Source {
	case "static":
		if b.Watts == 0 {
			v.fail("budget.watts", "0", fmt.Sprintf("must be set when capping is on with budget.source static (allowed: 1 to %d)", maxBudgetWatts))
		}
		v.intRange("budget.watts", b.Watts, 1, maxBudgetWatts)
	case "file":
		v.nonEmpty("budget.file", b.File, "budget.source file needs the file's path")
	case "etcd":
		v.etcd()
	}
}

// etcd checks the etcd section, which only budget.source etcd uses.
func (v *validator) etcd() {
	e := &v.c.Etcd
	v.nonEmpty("etcd.endpoints", e.Endpoints, "budget.source etcd needs the etcd client URLs, e.g. https://etcd-0:2379,https://etcd-1:2379")
	v.name("etcd.group", e.Group)
	v.name("node.name", v.c.Node.Name)
	v.pair("etcd.tls.cert-file", e.TLS.CertFile, "etcd.tls.key-file", e.TLS.KeyFile)
	v.pair("etcd.tls.key-file", e.TLS.KeyFile, "etcd.tls.cert-file", e.TLS.CertFile)
	v.pair("etcd.username", e.Username, "etcd.password-file", e.PasswordFile)
	v.durRange("etcd.lease-ttl", e.LeaseTTL, time.Second, 10*time.Minute, "")
	if e.LeaseTTL%time.Second != 0 {
		v.fail("etcd.lease-ttl", formatDuration(e.LeaseTTL), "is not whole seconds (etcd leases count seconds; examples: 5s, 10s)")
	}
	if v.c.Capping.Period > e.LeaseTTL {
		v.fail("etcd.lease-ttl", formatDuration(e.LeaseTTL), "is shorter than capping.period "+formatDuration(v.c.Capping.Period)+" (allowed: at least the period)")
	}
	if !strings.HasPrefix(e.Prefix, "/") || strings.HasSuffix(e.Prefix, "/") && e.Prefix != "/" {
		v.fail("etcd.prefix", quote(e.Prefix), "must start with / and not end with one (default /capstan/v1)")
	}
	v.intRange("etcd.priority", e.Priority, 1, 1000)
}

// name checks a group or node name that becomes one segment of an etcd key.
func (v *validator) name(key, s string) {
	if s == "" || len(s) > 253 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:") != "" {
		v.fail(key, quote(s), "is not a name (allowed: 1 to 253 letters, digits, - _ . :)")
	}
}

// validator keeps the first problem; later checks do nothing once one failed.
type validator struct {
	c   *Config
	err *Error
}

// fail records a problem, locating it through the config's sources.
func (v *validator) fail(key, value, problem string) {
	if v.err == nil {
		v.err = v.c.locate(&Error{Key: key, Value: value, Problem: problem})
	}
}

// locate fills in where the value of e.Key came from: the flag that set it, else the line of
// the file; a default has no position.
func (c *Config) locate(e *Error) *Error {
	if flag, ok := c.src.flags[e.Key]; ok {
		e.Key = "--" + flag
		return e
	}
	if line, ok := c.src.lines[e.Key]; ok {
		e.File, e.Line = c.src.file, line
	}
	return e
}

func (v *validator) nonEmpty(key, s, hint string) {
	if strings.TrimSpace(s) == "" {
		v.fail(key, "", "must not be empty ("+hint+")")
	}
}

func (v *validator) oneOf(key, s string, allowed []string, foldCase bool) {
	for _, a := range allowed {
		if s == a || foldCase && strings.EqualFold(strings.TrimSpace(s), a) {
			return
		}
	}
	v.fail(key, quote(s), "is not allowed (allowed: "+strings.Join(allowed, ", ")+")")
}

func (v *validator) intRange(key string, n, lo, hi int) {
	if n < lo || n > hi {
		v.fail(key, strconv.Itoa(n), fmt.Sprintf("is out of range (allowed: %d to %d)", lo, hi))
	}
}

// durRange checks lo ≤ d ≤ hi; also names what else is allowed, such as 0.
func (v *validator) durRange(key string, d, lo, hi time.Duration, also string) {
	if d < lo || d > hi {
		v.fail(key, formatDuration(d), fmt.Sprintf("is out of range (allowed: %s%s to %s)",
			also, formatDuration(lo), formatDuration(hi)))
	}
}

// trace accepts the built-in traces, case-insensitively as the simulator does, or a CSV file.
func (v *validator) trace(key, s string) {
	name := strings.ToLower(strings.TrimSpace(s))
	for _, t := range simTraces {
		if name == t {
			return
		}
	}
	if strings.HasSuffix(name, ".csv") {
		return
	}
	v.fail(key, quote(s), "is not allowed (allowed: "+strings.Join(simTraces, ", ")+", or a path ending in .csv)")
}

// collectors checks every collector.<name> entry, sorted by name.
func (v *validator) collectors() {
	for _, name := range sortedKeys(v.c.Collectors) {
		key := join("collector", name)
		if _, ok := lookupRegistration(name); !ok {
			v.fail(key, "", "unknown collector (known: "+knownCollectors()+")")
			return
		}
		cc := v.c.Collectors[name]
		v.durRange(key+".interval", cc.Interval, minCollectorInterval, maxCollectorInterval, "")
		if cc.Timeout != 0 && (cc.Timeout < minCollectorTimeout || cc.Timeout > cc.Interval) {
			v.fail(key+".timeout", formatDuration(cc.Timeout), fmt.Sprintf(
				"is out of range (allowed: 0, meaning the interval, or %s to the interval %s)",
				formatDuration(minCollectorTimeout), formatDuration(cc.Interval)))
		}
	}
}

// regexp requires s to compile as a Go (RE2) regular expression; empty is allowed.
func (v *validator) regexp(key, s string) {
	if _, err := regexp.Compile(s); err != nil {
		v.fail(key, quote(s), "is not a regular expression ("+err.Error()+"; syntax: RE2, as Go's regexp)")
	}
}

func (v *validator) headers(key string, h map[string]string) {
	if _, ok := h[""]; ok {
		v.fail(key, "", "has a header with an empty name")
	}
}

// pair requires other to be set whenever key is.
func (v *validator) pair(key, s, otherKey, other string) {
	if s != "" && other == "" {
		v.fail(key, quote(s), "is set without "+otherKey+" (set both or neither)")
	}
}

// hostPort accepts an empty address (off) or host:port with a numeric port; port 0 picks one.
func (v *validator) hostPort(key, addr string) {
	if addr == "" {
		return
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		if p, convErr := strconv.ParseUint(port, 10, 16); convErr == nil && p <= 65535 {
			return
		}
	}
	v.fail(key, quote(addr), "is not host:port (examples: 127.0.0.1:9400, :9400, [::1]:9400; empty turns it off)")
}

// sortedKeys returns a map's keys in order, so that checks and output are deterministic.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
