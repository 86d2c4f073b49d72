package cluster

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// maxTxnOps keeps each publication transaction under etcd's default --max-txn-ops (128).
const maxTxnOps = 100

// View is a group's records as read from etcd: the last good value of each key.
type View struct {
	Keys      Keys
	Budget    BudgetRecord
	HasBudget bool
	Nodes     map[string]NodeRecord
	Grants    map[string]GrantRecord
	State     StateRecord
	Revision  int64
}

// NewView returns an empty view of a group.
func NewView(k Keys) *View {
	return &View{Keys: k, Nodes: map[string]NodeRecord{}, Grants: map[string]GrantRecord{}}
}

// Apply folds one key's new value (nil: deleted) into the view. A malformed value leaves the
// last good one and returns the parse error.
func (v *View) Apply(key string, value []byte) error {
	rest, ok := strings.CutPrefix(key, v.Keys.Root())
	if !ok {
		return nil
	}
	switch {
	case rest == "budget":
		if value == nil {
			v.HasBudget = false
			return nil
		}
		b, err := ParseBudget(value)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		v.Budget, v.HasBudget = b, true
	case rest == "state":
		if value == nil {
			return nil
		}
		s, err := ParseState(value)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		v.State = s
	case strings.HasPrefix(rest, "nodes/"):
		name := strings.TrimPrefix(rest, "nodes/")
		if value == nil {
			delete(v.Nodes, name)
			return nil
		}
		n, err := ParseNode(value)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		v.Nodes[name] = n
	case strings.HasPrefix(rest, "grants/"):
		name := strings.TrimPrefix(rest, "grants/")
		if value == nil {
			delete(v.Grants, name)
			return nil
		}
		g, err := ParseGrant(value)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		v.Grants[name] = g
	}
	return nil
}

// Load reads every record of the group at one revision. Malformed records are skipped and
// returned as errors.
func (v *View) Load(ctx context.Context, c *clientv3.Client) ([]error, error) {
	resp, err := c.Get(ctx, v.Keys.Root(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading group %s: %w", v.Keys.Group, err)
	}
	var bad []error
	for _, kv := range resp.Kvs {
		if err := v.Apply(string(kv.Key), kv.Value); err != nil {
			bad = append(bad, err)
		}
	}
	v.Revision = resp.Header.Revision
	return bad, nil
}

// Generation is the highest generation the view knows.
func (v *View) Generation() int64 {
	g := v.State.Generation
	for _, gr := range v.Grants {
		g = max(g, gr.Generation)
	}
	return g
}

// Held is what a live node may be running at now: its grant once acknowledged, the higher of the
// old and new grant while a change is unacknowledged, its minimum before a grant for its lease.
func Held(n NodeRecord, g GrantRecord, hasGrant bool) float64 {
	if !hasGrant || g.Lease != n.Lease {
		return n.MinW
	}
	if n.AckedGen >= g.Generation {
		return g.Watts
	}
	return math.Max(g.Watts, g.PrevW)
}

// allocator computes and publishes grants while its member is elected.
type allocator struct {
	m      *Member
	el     *concurrency.Election
	view   *View
	lostAt map[string]time.Time
	gen    int64

	names   []string
	claims  []Claim
	targets []float64
	scratch []int
	decs    []int
	incs    []int
	rounds  int
}

func newAllocator(m *Member, el *concurrency.Election) *allocator {
	return &allocator{m: m, el: el, lostAt: map[string]time.Time{}}
}

// run loads the group, watches it, and runs a round every period and soon after every change.
func (a *allocator) run(ctx context.Context) {
	m := a.m
	for ctx.Err() == nil {
		a.view = NewView(m.o.Keys)
		rctx, cancel := m.reqCtx(ctx)
		bad, err := a.view.Load(rctx, m.o.Client)
		cancel()
		if err != nil {
			m.countErr("request", err)
			sleep(ctx, m.o.Period)
			continue
		}
		for _, e := range bad {
			m.countErr("malformed", e)
		}
		a.gen = a.view.Generation()
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := m.o.Client.Watch(wctx, m.o.Keys.Root(), clientv3.WithPrefix(), clientv3.WithRev(a.view.Revision+1))
		a.loop(ctx, wch)
		wcancel()
	}
}

// loop runs rounds until the watch breaks or ctx is done.
func (a *allocator) loop(ctx context.Context, wch clientv3.WatchChan) {
	m := a.m
	tick := time.NewTicker(m.o.Period)
	defer tick.Stop()
	// Changes are gathered for a short while before a round, so that a burst of
	// acknowledgements costs one round, not one each.
	settle := m.o.Period / 8
	var soon <-chan time.Time
	a.round(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				if ctx.Err() == nil {
					m.countErr("request", fmt.Errorf("watching group %s: %w", m.o.Keys.Group, wr.Err()))
					sleep(ctx, m.o.Period/4)
				}
				return
			}
			for _, ev := range wr.Events {
				var val []byte
				if ev.Type == clientv3.EventTypePut {
					val = ev.Kv.Value
				}
				if err := a.view.Apply(string(ev.Kv.Key), val); err != nil {
					m.countErr("malformed", err)
				}
			}
			if soon == nil {
				soon = time.After(settle)
			}
		case <-soon:
			soon = nil
			a.round(ctx)
		case <-tick.C:
			a.round(ctx)
		}
	}
}

// round computes targets by weighted water-filling and publishes one phase: every decrease if
// there is one; else, once every decreased node acknowledged or lost its lease, the increases.
// So at any time Σ of what nodes may run at stays within the budget.
func (a *allocator) round(ctx context.Context) {
	if idx := a.plan(a.m.o.Now()); len(idx) > 0 {
		a.publish(ctx, idx)
	}
}

