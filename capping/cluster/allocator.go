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

	"github.com/capstan-power/capstan/capping/waterfill"
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
	// unread names the grants whose records are malformed and were never read: what their
	// nodes run at is unknown.
	unread map[string]bool
}

// NewView returns an empty view of a group.
func NewView(k Keys) *View {
	return &View{Keys: k, Nodes: map[string]NodeRecord{}, Grants: map[string]GrantRecord{}, unread: map[string]bool{}}
}

// Apply folds one key's new value (nil: deleted) into the view. A malformed value leaves the
// last good one and returns the parse error.
func (v *View) Apply(key string, value []byte) error {
	if v.unread == nil {
		v.unread = map[string]bool{}
	}
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
			// Members ignore deletions: a live node keeps running at the grant it had, so
			// only a gone node's grant (drained) is dropped.
			if _, live := v.Nodes[name]; !live {
				delete(v.Grants, name)
			}
			delete(v.unread, name)
			return nil
		}
		g, err := ParseGrant(value)
		if err != nil {
			if _, ok := v.Grants[name]; !ok {
				v.unread[name] = true
			}
			return fmt.Errorf("%s: %w", key, err)
		}
		v.Grants[name] = g
		delete(v.unread, name)
	}
	return nil
}

// Load reads every record of the group at one revision. Malformed records are skipped and
// returned as errors. Loaded into a view that already holds values (a reload), it drops what is
// gone but keeps the last good value of a record that is malformed now.
func (v *View) Load(ctx context.Context, c *clientv3.Client) ([]error, error) {
	resp, err := c.Get(ctx, v.Keys.Root(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading group %s: %w", v.Keys.Group, err)
	}
	var bad []error
	present := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		present[string(kv.Key)] = true
		if err := v.Apply(string(kv.Key), kv.Value); err != nil {
			bad = append(bad, err)
		}
	}
	if !present[v.Keys.Budget()] {
		v.HasBudget = false
	}
	for name := range v.Nodes {
		if !present[v.Keys.Node(name)] {
			delete(v.Nodes, name)
		}
	}
	for name := range v.Grants {
		if _, live := v.Nodes[name]; !live && !present[v.Keys.Grant(name)] {
			delete(v.Grants, name)
		}
	}
	for name := range v.unread {
		if !present[v.Keys.Grant(name)] {
			delete(v.unread, name)
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

// Held is what a live node may be running at now, never below its minimum (the controller does
// not set GPUs lower): its minimum before any grant, its grant once acknowledged, the higher of
// the old and new grant while a change is unacknowledged. A grant for another lease (the node registered again) still counts
// in full: the node runs at it until its next control period and acknowledges nothing until
// granted for its new lease.
func Held(n NodeRecord, g GrantRecord, hasGrant bool) float64 {
	switch {
	case !hasGrant:
		return n.MinW
	case g.Lease == n.Lease && n.AckedGen >= g.Generation:
		return math.Max(g.Watts, n.MinW)
	}
	return max(g.Watts, g.PrevW, n.MinW)
}

// held is Held for live node name of the view; a node whose grant was never read may run at
// anything up to its maximum.
func (v *View) held(name string, n NodeRecord) float64 {
	g, has := v.Grants[name]
	if !has && v.unread[name] {
		return n.MaxW
	}
	return Held(n, g, has)
}

// allocator computes and publishes grants while its member is elected.
type allocator struct {
	m      *Member
	el     *concurrency.Election
	view   *View
	lostAt map[string]time.Time
	// lostFloor is the highest floor in force since a node was lost: cut off from etcd, it
	// drops to the floor it last saw, which an SRE may have lowered since.
	lostFloor map[string]float64
	gen       int64

	names   []string
	claims  []waterfill.Claim
	targets []float64
	scratch []waterfill.Slot
	decs    []int
	incs    []int
	fit     fit // the last round's, logged when it changes
}

// fit is how the budget compares with what the group needs at least.
type fit int

const (
	fits           fit = iota
	noJoinerRoom       // the floors fit, but not with a joiner's minimum held back
	oversubscribed     // reservations and minimums exceed the budget
)

func newAllocator(m *Member, el *concurrency.Election) *allocator {
	return &allocator{m: m, el: el, lostAt: map[string]time.Time{}, lostFloor: map[string]float64{}}
}

// run loads the group, watches it, and runs a round every period and soon after every change.
func (a *allocator) run(ctx context.Context) {
	m := a.m
	for ctx.Err() == nil {
		// A reload after a watch error keeps the last good value of records malformed
		// meanwhile: a fresh view would count their nodes at their minimum.
		if a.view == nil {
			a.view = NewView(m.o.Keys)
		}
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
	floor := v.Budget.FloorPerNodeW

	// Dead nodes: a grant without a registration. Their last grant stays reserved for the
	// grace period, their floor after it, until capstanctl drain releases it; never less than
	// their minimum, below which GPUs are not set. joiner is the largest minimum of the group's
	// nodes, live or gone: what a node joining unseen is taken to apply.
	reserved, joiner := 0.0, 0.0
	for name, g := range v.Grants {
		if _, live := v.Nodes[name]; live {
			delete(a.lostAt, name)
			delete(a.lostFloor, name)
			continue
		}
		lost, ok := a.lostAt[name]
		if !ok {
			lost = now
			a.lostAt[name] = now
		}
		lf := math.Max(a.lostFloor[name], floor)
		a.lostFloor[name] = lf
		held := math.Max(g.Watts, g.PrevW)
		if now.Sub(lost) > m.o.Grace {
			held = math.Min(held, math.Max(lf, g.MinW))
		}
		reserved += math.Max(held, g.MinW)
		joiner = math.Max(joiner, g.MinW)
	}
	for name := range a.lostAt {
		if _, ok := v.Grants[name]; !ok {
			delete(a.lostAt, name)
			delete(a.lostFloor, name)
		}
	}
	// A dead node whose grant was never read runs at an unknown grant: keep at least the floor.
	for name := range v.unread {
		if _, live := v.Nodes[name]; !live {
			reserved += floor
		}
	}

	a.names = a.names[:0]
	for name := range v.Nodes {
		a.names = append(a.names, name)
	}
	slices.Sort(a.names)
	a.claims = a.claims[:0]
	sumLo := 0.0
	for _, name := range a.names {
		n := v.Nodes[name]
		lo := math.Min(math.Max(floor, n.MinW), n.MaxW)
		a.claims = append(a.claims, waterfill.Claim{Lo: lo, Want: math.Min(math.Max(n.DemandW, lo), n.MaxW), Hi: n.MaxW, Weight: n.Priority})
		sumLo += lo
		joiner = math.Max(joiner, n.MinW)
	}
	// One node's minimum is held back, however tight the budget, for a node that joins before
	// the allocator has seen it (it applies its minimum until granted).
	free := v.Budget.Watts - reserved
	a.targets = slices.Grow(a.targets[:0], len(a.claims))[:len(a.claims)]
	ok, scratch := waterfill.Share(a.claims, free-joiner, a.targets, a.scratch)
	a.scratch = scratch
	state := fits
	switch {
	case free < sumLo:
		state = oversubscribed
	case !ok:
		state = noJoinerRoom
	}
	a.logFit(state, reserved, sumLo, joiner)

	decs, incs := a.decs[:0], a.incs[:0]
	defer func() { a.decs, a.incs = decs, incs }()
	pending := false
	for i, name := range a.names {
		n := v.Nodes[name]
		t := math.Max(math.Floor(a.targets[i]), n.MinW)
		a.targets[i] = t
		g, has := v.Grants[name]
		if has && g.Lease == n.Lease {
			switch {
			case t < g.Watts:
				decs = append(decs, i)
			case t >= g.Watts+1:
				incs = append(incs, i)
			}
			if n.AckedGen < g.Generation && g.PrevW > g.Watts {
				pending = true
			}
			continue
		}
		// No grant for its lease yet: the node may still run at an old lease's grant or at one
		// this view could not read, so going below that is a decrease, and waited for.
		if t < v.held(name, n) {
			decs = append(decs, i)
		} else {
			incs = append(incs, i)
		}
	}
	switch {
	case len(decs) > 0:
		return decs
	case pending || len(incs) == 0 || state != fits:
		return nil
	}
	// Belt and braces: what every node may run at once the increases land.
	total := reserved
	for i, name := range a.names {
		total += math.Max(a.targets[i], v.held(name, v.Nodes[name]))
	}
	if total > v.Budget.Watts+1e-6 {
		m.log.Error("cluster: increases withheld: they would exceed the budget", "total_w", total, "budget_w", v.Budget.Watts)
		return nil
	}
	return incs
}

// logFit logs when the group stops or starts fitting its budget. While it does not fit, grants
// go down to the floors (never below a minimum) and nothing is increased.
func (a *allocator) logFit(state fit, reserved, floors, joiner float64) {
	if state == a.fit {
		return
	}
	a.fit = state
	args := []any{"budget_w", a.view.Budget.Watts, "reserved_w", reserved, "floors_w", floors, "joiner_w", joiner}
	switch state {
	case oversubscribed:
		a.m.log.Error("cluster: group oversubscribed: what gone nodes keep reserved plus the live nodes' floors exceed the budget; grants held at most at the floors, no increases", args...)
	case noJoinerRoom:
		a.m.log.Warn("cluster: budget leaves no room above the floors for a joiner's minimum; grants held at most at the floors, no increases", args...)
	default:
		a.m.log.Info("cluster: group fits its budget again", args...)
	}
}

// publish writes the grants of the nodes at idx as one new generation, in transactions that
// only apply while this member still holds the election.
func (a *allocator) publish(ctx context.Context, idx []int) {
	v, m := a.view, a.m
	// A generation is used once, even when its publication failed (a transaction may have
	// committed in part, or after timing out), and is above any a node acknowledged: a node
	// acknowledges a generation once, so one reused with other watts would count as applied.
	for _, n := range v.Nodes {
		a.gen = max(a.gen, n.AckedGen)
	}
	a.gen = max(a.gen, v.Generation()) + 1
	gen := a.gen
	now := m.o.Now().UTC()
	state := StateRecord{Generation: gen, Allocator: m.o.Node, At: now}
	cmp := clientv3.Compare(clientv3.CreateRevision(a.el.Key()), "=", a.el.Rev())
	ops := []clientv3.Op{clientv3.OpPut(v.Keys.State(), mustJSON(state))}
	type put struct {
		name string
		rec  GrantRecord
	}
	var open []put
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
		// The watch brings these back too; taking them now keeps the next round from
		// publishing the same change again.
		for _, p := range open {
			v.Grants[p.name] = p.rec
			delete(v.unread, p.name)
		}
		open = open[:0]
		v.State = state
		return true
	}
	for _, i := range idx {
		name := a.names[i]
		n := v.Nodes[name]
		rec := GrantRecord{Watts: a.targets[i], PrevW: v.held(name, n), MinW: n.MinW, Generation: gen, Lease: n.Lease, At: now}
		ops = append(ops, clientv3.OpPut(v.Keys.Grant(name), mustJSON(rec)))
		open = append(open, put{name, rec})
		if len(ops) >= maxTxnOps && !flush() {
			return
		}
	}
	flush()
}
