// Package sample holds what collectors measured: pre-built series, points and the store that
// exporters and the capping controller read from. Sampling happens once, in the collectors;
// readers only ever see the latest batch of each collector.
package sample

import (
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
)

// Series is one time series: a metric and a fixed attribute set. Collectors build their series
// once (per device, per sensor) and reuse them, so a collection allocates no attributes.
type Series struct {
	Def   *metrics.Def
	Attrs attribute.Set
}

// NewSeries builds a series of def with the given attributes.
func NewSeries(def *metrics.Def, attrs ...attribute.KeyValue) *Series {
	return &Series{Def: def, Attrs: attribute.NewSet(attrs...)}
}

// With returns a new series of def carrying s's attributes plus extra ones.
func (s *Series) With(def *metrics.Def, extra ...attribute.KeyValue) *Series {
	kvs := append(s.Attrs.ToSlice(), extra...)
	return NewSeries(def, kvs...)
}

// Point is one measured value of a series.
type Point struct {
	Series *Series
	Value  float64
}

// Batch is everything one collection of one collector produced.
type Batch struct {
	Collector string
	Time      time.Time
	Points    []Point
}

// Add appends a point.
func (b *Batch) Add(s *Series, v float64) {
	b.Points = append(b.Points, Point{Series: s, Value: v})
}

// Reset empties the batch, keeping its capacity.
func (b *Batch) Reset(collector string, now time.Time) {
	b.Collector = collector
	b.Time = now
	b.Points = b.Points[:0]
}

// Find returns the value of the first point of def whose attributes include every key and value
// of match; ok is false when there is none. It is for tests and tools, not the collection path.
func (b *Batch) Find(def *metrics.Def, match ...attribute.KeyValue) (v float64, ok bool) {
	for _, p := range b.Points {
		if p.Series.Def == def && hasAll(p.Series.Attrs, match) {
			return p.Value, true
		}
	}
	return 0, false
}

// Count returns how many points of def the batch holds.
func (b *Batch) Count(def *metrics.Def) int {
	n := 0
	for _, p := range b.Points {
		if p.Series.Def == def {
			n++
		}
	}
	return n
}

func hasAll(set attribute.Set, match []attribute.KeyValue) bool {
	for _, kv := range match {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// Store keeps the latest batch of every collector. Readers visit batches under a read lock; a
// writer replaces a batch whole, so readers never see half a collection.
type Store struct {
	mu      sync.RWMutex
	batches map[string]*Batch
	order   []string
	subs    []chan<- struct{}
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{batches: make(map[string]*Batch)}
}

// Put replaces the latest batch under key. The store keeps the batch until the next Put for the
// same key; the caller must not modify it before then (collectors double-buffer).
func (s *Store) Put(key string, b *Batch) {
	s.mu.Lock()
	if _, ok := s.batches[key]; !ok {
		s.order = append(s.order, key)
	}
	s.batches[key] = b
	subs := s.subs
	s.mu.Unlock()
	notify(subs)
}

// Delete drops the batch under key, so stale data is not exported.
func (s *Store) Delete(key string) {
	s.mu.Lock()
	if _, ok := s.batches[key]; !ok {
		s.mu.Unlock()
		return
	}
	delete(s.batches, key)
	for i, k := range s.order {
		if k == key {
			s.order = append(s.order[:i], s.order[i+1:]...)
			break
		}
	}
	subs := s.subs
	s.mu.Unlock()
	notify(subs)
}

// notify signals every subscriber without blocking: one pending signal says "changed".
func notify(subs []chan<- struct{}) {
	for _, c := range subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// Each calls fn for every batch, in the order their keys were first put. fn must not retain the
// batch or call back into the store.
func (s *Store) Each(fn func(*Batch)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, k := range s.order {
		fn(s.batches[k])
	}
}

// View calls fn with the latest batch under key (nil when there is none), under the read lock.
// fn must not retain the batch.
func (s *Store) View(key string, fn func(*Batch)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fn(s.batches[key])
}

// Notify registers c to receive a non-blocking signal after every Put and every Delete that
// removed a batch.
func (s *Store) Notify(c chan<- struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subs = append(s.subs, c)
}
