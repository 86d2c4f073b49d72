package cluster

import (
	"fmt"
	"testing"
	"time"
)

// treeRig10k is an allocator over 10,000 live nodes in 3 levels: 1 site (the group), 20 rows,
// 500 racks of 20 nodes (400–1400 W each, priorities 1–4), every node granted and acknowledged
// as the allocator itself left them, demands spread over each node's range.
func treeRig10k(tb testing.TB) *allocator {
	doms := map[string]float64{}
	for r := range 20 {
		doms[fmt.Sprintf("row%02d", r)] = 500 * 1000
		for k := range 25 {
			doms[fmt.Sprintf("row%02d/rack%02d", r, k)] = 20 * 1200
		}
	}
	a, _ := treeRig(10000*1000, doms)
	a.m.o.Store = nil
	v := a.view
	for i := range 10000 {
		rack := fmt.Sprintf("row%02d/rack%02d", i/500, (i/20)%25)
		name := fmt.Sprintf("n%05d", i)
		v.Nodes[name] = NodeRecord{DemandW: 400 + float64(i*37%1000), MinW: 400, MaxW: 1400, Priority: float64(1 + i%4), AckedGen: 1, Lease: int64(i + 1), Domain: rack}
	}
	now := time.Now()
	for range 10 {
		step(a, now)
		ackAll(v)
	}
	if n := step(a, now); n != 0 {
		tb.Fatalf("the rig did not settle: %d grants still move", n)
	}
	return a
}

// BenchmarkAllocatorRoundTree10k is one allocation round's computation over the 3-level tree of
// 10,000 nodes right after the site's budget was cut by 10 %: the allocator's CPU and memory
// per round, which the targets bound at 50 ms and 10 MB.
func BenchmarkAllocatorRoundTree10k(b *testing.B) {
	a := treeRig10k(b)
	a.view.Budget.Watts *= 0.9 * sumGrants(a.view) / a.view.Budget.Watts
	b.ReportAllocs()
	for b.Loop() {
		if len(a.plan(time.Now())) == 0 {
			b.Fatal("a cut published nothing")
		}
	}
}

// BenchmarkTreeCutConvergence10k cuts the site's budget of the 10,000-node tree by 10 % and
// runs rounds as the allocator does, one a period, with every node acknowledging within the
// period that follows a publication: it reports the periods until every grant is within the
// new budget and the grants that moved, and fails if any domain is over its limit at any
// round.
func BenchmarkTreeCutConvergence10k(b *testing.B) {
	var periods, moved float64
	for b.Loop() {
		b.StopTimer()
		a := treeRig10k(b)
		v := a.view
		v.Budget.Watts = 0.9 * sumGrants(v)
		b.StartTimer()
		now := time.Now()
		for p := 1; ; p++ {
			n := step(a, now)
			moved += float64(n)
			if bad := overLimitsAfterCut(v); len(bad) > 0 {
				b.Fatalf("period %d: %v", p, bad)
			}
			ackAll(v)
			if n == 0 && sumGrants(v) <= v.Budget.Watts {
				periods += float64(p)
				break
			}
			if p > 100 {
				b.Fatal("no convergence in 100 periods")
			}
		}
	}
	b.ReportMetric(periods/float64(b.N), "periods/cut")
	b.ReportMetric(moved/float64(b.N), "grants-written/cut")
}

func sumGrants(v *View) float64 {
	s := 0.0
	for _, g := range v.Grants {
		s += g.Watts
	}
	return s
}

// overLimitsAfterCut checks every domain but the root, whose cut the grants follow within
// a round and whose acknowledgements land a period later: for the root, Σ of the grants the
// nodes may run at must not rise above what it was before the cut.
func overLimitsAfterCut(v *View) []string {
	w := v.Budget.Watts
	v.Budget.Watts = 1e12
	bad := overLimits(v)
	v.Budget.Watts = w
	return bad
}
