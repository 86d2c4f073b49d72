package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/capstan-power/capstan/internal/etcdtest"
)

// safetyRig is an allocator over an empty view with a budget of watts.
func safetyRig(watts float64) *allocator {
	a := planRig(0)
	a.view.Budget.Watts = watts
	return a
}

// onPaper takes the grants a round would publish into the view, as publish does, under
// generation gen.
func onPaper(a *allocator, idx []int, gen int64) {
	v := a.view
	for _, i := range idx {
		name := a.names[i]
		n := v.Nodes[name]
		v.Grants[name] = GrantRecord{Watts: a.targets[i], PrevW: v.held(name, n), MinW: n.MinW, Generation: gen, Lease: n.Lease}
		delete(v.unread, name)
	}
}

// ack records that node name applied every generation up to gen.
func ack(a *allocator, name string, gen int64) {
	n := a.view.Nodes[name]
	n.AckedGen = gen
	a.view.Nodes[name] = n
}

func published(a *allocator, idx []int) map[string]float64 {
	out := map[string]float64{}
	for _, i := range idx {
		out[a.names[i]] = a.targets[i]
	}
	return out
}

// hungry is a live node of 400–1400 W that wants its maximum, granted `grant` W for its lease.
func hungry(a *allocator, name string, lease int64, grant float64) {
	a.view.Nodes[name] = NodeRecord{DemandW: 1400, MinW: 400, MaxW: 1400, Priority: 1, AckedGen: 1, Lease: lease}
	a.view.Grants[name] = GrantRecord{Watts: grant, MinW: 400, Generation: 1, Lease: lease}
}

// The reviewer's case: x registered again (new lease) and still runs at its old 1400 W grant
// while its demand fell to 400 W; a and b go from 600 W to 1100 W. Published together, Σ is
// 3600 W under a 3000 W budget. x's reduction must go first, alone, and be waited for.
func TestPlanReregisteredNodeDecreasesFirst(t *testing.T) {
	a := safetyRig(3000)
	hungry(a, "a", 3, 600)
	hungry(a, "b", 4, 600)
	a.view.Nodes["x"] = NodeRecord{DemandW: 400, MinW: 400, MaxW: 1400, Priority: 1, AckedGen: 1, Lease: 2}
	a.view.Grants["x"] = GrantRecord{Watts: 1400, MinW: 400, Generation: 1, Lease: 1} // its old lease
	checkDecreaseFirst(t, a)
}

// A new allocator whose view never read x's grant (malformed since before it was elected)
// does not know what x runs at: x counts at its maximum until it acknowledges a grant.
func TestPlanUnreadGrantCountsAtMax(t *testing.T) {
	a := safetyRig(3000)
	hungry(a, "a", 3, 600)
	hungry(a, "b", 4, 600)
	a.view.Nodes["x"] = NodeRecord{DemandW: 400, MinW: 400, MaxW: 1400, Priority: 1, AckedGen: 1, Lease: 2}
	if err := a.view.Apply(a.view.Keys.Grant("x"), []byte(`{"watts": 1e12, "generation": 5}`)); err == nil {
		t.Fatal("a malformed grant was accepted")
	}
	checkDecreaseFirst(t, a)
}

// checkDecreaseFirst runs the rounds of TestPlanReregisteredNodeDecreasesFirst: x alone down to
// 400 W, nothing while x has not acknowledged, then a and b up.
func checkDecreaseFirst(t *testing.T, a *allocator) {
	t.Helper()
	now := time.Now()
	idx := a.plan(now)
	if got := published(a, idx); len(got) != 1 || got["x"] != 400 {
		t.Fatalf("first round publishes %v, want only x's decrease to 400 W", got)
	}
	onPaper(a, idx, 2)
	if got := a.view.Grants["x"].PrevW; got != 1400 {
		t.Errorf("x's new grant records prev_w %v W, want the 1400 W it may still run at", got)
	}
	if idx := a.plan(now); len(idx) != 0 {
		t.Fatalf("round publishes %v before x acknowledged its decrease", published(a, idx))
	}
	ack(a, "x", 2)
	idx = a.plan(now)
	if got := published(a, idx); got["a"] != 1100 || got["b"] != 1100 || len(got) != 2 {
		t.Fatalf("after x's acknowledgement the round publishes %v, want a and b up to 1100 W", got)
	}
}

