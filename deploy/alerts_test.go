package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

const (
	rulesFile     = "prometheus/capstan-rules.yaml"
	rulesTestFile = "prometheus/capstan-rules.test.yaml"
	runbook       = "../docs/alerts.md"
	runbookURL    = "https://github.com/capstan-power/capstan/blob/main/docs/alerts.md#"
)

// requiredAlerts are the alerts operators are promised (docs/alerts.md).
var requiredAlerts = []string{
	"CapstanNodeOverBudget", "CapstanCappingFailsafe", "CapstanGPULost", "CapstanGPUXidErrors",
	"CapstanPowerLimitOverridden", "CapstanGrantStale", "CapstanCollectorDown", "CapstanAgentDown",
	"CapstanThermalThrottling", "CapstanGPUMissing", "CapstanLogLinesDropped",
	"CapstanGPURowRemapFailed", "CapstanGPUHardwareSlowdown", "CapstanPowerDomainOversubscribed",
}

// readRules decodes the plain rule file as the PrometheusRule spec it also is.
func readRules(t *testing.T) monitoringv1.PrometheusRuleSpec {
	t.Helper()
	raw, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var spec monitoringv1.PrometheusRuleSpec
	if err := yaml.UnmarshalStrict(raw, &spec); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	return spec
}

// promtool returns the path of promtool: bin/tools/promtool (make promtool) or one on PATH.
// Without it the test is skipped, except in CI (CI=true), where it fails.
func promtool(t *testing.T) string {
	t.Helper()
	if p, err := filepath.Abs("../bin/tools/promtool"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool is missing in CI: .ci/run must install it (make promtool)")
		}
		t.Skip("promtool is not installed: make promtool builds it into bin/tools")
	}
	return p
}

// promtool checks the rules and runs their unit tests.
func TestAlertRulesPromtool(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", filepath.Base(rulesFile)},
		{"test", "rules", filepath.Base(rulesTestFile)},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = filepath.Dir(rulesFile)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// Every rule is an alert with a severity, a summary, a description and a runbook section; it
// reads only metrics Capstan exports, under their Prometheus names, with their labels.
func TestAlertRules(t *testing.T) {
	spec := readRules(t)
	doc, err := os.ReadFile(runbook)
	if err != nil {
		t.Fatal(err)
	}
	known := knownSeries(t)
	var alerts []string
	for _, g := range spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule with no alert name (recording rules belong elsewhere): %s", g.Name, r.Expr.String())
				continue
			}
			if slices.Contains(alerts, r.Alert) {
				t.Errorf("%s is defined twice", r.Alert)
			}
			alerts = append(alerts, r.Alert)
			checkQueried(t, known, r.Alert, r.Expr.String())
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s has no %s", r.Alert, a)
				}
			}
			if want := runbookURL + strings.ToLower(r.Alert); r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !regexp.MustCompile(`(?m)^## ` + r.Alert + `$`).Match(doc) {
				t.Errorf("%s has no section \"## %s\" in docs/alerts.md", r.Alert, r.Alert)
			}
		}
	}
	for _, a := range requiredAlerts {
		if !slices.Contains(alerts, a) {
			t.Errorf("no alert %s", a)
		}
	}
}

// Every alert has unit tests in which it fires and in which it does not.
func TestAlertRulesTested(t *testing.T) {
	raw, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		RuleFiles []string `json:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(raw, &tests); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tests.RuleFiles, []string{filepath.Base(rulesFile)}) {
		t.Errorf("rule_files %v, want [%s]", tests.RuleFiles, filepath.Base(rulesFile))
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, g := range tests.Tests {
		for _, c := range g.AlertRuleTest {
			if len(c.ExpAlerts) > 0 {
				fires[c.Alertname] = true
			} else {
				quiet[c.Alertname] = true
			}
		}
	}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("%s: a case where it fires: %v, where it does not: %v; want both", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
		}
	}
}

// The Helm chart's and the kustomize component's PrometheusRules hold the plain file's rules,
// exactly; `make generate` copies them.
func TestAlertRuleCopies(t *testing.T) {
	want, err := yaml.Marshal(readRules(t))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for name, docs := range renderings(t) {
		for _, pr := range decode(t, docs).prometheusRules {
			seen[strings.Fields(name)[0]] = true
			got, err := yaml.Marshal(pr.Spec)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s: the PrometheusRule's rules differ from %s (run make generate):\n%s", name, rulesFile, lineDiff(string(want), string(got)))
			}
			if len(pr.Labels) == 0 || pr.Labels["app.kubernetes.io/name"] != "capstan" {
				t.Errorf("%s: PrometheusRule labels %v lack app.kubernetes.io/name=capstan", name, pr.Labels)
			}
		}
	}
	for _, tool := range []string{"helm", "kustomize"} {
		if !seen[tool] {
			t.Errorf("no %s rendering has a PrometheusRule", tool)
		}
	}
	// Off by default, and the values' labels reach the object.
	if o := decode(t, helmTemplate(t)); len(o.prometheusRules) != 0 {
		t.Error("the chart's defaults render a PrometheusRule")
	}
	o := decode(t, helmTemplate(t, filepath.Join(chartDir, "ci", "capping-etcd-values.yaml")))
	if len(o.prometheusRules) != 1 || o.prometheusRules[0].Labels["release"] != "prometheus" {
		t.Errorf("prometheusRule.labels {release: prometheus} did not reach the PrometheusRule")
	}
}

// lineDiff lists the lines of want and got that differ, by line number.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := range max(len(w), len(g)) {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("- " + wl + "\n+ " + gl + "\n")
		}
	}
	return b.String()
}
