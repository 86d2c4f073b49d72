package exporters

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/sample"
)

// A metric turned off (metrics.NAME.enabled: false) is in no export, whoever wrote it to the
// store: the collectors' runner drops its own, but the capping controller, the cluster and the
// agent's own metrics write to the store directly.
func TestDisabledMetricsLeaveEveryExport(t *testing.T) {
	endpoint, sink := otlptest.Start(t, otlptest.Options{Protocol: "grpc"})
	store := sample.NewStore()
	put := func(key string, defs ...*metrics.Def) {
		b := &sample.Batch{}
		b.Reset(key, time.Now())
		for _, d := range defs {
			b.Add(sample.NewSeries(d), 1)
		}
		store.Put(key, b)
	}
	put("capping", metrics.CappingBudget, metrics.CappingMode)
	put("agent", metrics.LogDropped)
	put("collector:gpu", metrics.CollectorSeries, metrics.CollectorUp)
	off := []*metrics.Def{metrics.CappingBudget, metrics.LogDropped, metrics.CollectorSeries}
	on := []*metrics.Def{metrics.CappingMode, metrics.CollectorUp}

	cfg := otlpConfig("grpc", endpoint)
	cfg.OTLP.Interval = time.Hour // the export is the test's ForceFlush
	cfg.Web.ListenAddress = otlptest.FreeAddr(t)
	cfg.Metrics = config.MetricToggles{}
	for _, d := range off {
		cfg.Metrics[d.Name] = config.MetricToggle{Enabled: false}
	}
	e := startExporters(t, Options{Config: cfg, Store: store})

	resp, err := http.Get("http://" + cfg.Web.ListenAddress + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, p := range otlptest.Points(sink) {
		exported[p.Metric.Name()] = true
	}
	promName := map[*metrics.Def]string{
		metrics.CappingBudget: "capstan_capping_budget_watts", metrics.LogDropped: "capstan_log_dropped_total",
		metrics.CollectorSeries: "capstan_collector_series", metrics.CappingMode: "capstan_capping_mode",
		metrics.CollectorUp: "capstan_collector_up",
	}
	has := func(name string) bool {
		return strings.Contains(string(body), "\n"+name+"{") || strings.Contains(string(body), "\n"+name+" ")
	}
	for _, d := range off {
		if exported[d.Name] {
			t.Errorf("%s is turned off but exported over OTLP", d.Name)
		}
		if has(promName[d]) {
			t.Errorf("%s is turned off but on /metrics as %s", d.Name, promName[d])
		}
	}
	for _, d := range on {
		if !exported[d.Name] {
			t.Errorf("%s is on but not exported over OTLP (got %v)", d.Name, exported)
		}
		if !has(promName[d]) {
			t.Errorf("%s is on but not on /metrics as %s:\n%s", d.Name, promName[d], body)
		}
	}
}
