package cluster

import (
	"bytes"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"go.opentelemetry.io/otel/attribute"
)

// treeRig is an allocator over an empty view of group site with the given budget and domains
// (path below the group → limit); its log goes to logs.
func treeRig(budget float64, domains map[string]float64) (*allocator, *bytes.Buffer) {
	v := NewView(Keys{Prefix: "/capstan/v1", Group: "site"})
	v.Budget, v.HasBudget = BudgetRecord{Watts: budget}, true
	for p, w := range domains {
		v.Domains[p] = DomainRecord{LimitW: w}
	}
	v.DomainsChanged++
	var logs bytes.Buffer
	m := &Member{o: Options{Grace: time.Second, Now: time.Now, Store: sample.NewStore()}, log: slog.New(slog.NewTextHandler(&logs, nil))}
	return &allocator{m: m, view: v, lostAt: map[string]time.Time{}, lostFloor: map[string]float64{}}, &logs
}

// addNode registers a live node in domain rel (below the group) with a grant of granted watts
// already acknowledged; granted 0: no grant yet.
func addNode(v *View, name, rel string, demand, granted float64, lease int64) {
	v.Nodes[name] = NodeRecord{DemandW: demand, MinW: 400, MaxW: 1400, Priority: 1, AckedGen: 1, Lease: lease, Domain: rel, DrawW: demand}
	if granted > 0 {
		v.Grants[name] = GrantRecord{Watts: granted, MinW: 400, Generation: 1, Lease: lease, Domain: rel, PrevDomain: rel}
	}
}

// under reports whether a node or grant in domain rel counts under domain d (both below the
// group): the checker's own reading of the tree, independent of the allocator's.
func under(rel, d string) bool {
	return d == "" || rel == d || strings.HasPrefix(rel, d+"/")
}

// overLimits is the invariant checker: for every domain with a record (and the root), Σ of
// what every node may run at under it (a live node at Held, in the domain of its grant and of
// its registration, and until it acknowledges the previous grant's; a gone node at its grant's
// higher watts) must be within its limit less its guard band. It returns the violations.
func overLimits(v *View) []string { return overLimitsDead(v, nil) }

// deadNode is what a node that died runs at: what it held, in the domains it may have run in.
type deadNode struct {
	w         float64
	dom, prev string
	both      bool // it had not acknowledged a move: it may run in either domain
}

// overLimitsDead is overLimits where a gone node in dead runs at what it held when it died (its
// GPUs keep the limits it acknowledged), not at what its grant record says it might.
func overLimitsDead(v *View, dead map[string]deadNode) []string {
	limits := map[string]float64{"": v.Budget.Watts}
	for p, d := range v.Domains {
		limits[p] = d.LimitW * (1 - d.GuardBand)
	}
	var out []string
	for d, lim := range limits {
		sum := 0.0
		for name, g := range v.Grants {
			n, live := v.Nodes[name]
			if live {
				continue
			}
			if dn, ok := dead[name]; ok {
				if under(dn.dom, d) || dn.both && under(dn.prev, d) {
					sum += dn.w
				}
				continue
			}
			if under(g.Domain, d) || under(g.PrevDomain, d) {
				sum += max(g.Watts, g.PrevW, n.MinW, g.MinW)
			}
		}
		for name, n := range v.Nodes {
			g, has := v.Grants[name]
			in := under(n.Domain, d)
			if has {
				in = in || under(g.Domain, d) || (n.AckedGen < g.Generation || g.Lease != n.Lease) && under(g.PrevDomain, d)
			}
			if in {
				sum += Held(n, g, has)
			}
		}
		if sum > lim+1e-6 {
			out = append(out, fmt.Sprintf("domain %q: Σ %.1f W over its limit %.1f W", d, sum, lim))
		}
	}
	slices.Sort(out)
	return out
}

// step runs one round as the allocator would and publishes what it picked into the view,
// returning how many grants it wrote.
func step(a *allocator, now time.Time) int {
	idx := a.plan(now)
	if len(idx) == 0 {
		return 0
	}
	a.gen = max(a.gen, a.view.Generation()) + 1
	for _, i := range idx {
		a.view.Grants[a.names[i]] = a.record(i, a.gen, now)
	}
	return len(idx)
}

// ackAll acknowledges every node's grant, as the nodes do once their limits are within it.
func ackAll(v *View) {
	for name, n := range v.Nodes {
		if g, ok := v.Grants[name]; ok && g.Lease == n.Lease {
			n.AckedGen = g.Generation
			v.Nodes[name] = n
		}
	}
}

