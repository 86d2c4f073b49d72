package cluster

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
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
