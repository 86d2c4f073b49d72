package cluster

import (
	"math"
	"slices"
	"strings"
)

// domainTree is the allocator's picture of a group's domain tree: its shape, rebuilt when a
// domain record changes, and per-round sums over each domain's subtree. Index 0 is the root (the
// group), whose limit is the budget.
type domainTree struct {
	built  int // View.DomainsChanged it was built from; -1 before the first build
	index  map[string]int
	path   []string // below the group; "" for the root
	parent []int    // -1 for the root
	kids   [][]int  // child domains
	order  []int    // root first, every domain after its parent
	// limit is what grants under the domain may add up to: its limit less its guard band; +Inf
	// for a level that has no record of its own (its children's and ancestors' limits hold),
	// 0 for one whose record was never readable (its nodes are held at their floors).
	limit    []float64
	rawLimit []float64
	weight   []float64
	implicit []bool // no record: an ancestor of a recorded domain
	bad      []bool // a record that never parsed

	// Per round, each summed over the domain's subtree.
	lo, want, hi []float64 // the live nodes' claims
	nodeW        []float64 // Σ of the live nodes' priorities: the weight of the domain's water
	reserved     []float64 // what gone nodes, and moved nodes where they were, may still run at
	granted      []float64 // Σ of the grants' watts
	draw         []float64 // Σ of the live nodes' reported draw
	total        []float64 // Σ of what every node may run at once the increases land
	give         []float64 // what the parent's water-fill gave the domain's live nodes
	state        []fit
	blocked      []bool  // no increase under it this round
	direct       [][]int // live nodes (indexes into allocator.names) attached right here
	stamp        []int
	stampN       int
}

func newDomainTree() *domainTree { return &domainTree{built: -1, index: map[string]int{}} }

// ensure rebuilds the shape when the view's domains changed since the last build, and takes the
// root's limit from the budget.
func (t *domainTree) ensure(v *View) {
	if t.built != v.DomainsChanged || len(t.path) == 0 {
		t.build(v)
	}
	t.limit[0], t.rawLimit[0] = v.Budget.Watts, v.Budget.Watts
}

func (t *domainTree) build(v *View) {
	t.built = v.DomainsChanged
	clear(t.index)
	t.path = append(t.path[:0], "")
	t.index[""] = 0
	add := func(rel string) {
		// Every ancestor first, so parents get lower indexes than their children.
		for i := 0; i <= len(rel); i++ {
			if i == len(rel) || rel[i] == '/' {
				p := rel[:i]
				if _, ok := t.index[p]; !ok {
					t.index[p] = len(t.path)
					t.path = append(t.path, p)
				}
			}
		}
	}
	rels := make([]string, 0, len(v.Domains)+len(v.badDomains))
	for rel := range v.Domains {
		rels = append(rels, rel)
	}
	for rel := range v.badDomains {
		rels = append(rels, rel)
	}
	slices.Sort(rels)
	for _, rel := range rels {
		add(rel)
	}
	n := len(t.path)
	t.parent = resize(t.parent, n)
	t.limit, t.rawLimit, t.weight = resize(t.limit, n), resize(t.rawLimit, n), resize(t.weight, n)
	t.implicit, t.bad = resize(t.implicit, n), resize(t.bad, n)
	for _, s := range []*[]float64{&t.lo, &t.want, &t.hi, &t.nodeW, &t.reserved, &t.granted, &t.draw, &t.total, &t.give} {
		*s = resize(*s, n)
	}
	t.state, t.blocked, t.stamp = resize(t.state, n), resize(t.blocked, n), resize(t.stamp, n)
	t.kids = resize(t.kids, n)
	t.direct = resize(t.direct, n)
	for i := range n {
		t.kids[i] = t.kids[i][:0]
	}
	t.parent[0], t.weight[0], t.implicit[0], t.bad[0] = -1, 1, false, false
	for i := 1; i < n; i++ {
		p := t.path[i]
		t.parent[i] = t.index[parentOf(p)]
		t.kids[t.parent[i]] = append(t.kids[t.parent[i]], i)
		d, ok := v.Domains[p]
		switch {
		case ok:
			t.limit[i], t.rawLimit[i], t.weight[i], t.implicit[i], t.bad[i] = d.LimitW*(1-d.GuardBand), d.LimitW, d.weight(), false, false
		case v.badDomains[p]:
			t.limit[i], t.rawLimit[i], t.weight[i], t.implicit[i], t.bad[i] = 0, 0, 1, false, true
		default:
			t.limit[i], t.rawLimit[i], t.weight[i], t.implicit[i], t.bad[i] = math.Inf(1), math.Inf(1), 1, true, false
		}
	}
	// Parents have lower indexes than their children, so index order is a top-down order.
	t.order = resize(t.order, n)
	for i := range n {
		t.order[i] = i
	}
}

// resize returns s with length n, reusing its memory.
func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// reset zeroes the per-round sums.
func (t *domainTree) reset() {
	for _, s := range [][]float64{t.lo, t.want, t.hi, t.nodeW, t.reserved, t.granted, t.draw, t.total, t.give} {
		clear(s)
	}
	for i := range t.direct {
		t.direct[i] = t.direct[i][:0]
	}
}

// resolve returns the domain a node or grant naming rel counts in: rel itself, or, when rel has
// no record (not yet set, or removed), its nearest ancestor that is in the tree.
func (t *domainTree) resolve(rel string) int {
	for {
		if i, ok := t.index[rel]; ok {
			return i
		}
		j := strings.LastIndexByte(rel, '/')
		if j < 0 {
			return 0
		}
		rel = rel[:j]
	}
}

// addUp adds w to sum at d and every ancestor of d.
func (t *domainTree) addUp(sum []float64, d int, w float64) {
	for ; d >= 0; d = t.parent[d] {
		sum[d] += w
	}
}

// addUpBoth adds w to sum at every domain that holds d or e (once where they share ancestors):
// a node that may run in either counts in both.
func (t *domainTree) addUpBoth(sum []float64, d, e int, w float64) {
	t.addUp(sum, d, w)
	t.addOutside(sum, d, e, w)
}

// addOutside adds w to sum at every ancestor of e that does not hold d: where a moved node
// may still run though its claim counts under d.
func (t *domainTree) addOutside(sum []float64, d, e int, w float64) {
	if e == d {
		return
	}
	t.stampN++
	for a := d; a >= 0; a = t.parent[a] {
		t.stamp[a] = t.stampN
	}
	for a := e; a >= 0; a = t.parent[a] {
		if t.stamp[a] != t.stampN {
			sum[a] += w
		}
	}
}
