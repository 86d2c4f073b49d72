package exporters

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

func benchGather(b *testing.B, cs ...prometheus.Collector) {
	r := prometheus.NewRegistry()
	for _, c := range cs {
		r.MustRegister(c)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGatherOwnMetrics gathers the Go and process collectors as a /metrics scrape does,
// with client_golang's process collector and with the agent's: what each scrape allocates for
// the agent's own metrics, beside the store's.
func BenchmarkGatherOwnMetrics(b *testing.B) {
	b.Run("client_golang", func(b *testing.B) {
		benchGather(b, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	})
	b.Run("agent", func(b *testing.B) { benchGather(b, collectors.NewGoCollector(), newProcessCollector()) })
}
