package main

import (
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/testkit"
)

// The GPU backend opens for the capping controller also when the GPU collector is off: the
// agent caps, and publishes its capstan_capping_* series, without GPU telemetry.
func TestCappingWithoutTheGPUCollector(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	state := filepath.Join(t.TempDir(), "state.json")
	a := startAgent(t, "--no-collector.gpu", "--gpu.backend=sim", "--capping.enabled", "--budget.watts=1600",
		"--gpu.sim.count=4", "--gpu.sim.trace=steady", "--capping.period=100ms",
		"--capping.state-file="+state, "--web.listen-address="+addr)
	a.waitLog(t, "capping active")
	a.waitLog(t, "agent ready")

	var fams map[string]*dto.MetricFamily
	capped := func() bool {
		fams = scrape(t, "http://"+addr+"/metrics")
		budget, total := fams["capstan_capping_budget_watts"], fams["capstan_capping_cap_total_watts"]
		limits := fams["capstan_capping_gpu_limit_watts"]
		return budget != nil && total != nil && limits != nil && len(limits.GetMetric()) == 4 &&
			budget.GetMetric()[0].GetGauge().GetValue() == 1600 &&
			total.GetMetric()[0].GetGauge().GetValue() <= 1600*1.05
	}
	if !testkit.Poll(testkit.DefaultWait, capped) {
		t.Fatalf("the controller never capped 4 GPUs to 1600 W; /metrics families %v; logs:\n%s", familyNames(fams), a.Logs())
	}
	for _, name := range []string{"capstan_capping_measured_watts", "capstan_capping_mode", "capstan_capping_actuations_total"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if up := fams["capstan_collector_up"]; up != nil {
		for _, m := range up.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "collector" && l.GetValue() == "gpu" {
					t.Errorf("the gpu collector runs although --no-collector.gpu turned it off")
				}
			}
		}
	}
	if code := a.stop(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM; logs:\n%s", code, a.Logs())
	}
	if strings.Contains(a.Logs(), "needs a GPU backend") {
		t.Errorf("capping found no GPU backend; logs:\n%s", a.Logs())
	}
}

func familyNames(fams map[string]*dto.MetricFamily) []string {
	out := make([]string, 0, len(fams))
	for n := range fams {
		out = append(out, n)
	}
	return out
}
