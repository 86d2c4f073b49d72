package deploy

import (
	"encoding/json"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

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

var (
	promString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	grafanaVar   = regexp.MustCompile(`\$\{?[A-Za-z_][A-Za-z0-9_]*\}?`)
	promMatchers = regexp.MustCompile(`([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}`)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	promIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?`)
	promLabelKey = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)`)
)

var promKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "offset": true, "bool": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// queried returns the metric names a PromQL expression reads and the label names it uses,
// per metric for selectors and for the whole expression for groupings.
func queried(expr string) (names []string, selectorLabels map[string][]string, groupLabels []string) {
	e := promString.ReplaceAllString(expr, `""`)
	e = grafanaVar.ReplaceAllString(e, "")
	e = promRange.ReplaceAllString(e, "")
	selectorLabels = map[string][]string{}
	e = promMatchers.ReplaceAllStringFunc(e, func(s string) string {
		m := promMatchers.FindStringSubmatch(s)
		for _, k := range promLabelKey.FindAllStringSubmatch(m[2], -1) {
			if m[1] != "" {
				selectorLabels[m[1]] = append(selectorLabels[m[1]], k[1])
			}
		}
		return m[1] + " "
	})
	e = promGrouping.ReplaceAllStringFunc(e, func(s string) string {
		for _, l := range strings.Split(promGrouping.FindStringSubmatch(s)[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				groupLabels = append(groupLabels, l)
			}
		}
		return " "
	})
	for _, id := range promIdent.FindAllString(e, -1) {
		if strings.HasSuffix(id, "(") || promKeywords[id] {
			continue // a function call or a keyword
		}
		names = append(names, id)
	}
	return names, selectorLabels, groupLabels
}

func TestQueriedParsesPromQL(t *testing.T) {
	names, sel, group := queried(`sum by (instance, gpu_index) (rate(hw_energy_joules_total{hw_type="gpu", instance=~"$instance"}[$__rate_interval])) / on(instance) group_left capstan_capping_budget_watts > bool 3`)
	if !slices.Equal(names, []string{"hw_energy_joules_total", "capstan_capping_budget_watts"}) {
		t.Errorf("metric names %v", names)
	}
	if !slices.Equal(sel["hw_energy_joules_total"], []string{"hw_type", "instance"}) {
		t.Errorf("selector labels %v", sel)
	}
	if !slices.Equal(group, []string{"instance", "gpu_index", "instance"}) {
		t.Errorf("grouping labels %v", group)
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
	known := promMetrics(t)
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
		names, sel, group := queried(expr)
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
