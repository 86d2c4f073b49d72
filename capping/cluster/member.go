package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// StoreKey is the key of the cluster batch in the sample store.
const StoreKey = "cluster"

// Options configure a Member.
type Options struct {
	Client *clientv3.Client
	Keys   Keys
	Node   string
	// LeaseTTL is the node lease's TTL, in whole seconds; a node cut off from etcd holds its
	// grant this long, then drops to its floor.
	LeaseTTL time.Duration
	// Period is the allocation period: how often the allocator recomputes grants at the latest
	// and how often the node re-estimates its demand.
	Period time.Duration
	// MinW and MaxW are the node's Σ GPU minimum and maximum limits; Priority its weight (1–1000).
	MinW, MaxW, Priority float64
	// Draw returns the node's latest measured power.
	Draw func() (watts float64, ok bool)
	// Grace is how long the allocator keeps a dead node's last grant reserved before it reserves
	// only its floor; zero means twice the lease TTL.
	Grace time.Duration
	// Campaign makes the node stand for allocator.
	Campaign bool
	Store    *sample.Store // may be nil
	Log      *slog.Logger
	Now      func() time.Time
}

// Member is one node of a group: it registers under a lease, reports its demand, follows its
// grant, and, when elected, allocates the group's budget.
type Member struct {
	o   Options
	log *slog.Logger

	mu          sync.Mutex
	lease       clientv3.LeaseID
	lastContact time.Time // send time of the last keep-alive etcd answered
	grant       GrantRecord
	haveGrant   bool
	budget      BudgetRecord
	haveBudget  bool
	applied     float64
	appliedGen  int64
	allocator   bool
	errs        map[string]float64
	ack         chan struct{}
	stopped     chan struct{}

	batches [2]sample.Batch
	cur     int
	series  memberSeries
}

type memberSeries struct {
	grant, budget, gen, alloc *sample.Series
	errs                      map[string]*sample.Series
}

// errKinds are the values of capstan.cluster.error.
var errKinds = []string{"request", "malformed", "lost_lease"}