// sumUnder is Σ of the grants of the live nodes under d.
func sumUnder(v *View, d string) float64 {
	s := 0.0
	for name, n := range v.Nodes {
		if under(n.Domain, d) {
			s += v.Grants[name].Watts
		}
	}
	return s
}

// Every level holds: a rack's nodes share the rack's limit, the site the rest, and a node that
// joins unseen finds its minimum free in every domain.
func TestTreeLimitsEveryLevel(t *testing.T) {
	a, _ := treeRig(10000, map[string]float64{"row1": 6000, "row1/rackA": 3000, "row1/rackB": 8000, "row2": 9000})
	v := a.view
	lease := int64(1)
	for _, rack := range []string{"row1/rackA", "row1/rackB", "row2"} {
		for i := range 4 {
			addNode(v, fmt.Sprintf("%s-%d", strings.ReplaceAll(rack, "/", "-"), i), rack, 1400, 0, lease)
			lease++
		}
	}
	now := time.Now()
	for range 6 {
		step(a, now)
		ackAll(v)
		if bad := overLimits(v); len(bad) > 0 {
			t.Fatalf("over a limit: %v", bad)
		}
	}
	for d, lim := range map[string]float64{"": 10000, "row1": 6000, "row1/rackA": 3000} {
		if s := sumUnder(v, d); s > lim-400 || s < lim-400-12 {
			t.Errorf("Σ grants under %q = %.0f W, want its limit less a joiner's minimum, %.0f W", d, s, lim-400)
		}
	}
	// rackB and row2 share what row1 and the site leave: rackB gets row1's rest (6000 − 400 − 2600).
	if s := sumUnder(v, "row1/rackB"); s < 2600-8 || s > 3000 {
		t.Errorf("Σ under rackB = %.0f W, want about 3000 W (row1 less rackA, less a joiner)", s)
	}
}

// Where no limit below the root binds, the tree gives what the flat group gives: one water-fill
// over every node, whatever the proportions of demands, priorities and rack sizes.
func TestTreeMatchesFlatWhenNoLimitBinds(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		budget := 2000 + rng.Float64()*20000
		flat, _ := treeRig(budget, nil)
		tree, _ := treeRig(budget, map[string]float64{"r1": 1e8, "r1/a": 1e8, "r1/b": 1e8, "r2": 1e8})
		racks := []string{"r1/a", "r1/b", "r2", ""}
		for i := range 3 + rng.IntN(20) {
			name := fmt.Sprintf("n%02d", i)
			d := 400 + rng.Float64()*1000
			prio := float64(1 + rng.IntN(4))
			for _, a := range []*allocator{flat, tree} {
				addNode(a.view, name, racks[rng.IntN(len(racks))], d, 0, int64(i+1))
				n := a.view.Nodes[name]
				n.Priority = prio
				a.view.Nodes[name] = n
			}
			// The same rack in both: the flat group ignores it (no domains there).
			tree.view.Nodes[name] = withDomain(tree.view.Nodes[name], flat.view.Nodes[name].Domain)
		}
		flat.plan(time.Now())
		tree.plan(time.Now())
		// A tree's domains share whole levels, not single nodes: its water-fill among sibling
		// domains is by Σ priority, which is the flat fill's as long as no node of a domain
		// reaches its demand before the others; allow the watts one domain's nodes could
		// shift among themselves.
		sf, st := 0.0, 0.0
		for i := range flat.names {
			sf += flat.targets[i]
			st += tree.targets[i]
		}
		if math.Abs(sf-st) > float64(len(flat.names)) {
			t.Errorf("seed %d: Σ targets flat %.0f W, tree %.0f W", seed, sf, st)
		}
	}
}

func withDomain(n NodeRecord, d string) NodeRecord { n.Domain = d; return n }

// The two phases hold across levels: a raise in rack A funded by a cut in rack B waits until
// B's nodes acknowledged their decreases.
func TestTreeRaiseWaitsForCutElsewhere(t *testing.T) {
	a, _ := treeRig(4400, map[string]float64{"a": 4000, "b": 4000})
	v := a.view
	addNode(v, "a1", "a", 1400, 800, 1)
	addNode(v, "a2", "a", 1400, 800, 2)
	addNode(v, "b1", "b", 1400, 1200, 3)
	addNode(v, "b2", "b", 1400, 1200, 4)
	// b's nodes now want little: their watts go to a.
	for _, n := range []string{"b1", "b2"} {
		r := v.Nodes[n]
		r.DemandW = 500
		v.Nodes[n] = r
	}
	now := time.Now()
	idx := a.plan(now)
	for _, i := range idx {
		if strings.HasPrefix(a.names[i], "a") {
			t.Fatalf("first phase publishes %s's raise before b's cut", a.names[i])
		}
	}
	if len(idx) != 2 {
		t.Fatalf("first phase publishes %v, want b1 and b2's decreases", idx)
	}
	step(a, now)
	if n := step(a, now); n != 0 {
		t.Fatalf("published %d grants before b's nodes acknowledged", n)
	}
	if bad := overLimits(v); len(bad) > 0 {
		t.Fatal(bad)
	}
	ackAll(v)
	if n := step(a, now); n != 2 {
		t.Fatalf("published %d grants after the acknowledgements, want a1 and a2's raises", n)
	}
	if bad := overLimits(v); len(bad) > 0 {
		t.Fatal(bad)
	}
}

