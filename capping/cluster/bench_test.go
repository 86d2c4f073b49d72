package cluster_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/capping/waterfill"
	"github.com/capstan-power/capstan/internal/etcdtest"
	"github.com/capstan-power/capstan/internal/testkit"
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
		members = startMembersOnly(b, ctx, nodes, per, func(i int) cluster.Options {
			return cluster.Options{Client: clients[i%len(clients)], Node: fmt.Sprintf("n%05d", i)}
		})
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
	testkit.Eventually(b, 120*time.Second, "first convergence", target(float64(nodes)*500))
	b.ResetTimer()
	var writes, took float64
	for i := range b.N {
		budget := float64(nodes) * float64(450-50*(i%2))
		rev0, _ := admin.Get(ctx, "x")
		start := time.Now()
		setBudget(b, admin, budget, 0)
		testkit.Eventually(b, 60*time.Second, "convergence after the cut", target(budget))
		took += float64(time.Since(start))
		rev1, _ := admin.Get(ctx, "x")
		writes += float64(rev1.Header.Revision - rev0.Header.Revision)
		setBudget(b, admin, float64(nodes)*500, 0)
		testkit.Eventually(b, 60*time.Second, "convergence after the raise", target(float64(nodes)*500))
	}
	b.StopTimer()
	b.ReportMetric(took/float64(b.N)/float64(per), "periods/cut")
	b.ReportMetric(writes/float64(b.N), "etcd-writes/cut")
	testkit.Eventually(b, 60*time.Second, "the last acknowledgements", func() bool { return settled(ctx, admin) })
	// The measurement: the steady state is what the group writes in the 5 s that start 4
	// periods after the last acknowledgement, once the controllers' ramps are over.
	time.Sleep(4 * per) // part of the measurement: the controllers' ramps end first
	r0, _ := admin.Get(ctx, "x")
	time.Sleep(5 * time.Second) // the measurement window
	r1, _ := admin.Get(ctx, "x")
	b.ReportMetric(float64(r1.Header.Revision-r0.Header.Revision)/float64(nodes)/5*10, "writes/node/10s")
	if st, err := admin.Status(ctx, eps[0]); err == nil {
		b.ReportMetric(float64(st.DbSize)/1e6, "etcd-db-MB")
	}
}

// settled reports whether every node of the group acknowledged its grant.
func settled(ctx context.Context, cli *clientv3.Client) bool {
	resp, err := cli.Get(ctx, testKeys.Root(), clientv3.WithPrefix())
	if err != nil {
		return false
	}
	v := cluster.NewView(testKeys)
	for _, kv := range resp.Kvs {
		_ = v.Apply(string(kv.Key), kv.Value)
	}
	for name, n := range v.Nodes {
		if g, ok := v.Grants[name]; !ok || g.Lease != n.Lease || n.AckedGen < g.Generation {
			return false
		}
	}
	return true
}

// BenchmarkCutOffHold cuts one of two agents off from etcd (etcd's test proxy blackholes its
// connection both ways) and reports how long it held its grant before it dropped to its floor,
// as a share of the lease TTL. The TTL counts from etcd's last keep-alive answer, which came at
// most a keep-alive interval (TTL/3) before the cut, so the figure is about 0.67 to 1.
func BenchmarkCutOffHold(b *testing.B) {
	_, eps := etcdtest.Start(b, 1, nil)
	admin := newClient(b, eps, "", "")
	setBudget(b, admin, 2000, 500)
	px := startProxy(b, eps[0])
	startAgent(b, "node-0", newClient(b, eps, "", ""), 2, 1)
	cut := startAgent(b, "node-1", newClient(b, []string{mustURL(b, px.From()).Host}, "", ""), 2, 1)
	var held time.Duration
	b.ResetTimer()
	for range b.N {
		testkit.Eventually(b, 30*time.Second, "a grant above the floor", func() bool { return cut.member.AppliedW() > 500 })
		px.PauseTx()
		px.PauseRx()
		start := time.Now()
		testkit.Eventually(b, 10*leaseTTL, "the drop to the floor", func() bool { return cut.member.AppliedW() <= 500 })
		held += time.Since(start)
		px.UnpauseTx()
		px.UnpauseRx()
	}
	b.StopTimer()
	b.ReportMetric(float64(held)/float64(b.N)/float64(leaseTTL), "held/ttl")
	b.Logf("a cut-off node held its grant %s on average (lease TTL %s)", held/time.Duration(b.N), leaseTTL)
}

// startMembersOnly runs n members whose draw is reported at full power and whose grants one loop
// takes twice a period, as their controllers would. member(i) gives member i's client, name and
// domain; the rest of its options are the same for all.
func startMembersOnly(b *testing.B, ctx context.Context, n int, per time.Duration, member func(i int) cluster.Options) []*cluster.Member {
	ctx, cancel := context.WithCancel(ctx)
	b.Cleanup(cancel)
	members := make([]*cluster.Member, n)
	for i := range members {
		o := member(i)
		o.Keys, o.LeaseTTL, o.Period, o.Priority, o.Campaign = testKeys, 5*time.Second, per, 1, i < 3
		m, err := cluster.NewMember(o)
		if err != nil {
			b.Fatal(err)
		}
		m.Report(budget.NodeReport{DrawW: 700, DrawOK: true, MinW: 200, MaxW: 700, At: time.Now()})
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
					m.Report(budget.NodeReport{DrawW: 700, DrawOK: true, MinW: 200, MaxW: 700, At: time.Now()})
					m.Applied(m.Grant())
				}
			}
		}
	}()
	return members
}

