package exporters

import (
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
)

func gatherOne(t *testing.T, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	r := prometheus.NewPedanticRegistry()
	r.MustRegister(c)
	mfs, err := r.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func familyValue(mf *dto.MetricFamily) float64 {
	m := mf.GetMetric()[0]
	if m.Counter != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// TestProcessMetricsAsClientGolang holds the agent's process collector to client_golang's: the
// same families with the same help and type, and the same values where they cannot move
// between two reads (the others within what a test process does between them).
func TestProcessMetricsAsClientGolang(t *testing.T) {
	c := newProcessCollector()
	if _, ok := c.(*processMetrics); !ok {
		t.Fatalf("newProcessCollector gave %T, want *processMetrics on Linux", c)
	}
	theirs := gatherOne(t, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ours := gatherOne(t, c)
	if len(theirs) != 9 {
		t.Fatalf("client_golang's process collector gave %d families, want 9", len(theirs))
	}
	for name, want := range theirs {
		got := ours[name]
		if got == nil {
			t.Errorf("%s missing", name)
			continue
		}
		if got.GetHelp() != want.GetHelp() || got.GetType() != want.GetType() || len(got.GetMetric()) != 1 {
			t.Errorf("%s: help %q type %v %d series, want %q %v 1", name, got.GetHelp(), got.GetType(), len(got.GetMetric()), want.GetHelp(), want.GetType())
			continue
		}
		g, w := familyValue(got), familyValue(want)
		switch name {
		case "process_start_time_seconds", "process_max_fds", "process_virtual_memory_max_bytes":
			if g != w {
				t.Errorf("%s = %v, want %v", name, g, w)
			}
		case "process_open_fds":
			if math.Abs(g-w) > 2 {
				t.Errorf("%s = %v, want about %v", name, g, w)
			}
		case "process_cpu_seconds_total", "process_network_receive_bytes_total", "process_network_transmit_bytes_total":
			if g < w {
				t.Errorf("%s = %v, read after client_golang's %v", name, g, w)
			}
		default:
			if g <= 0 || math.Abs(g-w) > w/2 {
				t.Errorf("%s = %v, want about %v", name, g, w)
			}
		}
	}
	if len(ours) != len(theirs) {
		t.Errorf("%d families, want %d", len(ours), len(theirs))
	}
}

func BenchmarkProcessMetrics(b *testing.B) {
	c := newProcessCollector()
	ch := make(chan prometheus.Metric, 16)
	b.ReportAllocs()
	for b.Loop() {
		c.Collect(ch)
		for len(ch) > 0 {
			<-ch
		}
	}
}
