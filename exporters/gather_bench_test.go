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

func BenchmarkGatherGo(b *testing.B) { benchGather(b, collectors.NewGoCollector()) }
func BenchmarkGatherProcess(b *testing.B) {
	benchGather(b, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}
