package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/suggest"
)

// MetricToggles turns single metrics on or off, keyed by the metric's name, as the OpenTelemetry
// Collector's receivers write it:
//
//	metrics:
//	  capstan.gpu.activity:
//	    enabled: false
//
// On the command line: --metrics capstan.gpu.activity=false (repeatable). A metric not named
// keeps its default (metrics.Def.OnByDefault).
type MetricToggles map[string]MetricToggle

// MetricToggle is one metric's setting.
type MetricToggle struct {
	Enabled bool `yaml:"enabled"`
}

var metricTogglesType = reflect.TypeFor[MetricToggles]()

// Enabled reports whether the metric is exported.
func (m MetricToggles) Enabled(d *metrics.Def) bool {
	if t, ok := m[d.Name]; ok {
		return t.Enabled
	}
	return d.OnByDefault()
}

// metricTogglesRows documents the metrics section in the configuration reference.
func metricTogglesRows(sb *strings.Builder) {
	sb.WriteString("Single metrics turned on or off by name, as the OpenTelemetry Collector's receivers write it.\n")
	sb.WriteString("A metric not named keeps its default: on, unless [the metrics reference](metrics.md) says\n")
	sb.WriteString("otherwise. Turning off a metric drops its series from every export; the GPU collector also\n")
	sb.WriteString("skips the NVML reads only it needs (GPM samples, violation counters).\n")
	sb.WriteString("`capstan.collector.series` counts what each collector exports.\n\n")
	sb.WriteString("| key | flag | type | default | allowed | description |\n")
	sb.WriteString("| --- | --- | --- | --- | --- | --- |\n")
	sb.WriteString("| `metrics.NAME.enabled` | `--metrics NAME=BOOL` (repeatable) | bool | the metric's default | NAME: a metric of docs/metrics.md | export metric NAME |\n\n")
}

// unknownMetric is the problem with a name that is not in the metric table.
func unknownMetric(name string) string {
	return strconv.Quote(name) + " is not a metric Capstan exports" + metricHint(name)
}

// metricHint names the metrics closest to name, else says where the names are listed.
func metricHint(name string) string {
	names := make([]string, len(metrics.Table))
	for i, d := range metrics.Table {
		names[i] = d.Name
	}
	if hint := suggest.DidYouMean(suggest.Closest(name, names), ""); hint != "" {
		return hint
	}
	return " (names as docs/metrics.md lists them, e.g. capstan.gpu.activity)"
}

// metricToggles decodes metrics: NAME: {enabled: BOOL}, adding to what v holds.
func (d *decoder) metricToggles(n *yaml.Node, key string, v reflect.Value) *Error {
	if n.Kind != yaml.MappingNode {
		return d.notMapping(n, key, "metric names to {enabled: true|false}, e.g. capstan.gpu.activity: {enabled: false}")
	}
	entries, e := d.entries(n, key, 0)
	if e != nil {
		return e
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	for _, en := range entries {
		name, full := en.key.Value, join(key, en.key.Value)
		if metrics.ByName(name) == nil {
			return &Error{File: d.file, Line: en.key.Line, Key: full, keyInProblem: true, Problem: "unknown metric " + strconv.Quote(name) + " under metrics" + metricHint(name)}
		}
		t := MetricToggle{Enabled: true}
		if e := d.value(en.val, full, reflect.ValueOf(&t).Elem()); e != nil {
			return e
		}
		v.SetMapIndex(reflect.ValueOf(name), reflect.ValueOf(t))
	}
	return nil
}

// metricToggles checks that every name is a metric (a flag or a file edited by code may hold
// any string).
func (v *validator) metricToggles() {
	for _, name := range sortedKeys(v.c.Metrics) {
		if metrics.ByName(name) == nil {
			v.fail(join("metrics", name), "", "is not a metric Capstan exports"+metricHint(name))
		}
	}
}

// togglesFlag binds the repeatable --metrics NAME=BOOL to Config.Metrics; given names are added
// to the file's, winning per name.
type togglesFlag struct {
	cfg *Config
	key string
}

func (f *togglesFlag) Set(s string) error {
	name, val, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return fmt.Errorf("%s is not NAME=true or NAME=false", quote(s))
	}
	on, err := strconv.ParseBool(val)
	if err != nil {
		return fmt.Errorf("%s: %s %s", quote(s), quote(val), notBoolean)
	}
	if metrics.ByName(name) == nil {
		return fmt.Errorf("%s: %s", quote(s), unknownMetric(name))
	}
	if f.cfg.Metrics == nil {
		f.cfg.Metrics = MetricToggles{}
	}
	f.cfg.Metrics[name] = MetricToggle{Enabled: on}
	return nil
}

func (f *togglesFlag) String() string {
	if f.cfg == nil {
		return ""
	}
	pairs := make([]string, 0, len(f.cfg.Metrics))
	for _, name := range sortedKeys(f.cfg.Metrics) {
		pairs = append(pairs, name+"="+strconv.FormatBool(f.cfg.Metrics[name].Enabled))
	}
	return strings.Join(pairs, ",")
}

func (*togglesFlag) Type() string { return "metric=bool" }

func (f *togglesFlag) configKey() string { return f.key }

func (f *togglesFlag) copyTo(dst, src *Config) {
	if len(src.Metrics) == 0 {
		return
	}
	if dst.Metrics == nil {
		dst.Metrics = MetricToggles{}
	}
	for name, t := range src.Metrics {
		dst.Metrics[name] = t
	}
}
