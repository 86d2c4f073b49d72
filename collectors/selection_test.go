package collectors

import (
	"context"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

func selfValue(store *sample.Store, name string, def *metrics.Def) (float64, bool) {
	var v float64
	var ok bool
	store.View(SelfKey(name), func(b *sample.Batch) {
		if b != nil {
			v, ok = b.Find(def)
		}
	})
	return v, ok
}

// A metric turned off is dropped from every collection of every collector, and
// capstan.collector.series counts what each collector exported after the selection.
func TestMetricFilterAndSeriesCount(t *testing.T) {
	r, store, _ := newRunner()
	power := sample.NewSeries(metrics.HWPower)
	temps := []*sample.Series{
		sample.NewSeries(metrics.HWTemperature), sample.NewSeries(metrics.HWTemperature),
		sample.NewSeries(metrics.HWTemperature),
	}
	r.Add("a", funcCollector(func(_ context.Context, b *sample.Batch) error {
		b.Add(power, 1)
		for _, s := range temps {
			b.Add(s, 40)
		}
		return nil
	}), time.Hour, time.Hour)
	r.Add("b", funcCollector(func(_ context.Context, b *sample.Batch) error {
		b.Add(power, 2)
		return nil
	}), time.Hour, time.Hour)
	r.SetMetricFilter(func(d *metrics.Def) bool { return d != metrics.HWPower })
	for range 2 {
		r.CollectOnce(context.Background())
	}
	if n := points(store, "a"); n != 3 {
		t.Errorf("collector a kept %d points, want its 3 temperatures", n)
	}
	if n := points(store, "b"); n != 0 {
		t.Errorf("collector b kept %d points of a disabled metric", n)
	}
	for name, want := range map[string]float64{"a": 3, "b": 0} {
		if got, ok := selfValue(store, name, metrics.CollectorSeries); !ok || got != want {
			t.Errorf("capstan.collector.series{collector=%s} = %v (present %v), want %v", name, got, ok, want)
		}
	}
	r.SetMetricFilter(nil)
	r.CollectOnce(context.Background())
	if got, _ := selfValue(store, "a", metrics.CollectorSeries); got != 4 {
		t.Errorf("without a selection collector a exports %v series, want 4", got)
	}
}