// BenchmarkDomainCut200 runs 200 members, each with its own etcd client, in a tree of 4 rows of
// 5 racks of 10 nodes under one site (the group) on an embedded etcd. One loop takes every
// member's grant twice a period, as their controllers would. Each iteration cuts the site's
// budget by 10 % and raises it back; a sampler checks every 2 ms that no rack or row is over
// its limit and that the site is under the old budget while the grants move and under the new
// one from when Σ applied first fell under it. It reports the periods until every node applies
// a grant within the cut and Σ applied is under the new budget, and the etcd revisions a cut
// costs until every acknowledgement is in etcd (a transaction of up to 100 grants is one).
func BenchmarkDomainCut200(b *testing.B) {
	const per = 500 * time.Millisecond
	_, eps := etcdtest.Start(b, 1, nil)
	admin := newClient(b, eps, "", "")
	limits := map[string]float64{}
	setBudget(b, admin, 200*650, 0)
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	for r := range 4 {
		row := fmt.Sprintf("row%d", r)
		limits[row] = 50 * 640
		setDomain(b, admin, row, limits[row])
		for k := range 5 {
			rack := fmt.Sprintf("%s/rack%d", row, k)
			limits[rack] = 10 * 660
			setDomain(b, admin, rack, limits[rack])
		}
	}
	doms := make([]string, 200)
	for i := range doms {
		doms[i] = fmt.Sprintf("row%d/rack%d", i/50, (i/10)%5)
	}
	members := startMembersOnly(b, ctx, 200, per, func(i int) cluster.Options {
		return cluster.Options{Client: newClient(b, eps, "", ""), Node: fmt.Sprintf("n%03d", i), Domain: doms[i]}
	})
	var mu sync.Mutex
	site := 200 * 650.0
	var violations []string
	samples := 0
	sums := func() map[string]float64 {
		s := map[string]float64{}
		for i, m := range members {
			w := m.AppliedW()
			s[""] += w
			s[doms[i]] += w
			s[doms[i][:strings.IndexByte(doms[i], '/')]] += w
		}
		return s
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			s := sums()
			mu.Lock()
			samples++
			for d, lim := range limits {
				if s[d] > lim+1e-6 && len(violations) < 20 {
					violations = append(violations, fmt.Sprintf("domain %s: Σ applied %.0f W > %.0f W", d, s[d], lim))
				}
			}
			if s[""] > site+1e-6 && len(violations) < 20 {
				violations = append(violations, fmt.Sprintf("site: Σ applied %.0f W > %.0f W", s[""], site))
			}
			mu.Unlock()
		}
	}()
	// Settled: every node applies its grant and Σ applied is within w, short of it by at most
	// a joiner's minimum and a watt of rounding per node. The rows bind below the full
	// site budget (4 × (32000 − 200) W).
	settledUnder := func(w float64) func() bool {
		w = math.Min(w, 4*(50*640-200))
		return func() bool {
			if s := sums()[""]; s > w || s < w-200-200 {
				return false
			}
			for _, m := range members {
				if g, gen := m.Grant(); gen == 0 || m.AppliedW() != g {
					return false
				}
			}
			return true
		}
	}
	testkit.Eventually(b, 120*time.Second, "first convergence", settledUnder(200*650))
	b.ResetTimer()
	var took, writes float64
	for range b.N {
		cut := 200 * 650 * 0.9
		rev0, _ := admin.Get(ctx, "x")
		start := time.Now()
		setBudget(b, admin, cut, 0)
		testkit.Eventually(b, 60*time.Second, "convergence after the cut", settledUnder(cut))
		took += float64(time.Since(start))
		mu.Lock()
		site = cut
		mu.Unlock()
		testkit.Eventually(b, 60*time.Second, "the cut's acknowledgements in etcd", func() bool { return settled(ctx, admin) })
		rev1, _ := admin.Get(ctx, "x")
		writes += float64(rev1.Header.Revision - rev0.Header.Revision)
		mu.Lock()
		site = 200 * 650
		mu.Unlock()
		setBudget(b, admin, 200*650, 0)
		testkit.Eventually(b, 60*time.Second, "convergence after the raise", settledUnder(200*650))
	}
	b.StopTimer()
	close(stop)
	<-done
	mu.Lock()
	defer mu.Unlock()
	for _, v := range violations {
		b.Error(v)
	}
	b.ReportMetric(took/float64(b.N)/float64(per), "periods/cut")
	b.ReportMetric(writes/float64(b.N), "etcd-revisions/cut")
	b.ReportMetric(float64(samples), "samples")
}

func setDomain(tb testing.TB, cli *clientv3.Client, rel string, w float64) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cluster.SetDomain(ctx, cli, testKeys.Prefix, cluster.FullPath(testKeys.Group, rel), cluster.DomainRecord{LimitW: w, SetBy: "test"}); err != nil {
		tb.Fatal(err)
	}
}