// NewMember checks the options; Run does the work.
func NewMember(o Options) (*Member, error) {
	if o.Client == nil {
		return nil, errors.New("cluster: no etcd client")
	}
	if err := ValidName(o.Keys.Group); err != nil {
		return nil, fmt.Errorf("cluster group: %w", err)
	}
	if err := ValidName(o.Node); err != nil {
		return nil, fmt.Errorf("cluster node: %w", err)
	}
	if o.LeaseTTL < time.Second || o.LeaseTTL%time.Second != 0 {
		return nil, fmt.Errorf("cluster: lease TTL %s must be whole seconds, at least 1s", o.LeaseTTL)
	}
	if o.Period <= 0 || o.Period > o.LeaseTTL {
		return nil, fmt.Errorf("cluster: period %s must be positive and at most the lease TTL %s", o.Period, o.LeaseTTL)
	}
	if !(o.MinW > 0 && o.MaxW >= o.MinW && o.MaxW < MaxWatts) {
		return nil, fmt.Errorf("cluster: node limits min %v W, max %v W: need 0 < min ≤ max", o.MinW, o.MaxW)
	}
	if o.Priority < 1 || o.Priority > 1000 {
		return nil, fmt.Errorf("cluster: priority %v out of range (allowed: 1 to 1000)", o.Priority)
	}
	if o.Grace == 0 {
		o.Grace = 2 * o.LeaseTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Draw == nil {
		o.Draw = func() (float64, bool) { return 0, false }
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Member{o: o, log: log.With("group", o.Keys.Group), applied: o.MinW, errs: map[string]float64{}, ack: make(chan struct{}, 1), stopped: make(chan struct{})}
	g := attribute.String(metrics.AttrClusterGroup, o.Keys.Group)
	m.series = memberSeries{
		grant:  sample.NewSeries(metrics.ClusterGrant, g),
		budget: sample.NewSeries(metrics.ClusterBudget, g),
		gen:    sample.NewSeries(metrics.ClusterGeneration, g),
		alloc:  sample.NewSeries(metrics.ClusterAllocator, g),
		errs:   map[string]*sample.Series{},
	}
	for _, k := range errKinds {
		m.series.errs[k] = sample.NewSeries(metrics.ClusterEtcdErrors, g, attribute.String(metrics.AttrClusterError, k))
	}
	return m, nil
}

// Grant returns the watts the node may apply now and the grant's generation: the grant while
// etcd answered within the lease TTL, else the floor (generation 0); the node's minimum before
// a first grant. It never blocks on etcd. The node's limits follow; Applied then records them.
func (m *Member) Grant() (watts float64, generation int64) {
	now := m.o.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	w, gen := m.o.MinW, int64(0)
	if m.haveGrant {
		w, gen = m.grant.Watts, m.grant.Generation
		if now.Sub(m.lastContact) > m.o.LeaseTTL {
			w, gen = math.Min(w, m.floorLocked()), 0
		}
	}
	return w, gen
}

// Applied records that the node's limits are within watts, of grant generation gen (0: not a
// grant), and acknowledges gen to the allocator: only an acknowledged decrease lets the
// allocator give its watts to other nodes, so it must come after the limits were written.
func (m *Member) Applied(watts float64, gen int64) {
	m.mu.Lock()
	m.applied = watts
	ackNeeded := gen > m.appliedGen
	if ackNeeded {
		m.appliedGen = gen
	}
	m.mu.Unlock()
	if ackNeeded {
		select {
		case m.ack <- struct{}{}:
		default:
		}
	}
	m.publish(m.o.Now())
}

// Floor is what the group keeps for the node once it is gone or cut off.
func (m *Member) Floor() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.floorLocked()
}

// floorLocked is what a node cut off from etcd drops to: the budget's floor per node, never below
// its own minimum.
func (m *Member) floorLocked() float64 {
	f := m.o.MinW
	if m.haveBudget {
		f = math.Max(f, m.budget.FloorPerNodeW)
	}
	return f
}

// Stopped is closed once Run has returned (and revoked the lease): close the client after it.
func (m *Member) Stopped() <-chan struct{} { return m.stopped }

// AppliedW returns what the node's limits were last reported within (see Applied).
func (m *Member) AppliedW() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.applied
}

// IsAllocator reports whether the node is the group's allocator now.
func (m *Member) IsAllocator() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.allocator
}

// Errors returns the count of etcd problems of one kind (request, malformed, lost_lease).
func (m *Member) Errors(kind string) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.errs[kind]
}

func (m *Member) countErr(kind string, err error) {
	m.mu.Lock()
	m.errs[kind]++
	n := m.errs[kind]
	m.mu.Unlock()
	// One line for the first problem of a kind and then every hundredth, so a partition does
	// not flood the log.
	if n == 1 || math.Mod(n, 100) == 0 {
		m.log.Warn("cluster: etcd problem", "kind", kind, "count", n, "err", err)
	}
}

func (m *Member) publish(now time.Time) {
	if m.o.Store == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b := &m.batches[m.cur]
	m.cur ^= 1
	b.Reset(StoreKey, now)
	b.Add(m.series.grant, m.applied)
	if m.haveBudget {
		b.Add(m.series.budget, m.budget.Watts)
	}
	b.Add(m.series.gen, float64(m.appliedGen))
	alloc := 0.0
	if m.allocator {
		alloc = 1
	}
	b.Add(m.series.alloc, alloc)
	for _, k := range errKinds {
		b.Add(m.series.errs[k], m.errs[k])
	}
	m.o.Store.Put(StoreKey, b)
}

