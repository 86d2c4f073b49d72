package exporters

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// How long a producer keeps the state of a series that is no longer in the store: long enough
// that a collector that fails for a few minutes (its batch deleted) and recovers continues its
// counters (no delta spike, no new start time), short enough that series of a replaced
// collector or of finished workloads do not pile up. A state is dropped only once it missed at
// least stateMinMissed collections as well, so a reader that collects rarely keeps its states.
const (
	stateTTL       = 10 * time.Minute
	stateMinMissed = 2
	// sweepEvery is how often (at most) a producer looks for states to drop.
	sweepEvery = time.Minute
)

// storeProducer is an sdkmetric.Producer that turns the latest batches of the sample store into
// metric data: one scope (ScopeName), one metric per metrics.Table entry that has points, in
// table order. Each reader has its own producer, because readers collect independently and may
// differ in temporality.
//
// Points: a Gauge is a Gauge[float64] point stamped with its batch's time (when it was
// measured). Counter and UpDownCounter are Sum[float64] (monotonic or not) points stamped with
// the collection's time, over an interval that depends on the reader's temporality:
//   - cumulative: from the series' start, which is the start of the interval in which the
//     producer first saw it (the previous collection, or the producer's creation); a monotonic
//     sum that goes down was reset, and its start moves to the previous collection;
//   - delta: from the previous collection that saw the series, with the increase since then as
//     the value (the whole value for a new series and after a reset).
//
// State is kept per series, keyed by *sample.Series (collectors build their series once); a
// series rebuilt with the same metric and attributes (a reloaded collector) takes over its
// predecessor's state, and the state of series gone from the store is dropped after stateTTL.
// X is what the producer's reader keeps per series of its own (struct{} for a reader that keeps
// nothing): the producer only carries it, so that it lives and dies with the series' state.
//
// Reuse: Produce reuses its slices (metrics, data points, the boxed aggregations) from one call
// to the next, so a steady-state collection allocates nearly nothing. What it returns is
// therefore valid only until its next call. That is safe because every producer belongs to one
// reader whose collections are serialised and which does not keep the data once it is done:
//   - PeriodicReader (OTLP, stdout): its run loop collects and exports one collection after the
//     other, ForceFlush goes through that loop, Shutdown stops the loop before its last
//     collection; the exporters encode synchronously inside Export, and the reader zeroes its
//     ResourceMetrics after each export.
//   - the Prometheus ManualReader: promExposition holds its lock from Collect until the text
//     is rendered, and clears the scope entries it collected into before releasing it.
//
// Produce itself is safe to call concurrently (a mutex guards the state); only the returned data
// has the lifetime above.
type storeProducer[X any] struct {
	store *sample.Store
	scope instrumentation.Scope
	// temporality is the reader's temporality for each metrics.Kind.
	temporality [3]metricdata.Temporality
	now         func() time.Time

	mu sync.Mutex
	// last is the time of the previous collection (creation before the first): the start of
	// a series first seen now, and of the delta of every series.
	last      time.Time
	lastSweep time.Time
	// gen counts collections; a state's gen is the last collection that saw its series.
	gen uint64
	// collectTime is the time of the collection in progress.
	collectTime time.Time

	states map[*sample.Series]*seriesState[X]
	// byIdentity finds the state of a series by metric and attributes, so a collector that is
	// rebuilt (new *sample.Series with the same identity) continues its predecessor's counters.
	byIdentity map[seriesIdentity]*seriesState[X]

	// defs is indexed by metrics.Def.ID.
	defs []defData[X]
	// out and outIDs (the Def.ID of each out entry) are the last collection's metrics.
	out    []metricdata.Metrics
	outIDs []int
	scopes [1]metricdata.ScopeMetrics
}

// seriesState is what a producer keeps per series between collections.
type seriesState[X any] struct {
	series *sample.Series
	// reader is what the producer's reader keeps for the series.
	reader X
	// gen is the last collection that saw the series, seenAt its time.
	gen    uint64
	seenAt time.Time
	// start is the start time of the series' cumulative sum: the start of the interval in
	// which it was first seen, or the collection before it last reset.
	start time.Time
	// prev is the value of the previous collection that saw the series, prevAt its time.
	prev    float64
	prevAt  time.Time
	hasPrev bool
}

type seriesIdentity struct {
	def   int
	attrs attribute.Distinct
}

