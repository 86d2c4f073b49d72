package cluster_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/capping/waterfill"
	"github.com/capstan-power/capstan/internal/etcdtest"
)

// BenchmarkWaterFill10k is the allocator's computation for a group of 10,000 nodes.
func BenchmarkWaterFill10k(b *testing.B) {
	claims := make([]waterfill.Claim, 10000)
	for i := range claims {
		claims[i] = waterfill.Claim{Lo: 1600, Want: 2000 + float64(i%3000), Hi: 5600, Weight: float64(1 + i%4)}
	}
	out := make([]float64, len(claims))
	var scratch []waterfill.Slot
	b.ReportAllocs()
	for b.Loop() {
		_, scratch = waterfill.Share(claims, 30e6, out, scratch)
	}
}

// BenchmarkGroupConvergence runs CAPSTAN_BENCH_NODES simulated agents (default 1000) of one
// group against an embedded etcd, each with its own simulated H100 (200–700 W), its capping
// controller and its member (agents share 8 etcd clients); with CAPSTAN_BENCH_MEMBERS_ONLY set,
// members without GPUs or controllers, one loop taking every member's grant twice a period,
// which is what 10,000 fits on a small machine. It reports how many allocation
// periods a budget cut takes to be applied everywhere, the etcd writes it costs, the steady etcd
// write rate per node and the database size.
func BenchmarkGroupConvergence(b *testing.B) {
	nodes := 1000
	if s := os.Getenv("CAPSTAN_BENCH_NODES"); s != "" {
		nodes, _ = strconv.Atoi(s)
	}
	const per = 500 * time.Millisecond
	_, eps := etcdtest.Start(b, 1, nil)
	admin := newClient(b, eps, "", "")
	setBudget(b, admin, float64(nodes)*500, 0)
	ctx := context.Background()
	var clients []*clientv3.Client
	for range 8 {
		clients = append(clients, newClient(b, eps, "", ""))
	}
	var members []*cluster.Member
	if os.Getenv("CAPSTAN_BENCH_MEMBERS_ONLY") == "" {
		for i := range nodes {
			a := startAgentWith(b, fmt.Sprintf("n%05d", i), clients[i%len(clients)], 1, 1, 5*time.Second, per, i < 3)
			members = append(members, a.member)
		}
	} else {
		members = startMembersOnly(b, ctx, clients, nodes, per)
	}
	sum := func() float64 {
		s := 0.0
		for _, m := range members {
			s += m.AppliedW()
		}
		return s
	}
	// Converged: Σ applied within the budget, short of it by at most a joiner's reserve (700 W)
	// and a watt of rounding per node.
	target := func(budget float64) func() bool {
		return func() bool { s := sum(); return s <= budget && s >= budget-700-float64(nodes) }
	}
	eventually(b, 120*time.Second, "first convergence", target(float64(nodes)*500))
	b.ResetTimer()
	var writes, took float64
	for i := range b.N {
		budget := float64(nodes) * float64(450-50*(i%2))
		rev0, _ := admin.Get(ctx, "x")
		start := time.Now()
		setBudget(b, admin, budget, 0)
		eventually(b, 60*time.Second, "convergence after the cut", target(budget))
		took += float64(time.Since(start))
		rev1, _ := admin.Get(ctx, "x")
		writes += float64(rev1.Header.Revision - rev0.Header.Revision)
		setBudget(b, admin, float64(nodes)*500, 0)
		eventually(b, 60*time.Second, "convergence after the raise", target(float64(nodes)*500))
	}
	b.StopTimer()
	b.ReportMetric(took/float64(b.N)/float64(per), "periods/cut")
	b.ReportMetric(writes/float64(b.N), "etcd-writes/cut")
	time.Sleep(4 * per) // the last acknowledgements land
	r0, _ := admin.Get(ctx, "x")
	time.Sleep(5 * time.Second)
	r1, _ := admin.Get(ctx, "x")
	b.ReportMetric(float64(r1.Header.Revision-r0.Header.Revision)/float64(nodes)/5*10, "writes/node/10s")
	if st, err := admin.Status(ctx, eps[0]); err == nil {
		b.ReportMetric(float64(st.DbSize)/1e6, "etcd-db-MB")
	}
}

// startMembersOnly runs n members that report a full-power draw and whose grants one loop takes
// twice a period, as their controllers would.
func startMembersOnly(b *testing.B, ctx context.Context, clients []*clientv3.Client, n int, per time.Duration) []*cluster.Member {
	ctx, cancel := context.WithCancel(ctx)
	b.Cleanup(cancel)
	members := make([]*cluster.Member, n)
	for i := range members {
		m, err := cluster.NewMember(cluster.Options{Client: clients[i%len(clients)], Keys: testKeys, Node: fmt.Sprintf("n%05d", i),
			LeaseTTL: 5 * time.Second, Period: per, MinW: 200, MaxW: 700, Priority: 1, Campaign: i < 3,
			Draw: func() (float64, bool) { return 700, true }})
		if err != nil {
			b.Fatal(err)
		}
		members[i] = m
		go m.Run(ctx)
	}
	go func() {
		t := time.NewTicker(per / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				for _, m := range members {
					m.Applied(m.Grant())
				}
			}
		}
	}()
	return members
}
