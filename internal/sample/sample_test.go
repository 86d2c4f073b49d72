package sample

import (
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
)

func TestStoreKeepsLatestBatchPerKeyInFirstPutOrder(t *testing.T) {
	s := NewStore()
	gpu := NewSeries(metrics.HWPower, attribute.Int(metrics.AttrGPUIndex, 0))
	put := func(key string, v float64) {
		b := &Batch{}
		b.Reset(key, time.Unix(0, 0))
		b.Add(gpu, v)
		s.Put(key, b)
	}
	put("gpu", 1)
	put("thermal", 2)
	put("gpu", 3) // replaces, keeps its place
	var keys []string
	var values []float64
	s.Each(func(b *Batch) {
		keys = append(keys, b.Collector)
		values = append(values, b.Points[0].Value)
	})
	if len(keys) != 2 || keys[0] != "gpu" || keys[1] != "thermal" || values[0] != 3 || values[1] != 2 {
		t.Fatalf("Each saw %v %v, want [gpu thermal] [3 2]", keys, values)
	}
	s.Delete("gpu")
	s.Delete("absent")
	var n int
	s.Each(func(*Batch) { n++ })
	s.View("gpu", func(b *Batch) {
		if b != nil {
			t.Error("deleted batch still visible")
		}
	})
	if n != 1 {
		t.Errorf("%d batches after delete, want 1", n)
	}
}

func TestSeriesWithKeepsBaseAttributes(t *testing.T) {
	base := NewSeries(nil, attribute.String(metrics.AttrHWID, "GPU-1"))
	s := base.With(metrics.HWTemperature, attribute.String(metrics.AttrSensorLocation, "memory"))
	if s.Def != metrics.HWTemperature || s.Attrs.Len() != 2 {
		t.Fatalf("With built %v with %d attributes", s.Def, s.Attrs.Len())
	}
	if v, ok := s.Attrs.Value(metrics.AttrHWID); !ok || v.AsString() != "GPU-1" {
		t.Error("base attribute lost")
	}
	if base.Attrs.Len() != 1 {
		t.Error("With modified the base series")
	}
}

func TestResetKeepsCapacityAndNotifyDoesNotBlock(t *testing.T) {
	b := &Batch{}
	for range 100 {
		b.Add(NewSeries(metrics.HWPower), 1)
	}
	c := cap(b.Points)
	b.Reset("gpu", time.Now())
	if len(b.Points) != 0 || cap(b.Points) != c {
		t.Errorf("Reset: len %d cap %d, want 0 and %d", len(b.Points), cap(b.Points), c)
	}

	s := NewStore()
	ch := make(chan struct{}, 1)
	s.Notify(ch)
	var wg sync.WaitGroup
	for range 10 { // more puts than the channel holds: Put must not block
		wg.Add(1)
		go func() { defer wg.Done(); s.Put("gpu", &Batch{}) }()
	}
	wg.Wait()
	select {
	case <-ch:
	default:
		t.Error("no notification after Put")
	}
}

// A subscriber learns of a removed batch as of a new one; deleting nothing is no change.
func TestDeleteNotifies(t *testing.T) {
	s := NewStore()
	s.Put("gpu", &Batch{})
	ch := make(chan struct{}, 1)
	s.Notify(ch)
	s.Delete("absent")
	select {
	case <-ch:
		t.Error("a Delete of a key the store does not hold notified")
	default:
	}
	s.Delete("gpu")
	select {
	case <-ch:
	default:
		t.Error("no notification after Delete")
	}
}

func TestFindMatchesEveryGivenAttributeAndCountCountsOneMetric(t *testing.T) {
	b := &Batch{}
	gpu := func(i int, kind string) *Series {
		return NewSeries(metrics.HWPower, attribute.Int(metrics.AttrGPUIndex, i), attribute.String("kind", kind))
	}
	b.Add(gpu(0, "instant"), 100)
	b.Add(gpu(1, "instant"), 110)
	b.Add(gpu(1, "average"), 105)
	b.Add(NewSeries(metrics.HWEnergy, attribute.Int(metrics.AttrGPUIndex, 1)), 9)

	if v, ok := b.Find(metrics.HWPower, attribute.Int(metrics.AttrGPUIndex, 1), attribute.String("kind", "average")); !ok || v != 105 {
		t.Errorf("Find(gpu 1, average) = %v, %v; want 105, true", v, ok)
	}
	if v, ok := b.Find(metrics.HWPower); !ok || v != 100 {
		t.Errorf("Find without attributes = %v, %v; want the first point, 100", v, ok)
	}
	if _, ok := b.Find(metrics.HWPower, attribute.Int(metrics.AttrGPUIndex, 2)); ok {
		t.Error("Find(gpu 2) found a point that does not exist")
	}
	if _, ok := b.Find(metrics.HWEnergy, attribute.String("kind", "instant")); ok {
		t.Error("Find matched a point missing one of the attributes")
	}
	if n := b.Count(metrics.HWPower); n != 3 {
		t.Errorf("Count(hw.power) = %d, want 3", n)
	}
}