// defData is one metric's part of a collection.
type defData[X any] struct {
	def    *metrics.Def
	points []metricdata.DataPoint[float64]
	// series holds the state of each point's series, in the order of points.
	series []*seriesState[X]
	// agg is points boxed as the metric's aggregation. Boxing allocates, so the box is kept
	// while the slice header it holds is unchanged (same backing array and length).
	agg     metricdata.Aggregation
	aggHead *metricdata.DataPoint[float64]
	aggLen  int
	// prevLen is the number of points of the previous collection, to clear what a shorter
	// collection leaves behind.
	prevLen int
	// off: the metric is disabled (metrics.NAME.enabled false) and never exported.
	off bool
}

// withMetricFilter makes the producer leave out the metrics enabled rejects, whoever wrote them
// to the store: the collectors' runner drops them already, but the agent's own metrics, the
// capping controller's and the cluster's are written to the store directly. nil keeps all.
func (p *storeProducer[X]) withMetricFilter(enabled func(*metrics.Def) bool) *storeProducer[X] {
	for i := range p.defs {
		p.defs[i].off = enabled != nil && !enabled(p.defs[i].def)
	}
	return p
}

// newStoreProducer returns a producer over store whose sums follow temporality (the reader's or
// its exporter's selector; nil means cumulative).
func newStoreProducer[X any](store *sample.Store, scope instrumentation.Scope, temporality sdkmetric.TemporalitySelector) *storeProducer[X] {
	if temporality == nil {
		temporality = sdkmetric.DefaultTemporalitySelector
	}
	p := &storeProducer[X]{
		store:      store,
		scope:      scope,
		now:        time.Now,
		states:     make(map[*sample.Series]*seriesState[X]),
		byIdentity: make(map[seriesIdentity]*seriesState[X]),
		defs:       make([]defData[X], len(metrics.Table)),
	}
	p.temporality[metrics.Gauge] = temporality(sdkmetric.InstrumentKindObservableGauge)
	p.temporality[metrics.Counter] = temporality(sdkmetric.InstrumentKindObservableCounter)
	p.temporality[metrics.UpDownCounter] = temporality(sdkmetric.InstrumentKindObservableUpDownCounter)
	for i, d := range metrics.Table {
		p.defs[i].def = d
	}
	p.last = p.now()
	p.lastSweep = p.last
	return p
}

// Produce implements sdkmetric.Producer; see storeProducer for how long the result is valid.
func (p *storeProducer[X]) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.gen++
	p.collectTime = now
	for i := range p.defs {
		d := &p.defs[i]
		d.points = d.points[:0]
		d.series = d.series[:0]
	}
	p.store.Each(p.addBatch)

	p.out = p.out[:0]
	p.outIDs = p.outIDs[:0]
	for i := range p.defs {
		d := &p.defs[i]
		if n := len(d.points); n < d.prevLen {
			// Drop references to series that are gone, so they can be collected.
			clear(d.points[n:d.prevLen])
			clear(d.series[n:d.prevLen])
		}
		d.prevLen = len(d.points)
		if len(d.points) == 0 {
			continue
		}
		p.out = append(p.out, metricdata.Metrics{
			Name:        d.def.Name,
			Description: d.def.Description,
			Unit:        d.def.Unit,
			Data:        p.aggregation(d),
		})
		p.outIDs = append(p.outIDs, i)
	}
	p.last = now
	if now.Sub(p.lastSweep) >= sweepEvery {
		p.sweep(now)
	}
	if len(p.out) == 0 {
		return nil, nil
	}
	p.scopes[0] = metricdata.ScopeMetrics{Scope: p.scope, Metrics: p.out}
	return p.scopes[:], nil
}

// addBatch adds b's points to the collection in progress.
func (p *storeProducer[X]) addBatch(b *sample.Batch) {
	now := p.collectTime
	for i := range b.Points {
		pt := &b.Points[i]
		s := pt.Series
		if s == nil || s.Def == nil {
			continue
		}
		id := s.Def.ID
		if id < 0 || id >= len(p.defs) || p.defs[id].def != s.Def || p.defs[id].off {
			// Not a metric of metrics.Table (nothing describes how to export it), or disabled.
			continue
		}
		st := p.states[s]
		if st == nil {
			st = p.newState(s)
		}
		if st.gen == p.gen {
			// The same series twice in one collection: the first point wins.
			continue
		}
		st.gen, st.seenAt = p.gen, now
		dp := metricdata.DataPoint[float64]{Attributes: s.Attrs, Value: pt.Value}
		if kind := s.Def.Kind; kind == metrics.Gauge {
			dp.Time = b.Time
		} else if !sumPoint(st, &dp, kind == metrics.Counter, p.temporality[kind] == metricdata.DeltaTemporality, now) {
			continue
		}
		d := &p.defs[id]
		d.points = append(d.points, dp)
		d.series = append(d.series, st)
	}
}

