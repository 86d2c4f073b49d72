package cluster_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/etcdtest"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

// The agent's settings make a member; the node's limits are what the controller reports.
func TestFromConfig(t *testing.T) {
	_, eps := etcdtest.Start(t, 1, nil)
	cfg := config.Default()
	cfg.Node.Name = "gpu-7"
	cfg.Etcd.Endpoints = " " + eps[0] + " ,"
	cfg.Etcd.Group = testKeys.Group
	cfg.Etcd.LeaseTTL = 2 * time.Second
	cfg.Capping.Period = period
	m, cli, err := cluster.FromConfig(cfg, sample.NewStore(), nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	// Three A100s (100–400 W each), as the controller reports them at its start.
	m.Report(budget.NodeReport{MinW: 300, MaxW: 1200, At: time.Now()})
	var rec cluster.NodeRecord
	testkit.Eventually(t, 5*time.Second, "the node record", func() bool {
		resp, err := cli.Get(ctx, testKeys.Node("gpu-7"))
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		rec, err = cluster.ParseNode(resp.Kvs[0].Value)
		return err == nil
	})
	// No draw measured yet: the node asks for its maximum.
	if rec.MinW != 300 || rec.MaxW != 1200 || rec.Priority != 1 || rec.DemandW != 1200 {
		t.Errorf("node record %+v, want min 300 W, max 1200 W, priority 1, demand 1200 W", rec)
	}
	cancel()
	<-done
	// Stopping revokes the lease: the record is gone at once.
	resp, err := cli.Get(context.Background(), testKeys.Node("gpu-7"))
	if err != nil || len(resp.Kvs) != 0 {
		t.Errorf("node record after stop: %v, %v", resp, err)
	}
	if _, _, err := cluster.FromConfig(cfg, sample.NewStore(), nil, time.Now); err != nil {
		t.Fatal(err)
	}
	cfg.Etcd.Endpoints = ""
	if _, _, err := cluster.FromConfig(cfg, sample.NewStore(), nil, time.Now); err == nil {
		t.Error("no endpoints: no error")
	}
}

// etcd.domain's first segment is the group; the rest is where the node attaches, and its record
// says so (with the draw the controller reported); a flat node's record carries neither.
func TestFromConfigDomain(t *testing.T) {
	for _, tc := range []struct {
		group, domain, wantGroup, wantRel string
	}{
		{"", "row-a/row3/rack12", "row-a", "row3/rack12"},
		{"row-a", "row-a/rack1", "row-a", "rack1"},
		{"row-a", "", "row-a", ""},
	} {
		if g, rel := cluster.GroupOf(config.Etcd{Group: tc.group, Domain: tc.domain}); g != tc.wantGroup || rel != tc.wantRel {
			t.Errorf("GroupOf(%q, %q) = %q, %q; want %q, %q", tc.group, tc.domain, g, rel, tc.wantGroup, tc.wantRel)
		}
	}
	_, eps := etcdtest.Start(t, 1, nil)
	for _, domain := range []string{"row-a/row3/rack12", ""} {
		cfg := config.Default()
		cfg.Node.Name = "gpu-8"
		cfg.Etcd.Endpoints = eps[0]
		cfg.Etcd.Group, cfg.Etcd.Domain = "row-a", domain
		cfg.Etcd.LeaseTTL = 2 * time.Second
		cfg.Capping.Period = period
		m, cli, err := cluster.FromConfig(cfg, sample.NewStore(), nil, time.Now)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); m.Run(ctx) }()
		m.Report(budget.NodeReport{MinW: 300, MaxW: 1200, DrawW: 640, DrawOK: true, At: time.Now()})
		var raw string
		testkit.Eventually(t, 5*time.Second, "the node record", func() bool {
			resp, err := cli.Get(ctx, testKeys.Node("gpu-8"))
			if err != nil || len(resp.Kvs) == 0 {
				return false
			}
			raw = string(resp.Kvs[0].Value)
			return true
		})
		rec, err := cluster.ParseNode([]byte(raw))
		switch {
		case err != nil:
			t.Errorf("domain %q: record %s: %v", domain, raw, err)
		case domain != "" && (rec.Domain != "row3/rack12" || rec.DrawW != 640):
			t.Errorf("domain %q: record %s, want domain row3/rack12 and draw_w 640", domain, raw)
		case domain == "" && (strings.Contains(raw, "domain") || strings.Contains(raw, "draw_w")):
			t.Errorf("a flat node's record %s carries fields older agents refuse", raw)
		}
		cancel()
		<-done
		_ = cli.Close()
	}
}
