package cluster

import (
	"fmt"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/capping/budget"
)

// BenchmarkAllocatorRound10k is one allocation round's computation (dead-node reservations,
// water-filling, the two-phase decision) over a group of 10,000 live nodes after a budget cut:
// the allocator's CPU per round, which the target bounds at 50 ms.
func BenchmarkAllocatorRound10k(b *testing.B) {
	a := planRig(10000)
	b.ReportAllocs()
	for b.Loop() {
		if len(a.plan(time.Now())) == 0 {
			b.Fatal("a cut published nothing")
		}
	}
}

// planRig is an allocator over a view of n live nodes granted 1000 W each under a budget that
// was just cut to 800 W a node.
func planRig(n int) *allocator {
	v := NewView(Keys{Prefix: "/capstan/v1", Group: "g"})
	v.Budget, v.HasBudget = BudgetRecord{Watts: float64(n) * 800}, true
	for i := range n {
		name := fmt.Sprintf("n%05d", i)
		v.Nodes[name] = NodeRecord{DemandW: 1400, MinW: 400, MaxW: 1400, Priority: float64(1 + i%4), AckedGen: 1, Lease: int64(i + 1)}
		v.Grants[name] = GrantRecord{Watts: 1000, MinW: 400, Generation: 1, Lease: int64(i + 1)}
	}
	m := &Member{o: Options{Grace: time.Second, Now: time.Now}, log: slog.New(slog.DiscardHandler)}
	return &allocator{m: m, view: v, lostAt: map[string]time.Time{}, lostFloor: map[string]float64{}}
}

