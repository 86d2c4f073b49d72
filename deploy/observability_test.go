package deploy

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	yamlv3 "gopkg.in/yaml.v3"

	"github.com/capstan-power/capstan/exporters"
	"github.com/capstan-power/capstan/internal/metrics"
)

// promMetrics maps each Prometheus metric name Capstan exposes to its label names.
func promMetrics(t *testing.T) map[string][]string {
	t.Helper()
	m := map[string][]string{}
	for _, d := range metrics.Table {
		name, err := exporters.PrometheusName(d)
		if err != nil {
			t.Fatal(err)
		}
		labels := []string{"instance", "job"} // added by the scrape (or remote write)
		for _, a := range d.Attributes {
			l, err := exporters.PrometheusLabel(a)
			if err != nil {
				t.Fatal(err)
			}
			labels = append(labels, l)
		}
		m[name] = labels
	}
	return m
}

// knownSeries are promMetrics and the series Prometheus itself adds for every scrape target.
func knownSeries(t *testing.T) map[string][]string {
	t.Helper()
	m := promMetrics(t)
	m["up"] = []string{"instance", "job"}
	return m
}

// grafanaDuration are Grafana's range macros, which only a dashboard query holds; a query is
// parsed with them as a plain duration.
var grafanaDuration = regexp.MustCompile(`\$\{?__(?:rate_interval|interval|range)\}?`)

var promql = parser.NewParser(parser.Options{})

// queried parses a PromQL expression and returns the metric names it reads and the label
// names it uses: per metric for selectors, for the whole expression for groupings and vector
// matching, in the order they are written.
func queried(expr string) (names []string, selectorLabels map[string][]string, groupLabels []string, err error) {
	e, err := promql.ParseExpr(grafanaDuration.ReplaceAllString(expr, "5m"))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("parsing %q: %w", expr, err)
	}
	selectorLabels = map[string][]string{}
	var walk func(parser.Node)
	walk = func(n parser.Node) {
		switch n := n.(type) {
		case *parser.VectorSelector:
			names = append(names, n.Name)
			for _, m := range n.LabelMatchers {
				if m.Name != model.MetricNameLabel {
					selectorLabels[n.Name] = append(selectorLabels[n.Name], m.Name)
				}
			}
		case *parser.AggregateExpr:
			groupLabels = append(groupLabels, n.Grouping...)
		case *parser.BinaryExpr:
			walk(n.LHS)
			if vm := n.VectorMatching; vm != nil {
				groupLabels = append(groupLabels, vm.MatchingLabels...)
				groupLabels = append(groupLabels, vm.Include...)
			}
			walk(n.RHS)
			return
		}
		for _, c := range parser.Children(n) {
			walk(c)
		}
	}
	walk(e)
	return names, selectorLabels, groupLabels, nil
}

// checkQueried checks that every metric a query reads is one Capstan exports and that every
// label it selects or groups by is one of those metrics'.
func checkQueried(t *testing.T, known map[string][]string, where, expr string) {
	t.Helper()
	names, sel, group, err := queried(expr)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	if len(names) == 0 {
		t.Errorf("%s: %q queries no metric", where, expr)
	}
	var all []string
	for _, n := range names {
		labels, ok := known[n]
		if !ok {
			t.Errorf("%s: %s is not a metric Capstan exports (see docs/metrics.md)", where, n)
			continue
		}
		all = append(all, labels...)
		for _, l := range sel[n] {
			if !slices.Contains(labels, l) {
				t.Errorf("%s: %s has no label %s (it has %v)", where, n, l, labels)
			}
		}
	}
	for _, l := range group {
		if len(all) > 0 && !slices.Contains(all, l) {
			t.Errorf("%s: groups by %s, a label none of %v has", where, l, names)
		}
	}
}

func TestQueriedParsesPromQL(t *testing.T) {
	names, sel, group, err := queried(`sum by (instance, gpu_index) (rate(hw_energy_joules_total{hw_type="gpu", instance=~"$instance"}[$__rate_interval])) / on(instance) group_left capstan_capping_budget_watts > bool 3`)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"hw_energy_joules_total", "capstan_capping_budget_watts"}) {
		t.Errorf("metric names %v", names)
	}
	if !slices.Equal(sel["hw_energy_joules_total"], []string{"hw_type", "instance"}) {
		t.Errorf("selector labels %v", sel)
	}
	if !slices.Equal(group, []string{"instance", "gpu_index", "instance"}) {
		t.Errorf("grouping labels %v", group)
	}
	// What a pattern cannot see: a duration is no metric, a subquery's step neither, and a
	// query that does not parse is an error, not an empty result.
	for expr, want := range map[string][]string{
		`hw_power_watts offset 5m`: {"hw_power_watts"},
		`max_over_time(sum without (gpu_index) (hw_power_watts{hw_type="gpu"})[1h:5m]) > bool 300`: {"hw_power_watts"},
		`label_replace(up, "hw_power_watts", "x", "", "")`:                                         {"up"},
	} {
		if names, _, _, err := queried(expr); err != nil || !slices.Equal(names, want) {
			t.Errorf("%s: metric names %v (%v), want %v", expr, names, err, want)
		}
	}
	if _, _, _, err := queried(`sum(hw_power_watts`); err == nil {
		t.Error("an unclosed parenthesis parsed")
	}
}