// plan computes the targets and returns the nodes (indexes into a.names) whose grants the
// round publishes; it touches no network, so its cost is the allocator's CPU per round.
func (a *allocator) plan(now time.Time) []int {
	v, m := a.view, a.m
	if !v.HasBudget {
		return nil
	}
	a.rounds++
	floor := v.Budget.FloorPerNodeW

	// Dead nodes: a grant without a registration. Their last grant stays reserved for the
	// grace period, their floor after it, until capstanctl drain releases it.
	reserved := 0.0
	for name, g := range v.Grants {
		if _, live := v.Nodes[name]; live {
			delete(a.lostAt, name)
			continue
		}
		lost, ok := a.lostAt[name]
		if !ok {
			lost = now
			a.lostAt[name] = now
		}
		held := math.Max(g.Watts, g.PrevW)
		if now.Sub(lost) > m.o.Grace {
			held = math.Min(held, math.Max(floor, g.MinW))
		}
		reserved += held
	}
	for name := range a.lostAt {
		if _, ok := v.Grants[name]; !ok {
			delete(a.lostAt, name)
		}
	}

	a.names = a.names[:0]
	for name := range v.Nodes {
		a.names = append(a.names, name)
	}
	slices.Sort(a.names)
	a.claims = a.claims[:0]
	sumLo, maxMin := 0.0, 0.0
	for _, name := range a.names {
		n := v.Nodes[name]
		lo := math.Min(math.Max(floor, n.MinW), n.MaxW)
		a.claims = append(a.claims, Claim{Lo: lo, Want: math.Min(math.Max(n.DemandW, lo), n.MaxW), Hi: n.MaxW, Weight: n.Priority})
		sumLo += lo
		maxMin = math.Max(maxMin, n.MinW)
	}
	available := v.Budget.Watts - reserved
	// Room for one node to join at its minimum before the allocator has seen it.
	if available-sumLo >= maxMin {
		available -= maxMin
	}
	a.targets = slices.Grow(a.targets[:0], len(a.claims))[:len(a.claims)]
	fits, scratch := WaterFill(a.claims, available, a.targets, a.scratch)
	a.scratch = scratch
	if !fits && a.rounds%100 == 1 {
		m.log.Error("cluster: group oversubscribed: the budget is below the nodes' floors; grants are scaled below them",
			"budget_w", v.Budget.Watts, "reserved_w", reserved, "floors_w", sumLo)
	}

	decs, incs := a.decs[:0], a.incs[:0]
	defer func() { a.decs, a.incs = decs, incs }()
	pending := false
	for i, name := range a.names {
		n := v.Nodes[name]
		t := math.Floor(a.targets[i])
		a.targets[i] = t
		g, has := v.Grants[name]
		valid := has && g.Lease == n.Lease
		switch {
		case valid && t < g.Watts:
			decs = append(decs, i)
		case !valid || t >= g.Watts+1:
			incs = append(incs, i)
		}
		if valid && n.AckedGen < g.Generation && g.PrevW > g.Watts {
			pending = true
		}
	}
	switch {
	case len(decs) > 0:
		return decs
	case pending || len(incs) == 0:
		return nil
	}
	// Belt and braces: what every node may run at once the increases land.
	total := reserved
	for i, name := range a.names {
		n := v.Nodes[name]
		g, has := v.Grants[name]
		total += math.Max(a.targets[i], Held(n, g, has))
	}
	if total > v.Budget.Watts+1e-6 {
		m.log.Error("cluster: increases withheld: they would exceed the budget", "total_w", total, "budget_w", v.Budget.Watts)
		return nil
	}
	return incs
}

// publish writes the grants of the nodes at idx as one new generation, in transactions that
// only apply while this member still holds the election.
func (a *allocator) publish(ctx context.Context, idx []int) {
	v, m := a.view, a.m
	gen := a.gen + 1
	now := m.o.Now().UTC()
	cmp := clientv3.Compare(clientv3.CreateRevision(a.el.Key()), "=", a.el.Rev())
	ops := []clientv3.Op{clientv3.OpPut(v.Keys.State(), mustJSON(StateRecord{Generation: gen, Allocator: m.o.Node, At: now}))}
	written := map[string]GrantRecord{}
	flush := func() bool {
		if len(ops) == 0 {
			return true
		}
		rctx, cancel := m.reqCtx(ctx)
		resp, err := m.o.Client.Txn(rctx).If(cmp).Then(ops...).Commit()
		cancel()
		ops = ops[:0]
		if err != nil {
			m.countErr("request", fmt.Errorf("publishing grants: %w", err))
			return false
		}
		if !resp.Succeeded {
			m.log.Warn("cluster: publication refused: no longer the elected allocator")
			return false
		}
		return true
	}
	for _, i := range idx {
		name := a.names[i]
		n := v.Nodes[name]
		g, has := v.Grants[name]
		rec := GrantRecord{Watts: a.targets[i], PrevW: Held(n, g, has), MinW: n.MinW, Generation: gen, Lease: n.Lease, At: now}
		ops = append(ops, clientv3.OpPut(v.Keys.Grant(name), mustJSON(rec)))
		written[name] = rec
		if len(ops) >= maxTxnOps && !flush() {
			return
		}
	}
	if !flush() {
		return
	}
	// The watch brings these back too; taking them now keeps the next round from publishing
	// the same change again.
	for name, rec := range written {
		v.Grants[name] = rec
	}
	v.State = StateRecord{Generation: gen, Allocator: m.o.Node, At: now}
	a.gen = gen
}
