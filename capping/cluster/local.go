package cluster

import (
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// This file runs the member's and the allocator's own logic without etcd, for a simulation of a
// whole fleet on a simulated clock (capstan simulate fleet): the records a member would write
// and the grants an allocator would publish pass through a View in memory instead of etcd. The
// transport itself (leases, watches, transactions, the election) is what is left out.

// NewLocalMember is a member that talks to no etcd: Record is what it would write under lease,
// Deliver what its watches would bring. Run must not be called.
func NewLocalMember(o Options, lease int64) (*Member, error) {
	if err := ValidName(o.Node); err != nil {
		return nil, fmt.Errorf("cluster node: %w", err)
	}
	if err := validRel(o.Domain); err != nil {
		return nil, fmt.Errorf("cluster domain %q: %w", o.Domain, err)
	}
	if o.LeaseTTL <= 0 || o.Priority < 1 || o.Priority > 1000 {
		return nil, fmt.Errorf("cluster: lease TTL %s and priority %v: invalid", o.LeaseTTL, o.Priority)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Member{o: o, log: log, errs: map[string]float64{}, bounded: make(chan struct{}), nudge: make(chan struct{}, 1),
		stopped: make(chan struct{}), lease: clientv3.LeaseID(lease)}
	m.series = newMemberSeries(o.Keys.Group, FullPath(o.Keys.Group, o.Domain))
	return m, nil
}

// Record is the node record the member writes now; ok is false before the controller reported
// the node's bounds (it registers nothing until then).
func (m *Member) Record() (rec NodeRecord, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.recordLocked(m.o.Now()), m.node.bounded
}

// RecordDue is the member's rule for rewriting its record, last being what it wrote (written:
// whether it wrote one): an acknowledgement, new bounds or domain, or demand past the hysteresis.
func (m *Member) RecordDue(last NodeRecord, written bool) bool { return m.due(last, written) }

// Deliver hands the member what its watches would: its grant and the group budget, and counts
// as etcd answering now.
func (m *Member) Deliver(g GrantRecord, hasGrant bool, b BudgetRecord) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastContact = m.o.Now()
	m.budget, m.haveBudget = b, true
	if hasGrant && g.Lease == int64(m.lease) && (!m.haveGrant || g.Generation >= m.grant.Generation) {
		m.grant, m.haveGrant = g, true
	}
}

// Planner runs the elected allocator's rounds on a view in memory: the same plan, water-fill,
// phases and grant records as the allocator in etcd, published into the view as its
// transactions would.
type Planner struct{ a *allocator }

// NewPlanner plans over v; grace is how long a gone node's grant stays reserved.
func NewPlanner(v *View, grace time.Duration, now func() time.Time, log *slog.Logger) *Planner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Member{o: Options{Grace: grace, Now: now}, log: log, errs: map[string]float64{}}
	return &Planner{a: &allocator{m: m, view: v, lostAt: map[string]time.Time{}, lostFloor: map[string]float64{}}}
}

// Round runs one round at now and writes its publication into the view; it returns the names
// of the nodes whose grants it wrote.
func (p *Planner) Round(now time.Time, written []string) []string {
	a := p.a
	idx := a.plan(now)
	if len(idx) == 0 {
		return written
	}
	for _, n := range a.view.Nodes {
		a.gen = max(a.gen, n.AckedGen)
	}
	a.gen = max(a.gen, a.view.Generation()) + 1
	for _, i := range idx {
		name := a.names[i]
		a.view.Grants[name] = a.record(i, a.gen, now)
		written = append(written, name)
	}
	a.view.State = StateRecord{Generation: a.gen, Allocator: "simulation", At: now}
	return written
}

// Oversubscribed reports whether the domain at rel (below the group) was oversubscribed in the
// last round.
func (p *Planner) Oversubscribed(rel string) bool {
	t := p.a.tree
	if t == nil {
		return false
	}
	i, ok := t.index[rel]
	return ok && t.state[i] == oversubscribed
}