// Whatever the grant says, a node runs at least at its minimum: the controller never sets its
// GPUs lower.
func TestHeldNeverBelowMinimum(t *testing.T) {
	n := NodeRecord{MinW: 400, MaxW: 1400, Priority: 1, AckedGen: 3, Lease: 1}
	if got := Held(n, GrantRecord{Watts: 0, Generation: 3, Lease: 1}, true); got != 400 {
		t.Errorf("a node acknowledging a 0 W grant is counted at %v W, want its 400 W minimum", got)
	}
}

// The reviewer's case: budget 1000 W, live a and b with 400 W minimums, dead c reserving 1400 W.
// The GPUs cannot go below 2200 W in all; granting a and b 0 W only hides it. No grant goes
// below a minimum and nothing is increased until the group fits.
func TestPlanOversubscribedKeepsMinimums(t *testing.T) {
	a := safetyRig(1000)
	hungry(a, "a", 1, 450)
	hungry(a, "b", 2, 450)
	a.view.Grants["c"] = GrantRecord{Watts: 1400, MinW: 400, Generation: 1, Lease: 9}
	now := time.Now()
	idx := a.plan(now)
	for i, name := range a.names {
		if a.targets[i] < 400 {
			t.Errorf("%s targeted at %v W, below its 400 W minimum", name, a.targets[i])
		}
	}
	if got := published(a, idx); len(got) != 2 || got["a"] != 400 || got["b"] != 400 {
		t.Fatalf("round publishes %v, want a and b down to their 400 W minimums", got)
	}
	onPaper(a, idx, 2)
	ack(a, "a", 2)
	ack(a, "b", 2)
	// Past c's grace period only its floor (its minimum) is reserved: 400+400+400 > 1000 W still.
	for _, at := range []time.Time{now, now.Add(2 * time.Second)} {
		if idx := a.plan(at); len(idx) != 0 {
			t.Errorf("oversubscribed group publishes %v", published(a, idx))
		}
	}
	// A node that has no grant yet runs at its minimum and stays there.
	a.view.Nodes["d"] = NodeRecord{DemandW: 1400, MinW: 400, MaxW: 1400, Priority: 1, Lease: 4}
	if idx := a.plan(now); len(idx) != 0 {
		t.Errorf("oversubscribed group publishes %v for a newcomer", published(a, idx))
	}
}

// The joiner holdback stays however tight the budget: two nodes at 400 W minimums under 1000 W
// leave less than a joiner's 400 W above their floors, so nobody gets more than the floor.
func TestPlanHoldbackWhenTight(t *testing.T) {
	a := safetyRig(1000)
	for i, name := range []string{"a", "b"} {
		a.view.Nodes[name] = NodeRecord{DemandW: 1400, MinW: 400, MaxW: 1400, Priority: 1, Lease: int64(i + 1)}
	}
	idx := a.plan(time.Now())
	sum := 0.0
	for _, w := range published(a, idx) {
		sum += w
	}
	if sum+400 > 1000 {
		t.Errorf("round publishes %v (Σ %v W): no room left for a 400 W joiner under 1000 W", published(a, idx), sum)
	}
}

