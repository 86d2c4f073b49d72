package exporters

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// testProducer returns a producer over store with temporality sel on a manual clock.
func testProducer(store *sample.Store, sel sdkmetric.TemporalitySelector) (*storeProducer[struct{}], *clock.Manual) {
	clk := clock.NewManual(time.Unix(1_800_000_000, 0))
	p := newStoreProducer[struct{}](store, instrumentation.Scope{Name: ScopeName, Version: "test"}, sel)
	p.now = clk.Now
	p.last, p.lastSweep = clk.Now(), clk.Now()
	return p, clk
}

func produce(t *testing.T, p *storeProducer[struct{}]) []metricdata.ScopeMetrics {
	t.Helper()
	sms, err := p.Produce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return sms
}

// sumPointOf returns the data point of series s in sms, with its sum's temporality.
func sumPointOf(t *testing.T, sms []metricdata.ScopeMetrics, s *sample.Series) (metricdata.DataPoint[float64], metricdata.Sum[float64]) {
	t.Helper()
	for _, sm := range sms {
		for _, m := range sm.Metrics {
			if m.Name != s.Def.Name {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[float64])
			if !ok {
				t.Fatalf("%s is a %T, want a Sum[float64]", m.Name, m.Data)
			}
			for _, dp := range sum.DataPoints {
				if dp.Attributes.Equals(&s.Attrs) {
					return dp, sum
				}
			}
		}
	}
	t.Fatalf("no %s point for %v", s.Def.Name, s.Attrs.ToSlice())
	return metricdata.DataPoint[float64]{}, metricdata.Sum[float64]{}
}

// hasSumPoint reports whether the collection holds a point of series s.
func hasSumPoint(sms []metricdata.ScopeMetrics, s *sample.Series) bool {
	for _, sm := range sms {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[float64]); ok && m.Name == s.Def.Name {
				for _, dp := range sum.DataPoints {
					if dp.Attributes.Equals(&s.Attrs) {
						return true
					}
				}
			}
		}
	}
	return false
}

// TestProducerShape checks one collection: one scope, metrics in table order with their kinds,
// units and descriptions, and gauges stamped with the batch's time.
func TestProducerShape(t *testing.T) {
	store := sample.NewStore()
	b := newFleet(2).batch(5000)
	store.Put("gpu", b)
	p, clk := testProducer(store, nil)
	clk.Advance(10 * time.Second)
	sms := produce(t, p)
	if len(sms) != 1 || sms[0].Scope.Name != ScopeName || sms[0].Scope.Version != "test" {
		t.Fatalf("scopes %+v, want one %s scope", sms, ScopeName)
	}
	ms := sms[0].Metrics
	if len(ms) != len(metrics.Table) {
		t.Fatalf("%d metrics, want %d (one per table entry)", len(ms), len(metrics.Table))
	}
	n := 0
	for i, m := range ms {
		d := metrics.Table[i]
		if m.Name != d.Name || m.Unit != d.Unit || m.Description != d.Description {
			t.Errorf("metric %d is %s [%s], want %s [%s] in table order", i, m.Name, m.Unit, d.Name, d.Unit)
		}
		switch data := m.Data.(type) {
		case metricdata.Gauge[float64]:
			if d.Kind != metrics.Gauge {
				t.Errorf("%s is a gauge, want a %v", d.Name, d.Kind)
			}
			for _, dp := range data.DataPoints {
				if !dp.Time.Equal(b.Time) {
					t.Errorf("%s point time %v, want the batch's %v", d.Name, dp.Time, b.Time)
				}
			}
			n += len(data.DataPoints)
		case metricdata.Sum[float64]:
			if d.Kind == metrics.Gauge || data.IsMonotonic != (d.Kind == metrics.Counter) ||
				data.Temporality != metricdata.CumulativeTemporality {
				t.Errorf("%s is a sum (monotonic %v, %v), want a cumulative %v", d.Name, data.IsMonotonic, data.Temporality, d.Kind)
			}
			for _, dp := range data.DataPoints {
				if !dp.Time.Equal(clk.Now()) || !dp.StartTime.Before(dp.Time) {
					t.Errorf("%s point [%v, %v], want a start before the collection at %v", d.Name, dp.StartTime, dp.Time, clk.Now())
				}
			}
			n += len(data.DataPoints)
		default:
			t.Errorf("%s is a %T", d.Name, m.Data)
		}
	}
	if n != len(b.Points) {
		t.Errorf("%d points, want %d", n, len(b.Points))
	}
}

