package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/etcdtest"
	"github.com/capstan-power/capstan/internal/sample"
)

// The agent's settings make a member whose limits are its GPUs' constraints.
func TestFromConfig(t *testing.T) {
	_, eps := etcdtest.Start(t, 1, nil)
	cfg := config.Default()
	cfg.Node.Name = "gpu-7"
	cfg.Etcd.Endpoints = " " + eps[0] + " ,"
	cfg.Etcd.Group = testKeys.Group
	cfg.Etcd.LeaseTTL = 2 * time.Second
	cfg.Capping.Period = period
	fleet, err := sim.New(sim.Options{Model: "A100", Count: 3, Trace: "steady", Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	m, cli, err := cluster.FromConfig(cfg, fleet, sample.NewStore(), capping.StoreKey, nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	var rec cluster.NodeRecord
	eventually(t, 5*time.Second, "the node record", func() bool {
		resp, err := cli.Get(ctx, testKeys.Node("gpu-7"))
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		rec, err = cluster.ParseNode(resp.Kvs[0].Value)
		return err == nil
	})
	// Three A100s: 100–400 W each.
	if rec.MinW != 300 || rec.MaxW != 1200 || rec.Priority != 1 {
		t.Errorf("node record %+v, want min 300 W, max 1200 W, priority 1", rec)
	}
	cancel()
	<-done
	// Stopping revokes the lease: the record is gone at once.
	resp, err := cli.Get(context.Background(), testKeys.Node("gpu-7"))
	if err != nil || len(resp.Kvs) != 0 {
		t.Errorf("node record after stop: %v, %v", resp, err)
	}
	if _, _, err := cluster.FromConfig(cfg, fleet, sample.NewStore(), capping.StoreKey, nil, time.Now); err != nil {
		t.Fatal(err)
	}
	cfg.Etcd.Endpoints = ""
	if _, _, err := cluster.FromConfig(cfg, fleet, sample.NewStore(), capping.StoreKey, nil, time.Now); err == nil {
		t.Error("no endpoints: no error")
	}
}
