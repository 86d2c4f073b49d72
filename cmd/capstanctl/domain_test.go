package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/testkit"
)

// domainSite is group site on a fresh etcd with two nodes registered in site/row1/rack1 (min
// 1600 W each) and one node gone from it, before any domain is set.
func domainSite(t *testing.T) (*clientv3.Client, cluster.Keys, string, clientv3.LeaseID) {
	t.Helper()
	g := newEtcdGroup(t, "site")
	k, lease := g.k, g.lease
	for i, n := range []string{"gpu-1", "gpu-2"} {
		g.put(k.Node(n), cluster.NodeRecord{DemandW: 3000, MinW: 1600, MaxW: 5600, Priority: 1, AppliedW: 2000 + 500*float64(i), DrawW: 1900 + 500*float64(i),
			AckedGen: 1, Lease: int64(lease), Domain: "row1/rack1", UpdatedAt: time.Now().UTC()}, clientv3.WithLease(lease))
		g.put(k.Grant(n), cluster.GrantRecord{Watts: 2000 + 500*float64(i), MinW: 1600, Generation: 1, Lease: int64(lease), Domain: "row1/rack1"})
	}
	return g.cli, k, g.ep, lease
}

func TestDomainCommands(t *testing.T) {
	cli, k, ep, _ := domainSite(t)
	refusals := []struct {
		args []string
		want string
	}{
		{[]string{"domain", "set", "site/row1", "6000"}, "the parent of domain site/row1, site, does not exist: set it first (capstanctl domain set site WATTS)"},
		{[]string{"domain", "set", "site//row1", "6000"}, `PATH: domain path "site//row1": segment 2 is empty`},
		{[]string{"domain", "set", "site/../x", "6000"}, `segment 2 is ".."`},
		{[]string{"domain", "set", "site/row 1", "6000"}, `character ' ' not allowed`},
		{[]string{"domain", "set", "site", "NaN"}, `WATTS "NaN": not a positive finite number of watts`},
		{[]string{"domain", "set", "site", "0.5"}, `WATTS "0.5": below 1 W`},
		{[]string{"domain", "get", "site"}, "group site has no budget"},
		{[]string{"domain", "tree", "site"}, "group site has no budget"},
	}
	check := func(rs []struct {
		args []string
		want string
	}) {
		t.Helper()
		for _, r := range rs {
			out, err := run(t, ep, r.args...)
			if err == nil || !strings.Contains(out, r.want) {
				t.Errorf("capstanctl %s: err %v, output %q; want a refusal containing %q", strings.Join(r.args, " "), err, out, r.want)
			}
		}
	}
	check(refusals)

	for _, args := range [][]string{
		{"domain", "set", "site", "20000", "--reason", "site feed"},
		{"domain", "set", "site/row1", "9000"},
		{"domain", "set", "site/row1/rack1", "4000", "--guard-band", "0.1", "--priority", "2"},
		{"domain", "set", "site/row2", "9000"},
	} {
		if out, err := run(t, ep, args...); err != nil || !strings.Contains(out, "domain "+args[2]+": limit "+args[3]+" W") {
			t.Fatalf("capstanctl %s: %v %q", strings.Join(args, " "), err, out)
		}
	}
	check([]struct {
		args []string
		want string
	}{
		{[]string{"domain", "set", "site/row1/rack1", "3000"}, "limit 3000 W (less a guard band of 0) for domain site/row1/rack1 is below the 3200 W it needs at least: 3200 W for its 2 live nodes"},
		{[]string{"domain", "set", "site/row1/rack1", "4000", "--guard-band", "0.9"}, "guard band 0.9 for domain site/row1/rack1: allowed 0 to 0.5"},
		{[]string{"domain", "set", "site/row1/rack1", "4000", "--priority", "5000"}, "priority 5000 for domain site/row1/rack1: allowed 1 to 1000"},
		{[]string{"domain", "set", "site", "3000"}, "budget 3000 W for group site is below the 3200 W its 2 nodes need at least"},
		{[]string{"domain", "rm", "site/row1"}, "domain site/row1 has domains below it (site/row1/rack1): remove them first"},
		{[]string{"domain", "rm", "site"}, "domain site is the group itself"},
		{[]string{"domain", "rm", "site/nowhere"}, "no domain site/nowhere"},
		{[]string{"domain", "get", "site/nowhere"}, "no domain site/nowhere (capstanctl domain set site/nowhere WATTS)"},
		{[]string{"domain", "tree", "site/nowhere"}, "no domain site/nowhere"},
	})
	out, err := run(t, ep, "domain", "get", "site/row1/rack1")
	if err != nil || !strings.Contains(out, "domain site/row1/rack1: 4000 W, guard band 0.1, priority 2") {
		t.Errorf("domain get: %v %q", err, out)
	}
	out, err = run(t, ep, "domain", "get", "site/row1/rack1", "--json")
	var got map[string]any
	if err != nil || json.Unmarshal([]byte(out), &got) != nil || got["path"] != "site/row1/rack1" || got["limit_w"] != 4000.0 || got["guard_band"] != 0.1 {
		t.Errorf("domain get --json: %v %q", err, out)
	}
	// The root is the flat group's budget: budget get and domain get agree.
	out, err = run(t, ep, "budget", "get", "site")
	if err != nil || !strings.Contains(out, "group site: 20000 W") || !strings.Contains(out, "site feed") {
		t.Errorf("budget get after domain set of the root: %v %q", err, out)
	}

	out, err = run(t, ep, "domain", "tree", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Domains []map[string]any `json:"domains"`
	}
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("domain tree --json is not JSON: %v\n%s", err, out)
	}
	if len(raw.Domains) != 4 {
		t.Fatalf("domain tree --json lists %d domains, want 4:\n%s", len(raw.Domains), out)
	}
	for _, key := range []string{"path", "limit_w", "granted_w", "applied_w", "draw_w", "headroom_w", "oversubscribed", "nodes"} {
		if _, ok := raw.Domains[0][key]; !ok {
			t.Errorf("domain tree --json lacks %q", key)
		}
	}
	var tree cluster.DomainTree
	_ = json.Unmarshal([]byte(out), &tree)
	paths := []string{}
	for _, d := range tree.Domains {
		paths = append(paths, d.Path)
	}
	if strings.Join(paths, " ") != "site site/row1 site/row1/rack1 site/row2" {
		t.Errorf("domain tree paths %v", paths)
	}
	rack := tree.Domains[2]
	if rack.LimitW != 4000 || rack.GrantedW != 4500 || rack.AppliedW != 4500 || rack.DrawW != 4300 || rack.HeadroomW != 3600-4300 || rack.Nodes != 2 || rack.Oversubscribed {
		t.Errorf("rack1 = %+v; want limit 4000, granted 4500, applied 4500, draw 4300, headroom 3600−4300, 2 nodes", rack)
	}
	if root := tree.Domains[0]; root.GrantedW != 4500 || root.Nodes != 2 {
		t.Errorf("site = %+v; want the rack's sums", root)
	}

	out, err = run(t, ep, "domain", "tree", "site/row1")
	if err != nil || strings.Contains(out, "row2") || !strings.Contains(out, "    rack1") || !strings.Contains(out, "over") {
		t.Errorf("domain tree site/row1: %v\n%s", err, out)
	}
	t.Logf("capstanctl domain tree site/row1:\n%s", out)

	// Removing a leaf: its nodes count in its parent.
	if out, err := run(t, ep, "domain", "rm", "site/row1/rack1"); err != nil || !strings.Contains(out, "domain site/row1/rack1 removed") {
		t.Fatalf("domain rm: %v %q", err, out)
	}
	v := cluster.NewView(k)
	if _, err := v.Load(context.Background(), cli); err != nil {
		t.Fatal(err)
	}
	for _, d := range cluster.DomainsOf(v, "") {
		if d.Path == "site/row1" && d.Nodes != 2 {
			t.Errorf("after rm, site/row1 counts %d nodes, want the rack's 2", d.Nodes)
		}
	}
}

