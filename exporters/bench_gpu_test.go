package exporters

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/capstan-power/capstan/collectors/gpu"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/sample"
)

// BenchmarkGPUCollectionAndBothReaders is the foundation's end-to-end cost target: one full GPU
// collection of 8 simulated H100s through the real collector and nvml.Interface, then the OTLP
// reader's collect and the Prometheus exposition of the result. Targets: ≤ 0.5 ms per iteration
// and ≤ 2 allocations per data point. The simulator's own physics step is part of the figure.
func BenchmarkGPUCollectionAndBothReaders(b *testing.B) {
	clock := clock.NewManual(time.Unix(1_700_000_000, 0))
	fleet, err := sim.New(sim.Options{Model: "H100", Count: 8, Trace: "training", Seed: 1, Clock: clock})
	if err != nil {
		b.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		b.Fatal(ret)
	}
	c, err := gpu.New(fleet, slog.New(slog.DiscardHandler), clock.Now)
	if err != nil {
		b.Fatal(err)
	}
	store := sample.NewStore()
	scope := instrumentation.Scope{Name: ScopeName, Version: "bench"}
	otlp := sdkmetric.NewManualReader(sdkmetric.WithProducer(newStoreProducer[struct{}](store, scope, nil)))
	prom, err := newPromExposition(store, scope, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	mp := newMeterProvider(NewResource(testConfig(), "bench"), otlp, prom.reader)
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })

	ctx := context.Background()
	batches := [2]*sample.Batch{{}, {}}
	cur := 0
	var rm metricdata.ResourceMetrics
	var text []byte
	var spans []familySpan
	iteration := func() {
		clock.Advance(time.Second)
		bt := batches[cur]
		bt.Reset(gpu.Name, clock.Now())
		if err := c.Collect(ctx, bt); err != nil {
			b.Fatal(err)
		}
		store.Put(gpu.Name, bt)
		cur ^= 1
		rm = metricdata.ResourceMetrics{}
		if err := otlp.Collect(ctx, &rm); err != nil {
			b.Fatal(err)
		}
		if text, spans, err = prom.render(ctx, text[:0], false, spans[:0]); err != nil {
			b.Fatal(err)
		}
	}
	iteration()
	points := len(batches[cur^1].Points)
	if got := countPoints(&rm); got != points {
		b.Fatalf("OTLP collected %d points, the GPU collection made %d", got, points)
	}
	measure(b, points, iteration)
}