// A domain whose nodes' floors exceed its limit is oversubscribed at that level: its nodes go to
// their floors, none is raised, it is logged and exported; the domains beside it carry on.
func TestTreeOversubscribedDomain(t *testing.T) {
	a, logs := treeRig(20000, map[string]float64{"a": 1000, "b": 8000})
	v := a.view
	addNode(v, "a1", "a", 1400, 1000, 1)
	addNode(v, "a2", "a", 1400, 1000, 2) // 2 × 400 W floors + a joiner's 400 W > 1000 W
	addNode(v, "a3", "a", 1400, 0, 3)
	addNode(v, "b1", "b", 1400, 500, 4)
	now := time.Now()
	for range 4 {
		step(a, now)
		ackAll(v)
	}
	// a3 joined into the oversubscribed rack: it is granted nothing, so it keeps its minimum.
	for _, n := range []string{"a1", "a2", "a3"} {
		if g, ok := v.Grants[n]; ok && g.Watts != 400 {
			t.Errorf("%s granted %.0f W in an oversubscribed rack, want its minimum 400 W", n, g.Watts)
		}
	}
	if g := v.Grants["b1"]; g.Watts < 1400 {
		t.Errorf("b1 granted %.0f W beside an oversubscribed rack, want its maximum 1400 W", g.Watts)
	}
	if !strings.Contains(logs.String(), "domain site/a oversubscribed") {
		t.Errorf("no log of site/a oversubscribed:\n%s", logs.String())
	}
	a.publishDomains()
	var over, fine float64
	a.m.o.Store.View(DomainsStoreKey, func(b *sample.Batch) {
		over, _ = b.Find(metrics.ClusterDomainOversubscribed, attribute.String(metrics.AttrClusterDomain, "site/a"))
		fine, _ = b.Find(metrics.ClusterDomainOversubscribed, attribute.String(metrics.AttrClusterDomain, "site/b"))
	})
	if over != 1 || fine != 0 {
		t.Errorf("oversubscribed metric: site/a %v, site/b %v; want 1 and 0", over, fine)
	}
	// The limit is raised: the rack fits again, said once.
	v.Domains["a"] = DomainRecord{LimitW: 4000}
	v.DomainsChanged++
	step(a, now)
	if !strings.Contains(logs.String(), "domain site/a fits its limit again") {
		t.Errorf("no log of site/a fitting again:\n%s", logs.String())
	}
}

// A gone node keeps its grant reserved in every domain above it through the grace period.
func TestTreeGoneNodeReservedInEveryAncestor(t *testing.T) {
	a, _ := treeRig(10000, map[string]float64{"row": 5000, "row/rack": 3000})
	v := a.view
	addNode(v, "live", "row/rack", 1400, 400, 1)
	v.Grants["dead"] = GrantRecord{Watts: 1400, PrevW: 1400, MinW: 400, Generation: 1, Lease: 9, Domain: "row/rack", PrevDomain: "row/rack"}
	now := time.Now()
	for range 3 {
		step(a, now)
		ackAll(v)
	}
	// rack: 3000 − 1400 reserved − 400 joiner = 1200 W for live.
	if g := v.Grants["live"].Watts; g > 1200 || g < 1190 {
		t.Errorf("live granted %.0f W, want 1200 W (rack 3000 W less the dead node's 1400 W and a joiner's 400 W)", g)
	}
	if bad := overLimits(v); len(bad) > 0 {
		t.Fatal(bad)
	}
}