// Every metric and label the dashboard queries must be one Capstan exports, under the name the
// Prometheus endpoint gives it.
func TestDashboardQueriesExistingMetrics(t *testing.T) {
	raw, err := os.ReadFile("grafana/capstan-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Fatal("the dashboard has no title or uid")
	}
	known := knownSeries(t)
	exprs := map[string]string{}
	for _, v := range dash.Templating.List {
		if v.Definition == "" {
			continue
		}
		// label_values(SELECTOR, LABEL): the label must be one of the selector's metric.
		args := strings.TrimSuffix(strings.TrimPrefix(v.Definition, "label_values("), ")")
		sel, label, ok := strings.Cut(args, ",")
		if !ok {
			t.Fatalf("variable %s: %q is not label_values(metric, label)", v.Name, v.Definition)
		}
		exprs["variable "+v.Name] = "sum by (" + strings.TrimSpace(label) + ") (" + sel + ")"
	}
	panels := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		panels++
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for i, tg := range p.Targets {
			exprs[p.Title+" #"+string(rune('A'+i))] = tg.Expr
		}
	}
	// What the issue asks the dashboard to show, by the metrics that show it.
	for _, want := range []string{"capstan_capping_budget_watts", "hw_power_watts", "capstan_gpu_power_limit_watts",
		"hw_temperature_celsius", "capstan_gpu_clock_hertz", "capstan_gpu_throttle", "system_cpu_frequency_hertz",
		"system_network_io_bytes_total", "capstan_workload_energy_joules_total"} {
		if !slices.ContainsFunc(slices.Collect(func(yield func(string) bool) {
			for _, e := range exprs {
				if !yield(e) {
					return
				}
			}
		}), func(e string) bool { return strings.Contains(e, want) }) {
			t.Errorf("no panel shows %s", want)
		}
	}
	for where, expr := range exprs {
		checkQueried(t, known, where, expr)
	}
	t.Logf("%d panels, %d queries checked", panels, len(exprs))
}

// The example collector's OTLP receiver must be a valid receiver configuration (checked by the
// Collector's own otlpreceiver) listening where the telemetry-only overlay pushes, and every
// pipeline must use components the file defines.
func TestCollectorConfig(t *testing.T) {
	raw, err := os.ReadFile("otel-collector/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]map[string]any
	if err := yamlv3.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	rcv := otlpreceiver.NewFactory().CreateDefaultConfig().(*otlpreceiver.Config)
	otlp, _ := cfg["receivers"]["otlp"].(map[string]any)
	if err := confmap.NewFromStringMap(otlp).Unmarshal(rcv); err != nil {
		t.Fatalf("receivers.otlp: %v", err)
	}
	if err := rcv.Protocols.Validate(); err != nil {
		t.Fatalf("receivers.otlp: %v", err)
	}
	if !rcv.Protocols.GRPC.HasValue() {
		t.Fatal("receivers.otlp has no grpc protocol, which the agent's default --otlp.protocol uses")
	}
	_, port, err := net.SplitHostPort(rcv.Protocols.GRPC.Get().NetAddr.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	overlay, err := os.ReadFile("kustomize/overlays/telemetry-only/daemonset-patch.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`--otlp\.endpoint=[^\s:]+:` + port + `\s`).Match(overlay) {
		t.Errorf("the telemetry-only overlay does not push to the collector's gRPC port %s", port)
	}

	service, _ := cfg["service"]["pipelines"].(map[string]any)
	if len(service) == 0 {
		t.Fatal("no service.pipelines")
	}
	for name, p := range service {
		pipe, _ := p.(map[string]any)
		if !strings.HasPrefix(name, "metrics") {
			t.Errorf("pipeline %s: Capstan sends metrics only", name)
		}
		for kind, section := range map[string]string{"receivers": "receivers", "processors": "processors", "exporters": "exporters"} {
			list, _ := pipe[kind].([]any)
			if kind != "processors" && len(list) == 0 {
				t.Errorf("pipeline %s has no %s", name, kind)
			}
			for _, c := range list {
				if _, ok := cfg[section][c.(string)]; !ok {
					t.Errorf("pipeline %s uses %s %v, which the file does not define", name, kind, c)
				}
			}
		}
	}
}
