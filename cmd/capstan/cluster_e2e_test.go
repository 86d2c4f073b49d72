package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/etcdtest"
	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/testkit"
)

// Two agent processes with budget.source etcd share a group budget set in an embedded etcd: one
// is elected allocator, both steer under their grants, and Σ grants stays within the budget.
func TestClusterBudgetAgents(t *testing.T) {
	ep, cli := etcdGroup(t, "row-a", cluster.BudgetRecord{Watts: 2400, SetBy: "test"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keys := cluster.Keys{Prefix: "/capstan/v1", Group: "row-a"}
	var addrs []string
	var agents []*agentProcess
	for _, node := range []string{"gpu-1", "gpu-2"} {
		addr := otlptest.FreeAddr(t)
		addrs = append(addrs, addr)
		agents = append(agents, startAgent(t, "--gpu.backend=sim", "--gpu.sim.count=2", "--gpu.sim.trace=steady",
			"--web.listen-address="+addr, "--capping.enabled", "--capping.period=200ms",
			"--capping.state-file="+filepath.Join(t.TempDir(), "state.json"), "--node.name="+node,
			"--budget.source=etcd", "--etcd.endpoints="+ep, "--etcd.group=row-a", "--etcd.lease-ttl=2s"))
	}
	for _, a := range agents {
		a.waitLog(t, "agent ready")
	}
	gauge := func(addr, name string) float64 {
		f, ok := scrape(t, "http://"+addr+"/metrics")[name]
		if !ok || len(f.GetMetric()) == 0 {
			return -1
		}
		return f.GetMetric()[0].GetGauge().GetValue()
	}
	var g1, g2, a1, a2 float64
	if !testkit.Poll(30*time.Second, func() bool {
		g1, g2 = gauge(addrs[0], "capstan_cluster_grant_watts"), gauge(addrs[1], "capstan_cluster_grant_watts")
		a1, a2 = gauge(addrs[0], "capstan_cluster_allocator"), gauge(addrs[1], "capstan_cluster_allocator")
		return g1 > 400 && g2 > 400 && g1+g2 <= 2400 && a1+a2 == 1
	}) {
		t.Fatalf("grants %v W and %v W, allocators %v+%v; logs:\n%s\n%s", g1, g2, a1, a2, agents[0].Logs(), agents[1].Logs())
	}
	if b := gauge(addrs[0], "capstan_capping_budget_watts"); b != g1 {
		t.Errorf("controller budget %v W, grant %v W: the controller does not steer under the grant", b, g1)
	}
	for _, a := range agents {
		if code := a.stop(t); code != 0 {
			t.Errorf("exit %d after SIGTERM; logs:\n%s", code, a.Logs())
		}
	}
	// A clean stop revokes the lease: the nodes are gone from etcd at once.
	resp, err := cli.Get(ctx, keys.Nodes(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("%d node records left after SIGTERM (%v)", resp.Count, err)
	}
}

// etcdGroup starts a one-member embedded etcd, writes group's budget record under the default
// prefix and returns the member's client URL and a client of it (closed when the test ends).
func etcdGroup(t *testing.T, group string, budget cluster.BudgetRecord) (string, *clientv3.Client) {
	t.Helper()
	_, eps := etcdtest.Start(t, 1, nil)
	ep := "http://" + eps[0]
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cluster.SetBudget(ctx, cli, cluster.Keys{Prefix: "/capstan/v1", Group: group}, budget); err != nil {
		t.Fatal(err)
	}
	return ep, cli
}
