package exporters

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// gpuSeries is one GPU's series, built once like a collector builds them.
type gpuSeries struct {
	info, power, powerInstant, energy *sample.Series
	status                            [3]*sample.Series
	temp                              [2]*sample.Series
	util                              [3]*sample.Series
	memActivity, memUsage, memLimit   *sample.Series
	memUtil, memReserved              *sample.Series
	io                                [2]*sample.Series
	errors                            [3]*sample.Series
	clock, clockMax                   [2]*sample.Series
	limit                             [5]*sample.Series
	throttle                          [6]*sample.Series
	fan, pstate                       *sample.Series
}

func gpuUUID(i int) string { return fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000000", i) }

func newGPUSeries(i int) *gpuSeries {
	base := sample.NewSeries(metrics.HWPower,
		attribute.String(metrics.AttrHWType, "gpu"),
		attribute.String(metrics.AttrHWID, gpuUUID(i)),
		attribute.String(metrics.AttrHWName, "NVIDIA H100 80GB HBM3"),
		attribute.Int(metrics.AttrGPUIndex, i),
	)
	kv := attribute.String
	g := &gpuSeries{
		info: base.With(metrics.GPUInfo, kv(metrics.AttrSerial, fmt.Sprintf("1650%08d", i)),
			kv(metrics.AttrPCIBusID, fmt.Sprintf("00000000:%02X:00.0", 0x18+i)), kv(metrics.AttrDriverVersion, "570.86.15")),
		power:        base,
		powerInstant: base.With(metrics.GPUPowerInstant),
		energy:       base.With(metrics.HWEnergy),
		memActivity:  base.With(metrics.GPUMemoryActivity),
		memUsage:     base.With(metrics.GPUMemoryUsage),
		memLimit:     base.With(metrics.GPUMemoryLimit),
		memUtil:      base.With(metrics.GPUMemoryUtilization),
		memReserved:  base.With(metrics.GPUMemoryReserved),
		fan:          base.With(metrics.GPUFanSpeed),
		pstate:       base.With(metrics.GPUPerformanceState),
	}
	for j, s := range []string{"ok", "degraded", "failed"} {
		g.status[j] = base.With(metrics.GPUStatus, kv(metrics.AttrHWState, s))
	}
	for j, s := range []string{"gpu", "memory"} {
		g.temp[j] = base.With(metrics.HWTemperature, kv(metrics.AttrSensorLocation, s))
	}
	for j, s := range []string{"general", "encoder", "decoder"} {
		g.util[j] = base.With(metrics.GPUUtilization, kv(metrics.AttrGPUTask, s))
	}
	for j, s := range []string{"receive", "transmit"} {
		g.io[j] = base.With(metrics.GPUIO, kv(metrics.AttrIODirection, s))
	}
	g.errors[0] = base.With(metrics.GPUErrors, kv(metrics.AttrErrorType, "xid"), kv(metrics.AttrXID, "79"))
	g.errors[1] = base.With(metrics.GPUErrors, kv(metrics.AttrErrorType, "ecc_corrected"))
	g.errors[2] = base.With(metrics.GPUErrors, kv(metrics.AttrErrorType, "ecc_uncorrected"))
	for j, s := range []string{"sm", "memory"} {
		g.clock[j] = base.With(metrics.GPUClock, kv(metrics.AttrClockDomain, s))
		g.clockMax[j] = base.With(metrics.GPUClockMax, kv(metrics.AttrClockDomain, s))
	}
	for j, s := range []string{"enforced", "requested", "default", "min", "max"} {
		g.limit[j] = base.With(metrics.GPUPowerLimit, kv(metrics.AttrLimitKind, s))
	}
	for j, s := range []string{"sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "power_brake", "idle"} {
		g.throttle[j] = base.With(metrics.GPUThrottle, kv(metrics.AttrThrottleReason, s))
	}
	return g
}

// add appends one collection of GPU i, shaped like the GPU collector's: 39 points.
func (g *gpuSeries) add(b *sample.Batch, i int, energy float64) {
	f := float64(i)
	b.Add(g.info, 1)
	b.Add(g.status[0], 1)
	b.Add(g.status[1], 0)
	b.Add(g.status[2], 0)
	b.Add(g.power, 300+10*f)
	b.Add(g.powerInstant, 305+10*f)
	b.Add(g.energy, energy)
	b.Add(g.temp[0], 60+f)
	b.Add(g.temp[1], 70+f)
	b.Add(g.util[0], 0.9)
	b.Add(g.util[1], 0)
	b.Add(g.util[2], 0)
	b.Add(g.memActivity, 0.4)
	b.Add(g.memUsage, 40e9)
	b.Add(g.memLimit, 80e9)
	b.Add(g.memUtil, 0.5)
	b.Add(g.memReserved, 0.5e9)
	b.Add(g.io[0], 1e12+f)
	b.Add(g.io[1], 2e12+f)
	b.Add(g.errors[0], 1)
	b.Add(g.errors[1], 3)
	b.Add(g.errors[2], 0)
	b.Add(g.clock[0], 1.98e9)
	b.Add(g.clock[1], 2.6e9)
	b.Add(g.clockMax[0], 1.98e9)
	b.Add(g.clockMax[1], 2.6e9)
	for j, v := range []float64{700, 700, 700, 200, 700} {
		b.Add(g.limit[j], v)
	}
	for j := range g.throttle {
		b.Add(g.throttle[j], 0)
	}
	b.Add(g.fan, 0)
	b.Add(g.pstate, 0)
}

// fleet is n GPUs' series plus the agent's own, and the batches they fill.
type fleet struct {
	gpus              []*gpuSeries
	collectorUp       *sample.Series
	collectorDuration *sample.Series
	// others holds one series of every other table metric (host collectors, the agent's own,
	// the GPU counts), so a batch covers the whole table.
	others []*sample.Series
}

func newFleet(n int) *fleet {
	f := &fleet{
		collectorUp:       sample.NewSeries(metrics.CollectorUp, attribute.String(metrics.AttrCollector, "gpu")),
		collectorDuration: sample.NewSeries(metrics.CollectorDuration, attribute.String(metrics.AttrCollector, "gpu")),
	}
	for i := range n {
		f.gpus = append(f.gpus, newGPUSeries(i))
	}
	// What the GPU series above and the agent's own do not cover (host collectors, GPU health
	// and profiling metrics) gets one series each.
	covered := map[*metrics.Def]bool{metrics.CollectorUp: true, metrics.CollectorDuration: true}
	probe := &sample.Batch{}
	newGPUSeries(0).add(probe, 0, 0)
	for _, p := range probe.Points {
		covered[p.Series.Def] = true
	}
	for _, d := range metrics.Table {
		if covered[d] {
			continue
		}
		kvs := make([]attribute.KeyValue, len(d.Attributes))
		for i, k := range d.Attributes {
			kvs[i] = attribute.String(k, "host-0")
		}
		f.others = append(f.others, sample.NewSeries(d, kvs...))
	}
	return f
}

// batch returns one collection of every GPU; energy is the first GPU's energy counter (the
// others' are offset by 1000 J per index).
func (f *fleet) batch(energy float64) *sample.Batch {
	b := &sample.Batch{}
	b.Reset("gpu", time.Unix(1_700_000_000, 0))
	for i, g := range f.gpus {
		g.add(b, i, energy+1000*float64(i))
	}
	b.Add(f.collectorUp, 1)
	b.Add(f.collectorDuration, 0.0042)
	for _, s := range f.others {
		b.Add(s, 1)
	}
	return b
}

// testConfig is a config with every exporter off; tests turn on what they test.
func testConfig() *config.Config {
	return &config.Config{Node: config.Node{Name: "node-a"}}
}

// newExporters builds exporters from o and shuts them down at the end of the test.
func newExporters(t *testing.T, o Options) *Exporters {
	t.Helper()
	e, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	shutdownAtEnd(t, e)
	return e
}

// startExporters is newExporters, started.
func startExporters(t *testing.T, o Options) *Exporters {
	t.Helper()
	e := newExporters(t, o)
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return e
}

// shutdownAtEnd shuts e down at the end of the test and reports an error.
func shutdownAtEnd(t *testing.T, e *Exporters) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
}