// sumPoint fills dp, which holds the series' current value, as a point of a cumulative or delta
// sum stamped now, moves the series' state on, and reports whether the point is exported. A
// monotonic sum that went down was reset: its cumulative start moves to the previous collection,
// and its delta is the new value. The first sighting of a series is only a baseline under delta
// temporality: its value (NVML energy, NIC bytes) counts from long before this agent, or this
// exporter after a reload, and is no increase of the last interval.
func sumPoint[X any](st *seriesState[X], dp *metricdata.DataPoint[float64], monotonic, delta bool, now time.Time) bool {
	v := dp.Value
	first := !st.hasPrev
	reset := monotonic && !first && v < st.prev
	if reset {
		st.start = st.prevAt
	}
	dp.Time = now
	if delta {
		dp.StartTime = st.prevAt
		if !reset {
			dp.Value = v - st.prev
		}
	} else {
		dp.StartTime = st.start
	}
	st.prev, st.prevAt, st.hasPrev = v, now, true
	return !delta || !first
}

// newState returns the state for a series the producer does not know by pointer: that of a
// series with the same metric and attributes which this collection has not seen (a rebuilt
// collector's predecessor), or a new one that starts at the previous collection.
func (p *storeProducer[X]) newState(s *sample.Series) *seriesState[X] {
	key := seriesIdentity{def: s.Def.ID, attrs: s.Attrs.Equivalent()}
	if st := p.byIdentity[key]; st != nil && st.gen != p.gen && st.series.Attrs.Equals(&s.Attrs) {
		delete(p.states, st.series)
		st.series = s
		p.states[s] = st
		return st
	}
	st := &seriesState[X]{series: s, start: p.last, prevAt: p.last}
	p.states[s] = st
	p.byIdentity[key] = st
	return st
}

// sweep drops the state of series that have not been seen for stateTTL and stateMinMissed
// collections.
func (p *storeProducer[X]) sweep(now time.Time) {
	p.lastSweep = now
	for s, st := range p.states {
		if p.gen-st.gen < stateMinMissed || now.Sub(st.seenAt) <= stateTTL {
			continue
		}
		delete(p.states, s)
		key := seriesIdentity{def: s.Def.ID, attrs: s.Attrs.Equivalent()}
		if p.byIdentity[key] == st {
			delete(p.byIdentity, key)
		}
	}
}

// aggregation returns d's points as its metric's aggregation, reusing the previous box when it
// holds the same slice.
func (p *storeProducer[X]) aggregation(d *defData[X]) metricdata.Aggregation {
	head := &d.points[0]
	if d.agg != nil && d.aggHead == head && d.aggLen == len(d.points) {
		return d.agg
	}
	switch d.def.Kind {
	case metrics.Counter, metrics.UpDownCounter:
		d.agg = metricdata.Sum[float64]{
			DataPoints:  d.points,
			Temporality: p.temporality[d.def.Kind],
			IsMonotonic: d.def.Kind == metrics.Counter,
		}
	default:
		d.agg = metricdata.Gauge[float64]{DataPoints: d.points}
	}
	d.aggHead, d.aggLen = head, len(d.points)
	return d.agg
}

// owns reports whether sm is this producer's latest output, which the caller must have
// collected and still hold its lock on (see storeProducer).
func (p *storeProducer[X]) owns(sm *metricdata.ScopeMetrics) bool {
	return len(sm.Metrics) > 0 && len(sm.Metrics) == len(p.out) && &sm.Metrics[0] == &p.out[0]
}

// collected returns, for the j-th metric of the latest output, its metrics.Def.ID and the state
// of each point's series in point order. Like the output, it is valid until the next Produce.
func (p *storeProducer[X]) collected(j int) (id int, series []*seriesState[X]) {
	id = p.outIDs[j]
	return id, p.defs[id].series
}

// stateCount returns how many series the producer keeps state for.
func (p *storeProducer[X]) stateCount() (states, identities int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.states), len(p.byIdentity)
}