// TestProducerDeltaWithReset checks delta sums (otlp.temporality=delta): the first collection
// is only a baseline (the counter's value counts from before this exporter: exporting it as one
// interval's increase would add a device's lifetime on every start and reload), later ones
// export the increase since the previous collection over [previous collection, now]; a counter
// that goes down was reset and exports its new value; up-down counters stay cumulative.
func TestProducerDeltaWithReset(t *testing.T) {
	sel, err := temporalitySelector("delta")
	if err != nil {
		t.Fatal(err)
	}
	store := sample.NewStore()
	f := newFleet(1)
	energy := f.gpus[0].energy
	p, clk := testProducer(store, sel)

	// The baseline: no energy point.
	store.Put("gpu", f.batch(1000))
	clk.Advance(10 * time.Second)
	prev := clk.Now()
	if hasSumPoint(produce(t, p), energy) {
		t.Error("the first collection exported a delta for hw.energy; want only a baseline")
	}
	for i, step := range []struct {
		counter, wantDelta float64
	}{
		{1250, 250},
		{1250, 0},  // a collection with no new sample
		{100, 100}, // reset (driver reloaded): the new value is the delta
		{150, 50},
	} {
		store.Put("gpu", f.batch(step.counter))
		clk.Advance(10 * time.Second)
		now := clk.Now()
		sms := produce(t, p)
		dp, sum := sumPointOf(t, sms, energy)
		if sum.Temporality != metricdata.DeltaTemporality || !sum.IsMonotonic {
			t.Fatalf("hw.energy: %v, monotonic %v; want a monotonic delta sum", sum.Temporality, sum.IsMonotonic)
		}
		if dp.Value != step.wantDelta {
			t.Errorf("step %d: counter %v: delta %v, want %v", i, step.counter, dp.Value, step.wantDelta)
		}
		if !dp.StartTime.Equal(prev) || !dp.Time.Equal(now) {
			t.Errorf("step %d: delta over [%v, %v], want [%v, %v]", i, dp.StartTime, dp.Time, prev, now)
		}
		prev = now

		mem, memSum := sumPointOf(t, sms, f.gpus[0].memUsage)
		if memSum.Temporality != metricdata.CumulativeTemporality || memSum.IsMonotonic || mem.Value != 40e9 {
			t.Errorf("hw.gpu.memory.usage: %v monotonic %v value %v; want cumulative non-monotonic 4e10", memSum.Temporality, memSum.IsMonotonic, mem.Value)
		}
	}
}

// TestProducerCumulativeReset checks that a cumulative counter keeps its start time while it
// grows and moves it to the previous collection when it goes down (a reset), so backends see
// the reset; an up-down counter going down is no reset.
func TestProducerCumulativeReset(t *testing.T) {
	store := sample.NewStore()
	f := newFleet(1)
	p, clk := testProducer(store, nil)
	created := clk.Now()

	store.Put("gpu", f.batch(1000))
	clk.Advance(10 * time.Second)
	dp, _ := sumPointOf(t, produce(t, p), f.gpus[0].energy)
	if dp.Value != 1000 || !dp.StartTime.Equal(created) {
		t.Fatalf("first point %v from %v, want 1000 from %v", dp.Value, dp.StartTime, created)
	}
	store.Put("gpu", f.batch(2000))
	clk.Advance(10 * time.Second)
	beforeReset := clk.Now()
	if dp, _ = sumPointOf(t, produce(t, p), f.gpus[0].energy); dp.Value != 2000 || !dp.StartTime.Equal(created) {
		t.Errorf("second point %v from %v, want 2000 from %v", dp.Value, dp.StartTime, created)
	}
	b := f.batch(30)
	for i := range b.Points {
		if b.Points[i].Series == f.gpus[0].memUsage {
			b.Points[i].Value = 1e9 // down from 4e10
		}
	}
	store.Put("gpu", b)
	clk.Advance(10 * time.Second)
	sms := produce(t, p)
	if dp, _ = sumPointOf(t, sms, f.gpus[0].energy); dp.Value != 30 || !dp.StartTime.Equal(beforeReset) {
		t.Errorf("after the reset: %v from %v, want 30 from the previous collection %v", dp.Value, dp.StartTime, beforeReset)
	}
	if mem, _ := sumPointOf(t, sms, f.gpus[0].memUsage); mem.Value != 1e9 || !mem.StartTime.Equal(created) {
		t.Errorf("hw.gpu.memory.usage going down: %v from %v, want 1e9 from %v (no reset)", mem.Value, mem.StartTime, created)
	}
}

// TestProducerSeriesChurn checks that series leaving the store leave the next collection at
// once, and that the producer's state of series that are gone is dropped after a while, so it
// stays bounded however many series come and go.
func TestProducerSeriesChurn(t *testing.T) {
	store := sample.NewStore()
	p, clk := testProducer(store, nil)
	const live = 5
	interval := 15 * time.Second
	bound := live * (int(stateTTL/interval) + stateMinMissed + int(sweepEvery/interval) + 2)
	for i := range 2000 {
		// Every collection, one workload goes and a new one comes, with new series.
		b := &sample.Batch{}
		b.Reset("workload", clk.Now())
		for j := i; j < i+live; j++ {
			b.Add(sample.NewSeries(metrics.CollectorUp, attribute.String(metrics.AttrCollector, fmt.Sprintf("w%d", j))), 1)
		}
		store.Put("workload", b)
		clk.Advance(interval)
		sms := produce(t, p)
		if got := len(sms[0].Metrics[0].Data.(metricdata.Gauge[float64]).DataPoints); got != live {
			t.Fatalf("collection %d: %d points, want %d: series that left the store must leave the collection", i, got, live)
		}
		if states, ids := p.stateCount(); states > bound || ids > bound {
			t.Fatalf("collection %d: state for %d series (%d identities), want at most %d", i, states, ids, bound)
		}
	}
	store.Delete("workload")
	clk.Advance(interval)
	if sms := produce(t, p); len(sms) != 0 {
		t.Errorf("after the batch was deleted: %+v, want nothing", sms)
	}
	for range 3 {
		clk.Advance(stateTTL)
		produce(t, p)
	}
	if states, ids := p.stateCount(); states != 0 || ids != 0 {
		t.Errorf("state for %d series (%d identities) long after every series left, want none", states, ids)
	}
}