// Run registers the node and keeps it registered until ctx is done, then revokes the lease so
// that the group sees the node leave at once. Run once.
func (m *Member) Run(ctx context.Context) {
	defer close(m.stopped)
	for ctx.Err() == nil {
		lease, err := m.register(ctx)
		if err != nil {
			m.countErr("request", err)
			sleep(ctx, m.o.Period)
			continue
		}
		m.serve(ctx, lease)
		if ctx.Err() != nil {
			rctx, cancel := context.WithTimeout(context.Background(), m.o.Period)
			_, _ = m.o.Client.Revoke(rctx, lease)
			cancel()
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (m *Member) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, m.o.LeaseTTL/2)
}

// register takes a fresh lease and writes the node record under it. A grant for an older lease
// is not followed: the allocator may have given its watts away while the node was gone.
func (m *Member) register(ctx context.Context) (clientv3.LeaseID, error) {
	rctx, cancel := m.reqCtx(ctx)
	defer cancel()
	sent := m.o.Now()
	lr, err := m.o.Client.Grant(rctx, int64(m.o.LeaseTTL/time.Second))
	if err != nil {
		return 0, fmt.Errorf("granting a lease: %w", err)
	}
	m.mu.Lock()
	m.lease, m.lastContact, m.haveGrant = lr.ID, sent, false
	m.mu.Unlock()
	if _, err := m.putNode(rctx, m.demand()); err != nil {
		return 0, err
	}
	m.log.Info("cluster: node registered", "node", m.o.Node, "lease", fmt.Sprintf("%x", int64(lr.ID)))
	return lr.ID, nil
}

// putNode writes the node record under the lease with the given demand.
func (m *Member) putNode(ctx context.Context, demand float64) (NodeRecord, error) {
	m.mu.Lock()
	rec := NodeRecord{DemandW: demand, MinW: m.o.MinW, MaxW: m.o.MaxW, Priority: m.o.Priority,
		AppliedW: m.applied, AckedGen: m.appliedGen, Lease: int64(m.lease), UpdatedAt: m.o.Now().UTC()}
	lease := m.lease
	m.mu.Unlock()
	if _, err := m.o.Client.Put(ctx, m.o.Keys.Node(m.o.Node), mustJSON(rec), clientv3.WithLease(lease)); err != nil {
		return rec, fmt.Errorf("writing node record: %w", err)
	}
	return rec, nil
}

// demand estimates what the node would draw: a node that draws close to what it applies is
// power-bound and asks for a tenth of its maximum more; one that draws less asks for its draw
// plus a margin.
func (m *Member) demand() float64 {
	draw, ok := m.o.Draw()
	m.mu.Lock()
	applied := m.applied
	m.mu.Unlock()
	if !ok {
		return m.o.MaxW
	}
	d := draw + 0.05*m.o.MaxW
	if draw >= 0.9*applied {
		d = math.Max(draw, applied) + 0.1*m.o.MaxW
	}
	return math.Min(math.Max(d, m.o.MinW), m.o.MaxW)
}

// hysteresis is how far demand must move before the node rewrites it: a steady node writes
// nothing but its acknowledgements.
func (m *Member) hysteresis() float64 { return math.Max(0.05*m.o.MaxW, 10) }

// serve runs one registration: keep-alives, watches, demand reports and the campaign, until the
// lease is lost or ctx is done.
func (m *Member) serve(ctx context.Context, lease clientv3.LeaseID) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	run := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(rctx) }()
	}
	run(func(c context.Context) {
		m.keepAlive(c, lease)
		cancel()
	})
	run(func(c context.Context) { m.follow(c, m.o.Keys.Grant(m.o.Node), m.onGrant) })
	run(func(c context.Context) { m.follow(c, m.o.Keys.Budget(), m.onBudget) })
	run(m.report)
	if m.o.Campaign {
		run(func(c context.Context) { m.campaign(c, lease) })
	}
	wg.Wait()
}

// keepAlive renews the lease through the client's shared keep-alive stream and records when etcd
// last answered; it returns when the lease is gone or cannot be renewed within its TTL. A
// response arrives at most a round trip after etcd renewed the lease, so a cut-off node may
// hold its grant that much past the lease's expiry: the allocator's reservation of a dead
// node's grant (the grace period, at least the TTL) covers it.
func (m *Member) keepAlive(ctx context.Context, lease clientv3.LeaseID) {
	ch, err := m.o.Client.KeepAlive(ctx, lease)
	if err != nil {
		m.countErr("request", err)
		return
	}
	for range ch {
		m.mu.Lock()
		m.lastContact = m.o.Now()
		m.mu.Unlock()
	}
	if ctx.Err() != nil {
		return
	}
	// The channel closes when the lease expired, was revoked, or went unrenewed for its TTL.
	m.countErr("lost_lease", fmt.Errorf("lease %x of node %s could not be renewed", int64(lease), m.o.Node))
}

