package cluster_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/etcdtest"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

// inRack starts an agent attached to domain rel.
func inRack(t testing.TB, name string, cli *clientv3.Client, rel string, logs *syncBuffer) *agent {
	return startAgentWith(t, name, cli, 2, 1, leaseTTL, period, true, func(o *cluster.Options) {
		o.Domain = rel
		if logs != nil {
			o.Log = slog.New(slog.NewTextHandler(logs, nil))
		}
	})
}

// syncBuffer is a log sink many goroutines write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// allocatorBatch returns the per-domain metric of domain (a full path) as the elected allocator
// among agents published it.
func allocatorMetric(agents []*agent, def *metrics.Def, domain string) (float64, bool) {
	for _, a := range agents {
		if !a.active.Load() || !a.member.IsAllocator() {
			continue
		}
		var v float64
		var ok bool
		a.store.View(cluster.DomainsStoreKey, func(b *sample.Batch) {
			if b != nil {
				v, ok = b.Find(def, attribute.String(metrics.AttrClusterDomain, domain))
			}
		})
		return v, ok
	}
	return 0, false
}

// Agents in two racks on a real etcd: every domain's Σ applied stays within its limit at every
// sampled instant through a rack cut, a rack cut below its nodes' minimums (reported, held at
// the floors), a node moved to the other rack while it runs, malformed and cyclic domain
// records, and the allocator killed.
func TestDomainInvariant(t *testing.T) {
	_, eps := etcdtest.Start(t, 1, nil)
	admin := newClient(t, eps, "", "")
	setBudget(t, admin, 7000, 0)
	setDomain(t, admin, "rackA", 3000)
	setDomain(t, admin, "rackB", 5000)
	chk := newChecker(map[string]float64{"": 7000, "rackA": 3000, "rackB": 5000})
	logs := &syncBuffer{}
	var agents []*agent
	for i, rack := range []string{"rackA", "rackA", "rackA", "rackB", "rackB", "rackB"} {
		a := inRack(t, fmt.Sprintf("node-%d", i), newClient(t, eps, "", ""), rack, logs)
		agents = append(agents, a)
		chk.add(rack, a)
	}
	// Every node wants 1400 W: rackA holds its 3 nodes at 3000 W less a joiner's 400 W.
	testkit.Eventually(t, 15*time.Second, "rackA to fill to its limit", func() bool {
		s := chk.sumOf("rackA")
		return s <= 2600 && s >= 2500
	})
	testkit.Eventually(t, 15*time.Second, "the site to fill", func() bool { return chk.sumOf("") >= 6000 })
	if v, ok := allocatorMetric(agents, metrics.ClusterDomainLimit, "row-a/rackA"); !ok || v != 3000 {
		t.Errorf("allocator's limit metric of row-a/rackA = %v (found %v), want 3000", v, ok)
	}
	// The nodes write their draw: the rack's Σ draw is what its GPUs draw, at most its grants.
	testkit.Eventually(t, 10*time.Second, "rackA's Σ draw", func() bool {
		d, _ := allocatorMetric(agents, metrics.ClusterDomainDraw, "row-a/rackA")
		g, _ := allocatorMetric(agents, metrics.ClusterDomainGranted, "row-a/rackA")
		return d > 1000 && g >= 2500 && d <= g+1
	})
	var one float64
	agents[0].store.View(cluster.StoreKey, func(b *sample.Batch) {
		one, _ = b.Find(metrics.ClusterNodeDomain, attribute.String(metrics.AttrClusterDomain, "row-a/rackA"))
	})
	if one != 1 {
		t.Errorf("node-0's capstan.cluster.node.domain{row-a/rackA} = %v, want 1", one)
	}

	// A rack cut: the old limit bounds the rack while its grants move, the new one after.
	setDomain(t, admin, "rackA", 2000)
	testkit.Eventually(t, 10*time.Second, "rackA under 2000 W", func() bool { return chk.sumOf("rackA") <= 2000 })
	chk.setLimit("rackA", 2000)
	waitPeriods(t, 2, agents...)

	// A cut below the rack's minimums (3 × 400 W): reported, the nodes held at their minimums.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cluster.SetDomain(ctx, admin, testKeys.Prefix, "row-a/rackA", cluster.DomainRecord{LimitW: 1000, SetBy: "test"}); err == nil {
		t.Error("capstanctl's check let a limit below the rack's minimums through")
	}
	if _, err := admin.Put(ctx, testKeys.Domain("rackA"), `{"limit_w": 1000, "set_by": "test", "set_at": "2026-01-01T00:00:00Z"}`); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the oversubscribed metric", func() bool {
		v, _ := allocatorMetric(agents, metrics.ClusterDomainOversubscribed, "row-a/rackA")
		return v == 1
	})
	testkit.Eventually(t, 10*time.Second, "a log of rackA oversubscribed", func() bool {
		return strings.Contains(logs.String(), "domain row-a/rackA oversubscribed")
	})
	// The old limit bounds the rack while its grants move, its minimums (what the nodes run
	// at anyway) once there.
	testkit.Eventually(t, 10*time.Second, "rackA at its minimums", func() bool { return chk.sumOf("rackA") <= 1200 })
	chk.setLimit("rackA", 1200)
	waitPeriods(t, 2, agents...)
	chk.setLimit("rackA", 3000)
	setDomain(t, admin, "rackA", 3000)
	testkit.Eventually(t, 10*time.Second, "rackA to refill", func() bool { return chk.sumOf("rackA") >= 2400 })

	// A node moved to rackB while it runs: rackB makes room before anything rises, and rackA
	// gives node-2's watts to its others only once node-2 acknowledged its grant in rackB.
	chk.setLimit("rackB", 5000+1400) // the move itself brings node-2's watts into rackB at once
	if err := agents[2].member.SetDomain("rackB"); err != nil {
		t.Fatal(err)
	}
	chk.add("rackB", agents[2])
	testkit.Eventually(t, 10*time.Second, "rackB within its limit with node-2", func() bool { return chk.sumOf("rackB") <= 5000 })
	chk.setLimit("rackB", 5000)
	// rackB holds 4 nodes at 5000 W less a joiner's 400 W; rackA's two get the site's rest.
	testkit.Eventually(t, 10*time.Second, "the site to fill again", func() bool { return chk.sumOf("") >= 6500 })

	// Malformed records, a key that is no path and a record naming a parent (which would make a
	// cycle possible): ignored and counted, the last good limits stay.
	before := errorsOf(agents, "malformed")
	for _, kv := range [][2]string{
		{testKeys.Domain("rackB"), `{"limit_w": "lots"}`},
		{testKeys.Domains() + "rackA/../rackA", `{"limit_w": 99999, "set_by": "x", "set_at": "2026-01-01T00:00:00Z"}`},
		{testKeys.Domains() + "loop", `{"limit_w": 99999, "parent": "loop/child", "set_by": "x", "set_at": "2026-01-01T00:00:00Z"}`},
	} {
		if _, err := admin.Put(ctx, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 10*time.Second, "the malformed records counted", func() bool { return errorsOf(agents, "malformed") >= before+3 })
	setBudget(t, admin, 9000, 0)
	chk.setLimit("", 9000)
	waitPeriods(t, 3, agents...)
	if s := chk.sumOf("rackB"); s > 5000 {
		t.Errorf("rackB at %.0f W after its record went bad, want its last good limit 5000 W kept", s)
	}

	// The allocator killed mid-round, as a cut's decreases go out: the old limit bounds rackB
	// until its successor finished the cut, every other limit holds throughout.
	setDomain(t, admin, "rackB", 4000)
	for _, a := range agents {
		if a.member.IsAllocator() {
			_ = a.cli.Close()
			a.stop()
		}
	}
	testkit.Eventually(t, 5*leaseTTL, "a new allocator", func() bool { return allocators(agents...) == 1 })
	testkit.Eventually(t, 10*time.Second, "rackB under its cut", func() bool { return chk.sumOf("rackB") <= 4000 })
	chk.setLimit("rackB", 4000)
	waitPeriods(t, 2, agents...)
	chk.finish(t)
}

