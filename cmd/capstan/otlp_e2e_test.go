package main

import (
	"testing"
	"time"

	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/testkit"
)

func startReceiver(t *testing.T, protocol string) (string, *consumertest.MetricsSink) {
	t.Helper()
	return otlptest.Start(t, otlptest.Options{Protocol: protocol})
}

// waitPoints waits until cond holds for what the receiver got so far.
func waitPoints(t *testing.T, sink *consumertest.MetricsSink, what string, cond func([]otlptest.Point) bool) []otlptest.Point {
	t.Helper()
	var pts []otlptest.Point
	if !testkit.Poll(90*time.Second, func() bool { pts = otlptest.Points(sink); return cond(pts) }) {
		t.Fatalf("timed out waiting for %s; %d points received", what, len(pts))
	}
	return pts
}

func names(pts []otlptest.Point) map[string]bool {
	m := map[string]bool{}
	for _, p := range pts {
		m[p.Metric.Name()] = true
	}
	return m
}

// expected lists the table metrics the sim fleet must deliver.
func expected() []*metrics.Def {
	var out []*metrics.Def
	for _, d := range metrics.Table {
		if (d.From("gpu") || d.From("agent")) && !gpuMetricsNotOnSXM[d.Name] {
			out = append(out, d)
		}
	}
	return out
}

// TestOTLPEndToEnd runs the binary on the sim backend exporting to the OpenTelemetry
// Collector's own receiver and checks every metric of the table arrives as the table defines it.
func TestOTLPEndToEnd(t *testing.T) {
	for _, protocol := range []string{"grpc", "http"} {
		t.Run(protocol, func(t *testing.T) {
			endpoint, sink := startReceiver(t, protocol)
			a := startAgent(t, append([]string{"--gpu.backend=sim", "--gpu.sim.count=2", "--gpu.sim.trace=steady",
				"--collector.gpu.interval=200ms", "--otlp.endpoint=" + endpoint, "--otlp.protocol=" + protocol,
				"--otlp.insecure", "--otlp.interval=1s", "--web.listen-address=", "--node.name=node-e2e"}, everyGPUMetricFlags()...)...)
			want := expected()
			// Two exports of energy prove the counter moves.
			pts := waitPoints(t, sink, "every table metric and two exports", func(pts []otlptest.Point) bool {
				seen := names(pts)
				for _, d := range want {
					if !seen[d.Name] {
						return false
					}
				}
				return len(sink.AllMetrics()) >= 3
			})
			for _, p := range pts {
				d := metrics.ByName(p.Metric.Name())
				if d == nil {
					t.Errorf("received %s, which the table does not define", p.Metric.Name())
					continue
				}
				if p.Metric.Unit() != d.Unit {
					t.Errorf("%s: unit %q, want %q", d.Name, p.Metric.Unit(), d.Unit)
				}
				switch d.Kind {
				case metrics.Gauge:
					if p.Metric.Type() != pmetric.MetricTypeGauge {
						t.Errorf("%s arrived as %s, want a gauge", d.Name, p.Metric.Type())
					}
				case metrics.Counter, metrics.UpDownCounter:
					if p.Metric.Type() != pmetric.MetricTypeSum || p.Metric.Sum().IsMonotonic() != (d.Kind == metrics.Counter) ||
						p.Metric.Sum().AggregationTemporality() != pmetric.AggregationTemporalityCumulative {
						t.Errorf("%s arrived as %s (monotonic %v), want a cumulative %s", d.Name, p.Metric.Type(), p.Metric.Sum().IsMonotonic(), d.Kind)
					}
				}
				for k := range p.DP.Attributes().AsRaw() {
					if !contains(d.Attributes, k) {
						t.Errorf("%s carries attribute %q the table does not list", d.Name, k)
					}
				}
				if v, _ := p.Resource.Get("host.name"); v.Str() != "node-e2e" {
					t.Errorf("resource host.name = %q, want node-e2e", v.Str())
				}
				if v, _ := p.Resource.Get("service.name"); v.Str() != "capstan" {
					t.Errorf("resource service.name = %q, want capstan", v.Str())
				}
				value := p.DP.DoubleValue()
				switch d {
				case metrics.HWPower, metrics.GPUPowerInstant:
					if value < 50 || value > 700 {
						t.Errorf("%s = %v W, outside an H100's range", d.Name, value)
					}
				case metrics.HWTemperature:
					if value < 20 || value > 100 {
						t.Errorf("%s = %v °C, implausible", d.Name, value)
					}
				case metrics.GPUUtilization, metrics.GPUMemoryUtilization:
					if value < 0 || value > 1 {
						t.Errorf("%s = %v, not a fraction", d.Name, value)
					}
				}
			}
			// Energy increases between exports of the same GPU.
			var first, last float64 = -1, -1
			for _, p := range pts {
				if p.Metric.Name() != metrics.HWEnergy.Name {
					continue
				}
				if idx, _ := p.DP.Attributes().Get(metrics.AttrGPUIndex); idx.Int() != 0 {
					continue
				}
				if first < 0 {
					first = p.DP.DoubleValue()
				}
				last = p.DP.DoubleValue()
			}
			if !(last > first && first >= 0) {
				t.Errorf("hw.energy of GPU 0 did not increase across exports: first %v, last %v", first, last)
			}
			if code := a.stop(t); code != 0 {
				t.Errorf("exit %d", code)
			}
		})
	}
}

// The collector endpoint is down when the agent starts: the agent keeps running, data arrives
// once the endpoint is up, and memory stays bounded meanwhile.
func TestOTLPEndpointComesUpLater(t *testing.T) {
	endpoint := otlptest.FreeAddr(t)
	a := startAgent(t, "--gpu.backend=sim", "--gpu.sim.count=8", "--collector.gpu.interval=100ms",
		"--otlp.endpoint="+endpoint, "--otlp.insecure", "--otlp.interval=1s", "--otlp.timeout=1s", "--web.listen-address=",
		"--log.level=debug")
	a.waitLog(t, "agent ready")
	// Several exports fail while nothing listens: the first is a warning, the next are debug.
	a.waitLogCount(t, "OTLP export failed again", 2)
	rssDown := statusKiB(t, a.cmd.Process.Pid, "VmRSS")
	_, sink := otlptest.Start(t, otlptest.Options{Protocol: "grpc", Addr: endpoint})
	waitPoints(t, sink, "data after the endpoint came up", func(pts []otlptest.Point) bool {
		return names(pts)[metrics.HWPower.Name]
	})
	peak := statusKiB(t, a.cmd.Process.Pid, "VmHWM")
	if peak > 150*1024 {
		t.Errorf("peak RSS %d KiB while the endpoint was down (RSS then %d KiB): memory is not bounded", peak, rssDown)
	}
	if code := a.stop(t); code != 0 {
		t.Errorf("exit %d after the endpoint came back", code)
	}
}
