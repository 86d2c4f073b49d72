package cluster

import (
	"math"
	"slices"
	"time"

	"github.com/capstan-power/capstan/capping/waterfill"
)

// plan computes the targets and returns the nodes (indexes into a.names) whose grants the
// round publishes; it touches no network, so its cost is the allocator's CPU per round. Its
// phases: what gone nodes keep reserved in every domain above them, the live nodes' claims, the
// water-fill of what each domain leaves from the root down, the changes it makes to each grant,
// and which of them this round may publish. A flat group is a tree of one domain, the root.
func (a *allocator) plan(now time.Time) []int {
	if !a.view.HasBudget {
		return nil
	}
	if a.tree == nil {
		a.tree = newDomainTree()
	}
	a.tree.ensure(a.view)
	a.tree.reset()
	joiner := a.reserveGone(now)
	joiner = a.claimLive(joiner)
	a.share(joiner)
	pending := a.changes()
	return a.phase(pending)
}

// reserveGone sums, in each domain, what the nodes that are gone keep reserved: a grant without a
// registration keeps its last watts for the grace period, then its floor, until capstanctl
// drain releases it; never less than its minimum, below which GPUs are not set. It counts in
// the grant's domain and, until acknowledged, its previous one. A gone node whose grant was
// never read runs at an unknown grant in an unknown domain and keeps at least the floor at the
// root. It returns the largest minimum of the gone nodes: what a node joining unseen is taken
// to apply.
func (a *allocator) reserveGone(now time.Time) (joiner float64) {
	v, t := a.view, a.tree
	floor := v.Budget.FloorPerNodeW
	for name, g := range v.Grants {
		if _, live := v.Nodes[name]; live {
			delete(a.lostAt, name)
			delete(a.lostFloor, name)
			continue
		}
		lost, ok := a.lostAt[name]
		if !ok {
			lost = now
			a.lostAt[name] = now
		}
		// Cut off from etcd, it drops to the floor it last saw, which may have been lowered since.
		lf := math.Max(a.lostFloor[name], floor)
		a.lostFloor[name] = lf
		held := math.Max(g.Watts, g.PrevW)
		if now.Sub(lost) > a.m.o.Grace {
			held = math.Min(held, math.Max(lf, g.MinW))
		}
		held = math.Max(held, g.MinW)
		d := t.resolve(g.Domain)
		t.addUpBoth(t.reserved, d, t.resolve(g.PrevDomain), held)
		t.addUp(t.granted, d, g.Watts)
		joiner = math.Max(joiner, g.MinW)
	}
	for name := range a.lostAt {
		if _, ok := v.Grants[name]; !ok {
			delete(a.lostAt, name)
			delete(a.lostFloor, name)
		}
	}
	for name := range v.unread {
		if _, live := v.Nodes[name]; !live {
			t.addUp(t.reserved, 0, floor)
		}
	}
	return joiner
}

// claimLive lists the live nodes (a.names, sorted), their claims and their domains: at least the
// floor (never below a node's minimum nor above its maximum), up to its demand first, then up
// to its maximum; each claim counts in its domain and every ancestor. A node that moved counts
// what it may still run at in the domains it left until it acknowledges a grant for its new
// one. It returns joiner raised to the live minimums.
func (a *allocator) claimLive(joiner float64) float64 {
	v, t := a.view, a.tree
	a.names = a.names[:0]
	for name := range v.Nodes {
		a.names = append(a.names, name)
	}
	slices.Sort(a.names)
	a.claims = a.claims[:0]
	a.nodeDom = resize(a.nodeDom, len(a.names))
	for i, name := range a.names {
		n := v.Nodes[name]
		lo := math.Min(math.Max(v.Budget.FloorPerNodeW, n.MinW), n.MaxW)
		c := waterfill.Claim{Lo: lo, Want: math.Min(math.Max(n.DemandW, lo), n.MaxW), Hi: n.MaxW, Weight: n.Priority}
		a.claims = append(a.claims, c)
		joiner = math.Max(joiner, n.MinW)
		d := t.resolve(n.Domain)
		a.nodeDom[i] = d
		t.direct[d] = append(t.direct[d], i)
		for e := d; e >= 0; e = t.parent[e] {
			t.lo[e] += c.Lo
			t.want[e] += c.Want
			t.hi[e] += c.Hi
			t.nodeW[e] += c.Weight
			t.draw[e] += n.DrawW
		}
		g, has := v.Grants[name]
		if !has {
			continue
		}
		if g.Lease == n.Lease {
			t.addUp(t.granted, d, g.Watts)
		}
		if g.Domain != n.Domain || g.PrevDomain != n.Domain {
			held := v.held(name, n)
			t.addOutside(t.reserved, d, t.resolve(g.Domain), held)
			if g.Lease != n.Lease || n.AckedGen < g.Generation {
				t.addOutside(t.reserved, d, t.resolve(g.PrevDomain), held)
			}
		}
	}
	return joiner
}