// errorsOf is Σ of the agents' counts of etcd problems of one kind.
func errorsOf(agents []*agent, kind string) float64 {
	s := 0.0
	for _, a := range agents {
		s += a.member.Errors(kind)
	}
	return s
}

// etcd stops and starts again on the same data and address: the agents hold their grants
// through it (within the lease TTL) or drop to their floors, and every domain stays within its
// limit throughout; afterwards the group allocates again.
func TestDomainEtcdRestart(t *testing.T) {
	var cfg *embed.Config
	members, eps := etcdtest.Start(t, 1, func(c *embed.Config) { cfg = c })
	admin := newClient(t, eps, "", "")
	setBudget(t, admin, 5000, 0)
	setDomain(t, admin, "rackA", 2400)
	chk := newChecker(map[string]float64{"": 5000, "rackA": 2400})
	var agents []*agent
	for i, rack := range []string{"rackA", "rackA", "rackB", "rackB"} {
		a := inRack(t, fmt.Sprintf("node-%d", i), newClient(t, eps, "", ""), rack, nil)
		agents = append(agents, a)
		chk.add(rack, a)
	}
	testkit.Eventually(t, 15*time.Second, "rackA to fill", func() bool { return chk.sumOf("rackA") >= 1900 })
	etcdtest.Close(members[0])
	waitPeriods(t, 3, agents...)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("restarting etcd: %v", err)
	}
	t.Cleanup(func() { etcdtest.Close(e) })
	<-e.Server.ReadyNotify()
	testkit.Eventually(t, 20*time.Second, "one allocator after the restart", func() bool { return allocators(agents...) == 1 })
	// The outage is counted: capstan.cluster.etcd.errors{capstan.cluster.error=request|lost_lease}.
	if n := errorsOf(agents, "request") + errorsOf(agents, "lost_lease"); n == 0 {
		t.Error("etcd was down, yet no agent counted a failed request or a lost lease")
	}
	setDomain(t, admin, "rackA", 2000)
	testkit.Eventually(t, 10*time.Second, "rackA under its cut after the restart", func() bool { return chk.sumOf("rackA") <= 2000 })
	chk.setLimit("rackA", 2000)
	waitPeriods(t, 2, agents...)
	chk.finish(t)
}