// A node moved to another domain while running counts in the domain it left until it
// acknowledged a grant for the new one.
func TestTreeMovedNode(t *testing.T) {
	a, _ := treeRig(10000, map[string]float64{"a": 2000, "b": 2000})
	v := a.view
	addNode(v, "m", "a", 1400, 1400, 1)
	addNode(v, "b1", "b", 1400, 1200, 2)
	now := time.Now()
	for range 3 {
		step(a, now)
		ackAll(v)
	}
	// The move is a sudden change, like a limit cut: b now holds m's 1400 W on top of b1's.
	// The allocator's first answer is decreases only; once acknowledged, every limit holds, and
	// a then frees m's watts only after m acknowledged its grant for b.
	v.Nodes["m"] = withDomain(v.Nodes["m"], "b")
	for _, i := range a.plan(now) {
		if g := v.Grants[a.names[i]]; a.targets[i] >= g.Watts && g.Domain == v.Nodes[a.names[i]].Domain {
			t.Fatalf("first round after the move raises %s", a.names[i])
		}
	}
	step(a, now)
	if under := v.Grants["m"]; under.Domain != "b" || under.PrevDomain != "a" {
		t.Fatalf("m's grant after the move: domain %q, previous %q; want b, a", under.Domain, under.PrevDomain)
	}
	ackAll(v)
	for i := range 6 {
		if bad := overLimits(v); len(bad) > 0 {
			t.Fatalf("round %d: %v", i, bad)
		}
		step(a, now)
		if bad := overLimits(v); len(bad) > 0 {
			t.Fatalf("round %d: %v", i, bad)
		}
		ackAll(v)
	}
	if g := v.Grants["m"]; g.Domain != "b" {
		t.Fatalf("m's grant is for domain %q, want b", g.Domain)
	}
	if s := sumUnder(v, "b"); s > 2000-400 {
		t.Errorf("Σ under b %.0f W, want at most 1600 W", s)
	}
}

// A domain record that never parsed has no known limit: its nodes are held at their floors. A
// key that is no domain path is refused. A level without a record of its own passes its
// children's limits through.
func TestTreeMalformedAndMissingDomains(t *testing.T) {
	a, logs := treeRig(10000, map[string]float64{"row/rack": 2000})
	v := a.view
	if err := v.Apply(v.Keys.Domains()+"bad", []byte(`{"limit_w": -5}`)); err == nil {
		t.Fatal("a negative limit was accepted")
	}
	for _, key := range []string{"a//b", "a/../a", ".", "a/"} {
		if err := v.Apply(v.Keys.Domains()+key, []byte(`{"limit_w": 100}`)); err == nil || !strings.Contains(err.Error(), "not a domain path") {
			t.Errorf("key domains/%s: %v, want refused as not a domain path", key, err)
		}
	}
	if err := v.Apply(v.Keys.Domains()+"x", []byte(`{"limit_w": 100, "parent": "row"}`)); err == nil {
		t.Error("a record naming its own parent (a field domains do not have) was accepted")
	}
	addNode(v, "bad1", "bad", 1400, 0, 1)
	addNode(v, "r1", "row/rack", 1400, 0, 2)
	addNode(v, "r2", "row/rack/unknown", 1400, 0, 3) // no record: counts in row/rack
	now := time.Now()
	for range 4 {
		step(a, now)
		ackAll(v)
	}
	if g, ok := v.Grants["bad1"]; ok {
		t.Errorf("node of a malformed domain granted %.0f W, want nothing (it keeps its minimum)", g.Watts)
	}
	if s := v.Grants["r1"].Watts + v.Grants["r2"].Watts; s > 2000-400 || s < 1590 {
		t.Errorf("Σ under row/rack %.0f W, want 1600 W (r2's unknown leaf counts in row/rack)", s)
	}
	if !strings.Contains(logs.String(), "domain site/bad has a malformed record") {
		t.Errorf("no log of the malformed domain:\n%s", logs.String())
	}
}

