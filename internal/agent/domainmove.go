package agent

import (
	"context"

	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/sample"
)

// memberSource is the etcd budget source as the controller sees it: the agent runs the member
// itself (budgetSource.run), on a context that outlives the controller, so Run does nothing.
type memberSource struct{ *budget.Etcd }

func (memberSource) Run(context.Context) {}

// run starts the etcd member on the agent's context, once: a source a reload kept is running.
func (s *budgetSource) run(ctx context.Context, g *guard) {
	if s.member == nil || s.cancel != nil {
		return
	}
	mctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	m := s.member
	g.Go("cluster member", func() { m.Run(mctx) })
}

// keptSource carries the etcd member from one configuration to the next on a reload that only
// moves the node to another domain of its group: the node keeps its lease and its grant, and
// the allocator moves it (a grant in the new domain at most what it holds, counted in both
// until acknowledged) instead of seeing one node leave and another join at its minimum.
type keptSource struct{ src *budgetSource }

// keep marks the running controller's source to be carried over when movesInPlace(cur, next).
func (k *keptSource) keep(r *cappingRun, cur, next *config.Config) {
	if r == nil || r.src == nil || r.src.member == nil || r.src.cancel == nil || !movesInPlace(cur, next) {
		return
	}
	r.src.kept.Store(true)
	k.src = r.src
}

// take hands the kept source to the next configuration's controller, moved to its domain and
// publishing into its store; nil when there is none.
func (k *keptSource) take(cfg *config.Config, store *sample.Store) *budgetSource {
	if k == nil || k.src == nil {
		return nil
	}
	s := k.src
	k.src = nil
	s.kept.Store(false)
	_, domain := cluster.GroupOf(cfg.Etcd)
	s.member.SetStore(store)
	if err := s.member.SetDomain(domain); err != nil {
		// Validation accepted the domain; a member that refuses it leaves as on a stop.
		_ = s.close()
		return nil
	}
	return s
}

// close stops a kept source no configuration took over (the next one failed to start).
func (k *keptSource) close() {
	if k == nil || k.src == nil {
		return
	}
	_ = k.src.close()
	k.src = nil
}

// movesInPlace reports whether a reload from cur to next changes only the node's domain within
// its group, with capping on a cluster budget before and after: the etcd connection, the node,
// its priority and the allocation period stay. Any other change builds a new member (a new
// lease), as a start does; so does a reload that changes nothing, which re-reads certificates.
func movesInPlace(cur, next *config.Config) bool {
	etcd := func(c *config.Config) bool { return c.Capping.Enabled && c.Budget.Source == "etcd" }
	if !etcd(cur) || !etcd(next) || cur.Node.Name != next.Node.Name || cur.Capping.Period != next.Capping.Period {
		return false
	}
	a, b := cur.Etcd, next.Etcd
	ga, da := cluster.GroupOf(a)
	gb, db := cluster.GroupOf(b)
	if ga != gb || da == db {
		return false
	}
	a.Group, a.Domain, a.DomainLabels = "", "", ""
	b.Group, b.Domain, b.DomainLabels = "", "", ""
	return a == b
}
