package agent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/etcdtest"
	"github.com/capstan-power/capstan/internal/testkit"
)

// etcdConfig is an agent of two simulated H100s (400-1400 W as a node) capping on a cluster
// budget, in group site, its domain from the node label capstan.io/rack.
func etcdConfig(t *testing.T, ep, state string) *config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Node.Name = "gpu-1"
	cfg.GPU.Backend, cfg.GPU.Sim.Count, cfg.GPU.Sim.Trace = "sim", 2, "steady"
	cfg.Web.ListenAddress = "127.0.0.1:0"
	for name, c := range cfg.Collectors {
		c.Enabled = name == "gpu"
		cfg.Collectors[name] = c
	}
	cfg.Capping.Enabled, cfg.Capping.Period, cfg.Capping.StateFile = true, 200*time.Millisecond, state
	cfg.Budget.Source = "etcd"
	cfg.Etcd.Endpoints, cfg.Etcd.Group, cfg.Etcd.DomainLabels, cfg.Etcd.LeaseTTL = ep, "site", "capstan.io/rack", 2*time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A reload that moves the node to another rack (its node label changed) keeps its lease and
// moves its record in place: the allocator grants it at most what it holds in the new rack,
// the new rack makes room before anything in it rises, and no domain goes over its limit
// beyond the watts the move itself brings in, and that only until the grants the move called
// for there (the moved node's and the cuts of the nodes beside it) are acknowledged.
func TestReloadMovesTheNodeInPlace(t *testing.T) {
	_, eps := etcdtest.Start(t, 1, nil)
	ep := "http://" + eps[0]
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	keys := cluster.Keys{Prefix: "/capstan/v1", Group: "site"}
	limits := map[string]float64{"": 3000, "rackA": 2000, "rackB": 1400}
	if err := cluster.SetBudget(ctx, admin, keys, cluster.BudgetRecord{Watts: limits[""], SetBy: "test"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"rackA", "rackB"} {
		if _, err := cluster.SetDomain(ctx, admin, keys.Prefix, "site/"+d, cluster.DomainRecord{LimitW: limits[d], SetBy: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	chk := watchGroup(ctx, t, admin, keys, limits)

	// Another node in rackB wants its maximum and applies every grant it gets: rackB gives it
	// its limit less a joiner's minimum, 1000 W.
	other, err := cluster.NewMember(cluster.Options{Client: admin, Keys: keys, Node: "other", Domain: "rackB",
		LeaseTTL: 2 * time.Second, Period: 200 * time.Millisecond, Priority: 1})
	if err != nil {
		t.Fatal(err)
	}
	go other.Run(ctx)
	go func() {
		for ctx.Err() == nil {
			other.Report(budget.NodeReport{DrawW: 1400, DrawOK: true, MinW: 400, MaxW: 1400, At: time.Now()})
			other.Applied(other.Grant())
			time.Sleep(50 * time.Millisecond)
		}
	}()

	var mu sync.Mutex
	rack := "rackA"
	labels := func(_ context.Context, node string) (map[string]string, error) {
		mu.Lock()
		defer mu.Unlock()
		if node != "gpu-1" {
			return nil, errors.New("no such node")
		}
		return map[string]string{"capstan.io/rack": rack, "kubernetes.io/hostname": node}, nil // "" is an empty label
	}
	state := filepath.Join(t.TempDir(), "state.json")
	log, logs := testkit.NewLogger()
	hup := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, etcdConfig(t, ep, state), Options{Log: log, Hangup: hup, NodeLabels: labels,
			Reload: func() (*config.Config, error) { return etcdConfig(t, ep, state), nil }})
	}()

	testkit.Eventually(t, 30*time.Second, "gpu-1 granted in rackA more than rackB has left", func() bool {
		n, g, ok := chk.node("gpu-1")
		o, og, _ := chk.node("other")
		return ok && n.Domain == "rackA" && g.Domain == "rackA" && n.AckedGen == g.Generation && g.Watts > 1000 &&
			og.Lease == o.Lease && og.Watts >= 900
	})
	n, _, _ := chk.node("gpu-1")
	lease := n.Lease
	chk.expectMove("gpu-1", "rackB")

	mu.Lock()
	rack = "rackB"
	mu.Unlock()
	hup <- os.Interrupt
	testkit.Eventually(t, 30*time.Second, "gpu-1's grant in rackB acknowledged", func() bool {
		n, g, ok := chk.node("gpu-1")
		return ok && n.Domain == "rackB" && g.Domain == "rackB" && n.AckedGen == g.Generation
	})
	testkit.Eventually(t, 10*time.Second, "rackB within its limit", func() bool { return chk.sum("rackB") <= limits["rackB"] })
	n, g, _ := chk.node("gpu-1")
	if n.Lease != lease || g.Lease != lease {
		t.Errorf("after the move gpu-1's record has lease %x and its grant %x, want the lease it had, %x", n.Lease, g.Lease, lease)
	}
	if logs.Count("cluster: node registered") != 1 {
		t.Errorf("the node registered %d times, want once:\n%s", logs.Count("cluster: node registered"), logs)
	}
	if !logs.Contains("cluster: node moved to another domain") {
		t.Errorf("no log of the move:\n%s", logs)
	}
	if d := chk.deletions("gpu-1"); d != 0 {
		t.Errorf("gpu-1's record was deleted %d times during the move, want never", d)
	}

	// The rack label removed: the reload is refused and the node stays where it is.
	mu.Lock()
	rack = ""
	mu.Unlock()
	hup <- os.Interrupt
	testkit.Eventually(t, 10*time.Second, "the reload refused", func() bool {
		return logs.Contains("configuration not reloaded; keeping the running one") && logs.Contains("label capstan.io/rack on Node gpu-1 is empty")
	})
	if n, _, _ := chk.node("gpu-1"); n.Domain != "rackB" || n.Lease != lease {
		t.Errorf("after a refused reload gpu-1 is in %q under lease %x, want rackB under %x", n.Domain, n.Lease, lease)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	chk.finish(t, limits)
}

// groupChecker follows a group's node and grant records in etcd and checks, at every revision,
// the documented rule: Σ of what the nodes counted in a domain may run at stays within its
// limit, except in the domain a node moves into, from the revision its record moves there until
// the move has settled (the moved node and every node there acknowledged their grants, so the
// cuts the move called for have landed). Meanwhile that domain is over by at most what the moved
// node may run at when it arrives, its Σ does not rise while over, nothing there rises above
// what it could run at when the node arrived, and the moved node's first grant there is at most
// that. A moved node counts in the domain it left too until it acknowledges a grant for the new
// one.
type groupChecker struct {
	mu      sync.Mutex
	nodes   map[string]cluster.NodeRecord
	grants  map[string]cluster.GrantRecord
	deleted []string
	// The move under test: its node and destination; the revision its record arrived there
	// (0 before), what it may run at then, and what the destination's nodes may run at then;
	// whether its grant there is acknowledged, and whether every node there acknowledged.
	mover, dest string
	movedAt     int64
	heldW       float64
	before      map[string]float64
	landed      bool
	settled     bool
	lastDestW   float64  // Σ in the destination at the last revision
	over        []string // each: the domain, the revision, Σ against what it allows, the records
	broken      []string // the other rules of a move broken, each with its revision and records
	limits      map[string]float64
	revisions   int
	rev         int64 // the revision the records are at
}

func watchGroup(ctx context.Context, t *testing.T, cli *clientv3.Client, keys cluster.Keys, limits map[string]float64) *groupChecker {
	t.Helper()
	c := &groupChecker{nodes: map[string]cluster.NodeRecord{}, grants: map[string]cluster.GrantRecord{}, limits: limits}
	resp, err := cli.Get(ctx, keys.Root(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		c.apply(keys, string(kv.Key), kv.Value, false)
	}
	wch := cli.Watch(ctx, keys.Root(), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	go func() {
		for wr := range wch {
			c.mu.Lock()
			// A response may carry several revisions: check the records at each one, once
			// all of its events (a transaction's writes share one revision) are applied.
			for i, ev := range wr.Events {
				c.rev = ev.Kv.ModRevision
				c.applyLocked(keys, string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
				if i == len(wr.Events)-1 || wr.Events[i+1].Kv.ModRevision != c.rev {
					c.checkLocked()
				}
			}
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *groupChecker) apply(keys cluster.Keys, key string, v []byte, del bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applyLocked(keys, key, v, del)
}

func (c *groupChecker) applyLocked(keys cluster.Keys, key string, v []byte, del bool) {
	switch {
	case strings.HasPrefix(key, keys.Nodes()):
		name := strings.TrimPrefix(key, keys.Nodes())
		if del {
			delete(c.nodes, name)
			c.deleted = append(c.deleted, name)
		} else if n, err := cluster.ParseNode(v); err == nil {
			c.nodes[name] = n
		}
	case strings.HasPrefix(key, keys.Grants()) && !del:
		if g, err := cluster.ParseGrant(v); err == nil {
			c.grants[strings.TrimPrefix(key, keys.Grants())] = g
		}
	}
}

// mayRun is what a node may run at: its grant for its lease, the higher of the grant and the
// one it replaced until acknowledged, never below what it applies; its minimum before a grant.
func (c *groupChecker) mayRunLocked(name string) float64 {
	n := c.nodes[name]
	g, ok := c.grants[name]
	if !ok || g.Lease != n.Lease {
		return math.Max(n.MinW, n.AppliedW)
	}
	w := g.Watts
	if n.AckedGen < g.Generation {
		w = math.Max(w, g.PrevW)
	}
	return math.Max(w, n.AppliedW)
}

// domainsLocked lists the domains a node counts in: its record's, and until it acknowledges a
// grant for that one also the domain of the grant for its lease it still holds, or of the grant
// that one replaced.
func (c *groupChecker) domainsLocked(name string) []string {
	n := c.nodes[name]
	ds := []string{n.Domain}
	if g, ok := c.grants[name]; ok && g.Lease == n.Lease {
		if g.Domain != n.Domain {
			ds = append(ds, g.Domain)
		} else if n.AckedGen < g.Generation && g.PrevDomain != n.Domain {
			ds = append(ds, g.PrevDomain)
		}
	}
	return ds
}

// countsIn reports whether a node in the domains ds counts in domain d: d is one of them or
// an ancestor of one ("" is the group's root, over every node).
func countsIn(ds []string, d string) bool {
	for _, x := range ds {
		if d == "" || x == d || strings.HasPrefix(x, d+"/") {
			return true
		}
	}
	return false
}

// sum is Σ of what the nodes counted in the domain may run at ("" the whole group).
func (c *groupChecker) sum(domain string) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sumLocked(domain)
}

func (c *groupChecker) sumLocked(domain string) float64 {
	s := 0.0
	for name := range c.nodes {
		if countsIn(c.domainsLocked(name), domain) {
			s += c.mayRunLocked(name)
		}
	}
	return s
}

// ackedLocked reports whether the node acknowledged the grant for its lease.
func (c *groupChecker) ackedLocked(name string) bool {
	n := c.nodes[name]
	g, ok := c.grants[name]
	return ok && g.Lease == n.Lease && n.AckedGen >= g.Generation
}

func (c *groupChecker) checkLocked() {
	c.revisions++
	if n, ok := c.nodes[c.mover]; ok && c.mover != "" && c.movedAt == 0 && n.Domain == c.dest {
		c.movedAt, c.heldW = c.rev, c.mayRunLocked(c.mover)
		c.before = map[string]float64{}
		for name, o := range c.nodes {
			if name != c.mover && countsIn([]string{o.Domain}, c.dest) {
				c.before[name] = c.mayRunLocked(name)
			}
		}
		c.lastDestW = c.sumLocked(c.dest)
	}
	moving := c.movedAt != 0 && !c.settled
	if moving {
		n := c.nodes[c.mover]
		g, has := c.grants[c.mover]
		if has && g.Domain == c.dest && g.Lease == n.Lease && !c.landed && g.Watts > c.heldW+1e-6 {
			c.broken = append(c.broken, fmt.Sprintf("revision %d: %s's grant in %q, %.0f W, is above the %.0f W it held when it moved; records:\n%s",
				c.rev, c.mover, c.dest, g.Watts, c.heldW, c.recordsLocked()))
		}
		if n.Domain == c.dest && has && g.Domain == c.dest && c.ackedLocked(c.mover) {
			c.landed = true
		}
		for name, w := range c.before {
			if _, live := c.nodes[name]; live && c.mayRunLocked(name) > w+1e-6 {
				c.broken = append(c.broken, fmt.Sprintf("revision %d: %s in %q may run at %.0f W, above the %.0f W it could when %s arrived, before the move settled; records:\n%s",
					c.rev, name, c.dest, c.mayRunLocked(name), w, c.mover, c.recordsLocked()))
			}
		}
		if w := c.mayRunLocked(c.mover); w > c.heldW+1e-6 {
			c.broken = append(c.broken, fmt.Sprintf("revision %d: %s may run at %.0f W, above the %.0f W it held when it moved, before the move settled; records:\n%s",
				c.rev, c.mover, w, c.heldW, c.recordsLocked()))
		}
	}
	for d, limit := range c.limits {
		allowed := limit
		s := c.sumLocked(d)
		if moving && d == c.dest {
			allowed += c.heldW // the move brings the node's held watts in at once
			if s > limit+1e-6 && s > c.lastDestW+1e-6 {
				c.broken = append(c.broken, fmt.Sprintf("revision %d: Σ in %q rose from %.0f W to %.0f W while over its %.0f W limit; records:\n%s",
					c.rev, d, c.lastDestW, s, limit, c.recordsLocked()))
			}
			c.lastDestW = s
		}
		if s > allowed+1e-6 {
			c.over = append(c.over, fmt.Sprintf("domain %q at revision %d: Σ %.0f W > %.0f W allowed (limit %.0f W; %s moved to %q at revision %d holding %.0f W, landed %v, settled %v); records:\n%s",
				d, c.rev, s, allowed, limit, c.mover, c.dest, c.movedAt, c.heldW, c.landed, c.settled, c.recordsLocked()))
		}
	}
	// The move has settled once the moved node's grant there and every grant of the nodes
	// counted there are acknowledged: the cuts it called for have landed.
	if moving && c.landed {
		c.settled = true
		for name := range c.nodes {
			if countsIn(c.domainsLocked(name), c.dest) && !c.ackedLocked(name) {
				c.settled = false
			}
		}
	}
}

// recordsLocked lists the node records, each with its grant and what it may run at, by name.
func (c *groupChecker) recordsLocked() string {
	names := make([]string, 0, len(c.nodes))
	for name := range c.nodes {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, name := range names {
		n := c.nodes[name]
		fmt.Fprintf(&b, "  node %s: domain %q lease %x min %.0f max %.0f demand %.0f applied %.0f acked gen %d; may run at %.0f W\n",
			name, n.Domain, n.Lease, n.MinW, n.MaxW, n.DemandW, n.AppliedW, n.AckedGen, c.mayRunLocked(name))
		if g, ok := c.grants[name]; ok {
			fmt.Fprintf(&b, "    grant: %.0f W (prev %.0f W in %q) in %q gen %d lease %x\n", g.Watts, g.PrevW, g.PrevDomain, g.Domain, g.Generation, g.Lease)
		} else {
			b.WriteString("    no grant\n")
		}
	}
	return b.String()
}

// expectMove names the node about to move and its destination: the checker takes what it
// holds, and what the destination's nodes may run at, at the revision its record arrives there.
func (c *groupChecker) expectMove(node, dest string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mover, c.dest = node, dest
}

// deletions counts how often the node's record was deleted.
func (c *groupChecker) deletions(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := 0
	for _, d := range c.deleted {
		if d == name {
			k++
		}
	}
	return k
}

func (c *groupChecker) node(name string) (cluster.NodeRecord, cluster.GrantRecord, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.nodes[name]
	return n, c.grants[name], ok
}

func (c *groupChecker) finish(t *testing.T, limits map[string]float64) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.over) > 0 {
		t.Errorf("domains over their limits %v at %d of %d revisions:\n%s", limits, len(c.over), c.revisions, strings.Join(c.over, "\n"))
	}
	if len(c.broken) > 0 {
		t.Errorf("the move of %s to %s broke its rules at %d checks:\n%s", c.mover, c.dest, len(c.broken), strings.Join(c.broken, "\n"))
	}
	if c.movedAt == 0 || !c.settled {
		t.Errorf("the move of %s to %s not seen through: its record arrived at revision %d, settled %v", c.mover, c.dest, c.movedAt, c.settled)
	}
	if c.revisions < 10 {
		t.Errorf("only %d revisions observed", c.revisions)
	}
}

// An agent whose node labels give no domain does not start: Run returns the error before it
// builds anything.
func TestDomainLabelsRefuseStart(t *testing.T) {
	cfg := etcdConfig(t, "http://127.0.0.1:1", filepath.Join(t.TempDir(), "state.json"))
	log, _ := testkit.NewLogger()
	err := Run(context.Background(), cfg, Options{Log: log, NodeLabels: func(context.Context, string) (map[string]string, error) {
		return map[string]string{"kubernetes.io/hostname": "gpu-1"}, nil
	}})
	if err == nil || !strings.Contains(err.Error(), "no label capstan.io/rack on Node gpu-1") {
		t.Errorf("Run: %v, want the missing label", err)
	}
}

// Only a reload that changes the node's domain within its group, and nothing else the member
// was built from, keeps the member.
func TestMovesInPlace(t *testing.T) {
	base := func() *config.Config {
		c := config.Default()
		c.Node.Name = "gpu-1"
		c.Capping.Enabled, c.Budget.Source = true, "etcd"
		c.Etcd.Endpoints, c.Etcd.Domain = "http://127.0.0.1:2379", "site/rackA"
		return c
	}
	for _, tc := range []struct {
		name string
		edit func(c *config.Config)
		want bool
	}{
		{"another rack", func(c *config.Config) { c.Etcd.Domain = "site/rackB" }, true},
		{"the group's root", func(c *config.Config) { c.Etcd.Domain, c.Etcd.Group = "", "site" }, true},
		{"another rack from labels", func(c *config.Config) {
			c.Etcd.Domain, c.Etcd.Group, c.Etcd.DomainLabels = "site/rackB", "site", "capstan.io/rack"
		}, true},
		{"nothing", func(*config.Config) {}, false},
		{"the same rack from labels", func(c *config.Config) { c.Etcd.Group, c.Etcd.DomainLabels = "site", "capstan.io/rack" }, false},
		{"another group", func(c *config.Config) { c.Etcd.Domain = "hall2/rackA" }, false},
		{"and the endpoints", func(c *config.Config) { c.Etcd.Domain, c.Etcd.Endpoints = "site/rackB", "http://127.0.0.2:2379" }, false},
		{"and the priority", func(c *config.Config) { c.Etcd.Domain, c.Etcd.Priority = "site/rackB", 5 }, false},
		{"and the lease TTL", func(c *config.Config) { c.Etcd.Domain, c.Etcd.LeaseTTL = "site/rackB", 20*time.Second }, false},
		{"and the CA", func(c *config.Config) { c.Etcd.Domain, c.Etcd.TLS.CAFile = "site/rackB", "/etc/ca.pem" }, false},
		{"and the period", func(c *config.Config) { c.Etcd.Domain, c.Capping.Period = "site/rackB", 2*time.Second }, false},
		{"and the node", func(c *config.Config) { c.Etcd.Domain, c.Node.Name = "site/rackB", "gpu-2" }, false},
		{"to a static budget", func(c *config.Config) { c.Etcd.Domain, c.Budget.Source = "site/rackB", "static" }, false},
		{"with capping off", func(c *config.Config) { c.Etcd.Domain, c.Capping.Enabled = "site/rackB", false }, false},
	} {
		next := base()
		tc.edit(next)
		if got := movesInPlace(base(), next); got != tc.want {
			t.Errorf("%s: movesInPlace = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The domain comes from the node's labels with capping on a cluster budget; a node whose labels
// give none does not start, with an error that names the key, the node and what to set.
func TestResolveDomain(t *testing.T) {
	log, _ := testkit.NewLogger()
	mk := func() *config.Config {
		c := config.Default()
		c.Node.Name = "gpu-1"
		c.Capping.Enabled, c.Budget.Source = true, "etcd"
		c.Etcd.Endpoints, c.Etcd.Group, c.Etcd.DomainLabels = "http://127.0.0.1:2379", "site", "capstan.io/row,capstan.io/rack"
		return c
	}
	labelled := func(l map[string]string, err error) NodeLabels {
		return func(context.Context, string) (map[string]string, error) { return l, err }
	}
	c := mk()
	if err := resolveDomain(context.Background(), c, labelled(map[string]string{"capstan.io/row": "row3", "capstan.io/rack": "rack12"}, nil), log); err != nil {
		t.Fatal(err)
	}
	if c.Etcd.Domain != "site/row3/rack12" {
		t.Errorf("etcd.domain %q, want site/row3/rack12", c.Etcd.Domain)
	}
	if g, d := cluster.GroupOf(c.Etcd); g != "site" || d != "row3/rack12" {
		t.Errorf("group %q domain %q", g, d)
	}
	for _, tc := range []struct {
		labels NodeLabels
		want   []string
	}{
		{labelled(map[string]string{"capstan.io/row": "row3"}, nil),
			[]string{`etcd.domain-labels: "capstan.io/row,capstan.io/rack" gives no power domain for node gpu-1`, "no label capstan.io/rack on Node gpu-1", "kubectl label node gpu-1 capstan.io/rack=VALUE"}},
		{labelled(map[string]string{"capstan.io/row": "row3", "capstan.io/rack": "rack:12/a"}, nil),
			[]string{"label capstan.io/rack=rack:12/a on Node gpu-1 is not one level of a domain path"}},
		{labelled(nil, errors.New("reading Node gpu-1: forbidden (403)")), []string{"gives no power domain for node gpu-1: reading Node gpu-1: forbidden (403)"}},
	} {
		c := mk()
		err := resolveDomain(context.Background(), c, tc.labels, log)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%v, want an error with %q", err, w)
			}
		}
		if c.Etcd.Domain != "" {
			t.Errorf("etcd.domain %q set after an error", c.Etcd.Domain)
		}
	}
	// Without a cluster budget the labels are not read.
	c = mk()
	c.Budget.Source = "static"
	if err := resolveDomain(context.Background(), c, labelled(nil, errors.New("must not be called")), log); err != nil || c.Etcd.Domain != "" {
		t.Errorf("static budget: %v, domain %q", err, c.Etcd.Domain)
	}
}

// The labels' values, in order, below the group; every way they can fail to be a path.
func TestDomainPath(t *testing.T) {
	keys := []string{"capstan.io/row", "capstan.io/rack"}
	for _, tc := range []struct {
		labels map[string]string
		want   string // the path, or a part of the error
		ok     bool
	}{
		{map[string]string{"capstan.io/row": "row3", "capstan.io/rack": "rack12"}, "site/row3/rack12", true},
		{map[string]string{"capstan.io/row": "row.3", "capstan.io/rack": "r_12-a"}, "site/row.3/r_12-a", true},
		{map[string]string{"capstan.io/row": "row3"}, "no label capstan.io/rack on Node gpu-17, which etcd.domain-labels needs: label it (kubectl label node gpu-17 capstan.io/rack=VALUE)", false},
		{map[string]string{"capstan.io/row": "", "capstan.io/rack": "rack12"}, "label capstan.io/row on Node gpu-17 is empty", false},
		{map[string]string{"capstan.io/row": "row 3", "capstan.io/rack": "rack12"}, `label capstan.io/row=row 3 on Node gpu-17 is not one level`, false},
		{nil, "no label capstan.io/row on Node gpu-17", false},
		{map[string]string{"capstan.io/row": "row3", "capstan.io/rack": "a/b"}, "label capstan.io/rack=a/b on Node gpu-17 is not one level of a domain path", false},
	} {
		got, err := domainPath("site", keys, "gpu-17", tc.labels)
		switch {
		case tc.ok && (err != nil || got != tc.want):
			t.Errorf("%v: %q, %v; want %q", tc.labels, got, err, tc.want)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: %q, %v; want an error with %q", tc.labels, got, err, tc.want)
		}
	}
	// Deeper than a domain path may be.
	many := map[string]string{}
	var deep []string
	for _, k := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		many[k] = k
		deep = append(deep, k)
	}
	if _, err := domainPath("site", deep, "gpu-17", many); err == nil || !strings.Contains(err.Error(), "9 levels") {
		t.Errorf("9 levels: %v", err)
	}
}