// TestProducerRebuiltCollector checks that a collector rebuilt with new series of the same
// identity (a reload) continues its predecessor's sums: same start, deltas from the old value.
func TestProducerRebuiltCollector(t *testing.T) {
	sel, err := temporalitySelector("delta")
	if err != nil {
		t.Fatal(err)
	}
	store := sample.NewStore()
	cum, clk := testProducer(store, nil)
	delta, _ := testProducer(store, sel)
	delta.now = clk.Now
	created := clk.Now()

	old := newFleet(1)
	store.Put("gpu", old.batch(1000))
	clk.Advance(10 * time.Second)
	produce(t, cum)
	produce(t, delta)

	rebuilt := newFleet(1)
	store.Put("gpu", rebuilt.batch(1200))
	clk.Advance(10 * time.Second)
	if dp, _ := sumPointOf(t, produce(t, cum), rebuilt.gpus[0].energy); dp.Value != 1200 || !dp.StartTime.Equal(created) {
		t.Errorf("cumulative after the rebuild: %v from %v, want 1200 from %v", dp.Value, dp.StartTime, created)
	}
	if dp, _ := sumPointOf(t, produce(t, delta), rebuilt.gpus[0].energy); dp.Value != 200 {
		t.Errorf("delta after the rebuild: %v, want 200 (not the whole counter again)", dp.Value)
	}
	if states, _ := cum.stateCount(); states != len(rebuilt.batch(0).Points) {
		t.Errorf("state for %d series after the rebuild, want %d (the old series' state moved)", states, len(rebuilt.batch(0).Points))
	}
}

// TestProducerSkipsForeignAndDuplicate checks that a point of a metric outside metrics.Table is
// left out, and a series twice in one collection is exported once.
func TestProducerSkipsForeignAndDuplicate(t *testing.T) {
	store := sample.NewStore()
	up := sample.NewSeries(metrics.CollectorUp, attribute.String(metrics.AttrCollector, "gpu"))
	foreign := sample.NewSeries(&metrics.Def{ID: metrics.CollectorUp.ID, Name: "not.in.table", Kind: metrics.Gauge})
	b := &sample.Batch{}
	b.Reset("gpu", time.Unix(1_700_000_000, 0))
	b.Add(up, 1)
	b.Add(up, 0)
	b.Add(foreign, 5)
	store.Put("gpu", b)
	p, _ := testProducer(store, nil)
	sms := produce(t, p)
	if len(sms) != 1 || len(sms[0].Metrics) != 1 {
		t.Fatalf("collection %+v, want capstan.collector.up alone", sms)
	}
	pts := sms[0].Metrics[0].Data.(metricdata.Gauge[float64]).DataPoints
	if len(pts) != 1 || pts[0].Value != 1 {
		t.Errorf("points %+v, want the first of the duplicates alone", pts)
	}
}

// TestCollectAllocations guards the product requirement of at most 2 allocations per data point
// for one OTLP collection and one Prometheus rendering together (in steady state).
func TestCollectAllocations(t *testing.T) {
	store := sample.NewStore()
	b := newFleet(8).batch(5000)
	store.Put("gpu", b)
	scope := instrumentation.Scope{Name: ScopeName}
	otlp := sdkmetric.NewManualReader(sdkmetric.WithProducer(newStoreProducer[struct{}](store, scope, nil)))
	prom, err := newPromExposition(store, scope, nil, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	mp := newMeterProvider(NewResource(testConfig(), "test"), otlp, prom.reader)
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	ctx := context.Background()
	var text []byte
	var spans []familySpan
	collect := func() {
		var rm metricdata.ResourceMetrics
		if err := otlp.Collect(ctx, &rm); err != nil {
			t.Fatal(err)
		}
		if text, spans, err = prom.render(ctx, text[:0], false, spans[:0]); err != nil {
			t.Fatal(err)
		}
	}
	collect()
	allocs := testing.AllocsPerRun(20, collect)
	if perPoint := allocs / float64(len(b.Points)); perPoint > 2 {
		t.Errorf("%.0f allocations per collection, %.2f per point; want at most 2 per point", allocs, perPoint)
	}
}