// share water-fills each domain from the root down into a.targets: a domain shares what it has
// for its live nodes (what its parent gave it, at most its limit less its reservations) among
// its child domains and the nodes attached to it. A child domain claims Σ of its nodes' claims,
// bounded by its own limit; its water rises at its priority × Σ of its nodes' priorities, so
// where no limit binds every node gets what one flat water-fill would give. One node's minimum
// is held back in every domain, however tight, for a node that joins before the allocator has
// seen it (it applies its minimum until granted). Each domain's fit is its own: oversubscribed
// when its reservations and its live nodes' floors exceed its limit.
func (a *allocator) share(joiner float64) {
	t := a.tree
	a.targets = resize(a.targets, len(a.claims))
	for _, d := range t.order {
		capd := t.limit[d] - t.reserved[d] - joiner
		avail := capd
		if d != 0 {
			avail = math.Min(t.give[d], capd)
		}
		cl := a.dclaims[:0]
		for _, c := range t.kids[d] {
			lo := t.lo[c]
			hi := math.Max(lo, math.Min(t.hi[c], t.limit[c]-t.reserved[c]-joiner))
			cl = append(cl, waterfill.Claim{Lo: lo, Want: math.Min(math.Max(t.want[c], lo), hi), Hi: hi, Weight: t.weight[c] * t.nodeW[c]})
		}
		for _, i := range t.direct[d] {
			cl = append(cl, a.claims[i])
		}
		a.dclaims = cl
		a.dout = resize(a.dout, len(cl))
		_, a.scratch = waterfill.Share(cl, avail, a.dout, a.scratch)
		for j, c := range t.kids[d] {
			t.give[c] = a.dout[j]
		}
		for j, i := range t.direct[d] {
			a.targets[i] = a.dout[len(t.kids[d])+j]
		}
		free := t.limit[d] - t.reserved[d]
		switch {
		case t.bad[d] || free < t.lo[d]:
			t.state[d] = oversubscribed
		case capd < t.lo[d]:
			t.state[d] = noJoinerRoom
		default:
			t.state[d] = fits
		}
		a.logFit(d, joiner)
	}
}

// changes rounds each target down to a whole watt (never below the node's minimum) and sorts
// the nodes whose grant it changes into decreases (a.decs) and increases (a.incs). pending is
// whether a decrease (or a move) published earlier is not acknowledged yet.
func (a *allocator) changes() (pending bool) {
	v := a.view
	a.decs, a.incs = a.decs[:0], a.incs[:0]
	for i, name := range a.names {
		n := v.Nodes[name]
		t := math.Max(math.Floor(a.targets[i]), n.MinW)
		a.targets[i] = t
		g, has := v.Grants[name]
		if has && g.Lease == n.Lease {
			if n.AckedGen < g.Generation && (g.PrevW > g.Watts || g.PrevDomain != g.Domain) {
				pending = true
			}
			if g.Domain == n.Domain {
				switch {
				case t < g.Watts:
					a.decs = append(a.decs, i)
				case t >= g.Watts+1:
					a.incs = append(a.incs, i)
				}
				continue
			}
		}
		// A node that moved to another domain first gets a grant for its new domain at most
		// at what it holds, waited for like a decrease: until it acknowledges, it may run
		// in either domain, and counts in both.
		if has && g.Domain != n.Domain {
			a.targets[i] = math.Min(t, v.held(name, n))
			a.decs = append(a.decs, i)
			continue
		}
		// No grant for its lease yet: the node may still run at an old lease's grant or at one
		// this view could not read, so going below that is a decrease, and waited for.
		if t < v.held(name, n) {
			a.decs = append(a.decs, i)
		} else {
			a.incs = append(a.incs, i)
		}
	}
	return pending
}

// phase picks what the round publishes: every decrease if there is one; else, once no decrease
// is pending, the increases of the nodes whose every domain fits, and only where every node
// running at the higher of what it holds and its target stays within each domain's limit.
func (a *allocator) phase(pending bool) []int {
	switch {
	case len(a.decs) > 0:
		return a.decs
	case pending || len(a.incs) == 0:
		return nil
	}
	// Belt and braces: what every node may run at once the increases land, in every domain.
	v, t := a.view, a.tree
	copy(t.total, t.reserved)
	for i, name := range a.names {
		t.addUp(t.total, a.nodeDom[i], math.Max(a.targets[i], v.held(name, v.Nodes[name])))
	}
	for _, d := range t.order {
		t.blocked[d] = t.state[d] != fits || d != 0 && t.blocked[t.parent[d]]
		if !t.blocked[d] && t.total[d] > t.limit[d]+1e-6 {
			t.blocked[d] = true
			a.m.log.Error("cluster: increases withheld: they would exceed the limit", "domain", FullPath(v.Keys.Group, t.path[d]),
				"total_w", t.total[d], "limit_w", t.limit[d])
		}
	}
	out := a.incs[:0]
	for _, i := range a.incs {
		if !t.blocked[a.nodeDom[i]] {
			out = append(out, i)
		}
	}
	a.incs = out
	if len(out) == 0 {
		return nil
	}
	return out
}

// logFit logs when a domain stops or starts fitting its limit. While it does not fit, grants
// under it go down to the floors (never below a minimum) and nothing under it is increased.
func (a *allocator) logFit(d int, joiner float64) {
	t := a.tree
	path := t.path[d]
	state := t.state[d]
	if a.fits == nil {
		a.fits = map[string]fit{}
	}
	if prev, ok := a.fits[path]; ok && prev == state || !ok && state == fits {
		a.fits[path] = state
		return
	}
	a.fits[path] = state
	what := "domain " + FullPath(a.view.Keys.Group, path)
	if d == 0 {
		what = "group"
	}
	args := []any{"domain", FullPath(a.view.Keys.Group, path), "limit_w", t.limit[d], "reserved_w", t.reserved[d], "floors_w", t.lo[d], "joiner_w", joiner}
	switch {
	case t.bad[d]:
		a.m.log.Error("cluster: "+what+" has a malformed record and no readable limit; its nodes are held at their floors, no increases", args...)
	case state == oversubscribed:
		a.m.log.Error("cluster: "+what+" oversubscribed: what gone nodes keep reserved plus the live nodes' floors exceed its limit; grants held at most at the floors, no increases", args...)
	case state == noJoinerRoom:
		a.m.log.Warn("cluster: "+what+" leaves no room above the floors for a joiner's minimum; grants held at most at the floors, no increases", args...)
	default:
		a.m.log.Info("cluster: "+what+" fits its limit again", args...)
	}
}