// The two phases: a cut publishes only decreases; increases wait until every decreased node
// acknowledged or lost its lease; a dead node's grant stays reserved through the grace period,
// then its floor.
func TestPlanPhases(t *testing.T) {
	a := planRig(3)
	v := a.view
	v.Budget.Watts = 3000
	v.Nodes["n00000"] = NodeRecord{DemandW: 1400, MinW: 400, MaxW: 1400, Priority: 1, AckedGen: 1, Lease: 1}
	v.Nodes["n00001"] = NodeRecord{DemandW: 500, MinW: 400, MaxW: 1400, Priority: 1, AckedGen: 1, Lease: 2}
	v.Nodes["n00002"] = NodeRecord{DemandW: 1400, MinW: 400, MaxW: 1400, Priority: 1, AckedGen: 1, Lease: 3}
	now := time.Now()
	// n00001 wants 500 W: it goes down first, alone.
	idx := a.plan(now)
	if len(idx) != 1 || a.names[idx[0]] != "n00001" || a.targets[idx[0]] >= 1000 {
		t.Fatalf("first phase publishes %v (targets %v), want only the decrease of n00001", idx, a.targets)
	}
	v.Grants["n00001"] = GrantRecord{Watts: a.targets[idx[0]], PrevW: 1000, MinW: 400, Generation: 2, Lease: 2}
	// Not acknowledged: nothing more.
	if idx := a.plan(now); len(idx) != 0 {
		t.Fatalf("published %v before the decrease was acknowledged", idx)
	}
	n := v.Nodes["n00001"]
	n.AckedGen = 2
	v.Nodes["n00001"] = n
	idx = a.plan(now)
	if len(idx) == 0 {
		t.Fatal("no increase after the acknowledgement")
	}
	total := 0.0
	for i := range a.names {
		total += a.targets[i]
	}
	// One node's minimum (400 W) is held back for a joiner.
	if total > 3000-400 || total < 3000-400-3 {
		t.Errorf("Σ targets %v W, want 2600 W (budget less a joiner's minimum)", total)
	}

	// n00002 dies holding 1000 W: reserved through the grace period, then its floor.
	delete(v.Nodes, "n00002")
	a.plan(now)
	sumLive := a.targets[0] + a.targets[1]
	if sumLive > 3000-1000-400+1e-9 {
		t.Errorf("live targets %v W while the dead node's 1000 W is reserved", sumLive)
	}
	a.plan(now.Add(2 * time.Second))
	if got := a.targets[0] + a.targets[1]; got <= sumLive || got > 3000-400-400+1e-9 {
		t.Errorf("after the grace period live targets %v W, want more than %v W and at most 2200 W (floor 400 W kept)", got, sumLive)
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
		parse            func([]byte) error
	}{
		{"budget negative", `{"watts": -5}`, "watts -5 out of range", func(b []byte) error { _, err := ParseBudget(b); return err }},
		{"budget unknown field", `{"watts": 5, "wats": 6}`, `unknown field "wats"`, func(b []byte) error { _, err := ParseBudget(b); return err }},
		{"budget not json", `five kilowatts`, "budget record", func(b []byte) error { _, err := ParseBudget(b); return err }},
		{"node max below min", `{"min_w": 400, "max_w": 300, "priority": 1}`, "max_w 300 below min_w 400", func(b []byte) error { _, err := ParseNode(b); return err }},
		{"node priority", `{"min_w": 400, "max_w": 1400, "priority": 0}`, "priority 0 out of range", func(b []byte) error { _, err := ParseNode(b); return err }},
		{"grant huge", `{"watts": 1e12, "generation": 3}`, "watts 1e+12 out of range", func(b []byte) error { _, err := ParseGrant(b); return err }},
		{"grant generation", `{"watts": 100}`, "generation 0 out of range", func(b []byte) error { _, err := ParseGrant(b); return err }},
		{"trailing data", `{"watts": 100, "generation": 1} {}`, "trailing data", func(b []byte) error { _, err := ParseGrant(b); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.parse([]byte(tc.data))
			if err == nil || !contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// testMember is a member on a fake clock that never reaches etcd: its client is never used.
func testMember(t *testing.T, now *time.Time) *Member {
	t.Helper()
	m, err := NewMember(Options{Client: new(clientv3.Client), Keys: Keys{Prefix: "/capstan/v1", Group: "g"}, Node: "n",
		LeaseTTL: 10 * time.Second, Period: time.Second, Priority: 1, Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Before the controller reported the node's bounds the member has nothing to register and no
// budget to give; a report without valid bounds changes nothing; the first valid one opens
// registration, and the node's minimum is its budget until a grant.
func TestMemberWaitsForBounds(t *testing.T) {
	now := time.Unix(1000, 0)
	m := testMember(t, &now)
	src := budget.NewEtcd(m, func() time.Time { return now })
	bounded := func() bool {
		select {
		case <-m.bounded:
			return true
		default:
			return false
		}
	}
	if w, gen := m.Grant(); w != 0 || gen != 0 || bounded() || m.Floor() != 0 || m.AppliedW() != 0 {
		t.Fatalf("before a report: grant %v W gen %d, floor %v W, applied %v W, registering %v; want nothing", w, gen, m.Floor(), m.AppliedW(), bounded())
	}
	if _, ok := src.Current(); ok {
		t.Error("the etcd source has a budget before the member knows the node's bounds")
	}
	src.Report(budget.NodeReport{DrawW: 900, DrawOK: true, At: now}) // no capped GPU: no bounds
	if bounded() {
		t.Fatal("a report without bounds opened registration")
	}
	src.Report(budget.NodeReport{MinW: 400, MaxW: 1400, At: now})
	if !bounded() {
		t.Fatal("the first report with bounds did not open registration")
	}
	b, ok := src.Current()
	if !ok || b.Watts != 400 || b.Generation != 0 || m.AppliedW() != 400 || m.Floor() != 400 {
		t.Errorf("after the first report: budget %v (ok %v), applied %v W, floor %v W; want the 400 W minimum", b, ok, m.AppliedW(), m.Floor())
	}
	// Later reports without bounds keep the last ones.
	src.Report(budget.NodeReport{MinW: 0, MaxW: 0, At: now})
	if m.node.minW != 400 || m.node.maxW != 1400 {
		t.Errorf("bounds %v–%v W after a report without bounds, want the last 400–1400 W", m.node.minW, m.node.maxW)
	}
}

// The node's demand follows the controller's reported draw; before a first draw it is the
// node's maximum, and once the last draw is older than the lease TTL it is what the node applies.
func TestDemandFromReports(t *testing.T) {
	now := time.Unix(1000, 0)
	for _, tc := range []struct {
		name    string
		reports []budget.NodeReport // each a second apart
		applied float64
		after   time.Duration // from the last report
		want    float64
	}{
		{"no draw yet: its maximum", []budget.NodeReport{{MinW: 400, MaxW: 1400}}, 900, 0, 1400},
		{"power-bound: a tenth of its maximum more", []budget.NodeReport{{DrawW: 880, DrawOK: true, MinW: 400, MaxW: 1400}}, 900, 0, 1040},
		{"drawing less: its draw and a margin", []budget.NodeReport{{DrawW: 500, DrawOK: true, MinW: 400, MaxW: 1400}}, 900, 0, 570},
		{"never below its minimum", []budget.NodeReport{{DrawW: 100, DrawOK: true, MinW: 400, MaxW: 1400}}, 900, 0, 400},
		{"never above its maximum", []budget.NodeReport{{DrawW: 1400, DrawOK: true, MinW: 400, MaxW: 1400}}, 1400, 0, 1400},
		{"a period without a reading keeps the last draw", []budget.NodeReport{{DrawW: 500, DrawOK: true, MinW: 400, MaxW: 1400}, {MinW: 400, MaxW: 1400}}, 900, 0, 570},
		{"the bounds follow the reports", []budget.NodeReport{{DrawW: 500, DrawOK: true, MinW: 400, MaxW: 1400}, {DrawW: 500, DrawOK: true, MinW: 200, MaxW: 700}}, 600, 0, 535},
		{"reports stopped: what it applies", []budget.NodeReport{{DrawW: 500, DrawOK: true, MinW: 400, MaxW: 1400}}, 900, 11 * time.Second, 900},
		{"a draw within the lease TTL still counts", []budget.NodeReport{{DrawW: 500, DrawOK: true, MinW: 400, MaxW: 1400}}, 900, 9 * time.Second, 570},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at := now
			m := testMember(t, &at)
			for _, r := range tc.reports {
				r.At = at
				m.Report(r)
				at = at.Add(time.Second)
			}
			m.Applied(tc.applied, 0)
			at = at.Add(tc.after - time.Second)
			m.mu.Lock()
			got := m.demandLocked(at)
			m.mu.Unlock()
			if math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("demand %v W, want %v W", got, tc.want)
			}
		})
	}
}

// A node holds its grant for the lease TTL after etcd last answered a keep-alive, then drops to
// its floor (the budget's floor per node, never below its minimum), with generation 0.
func TestGrantHeldForTheLeaseTTL(t *testing.T) {
	now := time.Unix(1000, 0)
	m := testMember(t, &now)
	m.Report(budget.NodeReport{MinW: 400, MaxW: 1400, At: now})
	m.mu.Lock()
	m.lastContact = now
	m.grant, m.haveGrant = GrantRecord{Watts: 1200, Generation: 7}, true
	m.budget, m.haveBudget = BudgetRecord{Watts: 5000, FloorPerNodeW: 500}, true
	m.mu.Unlock()
	for _, tc := range []struct {
		after time.Duration
		watts float64
		gen   int64
	}{
		{0, 1200, 7},
		{10 * time.Second, 1200, 7},
		{10*time.Second + time.Millisecond, 500, 0},
		{time.Minute, 500, 0},
	} {
		now = time.Unix(1000, 0).Add(tc.after)
		if w, gen := m.Grant(); w != tc.watts || gen != tc.gen {
			t.Errorf("%s after the last keep-alive: grant %v W generation %d, want %v W generation %d", tc.after, w, gen, tc.watts, tc.gen)
		}
	}
}