// follow reads key, then watches it, calling apply with every value; it starts over from a read
// when the watch breaks (no leader, compaction, a dropped connection).
func (m *Member) follow(ctx context.Context, key string, apply func([]byte)) {
	for ctx.Err() == nil {
		rctx, cancel := m.reqCtx(ctx)
		resp, err := m.o.Client.Get(rctx, key)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				m.countErr("request", err)
			}
			sleep(ctx, m.o.Period)
			continue
		}
		for _, kv := range resp.Kvs {
			apply(kv.Value)
		}
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range m.o.Client.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
			if err := wr.Err(); err != nil {
				m.countErr("request", err)
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					apply(ev.Kv.Value)
				}
			}
		}
		wcancel()
		sleep(ctx, m.o.Period/4)
	}
}

func (m *Member) onGrant(data []byte) {
	g, err := ParseGrant(data)
	if err != nil {
		m.countErr("malformed", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if g.Lease != int64(m.lease) || m.haveGrant && g.Generation < m.grant.Generation {
		return
	}
	m.grant, m.haveGrant = g, true
}

func (m *Member) onBudget(data []byte) {
	b, err := ParseBudget(data)
	if err != nil {
		m.countErr("malformed", err)
		return
	}
	m.mu.Lock()
	m.budget, m.haveBudget = b, true
	m.mu.Unlock()
}

// report rewrites the node record when an acknowledgement is due or demand moved past the
// hysteresis.
func (m *Member) report(ctx context.Context) {
	t := time.NewTicker(m.o.Period)
	defer t.Stop()
	last := math.NaN()
	lastGen := int64(-1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.ack:
		case <-t.C:
		}
		d := m.demand()
		m.mu.Lock()
		gen := m.appliedGen
		m.mu.Unlock()
		if gen == lastGen && math.Abs(d-last) <= m.hysteresis() {
			continue
		}
		rctx, cancel := m.reqCtx(ctx)
		_, err := m.putNode(rctx, d)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				m.countErr("request", err)
			}
			continue
		}
		last, lastGen = d, gen
	}
}

// campaign stands for allocator on the node's lease and allocates while elected.
func (m *Member) campaign(ctx context.Context, lease clientv3.LeaseID) {
	// One session per lease: each session keeps its lease alive with a goroutine of its own.
	var sess *concurrency.Session
	for {
		s, err := concurrency.NewSession(m.o.Client, concurrency.WithLease(lease), concurrency.WithContext(ctx))
		if err == nil {
			sess = s
			break
		}
		if ctx.Err() != nil {
			return
		}
		m.countErr("request", err)
		sleep(ctx, m.o.Period)
	}
	// The lease is the node's: Run revokes it, the session only stops renewing it.
	defer sess.Orphan()
	for ctx.Err() == nil {
		select {
		case <-sess.Done():
			return // the lease is gone; serve starts over with a new one
		default:
		}
		el := concurrency.NewElection(sess, m.o.Keys.Election())
		if err := el.Campaign(ctx, m.o.Node); err != nil {
			if ctx.Err() == nil {
				m.countErr("request", err)
				sleep(ctx, m.o.Period)
			}
			continue
		}
		m.setAllocator(true)
		m.log.Info("cluster: elected allocator", "node", m.o.Node)
		actx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-sess.Done():
			case <-actx.Done():
			}
			cancel()
		}()
		a := newAllocator(m, el)
		a.run(actx)
		cancel()
		m.setAllocator(false)
		m.log.Info("cluster: no longer allocator", "node", m.o.Node)
		rctx, rcancel := context.WithTimeout(context.Background(), m.o.Period)
		_ = el.Resign(rctx)
		rcancel()
	}
}

func (m *Member) setAllocator(on bool) {
	m.mu.Lock()
	m.allocator = on
	m.mu.Unlock()
	m.publish(m.o.Now())
}
