package exporters

import (
	"context"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/sample"
)

// BenchmarkOTLPEndpointDown exports an 8-GPU node's collections to an endpoint nothing listens
// on, as a node does while its collector is down: failed exports must drop their data, not
// keep it. heap-MiB is the largest HeapInuse of the process seen after an export; over 64 MiB
// fails the benchmark. One iteration is one collection put and one failed export.
func BenchmarkOTLPEndpointDown(b *testing.B) {
	const heapLimit = 64 << 20
	store := sample.NewStore()
	f := newFleet(8)
	store.Put("gpu", f.batch(5000))
	cfg := otlpConfig("grpc", otlptest.FreeAddr(b))
	cfg.OTLP.Timeout = 100 * time.Millisecond // how long a failing export waits
	cfg.OTLP.Interval = time.Hour             // the exports are the loop's ForceFlush calls
	e, err := New(context.Background(), Options{Config: cfg, Store: store, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = e.Shutdown(ctx)
	})
	ctx := context.Background()
	var ms runtime.MemStats
	var peak uint64
	failed := 0
	i := 0
	for b.Loop() {
		i++
		store.Put("gpu", f.batch(5000+float64(i)))
		if err := e.ForceFlush(ctx); err != nil {
			failed++
		}
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
	}
	if failed == 0 {
		b.Fatal("no export failed: the benchmark did not measure a down endpoint")
	}
	b.ReportMetric(float64(peak)/(1<<20), "heap-MiB")
	if peak > heapLimit {
		b.Errorf("heap in use reached %d MiB with the endpoint down, want under %d MiB", peak>>20, heapLimit>>20)
	}
}
