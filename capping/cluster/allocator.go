package cluster

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/capstan-power/capstan/capping/waterfill"
)

// maxTxnOps keeps each publication transaction under etcd's default --max-txn-ops (128).
const maxTxnOps = 100

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
	tree    *domainTree
	nodeDom []int             // each live node's domain (index into tree)
	dclaims []waterfill.Claim // one domain's claims
	dout    []float64
	fits    map[string]fit // each domain's last fit, logged when it changes
	metrics domainMetrics
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
	defer a.dropDomains()
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
	idx := a.plan(a.m.o.Now())
	a.publishDomains()
	if len(idx) > 0 {
		a.publish(ctx, idx)
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
		rec := a.record(i, gen, now)
		ops = append(ops, clientv3.OpPut(v.Keys.Grant(name), mustJSON(rec)))
		open = append(open, put{name, rec})
		if len(ops) >= maxTxnOps && !flush() {
			return
		}
	}
	flush()
}

// record is the grant the round gives live node i (an index into a.names) in generation gen: its
// target, what it may run at until it acknowledges, and the domains of both.
func (a *allocator) record(i int, gen int64, now time.Time) GrantRecord {
	v := a.view
	name := a.names[i]
	n := v.Nodes[name]
	prevDom := n.Domain
	if g, ok := v.Grants[name]; ok {
		prevDom = g.Domain
	}
	return GrantRecord{Watts: a.targets[i], PrevW: v.held(name, n), MinW: n.MinW, Generation: gen, Lease: n.Lease, At: now,
		Domain: n.Domain, PrevDomain: prevDom}
}
