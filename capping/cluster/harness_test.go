package cluster_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/pkg/v3/proxy"
	"go.uber.org/zap"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/etcdtest"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

// Short timings keep the suite fast: etcd ticks of 10 ms allow a 1 s lease.
const (
	leaseTTL = time.Second
	period   = 200 * time.Millisecond
)

var testKeys = cluster.Keys{Prefix: "/capstan/v1", Group: "row-a"}

func mustURL(t testing.TB, s string) url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return *u
}

func newClient(t testing.TB, eps []string, user, pass string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second, Username: user, Password: pass, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// agent is one node: its own simulated GPUs, the real capping controller, and a cluster member
// with its own etcd client as the controller's budget source.
type agent struct {
	name   string
	fleet  *sim.Fleet
	ctl    *capping.Controller
	member *cluster.Member
	store  *sample.Store
	cli    *clientv3.Client
	cancel context.CancelFunc
	done   chan struct{}
	active atomic.Bool
}

// startAgent starts a node of gpus simulated H100s (200–700 W each) on a steady full-power trace.
func startAgent(t testing.TB, name string, cli *clientv3.Client, gpus int, priority float64) *agent {
	t.Helper()
	return startAgentWith(t, name, cli, gpus, priority, leaseTTL, period, true)
}

// startAgentWith is startAgent with a lease TTL, an allocation period (the controller runs at
// half of it) and whether the node stands for allocator.
func startAgentWith(t testing.TB, name string, cli *clientv3.Client, gpus int, priority float64, ttl, per time.Duration, campaign bool, edits ...func(*cluster.Options)) *agent {
	t.Helper()
	fleet, err := sim.New(sim.Options{Model: "H100", Count: gpus, Trace: "steady", Seed: int64(len(name)), Clock: clock.Real()})
	if err != nil {
		t.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	a := &agent{name: name, fleet: fleet, store: sample.NewStore(), cli: cli, done: make(chan struct{})}
	o := cluster.Options{Client: cli, Keys: testKeys, Node: name, LeaseTTL: ttl, Period: per,
		Priority: priority, Campaign: campaign, Store: a.store, Log: slog.New(slog.DiscardHandler)}
	for _, e := range edits {
		e(&o)
	}
	m, err := cluster.NewMember(o)
	if err != nil {
		t.Fatal(err)
	}
	a.member = m
	src := budget.NewEtcd(m, time.Now)
	set := capping.Defaults()
	set.Period = per / 2
	set.StateFile = filepath.Join(t.TempDir(), name+".json")
	ctl, err := capping.New(capping.Options{Settings: set, Lib: fleet, Budget: src, Store: a.store})
	if err != nil {
		t.Fatal(err)
	}
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	a.ctl = ctl
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.active.Store(true)
	go func() {
		defer close(a.done)
		ctl.Run(ctx)
	}()
	t.Cleanup(a.stop)
	return a
}

// stop ends the agent; the member revokes its lease unless the client is already closed.
func (a *agent) stop() {
	if !a.active.Swap(false) {
		return
	}
	a.cancel()
	<-a.done
}

// startProxy puts etcd's test proxy in front of the etcd endpoint ep, so a test can blackhole
// an agent's connection both ways as a partition does.
func startProxy(tb testing.TB, ep string) proxy.Server {
	tb.Helper()
	px := proxy.NewServer(proxy.ServerConfig{Logger: zap.NewNop(), From: mustURL(tb, "tcp://"+etcdtest.FreeAddr(tb)), To: mustURL(tb, "tcp://"+ep)})
	tb.Cleanup(func() { _ = px.Close() })
	<-px.Ready()
	return px
}

// waitPeriods waits until each agent's controller has completed n more control periods: the
// time it takes to act on what its member knows now.
func waitPeriods(t testing.TB, n int, agents ...*agent) {
	t.Helper()
	for _, a := range agents {
		if !a.active.Load() {
			continue
		}
		last := a.controlled()
		for range n {
			testkit.WaitFor(t, a.name+"'s next control period", func() bool {
				at := a.controlled()
				if at.After(last) {
					last = at
					return true
				}
				return false
			})
		}
	}
}

// controlled is when the agent's controller last published its period.
func (a *agent) controlled() time.Time {
	var at time.Time
	a.store.View(capping.StoreKey, func(b *sample.Batch) {
		if b != nil {
			at = b.Time
		}
	})
	return at
}

// checker samples, every 2 ms, Σ applied of the agents under each domain and records every
// instant it exceeded the domain's limit in force. A domain is a path below the group; "" is the
// group itself.
type checker struct {
	mu         sync.Mutex
	agents     map[*agent]string // the agent's domain
	limits     map[string]float64
	violations []string
	samples    int
	stopc      chan struct{}
	done       chan struct{}
}

// newChecker starts sampling with the limits by domain; {"": w} checks the group alone.
func newChecker(limits map[string]float64) *checker {
	c := &checker{agents: map[*agent]string{}, limits: limits, stopc: make(chan struct{}), done: make(chan struct{})}
	go c.loop()
	return c
}

// add counts agents in domain rel from now on.
func (c *checker) add(rel string, a ...*agent) {
	c.mu.Lock()
	for _, a := range a {
		c.agents[a] = rel
	}
	c.mu.Unlock()
}

func (c *checker) setLimit(rel string, w float64) {
	c.mu.Lock()
	c.limits[rel] = w
	c.mu.Unlock()
}

func inDomain(rel, d string) bool { return d == "" || rel == d || strings.HasPrefix(rel, d+"/") }

// sum is Σ applied under domain d; the caller holds c.mu.
func (c *checker) sum(d string) float64 {
	s := 0.0
	for a, rel := range c.agents {
		if a.active.Load() && inDomain(rel, d) {
			s += a.member.AppliedW()
		}
	}
	return s
}

func (c *checker) sumOf(d string) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sum(d)
}

func (c *checker) loop() {
	defer close(c.done)
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.stopc:
			return
		case <-t.C:
		}
		c.mu.Lock()
		c.samples++
		for d, lim := range c.limits {
			if s := c.sum(d); s > lim+1e-6 && len(c.violations) < 20 {
				where := "group"
				if d != "" {
					where = fmt.Sprintf("domain %q", d)
				}
				c.violations = append(c.violations, fmt.Sprintf("%s: %s: Σ applied %.1f W > %.1f W", time.Now().Format("15:04:05.000"), where, s, lim))
			}
		}
		c.mu.Unlock()
	}
}

