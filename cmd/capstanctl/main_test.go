package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/testkit"
)

// run executes capstanctl with args and returns its output and error.
func run(t *testing.T, ep string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot(&out, &errOut)
	root.SetArgs(append([]string{"--etcd.endpoints", ep}, args...))
	err := root.Execute()
	return out.String() + errOut.String(), err
}

func TestCommands(t *testing.T) {
	g := newEtcdGroup(t, "row-a")
	cli, k, ep, lease := g.cli, g.k, g.ep, g.lease
	ctx := context.Background()
	for _, n := range []struct {
		name string
		rec  cluster.NodeRecord
	}{
		{"gpu-1", cluster.NodeRecord{DemandW: 3000, MinW: 1600, MaxW: 5600, Priority: 1, AppliedW: 2500, AckedGen: 1, Lease: int64(lease)}},
		{"gpu-2", cluster.NodeRecord{DemandW: 5000, MinW: 1600, MaxW: 5600, Priority: 2, AppliedW: 2500, AckedGen: 1, Lease: int64(lease)}},
	} {
		g.put(k.Node(n.name), n.rec, clientv3.WithLease(lease))
		g.put(k.Grant(n.name), cluster.GrantRecord{Watts: 2500, Generation: 1, Lease: int64(lease), MinW: 1600})
	}
	g.put(k.Grant("gone-1"), cluster.GrantRecord{Watts: 2000, Generation: 1, Lease: 1, MinW: 1600})

	refusals := []struct {
		args []string
		want string
	}{
		{[]string{"budget", "set", "row-a", "--", "-5"}, `WATTS "-5": not a positive finite number of watts`},
		{[]string{"budget", "set", "row-a", "NaN"}, `WATTS "NaN": not a positive finite number of watts`},
		{[]string{"budget", "set", "row-a", "abc"}, `WATTS "abc": not a positive finite number of watts`},
		{[]string{"budget", "set", "row-a", "3000"}, "budget 3000 W for group row-a is below the 3200 W its 2 nodes need at least (Σ of each node's max(min, floor 0 W)); set at least 3200 W"},
		{[]string{"budget", "set", "row-a", "4000", "--floor-per-node", "2500"}, "below the 5000 W its 2 nodes need at least"},
		{[]string{"budget", "set", "row/a", "4000"}, `group: name "row/a": character '/' not allowed`},
		{[]string{"budget", "get", "row-a"}, "group row-a has no budget (capstanctl budget set row-a WATTS)"},
		{[]string{"drain", "row-a", "gpu-1"}, "node gpu-1 of group row-a is alive (registered under its lease); only a node that is gone can be drained"},
		{[]string{"drain", "row-a", "nobody"}, "node nobody of group row-a holds no reservation"},
	}
	for _, r := range refusals {
		out, err := run(t, ep, r.args...)
		if err == nil || !strings.Contains(out, r.want) {
			t.Errorf("capstanctl %s: err %v, output %q; want a refusal containing %q", strings.Join(r.args, " "), err, out, r.want)
		}
	}

	if out, err := run(t, ep, "budget", "set", "row-a", "9000", "--reason", "row A commissioned"); err != nil || !strings.Contains(out, "group row-a: budget 9000 W") {
		t.Fatalf("budget set: %v %q", err, out)
	}
	if _, err := run(t, ep, "budget", "set", "row-a", "8000", "--floor-per-node", "1700", "--reason", "PDU maintenance"); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, ep, "budget", "get", "row-a")
	if err != nil || !strings.Contains(out, "group row-a: 8000 W, floor per node 1700 W") || !strings.Contains(out, "PDU maintenance") {
		t.Errorf("budget get: %v %q", err, out)
	}
	out, err = run(t, ep, "budget", "history", "row-a")
	if err != nil || strings.Index(out, "row A commissioned") > strings.Index(out, "PDU maintenance") || !strings.Contains(out, "9000") {
		t.Errorf("budget history: %v %q", err, out)
	}

	out, err = run(t, ep, "status", "row-a", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	for _, key := range []string{"group", "budget_w", "generation", "nodes"} {
		if _, ok := raw[key]; !ok {
			t.Errorf("status --json lacks %q", key)
		}
	}
	node := raw["nodes"].([]any)[0].(map[string]any)
	for _, key := range []string{"node", "demand_w", "grant_w", "applied_w", "min_w", "max_w", "priority", "last_seen", "allocator"} {
		if _, ok := node[key]; !ok {
			t.Errorf("status --json node lacks %q", key)
		}
	}
	if len(raw) != 4 || len(node) != 9 {
		t.Errorf("status --json has extra keys: %v", out)
	}
	var st cluster.Status
	_ = json.Unmarshal([]byte(out), &st)
	if st.BudgetW != 8000 || len(st.Nodes) != 3 || st.Nodes[0].Node != "gone-1" || st.Nodes[2].DemandW != 5000 {
		t.Errorf("status --json = %+v", st)
	}
	out, err = run(t, ep, "status", "row-a")
	if err != nil || !strings.Contains(out, "gpu-2") || !strings.Contains(out, "budget 8000 W, granted 7000 W (1000 W free), applied 5000 W") {
		t.Errorf("status: %v\n%s", err, out)
	}
	if out, err := run(t, ep, "drain", "row-a", "gone-1"); err != nil || !strings.Contains(out, "released the reservation of node gone-1") {
		t.Errorf("drain: %v %q", err, out)
	}

	// top redraws from the watch: a node's new demand shows up.
	var buf testkit.LogBuffer
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- top(tctx, cli, k, screen{out: &buf}, nil, topOptions{refresh: 100 * time.Millisecond, timeout: time.Second})
	}()
	// The first table is drawn once its view is loaded; the watch starts after that view.
	testkit.WaitFor(t, "top's first table", func() bool { return buf.Contains("gpu-2") })
	b, _ := json.Marshal(cluster.NodeRecord{DemandW: 4321, MinW: 1600, MaxW: 5600, Priority: 1, Lease: int64(lease)})
	if _, err := cli.Put(ctx, k.Node("gpu-1"), string(b), clientv3.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
	if !testkit.Poll(testkit.DefaultWait, func() bool { return buf.Contains("4321") }) {
		t.Errorf("top did not show the watched change:\n%s", buf.String())
	}
	cancel()
	if err := testkit.Receive(t, done, testkit.DefaultWait, "top to return"); err != nil {
		t.Fatal(err)
	}
	// Not a terminal: plain tables, no escape sequences.
	if buf.Contains("\x1b") {
		t.Errorf("top wrote escape sequences to a non-terminal:\n%q", buf.String())
	}
}

