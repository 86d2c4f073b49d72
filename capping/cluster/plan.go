package cluster

import (
	"math"
	"slices"
	"time"

	"github.com/capstan-power/capstan/capping/waterfill"
)

// plan computes the targets and returns the nodes (indexes into a.names) whose grants the
// round publishes; it touches no network, so its cost is the allocator's CPU per round. Its
// phases: what gone nodes keep reserved, the live nodes' claims, the water-fill of what is
// left, the changes it makes to each grant, and which of them this round may publish.
func (a *allocator) plan(now time.Time) []int {
	if !a.view.HasBudget {
		return nil
	}
	reserved, joiner := a.reserveGone(now)
	sumLo, joiner := a.claimLive(joiner)
	state := a.share(reserved, sumLo, joiner)
	pending := a.changes()
	return a.phase(reserved, state, pending)
}

// reserveGone returns what the nodes that are gone keep reserved: a grant without a
// registration keeps its last watts for the grace period, then its floor, until capstanctl
// drain releases it; never less than its minimum, below which GPUs are not set. A gone node
// whose grant was never read runs at an unknown grant and keeps at least the floor. joiner is
// the largest minimum of the gone nodes: what a node joining unseen is taken to apply.
func (a *allocator) reserveGone(now time.Time) (reserved, joiner float64) {
	v := a.view
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
		reserved += math.Max(held, g.MinW)
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
			reserved += floor
		}
	}
	return reserved, joiner
}

// claimLive lists the live nodes (a.names, sorted) and their claims: at least the floor (never
// below a node's minimum nor above its maximum), up to its demand first, then up to its
// maximum. It returns Σ of the claims' lower bounds and joiner raised to the live minimums.
func (a *allocator) claimLive(joiner float64) (sumLo, joinerOut float64) {
	v := a.view
	a.names = a.names[:0]
	for name := range v.Nodes {
		a.names = append(a.names, name)
	}
	slices.Sort(a.names)
	a.claims = a.claims[:0]
	for _, name := range a.names {
		n := v.Nodes[name]
		lo := math.Min(math.Max(v.Budget.FloorPerNodeW, n.MinW), n.MaxW)
		a.claims = append(a.claims, waterfill.Claim{Lo: lo, Want: math.Min(math.Max(n.DemandW, lo), n.MaxW), Hi: n.MaxW, Weight: n.Priority})
		sumLo += lo
		joiner = math.Max(joiner, n.MinW)
	}
	return sumLo, joiner
}

// share water-fills what the budget leaves after the reservations into a.targets, and says
// whether the group fits. One node's minimum is held back, however tight the budget, for a node
// that joins before the allocator has seen it (it applies its minimum until granted).
func (a *allocator) share(reserved, sumLo, joiner float64) fit {
	free := a.view.Budget.Watts - reserved
	a.targets = slices.Grow(a.targets[:0], len(a.claims))[:len(a.claims)]
	ok, scratch := waterfill.Share(a.claims, free-joiner, a.targets, a.scratch)
	a.scratch = scratch
	state := fits
	switch {
	case free < sumLo:
		state = oversubscribed
	case !ok:
		state = noJoinerRoom
	}
	a.logFit(state, reserved, sumLo, joiner)
	return state
}

// changes rounds each target down to a whole watt (never below the node's minimum) and sorts
// the nodes whose grant it changes into decreases (a.decs) and increases (a.incs). pending is
// whether a decrease published earlier is not acknowledged yet.
func (a *allocator) changes() (pending bool) {
	v := a.view
	a.decs, a.incs = a.decs[:0], a.incs[:0]
	for i, name := range a.names {
		n := v.Nodes[name]
		t := math.Max(math.Floor(a.targets[i]), n.MinW)
		a.targets[i] = t
		g, has := v.Grants[name]
		if has && g.Lease == n.Lease {
			switch {
			case t < g.Watts:
				a.decs = append(a.decs, i)
			case t >= g.Watts+1:
				a.incs = append(a.incs, i)
			}
			if n.AckedGen < g.Generation && g.PrevW > g.Watts {
				pending = true
			}
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

// phase picks what the round publishes: every decrease if there is one; else the increases,
// once no decrease is pending and the group fits, and only if every node running at the higher
// of what it holds and its target stays within the budget.
func (a *allocator) phase(reserved float64, state fit, pending bool) []int {
	switch {
	case len(a.decs) > 0:
		return a.decs
	case pending || len(a.incs) == 0 || state != fits:
		return nil
	}
	// Belt and braces: what every node may run at once the increases land.
	v := a.view
	total := reserved
	for i, name := range a.names {
		total += math.Max(a.targets[i], v.held(name, v.Nodes[name]))
	}
	if total > v.Budget.Watts+1e-6 {
		a.m.log.Error("cluster: increases withheld: they would exceed the budget", "total_w", total, "budget_w", v.Budget.Watts)
		return nil
	}
	return a.incs
}

// logFit logs when the group stops or starts fitting its budget. While it does not fit, grants
// go down to the floors (never below a minimum) and nothing is increased.
func (a *allocator) logFit(state fit, reserved, floors, joiner float64) {
	if state == a.fit {
		return
	}
	a.fit = state
	args := []any{"budget_w", a.view.Budget.Watts, "reserved_w", reserved, "floors_w", floors, "joiner_w", joiner}
	switch state {
	case oversubscribed:
		a.m.log.Error("cluster: group oversubscribed: what gone nodes keep reserved plus the live nodes' floors exceed the budget; grants held at most at the floors, no increases", args...)
	case noJoinerRoom:
		a.m.log.Warn("cluster: budget leaves no room above the floors for a joiner's minimum; grants held at most at the floors, no increases", args...)
	default:
		a.m.log.Info("cluster: group fits its budget again", args...)
	}
}
