package agent

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/collectors/gpu"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// metrics.NAME.enabled false in the configuration takes the metric out of what the agent
// stores (and so exports), and capstan.collector.series counts what is left.
func TestMetricSelectionReachesTheStore(t *testing.T) {
	count := func(cfg *config.Config) (points map[*metrics.Def]int, series float64) {
		t.Helper()
		p, err := NewPipeline(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		p.Runner.CollectOnce(context.Background())
		points = map[*metrics.Def]int{}
		p.Store.View(gpu.Name, func(b *sample.Batch) {
			for _, pt := range b.Points {
				points[pt.Series.Def]++
			}
		})
		p.Store.View(collectors.SelfKey(gpu.Name), func(b *sample.Batch) {
			series, _ = b.Find(metrics.CollectorSeries)
		})
		return points, series
	}
	all, allSeries := count(simConfig("gpu"))
	cfg := simConfig("gpu")
	cfg.Metrics = config.MetricToggles{"capstan.gpu.activity": {Enabled: false}, "hw.power": {Enabled: false}}
	some, someSeries := count(cfg)
	if all[metrics.GPUActivity] == 0 || all[metrics.HWPower] == 0 {
		t.Fatalf("by default the GPU collector exports no GPM activity or power: %v", all)
	}
	if some[metrics.GPUActivity] != 0 || some[metrics.HWPower] != 0 {
		t.Errorf("turned-off metrics still stored: %d activity, %d power points", some[metrics.GPUActivity], some[metrics.HWPower])
	}
	if some[metrics.HWTemperature] != all[metrics.HWTemperature] {
		t.Errorf("temperature points %d with the selection, %d without", some[metrics.HWTemperature], all[metrics.HWTemperature])
	}
	want := allSeries - float64(all[metrics.GPUActivity]+all[metrics.HWPower])
	if someSeries != want || allSeries == 0 {
		t.Errorf("capstan.collector.series = %v with the selection, %v without; want %v", someSeries, allSeries, want)
	}
}
