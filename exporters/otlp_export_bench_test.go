package exporters

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/sample"
)

// BenchmarkOTLPExport exports an 8-GPU node's collection to the Collector's OTLP receiver, one
// export an iteration, over gRPC and over HTTP. The receiver runs in this process: profile with
// -memprofile and look at the exporter's share.
func BenchmarkOTLPExport(b *testing.B) {
	for _, protocol := range []string{"grpc", "http"} {
		b.Run(protocol, func(b *testing.B) {
			endpoint, _ := otlptest.Start(b, otlptest.Options{Protocol: protocol})
			store := sample.NewStore()
			f := newFleet(8)
			store.Put("gpu", f.batch(5000))
			cfg := otlpConfig(protocol, endpoint)
			cfg.OTLP.Interval = time.Hour // the exports are the loop's ForceFlush calls
			e, err := New(context.Background(), Options{Config: cfg, Store: store, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			if err := e.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = e.Shutdown(context.Background()) })
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				store.Put("gpu", f.batch(5000+float64(i)))
				if err := e.ForceFlush(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