// TestTopTreeInATerminal runs capstanctl top --tree in tmux against a real etcd and reads the
// screen: the tree with its sums, an oversubscribed rack in red, a watched change redrawn.
func TestTopTreeInATerminal(t *testing.T) {
	need(t, "tmux", "tmux")
	cli, k, ep, lease := domainSite(t)
	for _, args := range [][]string{{"site", "20000"}, {"site/row1", "9000"}, {"site/row1/rack1", "4000"}} {
		if out, err := run(t, ep, "domain", "set", args[0], args[1]); err != nil {
			t.Fatalf("domain set %v: %v %s", args, err, out)
		}
	}
	sock := filepath.Join(t.TempDir(), "tmux")
	tmux := func(args ...string) (string, error) {
		out, err := exec.Command("tmux", append([]string{"-S", sock, "-f", "/dev/null"}, args...)...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { _, _ = tmux("kill-server") })
	cmd := "env -u NO_COLOR " + bin + " --etcd.endpoints " + ep + " top --tree site --refresh 100ms"
	if out, err := tmux("new-session", "-d", "-s", "tree", "-x", "140", "-y", "20", cmd); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	capture := func(escapes bool) string {
		args := []string{"capture-pane", "-p", "-t", "tree"}
		if escapes {
			args = append(args, "-e")
		}
		out, _ := tmux(args...)
		return out
	}
	testkit.WaitFor(t, "top --tree's first screen", func() bool { return strings.Contains(capture(false), "rack1") })
	screen := capture(false)
	t.Logf("capstanctl top --tree site in a 140x20 terminal:\n%s", screen)
	lines := strings.Split(screen, "\n")
	if !strings.HasPrefix(lines[0], "capstanctl top --tree site   3 domains   generation 1   allocator none") {
		t.Errorf("first line %q", lines[0])
	}
	for _, want := range []string{"DOMAIN", "LIMIT W", "GRANTED W", "APPLIED W", "DRAW W", "HEADROOM W", "site", "  row1", "    rack1", "0 oversubscribed"} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q", want)
		}
	}
	// A third node in the rack: its floors (3 × 1600 W) now exceed the rack's 4000 W.
	b, _ := json.Marshal(cluster.NodeRecord{DemandW: 3000, MinW: 1600, MaxW: 5600, Priority: 1, Lease: int64(lease), Domain: "row1/rack1"})
	if _, err := cli.Put(context.Background(), k.Node("gpu-3"), string(b), clientv3.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the rack oversubscribed", func() bool { return strings.Contains(capture(false), "OVERSUBSCRIBED") })
	colored := capture(true)
	i := strings.Index(colored, "OVERSUBSCRIBED")
	if row := colored[strings.LastIndexByte(colored[:i], '\n')+1 : i]; !strings.Contains(row, "\x1b[31m") || !strings.Contains(row, "rack1") {
		t.Errorf("the oversubscribed rack's row is not red: %q", row)
	}
	if out, err := tmux("send-keys", "-t", "tree", "q"); err != nil {
		t.Fatalf("send-keys: %v %s", err, out)
	}
	testkit.WaitFor(t, "top --tree to quit on q", func() bool {
		_, err := tmux("has-session", "-t", "tree")
		return err != nil
	})
}