// budget set checks the watts before it writes: below a watt is refused (1e-300 would read back
// as "0 W"), also on a group with no node; a budget that leaves no room for a joining node's
// minimum is set, with a warning that says what the group gives up.
func TestBudgetSetChecks(t *testing.T) {
	g := newEtcdGroup(t, "row-b")
	ep := g.ep
	for _, w := range []string{"1e-300", "0.5"} {
		out, err := run(t, ep, "budget", "set", "empty", w)
		if err == nil || !strings.Contains(out, `WATTS "`+w+`": below 1 W`) {
			t.Errorf("budget set empty %s: err %v, output %q; want it refused as below 1 W", w, err, out)
		}
	}
	if out, err := run(t, ep, "budget", "get", "empty"); err == nil {
		t.Errorf("a refused budget was stored: %q", out)
	}

	for _, name := range []string{"gpu-1", "gpu-2"} {
		g.put(g.k.Node(name), cluster.NodeRecord{DemandW: 3000, MinW: 1600, MaxW: 5600, Priority: 1, Lease: int64(g.lease)}, clientv3.WithLease(g.lease))
	}
	out, err := run(t, ep, "budget", "set", "row-b", "3500")
	if err != nil || !strings.Contains(out, "group row-b: budget 3500 W") {
		t.Fatalf("budget set row-b 3500: %v %q", err, out)
	}
	if want := "warning: budget 3500 W for group row-b leaves no room for a joining node's minimum (1600 W) above the 3200 W its nodes need"; !strings.Contains(out, want) {
		t.Errorf("budget set row-b 3500 says %q; want the warning %q", out, want)
	}
	if out, err := run(t, ep, "budget", "set", "row-b", "6000"); err != nil || strings.Contains(out, "warning") {
		t.Errorf("budget set row-b 6000 (room for a joiner): %v %q; want no warning", err, out)
	}
}
