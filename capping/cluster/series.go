package cluster

import (
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// StoreKey is the key of the cluster batch in the sample store.
const StoreKey = "cluster"

// errKinds are the values of capstan.cluster.error.
var errKinds = []string{"request", "malformed", "lost_lease"}

// memberSeries are the member's metrics, made once.
type memberSeries struct {
	grant, budget, gen, alloc *sample.Series
	grantAge, leaseTTL        *sample.Series
	domain                    *sample.Series
	errs                      map[string]*sample.Series
}

func newMemberSeries(group, domain string) memberSeries {
	g := attribute.String(metrics.AttrClusterGroup, group)
	s := memberSeries{
		domain: sample.NewSeries(metrics.ClusterNodeDomain, g, attribute.String(metrics.AttrClusterDomain, domain)),
		grant:  sample.NewSeries(metrics.ClusterGrant, g),
		budget: sample.NewSeries(metrics.ClusterBudget, g),
		gen:    sample.NewSeries(metrics.ClusterGeneration, g),
		alloc:  sample.NewSeries(metrics.ClusterAllocator, g),
		// The age of the node's hold on its grant, so that an alert reads it exactly rather
		// than from error rates.
		grantAge: sample.NewSeries(metrics.ClusterGrantAge, g),
		leaseTTL: sample.NewSeries(metrics.ClusterLeaseTTL, g),
		errs:     map[string]*sample.Series{},
	}
	for _, k := range errKinds {
		s.errs[k] = sample.NewSeries(metrics.ClusterEtcdErrors, g, attribute.String(metrics.AttrClusterError, k))
	}
	return s
}

// publish puts the member's state into the store, alternating between two batches so a reader
// of the last one is never written under.
func (m *Member) publish(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.o.Store == nil {
		return
	}
	b := &m.batches[m.cur]
	m.cur ^= 1
	b.Reset(StoreKey, now)
	b.Add(m.series.grant, m.applied)
	if m.haveBudget {
		b.Add(m.series.budget, m.budget.Watts)
	}
	b.Add(m.series.gen, float64(m.appliedGen))
	alloc := 0.0
	if m.allocator {
		alloc = 1
	}
	b.Add(m.series.alloc, alloc)
	contact := m.lastContact
	if contact.IsZero() {
		contact = m.created // no answer yet: the hold is as old as the member
	}
	b.Add(m.series.grantAge, max(0, now.Sub(contact).Seconds()))
	b.Add(m.series.leaseTTL, m.o.LeaseTTL.Seconds())
	b.Add(m.series.domain, 1)
	for _, k := range errKinds {
		b.Add(m.series.errs[k], m.errs[k])
	}
	m.o.Store.Put(StoreKey, b)
}