// startEtcd starts an embedded etcd and returns a client of it.
func startEtcd(t *testing.T, edit func(*embed.Config)) *clientv3.Client {
	t.Helper()
	_, eps := etcdtest.Start(t, 1, edit)
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// electedAllocator is an allocator of group k on cli, elected, with an empty view.
func electedAllocator(t *testing.T, cli *clientv3.Client, k Keys) *allocator {
	t.Helper()
	m, err := NewMember(Options{Client: cli, Keys: k, Node: "alloc", LeaseTTL: time.Second, Period: 100 * time.Millisecond,
		Priority: 1, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := concurrency.NewSession(cli)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sess.Close() })
	el := concurrency.NewElection(sess, k.Election())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := el.Campaign(ctx, "alloc"); err != nil {
		t.Fatal(err)
	}
	a := newAllocator(m, el)
	a.view = NewView(k)
	return a
}

func readGrant(t *testing.T, cli *clientv3.Client, k Keys, name string) (GrantRecord, bool) {
	t.Helper()
	resp, err := cli.Get(context.Background(), k.Grant(name))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return GrantRecord{}, false
	}
	g, err := ParseGrant(resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return g, true
}

// A publication whose first transaction (with the state record) commits and whose second fails:
// the next publication must not use the same generation for different watts, since a node
// acknowledges a generation only once and would be counted at the new value unapplied.
func TestPublishNeverReusesGeneration(t *testing.T) {
	// The second transaction carries long node names and is too large for this etcd.
	cli := startEtcd(t, func(c *embed.Config) { c.MaxRequestBytes = 25000 })
	k := Keys{Prefix: "/capstan/v1", Group: "g"}
	a := electedAllocator(t, cli, k)
	var idx []int
	for i := range 2 * maxTxnOps {
		name := fmt.Sprintf("a%03d", i)
		if i >= maxTxnOps-1 {
			name = "b" + strings.Repeat("x", 240) + fmt.Sprintf("%03d", i)
		}
		a.view.Nodes[name] = NodeRecord{DemandW: 1000, MinW: 100, MaxW: 1000, Priority: 1, Lease: 1}
		a.names = append(a.names, name)
		a.targets = append(a.targets, 500)
		idx = append(idx, i)
	}
	ctx := context.Background()
	a.publish(ctx, idx)
	first, ok := readGrant(t, cli, k, "a000")
	if !ok {
		t.Fatal("the first transaction did not commit")
	}
	if _, ok := readGrant(t, cli, k, a.names[len(a.names)-1]); ok {
		t.Fatal("the second transaction committed: the test needs it refused")
	}
	for i := range a.targets {
		a.targets[i] = 600
	}
	a.publish(ctx, idx[:maxTxnOps-1])
	second, _ := readGrant(t, cli, k, "a000")
	if second.Watts != 600 || second.Generation == first.Generation {
		t.Errorf("a000 granted %v W under generation %d after %v W under generation %d: a generation reused",
			second.Watts, second.Generation, first.Watts, first.Generation)
	}
}

// A node may have acknowledged a generation above what the view stores (a state record lost or
// rewritten): the next generation is above it too.
func TestPublishGenerationAboveAcknowledged(t *testing.T) {
	cli := startEtcd(t, nil)
	k := Keys{Prefix: "/capstan/v1", Group: "g"}
	a := electedAllocator(t, cli, k)
	a.view.State.Generation, a.gen = 2, 2
	a.view.Nodes["n"] = NodeRecord{DemandW: 1000, MinW: 100, MaxW: 1000, Priority: 1, AckedGen: 9, Lease: 1}
	a.names, a.targets = []string{"n"}, []float64{500}
	a.publish(context.Background(), []int{0})
	if g, _ := readGrant(t, cli, k, "n"); g.Generation <= 9 {
		t.Errorf("grant published under generation %d; the node acknowledged 9 already", g.Generation)
	}
}

// A watch error makes the allocator read the group again; a grant malformed meanwhile keeps its
// last good value rather than vanishing (and its node counted at its minimum).
func TestRunKeepsLastGoodGrantAcrossReload(t *testing.T) {
	cli := startEtcd(t, nil)
	k := Keys{Prefix: "/capstan/v1", Group: "g"}
	if _, err := cli.Put(context.Background(), k.Grant("x"), `{"watts": "lots"}`); err != nil {
		t.Fatal(err)
	}
	a := electedAllocator(t, cli, k)
	good := GrantRecord{Watts: 1400, PrevW: 1400, MinW: 400, Generation: 3, Lease: 7}
	a.view.Grants["x"] = good
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	a.run(ctx)
	if got, ok := a.view.Grants["x"]; !ok || got != good {
		t.Errorf("after the reload x's grant is %+v (present %v), want the last good %+v", got, ok, good)
	}
}

// budget set counts what the group keeps for nodes that are gone.
func TestSetBudgetCountsReservations(t *testing.T) {
	cli := startEtcd(t, nil)
	k := Keys{Prefix: "/capstan/v1", Group: "g"}
	ctx := context.Background()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	node, _ := json.Marshal(NodeRecord{DemandW: 1400, MinW: 400, MaxW: 1400, Priority: 1, Lease: int64(lease.ID)})
	dead, _ := json.Marshal(GrantRecord{Watts: 1400, MinW: 400, Generation: 1, Lease: 99})
	if _, err := cli.Put(ctx, k.Node("a"), string(node), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, k.Grant("c"), string(dead)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		watts float64
		want  string
	}{
		{700, "budget 700 W for group g is below the 800 W it needs at least: 400 W for its 1 live nodes"},
		{700, "plus 400 W reserved for nodes that are gone (1; capstanctl drain releases them); set at least 800 W"},
		{300, "set at least 400 W, plus the 400 W reserved for nodes that are gone (1; capstanctl drain releases them): 800 W in all"},
	} {
		err := SetBudget(ctx, cli, k, BudgetRecord{Watts: tc.watts})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("budget %v W: error %v, want one containing %q", tc.watts, err, tc.want)
		}
	}
	if err := SetBudget(ctx, cli, k, BudgetRecord{Watts: 800}); err != nil {
		t.Errorf("budget 800 W refused: %v", err)
	}
}