// The fleet simulator runs the allocator's rounds on records in memory (cluster.Planner): on
// the records a real etcd group settled on, it computes the grants the elected allocator
// published, so it publishes nothing more.
func TestPlannerAgreesWithEtcd(t *testing.T) {
	_, eps := etcdtest.Start(t, 1, nil)
	admin := newClient(t, eps, "", "")
	setBudget(t, admin, 9000, 0)
	setDomain(t, admin, "row", 7000)
	setDomain(t, admin, "row/a", 2600)
	setDomain(t, admin, "row/b", 5000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli := newClient(t, eps, "", "")
	var members []*cluster.Member
	draws := []float64{700, 650, 300, 700, 690, 520, 410}
	for i, dom := range []string{"row/a", "row/a", "row/a", "row/b", "row/b", "row/b", "c"} {
		m, err := cluster.NewMember(cluster.Options{Client: cli, Keys: testKeys, Node: fmt.Sprintf("n%d", i), Domain: dom,
			LeaseTTL: leaseTTL, Period: period, Priority: float64(1 + i%3), Campaign: i == 0})
		if err != nil {
			t.Fatal(err)
		}
		members = append(members, m)
		go m.Run(ctx)
	}
	apply := func() {
		for i, m := range members {
			// Two GPUs of 200–700 W; a node draws what its trace asks, within what it applies.
			w, gen := m.Grant()
			m.Report(budget.NodeReport{DrawW: math.Min(2*draws[i], math.Max(w, 400)), DrawOK: true, MinW: 400, MaxW: 1400, At: time.Now()})
			m.Applied(w, gen)
		}
	}
	// Settled: every node acknowledged its grant and the allocator published nothing for three
	// allocation periods (it runs a round every period).
	var rev int64
	var since time.Time
	testkit.Eventually(t, 20*time.Second, "the group to settle", func() bool {
		apply()
		resp, err := admin.Get(ctx, testKeys.State())
		if err != nil || len(resp.Kvs) == 0 || !settled(ctx, admin) {
			rev = 0
			return false
		}
		if resp.Kvs[0].ModRevision != rev {
			rev, since = resp.Kvs[0].ModRevision, time.Now()
		}
		return time.Since(since) >= 3*period
	})
	v := cluster.NewView(testKeys)
	if _, err := v.Load(ctx, admin); err != nil {
		t.Fatal(err)
	}
	before := map[string]float64{}
	for name, g := range v.Grants {
		before[name] = g.Watts
	}
	if written := cluster.NewPlanner(v, 2*leaseTTL, time.Now, nil).Round(time.Now(), nil); len(written) != 0 {
		for _, name := range written {
			t.Errorf("the planner regrants %s: %.0f W, etcd's allocator %.0f W", name, v.Grants[name].Watts, before[name])
		}
	}
	if s := before["n0"] + before["n1"] + before["n2"]; s > 2600 || s < 2000 {
		t.Errorf("row/a's grants add up to %.0f W, want its limit less a joiner's 400 W", s)
	}
}