// finish stops sampling and fails the test on any violation.
func (c *checker) finish(t testing.TB) {
	t.Helper()
	close(c.stopc)
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.samples < 100 {
		t.Errorf("invariant checker took only %d samples", c.samples)
	}
	for _, v := range c.violations {
		t.Error(v)
	}
}

func setBudget(t testing.TB, cli *clientv3.Client, w, floor float64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cluster.SetBudget(ctx, cli, testKeys, cluster.BudgetRecord{Watts: w, FloorPerNodeW: floor, SetBy: "test", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
}

// converged reports whether Σ applied is within margin below target and every agent has a grant.
func converged(c *checker, target, margin float64) bool {
	s := c.sumOf("")
	return s <= target && s >= target-margin
}

func allocators(agents ...*agent) int {
	n := 0
	for _, a := range agents {
		if a.active.Load() && a.member.IsAllocator() {
			n++
		}
	}
	return n
}

const (
	permRead      = clientv3.PermissionType(clientv3.PermRead)
	permReadWrite = clientv3.PermissionType(clientv3.PermReadWrite)
)

// clientEnd is the range end that covers every key with prefix p.
func clientEnd(p string) string { return clientv3.GetPrefixRangeEnd(p) }

// writeFile writes content to a fresh file (a password file) and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