// Members ignore a deleted grant and keep running at it, so the view keeps a live node's grant
// when its record is deleted; a gone node's grant deleted (drained) is released.
func TestViewKeepsDeletedGrantOfLiveNode(t *testing.T) {
	v := NewView(Keys{Prefix: "/capstan/v1", Group: "g"})
	v.Nodes["x"] = NodeRecord{MinW: 400, MaxW: 1400, Priority: 1, Lease: 1}
	v.Grants["x"] = GrantRecord{Watts: 1400, MinW: 400, Generation: 1, Lease: 1}
	v.Grants["y"] = GrantRecord{Watts: 1000, MinW: 400, Generation: 1, Lease: 2}
	for _, name := range []string{"x", "y"} {
		if err := v.Apply(v.Keys.Grant(name), nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := v.held("x", v.Nodes["x"]); got != 1400 {
		t.Errorf("live x counted at %v W after its grant record was deleted, want the 1400 W it still runs at", got)
	}
	if _, ok := v.Grants["y"]; ok {
		t.Error("gone y's grant still reserved after it was drained")
	}
}

// A node cut off from etcd drops to the floor it last saw. If an SRE lowers the floor while it
// is gone, the allocator keeps the higher floor reserved for it, not the new one.
func TestPlanKeepsTheFloorALostNodeSaw(t *testing.T) {
	a := safetyRig(3000)
	a.view.Budget.FloorPerNodeW = 900
	a.view.Nodes["a"] = NodeRecord{DemandW: 3000, MinW: 400, MaxW: 3000, Priority: 1, AckedGen: 1, Lease: 1}
	a.view.Grants["a"] = GrantRecord{Watts: 1000, MinW: 400, Generation: 1, Lease: 1}
	a.view.Grants["c"] = GrantRecord{Watts: 1400, MinW: 400, Generation: 1, Lease: 9} // c is gone
	now := time.Now()
	// In c's grace period its 1400 W stay reserved: a gets 3000 − 1400 − a joiner's 400.
	idx := a.plan(now)
	if got := published(a, idx); got["a"] != 1200 {
		t.Fatalf("first round publishes %v, want a at 1200 W", got)
	}
	onPaper(a, idx, 2)
	ack(a, "a", 2)
	a.view.Budget.FloorPerNodeW = 500
	// Past the grace period c holds the 900 W floor it saw (not the new 500 W), so a may rise
	// to 3000 − 900 − 400 = 1700 W at most.
	got := published(a, a.plan(now.Add(2*time.Second)))
	if w, ok := got["a"]; !ok || w > 1700 {
		t.Fatalf("round publishes %v; want a raised to at most 1700 W with c's 900 W floor kept", got)
	}
}
