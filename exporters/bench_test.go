package exporters

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// BenchmarkCollectBothReaders measures what one OTLP collection and one Prometheus exposition of
// an 8-GPU node cost, together and per reader. allocs/point is the heap allocations of one
// iteration divided by the data points in the store.
//
//   - otlp: the OTLP reader's collection: Collect of a reader with its own store producer into a
//     ResourceMetrics zeroed before each call (what the periodic reader does before encoding).
//   - prometheus: the Prometheus reader's collection rendered as text into a reused buffer (the
//     store's families and target_info).
//   - both: the two above, one after the other: the target of ≤ 0.5 ms and ≤ 2 allocs/point.
//   - scrape: a full /metrics request (plus the Go and process collectors, no gzip), for
//     reference; the batch is put again before each, so every request renders rather than
//     serving the previous request's exposition.
func BenchmarkCollectBothReaders(b *testing.B) {
	store := sample.NewStore()
	batch := newFleet(8).batch(5000)
	store.Put("gpu", batch)
	points := len(batch.Points)
	res := NewResource(testConfig(), "bench")
	scope := instrumentation.Scope{Name: ScopeName, Version: "bench"}

	run := func(b *testing.B, withOTLP, withProm bool) {
		var readers []sdkmetric.Reader
		otlp := sdkmetric.NewManualReader(sdkmetric.WithProducer(newStoreProducer[struct{}](store, scope, nil)))
		if withOTLP {
			readers = append(readers, otlp)
		}
		prom, err := newPromExposition(store, scope, nil, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		if withProm {
			readers = append(readers, prom.reader)
		}
		mp := newMeterProvider(res, readers...)
		b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
		ctx := context.Background()
		var rm metricdata.ResourceMetrics
		var text []byte
		var spans []familySpan
		iteration := func() {
			if withOTLP {
				rm = metricdata.ResourceMetrics{}
				if err := otlp.Collect(ctx, &rm); err != nil {
					b.Fatal(err)
				}
			}
			if withProm {
				var err error
				if text, spans, err = prom.render(ctx, text[:0], false, spans[:0]); err != nil {
					b.Fatal(err)
				}
			}
		}
		iteration() // the first collection creates the series' state
		if withOTLP && countPoints(&rm) != points {
			b.Fatalf("collected %d points, want %d", countPoints(&rm), points)
		}
		if withProm && bytes.Count(text, []byte("\n"))-2*len(metrics.Table)-3 != points {
			b.Fatalf("rendered %d lines, want %d points, HELP and TYPE per family and target_info:\n%s",
				bytes.Count(text, []byte("\n")), points, text)
		}
		measure(b, points, iteration)
	}
	b.Run("otlp", func(b *testing.B) { run(b, true, false) })
	b.Run("prometheus", func(b *testing.B) { run(b, false, true) })
	b.Run("both", func(b *testing.B) { run(b, true, true) })
	b.Run("scrape", func(b *testing.B) {
		cfg := testConfig()
		cfg.Web.ListenAddress = "127.0.0.1:0"
		e, err := New(context.Background(), Options{Config: cfg, Store: store})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = e.Shutdown(context.Background()) })
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header.Set("Accept", "text/plain;version=0.0.4")
		w := &discardResponse{header: make(http.Header)}
		measure(b, points, func() {
			store.Put("gpu", batch)
			clear(w.header)
			w.code, w.n = 0, 0
			e.handler.ServeHTTP(w, req)
			if w.code != http.StatusOK || w.n == 0 {
				b.Fatalf("GET /metrics: %d, %d bytes", w.code, w.n)
			}
		})
	})
}

// discardResponse is a ResponseWriter that keeps the status and counts the body, so the scrape
// benchmark measures the handler rather than a recorder.
type discardResponse struct {
	header http.Header
	code   int
	n      int
}

func (w *discardResponse) Header() http.Header { return w.header }

func (w *discardResponse) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *discardResponse) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.n += len(p)
	return len(p), nil
}

// measure runs fn b.N times and reports allocs/point besides the usual figures.
func measure(b *testing.B, points int, fn func()) {
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for b.Loop() {
		fn()
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N)/float64(points), "allocs/point")
	b.ReportMetric(float64(points), "points")
}

func countPoints(rm *metricdata.ResourceMetrics) int {
	n := 0
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Gauge[float64]:
				n += len(d.DataPoints)
			case metricdata.Sum[float64]:
				n += len(d.DataPoints)
			}
		}
	}
	return n
}
