package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/etcdtest"
)

// A budget is checked when it is set: below a watt it is refused (1e-300 would be stored and
// shown as "0 W"), also on an empty group; one that leaves no room for a joiner's minimum is
// set, and the caller is told what that costs.
func TestSetBudgetChecks(t *testing.T) {
	_, eps := etcdtest.Start(t, 1, nil)
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	empty := cluster.Keys{Prefix: "/capstan/v1", Group: "empty"}
	for _, w := range []float64{1e-300, 0.5, 0, -1} {
		if err := cluster.SetBudget(ctx, cli, empty, cluster.BudgetRecord{Watts: w}); !errors.Is(err, cluster.ErrRefused) || !strings.Contains(err.Error(), "from 1 up to") {
			t.Errorf("budget %v W on an empty group: %v; want it refused as below 1 W", w, err)
		}
	}
	if resp, err := cli.Get(ctx, empty.Budget()); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("a refused budget was stored: %v %v", resp, err)
	}
	if err := cluster.SetBudget(ctx, cli, empty, cluster.BudgetRecord{Watts: 1}); err != nil {
		t.Errorf("a 1 W budget on an empty group: %v", err)
	}

	k := cluster.Keys{Prefix: "/capstan/v1", Group: "row"}
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		b, _ := json.Marshal(cluster.NodeRecord{DemandW: 3000, MinW: 1600, MaxW: 5600, Priority: 1, Lease: int64(lease.ID)})
		if _, err := cli.Put(ctx, k.Node(name), string(b), clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		watts, floor float64
		short        string
	}{
		{3200, 0, "budget 3200 W for group row leaves no room for a joining node's minimum (1600 W) above the 3200 W its nodes need: the allocator holds every grant at most at its floor and raises none; 4800 W gives that room"},
		{4799, 0, "4800 W gives that room"},
		{4800, 0, ""},
		{5000, 2000, "above the 4000 W its nodes need"},
	} {
		need, err := cluster.SetBudgetNeed(ctx, cli, k, cluster.BudgetRecord{Watts: c.watts, FloorPerNodeW: c.floor})
		if err != nil {
			t.Fatalf("budget %v W: %v", c.watts, err)
		}
		got := need.JoinerShortfall(k.Group, c.watts)
		if c.short == "" && got != "" || !strings.Contains(got, c.short) {
			t.Errorf("budget %v W (floor %v W): shortfall %q, want %q", c.watts, c.floor, got, c.short)
		}
	}
}