// The invariant over random trees, demands, deaths, moves and limit cuts, with nodes that
// acknowledge in random order: at every instant, for every domain that fits, Σ of what the
// nodes under it may run at stays within its limit.
func TestTreeInvariantRandom(t *testing.T) {
	for seed := range uint64(60) {
		rng := rand.New(rand.NewPCG(seed, 11))
		doms := map[string]float64{}
		var leaves []string
		for r := range 1 + rng.IntN(3) {
			row := fmt.Sprintf("row%d", r)
			doms[row] = 3000 + rng.Float64()*8000
			for k := range 1 + rng.IntN(3) {
				rack := fmt.Sprintf("%s/rack%d", row, k)
				doms[rack] = 2000 + rng.Float64()*4000
				leaves = append(leaves, rack)
			}
		}
		a, _ := treeRig(5000+rng.Float64()*20000, doms)
		v := a.view
		nodes := 4 + rng.IntN(16)
		for i := range nodes {
			addNode(v, fmt.Sprintf("n%02d", i), leaves[rng.IntN(len(leaves))], 400+rng.Float64()*1000, 0, int64(i+1))
		}
		// The limits must leave the floors room, else no invariant can hold: raise any that does not.
		fitAll(v)
		now := time.Now()
		dead := map[string]deadNode{}
		for r := range 200 {
			before := dumpView(v)
			step(a, now)
			if bad := overLimitsDead(v, dead); len(bad) > 0 {
				t.Fatalf("seed %d round %d: %v\nbefore:\n%s\nafter:\n%s", seed, r, bad, before, dumpView(v))
			}
			// Some nodes acknowledge, in random order.
			for name, n := range v.Nodes {
				if g, ok := v.Grants[name]; ok && g.Lease == n.Lease && rng.IntN(3) > 0 {
					n.AckedGen = g.Generation
					v.Nodes[name] = n
				}
			}
			if bad := overLimitsDead(v, dead); len(bad) > 0 {
				t.Fatalf("seed %d round %d after acks: %v", seed, r, bad)
			}
			switch rng.IntN(12) {
			case 0: // demand moves
				name := fmt.Sprintf("n%02d", rng.IntN(nodes))
				if n, ok := v.Nodes[name]; ok {
					n.DemandW = 400 + rng.Float64()*1000
					v.Nodes[name] = n
				}
			case 1: // a node moves
				name := fmt.Sprintf("n%02d", rng.IntN(nodes))
				if n, ok := v.Nodes[name]; ok {
					// A move is sudden, like an SRE's limit change: the limits are made to
					// fit it, then the allocator must keep them.
					v.Nodes[name] = withDomain(n, leaves[rng.IntN(len(leaves))])
					fitAll(v)
				}
			case 2: // a limit is cut or raised
				rel := leaves[rng.IntN(len(leaves))]
				d := v.Domains[rel]
				d.LimitW *= 0.7 + rng.Float64()*0.6
				v.Domains[rel] = d
				v.DomainsChanged++
				fitAll(v)
			case 3: // a node dies, its GPUs at what it held
				name := fmt.Sprintf("n%02d", rng.IntN(nodes))
				if n, ok := v.Nodes[name]; ok {
					g, has := v.Grants[name]
					dead[name] = deadNode{w: Held(n, g, has), dom: g.Domain, prev: g.PrevDomain,
						both: has && (n.AckedGen < g.Generation || g.Lease != n.Lease)}
					delete(v.Nodes, name)
				}
			}
		}
	}
}

// fitAll raises every domain's limit to what its floors, a joiner, and what gone nodes and
// unacknowledged grants hold need, so a random tree is one the invariant can hold in; a limit
// raise takes effect at once, as an SRE's does.
func fitAll(v *View) {
	need := func(d string) float64 {
		s := 400.0
		for name, n := range v.Nodes {
			g, has := v.Grants[name]
			if under(n.Domain, d) || has && (under(g.Domain, d) || under(g.PrevDomain, d)) {
				s += Held(n, g, has)
			}
		}
		for name, g := range v.Grants {
			if _, live := v.Nodes[name]; !live && (under(g.Domain, d) || under(g.PrevDomain, d)) {
				s += max(g.Watts, g.PrevW)
			}
		}
		return s
	}
	for p, d := range v.Domains {
		if n := need(p); d.LimitW < n {
			d.LimitW = n
			v.Domains[p] = d
			v.DomainsChanged++
		}
	}
	if n := need(""); v.Budget.Watts < n {
		v.Budget.Watts = n
	}
}

// dumpView prints a view's limits, nodes and grants, for a failure's message.
func dumpView(v *View) string {
	var b strings.Builder
	fmt.Fprintf(&b, "budget %.0f\n", v.Budget.Watts)
	for _, p := range slices.Sorted(func(yield func(string) bool) {
		for p := range v.Domains {
			if !yield(p) {
				return
			}
		}
	}) {
		fmt.Fprintf(&b, "domain %s %.0f\n", p, v.Domains[p].LimitW)
	}
	names := map[string]bool{}
	for n := range v.Nodes {
		names[n] = true
	}
	for n := range v.Grants {
		names[n] = true
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range names {
			if !yield(n) {
				return
			}
		}
	}) {
		n, live := v.Nodes[name]
		g := v.Grants[name]
		fmt.Fprintf(&b, "%s live=%v dom=%s demand=%.0f acked=%d | grant %.0f prev %.0f gen %d lease %d/%d dom %s prev %s\n",
			name, live, n.Domain, n.DemandW, n.AckedGen, g.Watts, g.PrevW, g.Generation, g.Lease, n.Lease, g.Domain, g.PrevDomain)
	}
	return b.String()
}
