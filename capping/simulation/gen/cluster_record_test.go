package main

import (
	"context"
	"encoding/csv"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/etcdtest"
)

var record = flag.Bool("record", false, "record the cluster run behind docs/cluster-budget.png into testdata/")

// TestRecordClusterCut records grants moving across the nodes of a group on a real embedded etcd:
// three nodes share 5000 W, the budget is cut to 4000 W, then a fourth node joins. etcd's leases
// and watches run on the wall clock, so no two recordings are the same; the picture is drawn
// from the committed recording, which makes it reproducible. Rerun it with
//
//	go test ./capping/simulation/gen -run RecordClusterCut -record && make docs
//
// While it records, it checks that Σ of what the nodes applied never exceeded the budget.
func TestRecordClusterCut(t *testing.T) {
	if !*record {
		t.Skip("records only with -record")
	}
	_, eps := etcdtest.Start(t, 1, nil)
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	setBudget := func(w float64) {
		if err := cluster.SetBudget(ctx, cli, recordKeys, cluster.BudgetRecord{Watts: w, SetBy: "docs"}); err != nil {
			t.Fatal(err)
		}
	}
	budgetW := 5000.0
	setBudget(budgetW)

	nodes := []struct {
		name string
		gpus int
	}{{"node-a", 4}, {"node-b", 3}, {"node-c", 2}, {"node-d", 3}}
	members := make([]*cluster.Member, len(nodes))
	start := func(i int) {
		members[i] = startRecordedAgent(t, ctx, eps, nodes[i].name, nodes[i].gpus)
	}
	for i := range 3 {
		start(i)
	}

	f, err := os.Create(filepath.Join("testdata", "cluster-cut.csv"))
	if err != nil {
		t.Fatal(err)
	}
	w := csv.NewWriter(f)
	head := []string{"time_s", "budget_w"}
	for _, n := range nodes {
		head = append(head, n.name+"_grant_w", n.name+"_applied_w")
	}
	_ = w.Write(head)
	ff := func(x float64) string { return strconv.FormatFloat(x, 'f', 0, 64) }

	// The timeline: the cut and the join happen at fixed offsets, the recorder samples every
	// 20 ms in between.
	events := map[int]func(){
		300: func() { budgetW = 4000; setBudget(budgetW) }, // at 6 s
		550: func() { start(3) },                           // at 11 s
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for k := range 800 {
		<-tick.C
		if ev, ok := events[k]; ok {
			ev()
		}
		row := []string{strconv.FormatFloat(float64(k)*0.02, 'f', 2, 64), ff(budgetW)}
		sumApplied := 0.0
		for _, m := range members {
			if m == nil {
				row = append(row, "0", "0")
				continue
			}
			g, _ := m.Grant()
			a := m.AppliedW()
			sumApplied += a
			row = append(row, ff(g), ff(a))
		}
		_ = w.Write(row)
		// The cut is the budget's own step: nodes follow it within their control periods.
		if k < 300 || k > 340 {
			if sumApplied > budgetW+1 {
				t.Errorf("at %.2f s Σ applied %.0f W exceeds the budget %.0f W", float64(k)*0.02, sumApplied, budgetW)
			}
		}
	}
	w.Flush()
	if err := w.Error(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

var recordKeys = cluster.Keys{Prefix: "/capstan/v1", Group: "docs"}

// startRecordedAgent runs one node: simulated H100s at full load, the capping controller and the
// group member as its budget source, until the test ends.
func startRecordedAgent(t *testing.T, ctx context.Context, eps []string, name string, gpus int) *cluster.Member {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	fleet, err := sim.New(sim.Options{Model: "H100", Count: gpus, Trace: "steady", Seed: 1, Clock: clock.Real()})
	if err != nil {
		t.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	const period = 200 * time.Millisecond
	m, err := cluster.NewMember(cluster.Options{Client: cli, Keys: recordKeys, Node: name, LeaseTTL: time.Second,
		Period: period, Priority: 1, Campaign: true, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	set := capping.Defaults()
	set.Period = period / 2
	set.StateFile = filepath.Join(t.TempDir(), name+".json")
	ctl, err := capping.New(capping.Options{Settings: set, Lib: fleet, Budget: budget.NewEtcd(m, time.Now)})
	if err != nil {
		t.Fatal(err)
	}
	if err := ctl.Start(); err != nil {
		t.Fatal(fmt.Errorf("starting %s's controller: %w", name, err))
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctl.Run(runCtx)
	}()
	t.Cleanup(func() { stop(); <-done })
	return m
}
