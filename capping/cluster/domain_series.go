package cluster

import (
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// DomainsStoreKey is the key of the elected allocator's per-domain batch in the sample store.
const DomainsStoreKey = StoreKey + ".domains"

// domainSeries are one domain's allocator metrics.
type domainSeries struct {
	limit, granted, draw, over *sample.Series
}

// domainMetrics are the allocator's per-domain metrics, made again when the tree changes.
type domainMetrics struct {
	built   int
	series  []domainSeries
	batches [2]sample.Batch
	cur     int
}

// publishDomains puts each domain's limit, Σ grants, Σ draw and whether it is oversubscribed
// into the store, from the round that just ran.
func (a *allocator) publishDomains() {
	store := a.m.store()
	t := a.tree
	if store == nil || t == nil || len(t.path) == 0 {
		return
	}
	dm := &a.metrics
	if dm.built != t.built || len(dm.series) != len(t.path) {
		dm.built = t.built
		dm.series = dm.series[:0]
		g := attribute.String(metrics.AttrClusterGroup, a.view.Keys.Group)
		for _, p := range t.path {
			d := attribute.String(metrics.AttrClusterDomain, FullPath(a.view.Keys.Group, p))
			dm.series = append(dm.series, domainSeries{
				limit:   sample.NewSeries(metrics.ClusterDomainLimit, g, d),
				granted: sample.NewSeries(metrics.ClusterDomainGranted, g, d),
				draw:    sample.NewSeries(metrics.ClusterDomainDraw, g, d),
				over:    sample.NewSeries(metrics.ClusterDomainOversubscribed, g, d),
			})
		}
	}
	b := &dm.batches[dm.cur]
	dm.cur ^= 1
	b.Reset(StoreKey, a.m.o.Now())
	for d, s := range dm.series {
		if !t.implicit[d] {
			b.Add(s.limit, t.rawLimit[d])
		}
		b.Add(s.granted, t.granted[d])
		b.Add(s.draw, t.draw[d])
		over := 0.0
		if t.state[d] == oversubscribed {
			over = 1
		}
		b.Add(s.over, over)
	}
	store.Put(DomainsStoreKey, b)
}

// dropDomains takes the allocator's batch out of the store once it no longer allocates.
func (a *allocator) dropDomains() {
	if store := a.m.store(); store != nil {
		store.Delete(DomainsStoreKey)
	}
}
