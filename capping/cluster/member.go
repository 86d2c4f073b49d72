package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/internal/sample"
)

// Options configure a Member. The node's bounds and draw are not among them: they come from
// the capping controller's reports (Report), the one place that knows which GPUs are capped.
type Options struct {
	Client *clientv3.Client
	Keys   Keys
	Node   string
	// Domain is the path below the group of the domain the node attaches to (rack12 of
	// site/row3/rack12 is row3/rack12); empty: the group's root.
	Domain string
	// LeaseTTL is the node lease's TTL, in whole seconds; a node cut off from etcd holds its
	// grant this long, then drops to its floor. A draw reported longer ago than this is no
	// longer the node's demand.
	LeaseTTL time.Duration
	// Period is the allocation period: how often the allocator recomputes grants at the latest
	// and how often the node re-estimates its demand.
	Period time.Duration
	// Priority is the node's weight in the group (1–1000).
	Priority float64
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
//
// It learns the node from the controller's reports. Before the first report with the node's
// bounds it knows neither the node's minimum nor its maximum, so it registers nothing (Run
// waits) and has no budget to give (Grant returns 0 W): the group keeps a joiner's minimum
// for a node it has not seen, and only the node's minimum is within that. After it, the
// latest bounds are the node's range in the group and the latest draw its demand; when reports
// stop, the member keeps the last bounds and, once the last draw is older than the lease TTL,
// asks for what the node applies now (see demand).
type Member struct {
	o   Options
	log *slog.Logger

	mu          sync.Mutex
	lease       clientv3.LeaseID
	lastContact time.Time // send time of the last keep-alive etcd answered
	created     time.Time // when the member was made: the grant age before any answer
	grant       GrantRecord
	haveGrant   bool
	budget      BudgetRecord
	haveBudget  bool
	applied     float64
	appliedGen  int64
	allocator   bool
	errs        map[string]float64
	node        nodeReport
	bounded     chan struct{} // closed by the first report with the node's bounds
	nudge       chan struct{} // an acknowledgement or new bounds to write now
	stopped     chan struct{}

	batches [2]sample.Batch
	cur     int
	series  memberSeries
}

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
	if err := validRel(o.Domain); err != nil {
		return nil, fmt.Errorf("cluster domain %q: %w", o.Domain, err)
	}
	if o.LeaseTTL < time.Second || o.LeaseTTL%time.Second != 0 {
		return nil, fmt.Errorf("cluster: lease TTL %s must be whole seconds, at least 1s", o.LeaseTTL)
	}
	if o.Period <= 0 || o.Period > o.LeaseTTL {
		return nil, fmt.Errorf("cluster: period %s must be positive and at most the lease TTL %s", o.Period, o.LeaseTTL)
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
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Member{o: o, log: log.With("group", o.Keys.Group), errs: map[string]float64{},
		bounded: make(chan struct{}), nudge: make(chan struct{}, 1), stopped: make(chan struct{})}
	m.series = newMemberSeries(o.Keys.Group, FullPath(o.Keys.Group, o.Domain))
	m.created = o.Now()
	return m, nil
}

// SetDomain moves the node to another domain (a path below the group) while it runs: it
// rewrites its record at once, and the allocator counts it in both domains until it
// acknowledges a grant for the new one.
func (m *Member) SetDomain(rel string) error {
	if err := validRel(rel); err != nil {
		return fmt.Errorf("cluster domain %q: %w", rel, err)
	}
	m.mu.Lock()
	moved := m.o.Domain != rel
	if moved {
		m.o.Domain = rel
		m.series.domain = newMemberSeries(m.o.Keys.Group, FullPath(m.o.Keys.Group, rel)).domain
	}
	m.mu.Unlock()
	if moved {
		m.log.Info("cluster: node moved to another domain", "node", m.o.Node, "domain", FullPath(m.o.Keys.Group, rel))
		m.wake()
	}
	return nil
}

// SetStore moves the member's series to another store: a reload that keeps the member gives
// it the next configuration's store. The allocator's per-domain series follow at its next round.
func (m *Member) SetStore(s *sample.Store) {
	m.mu.Lock()
	m.o.Store = s
	m.mu.Unlock()
}

func (m *Member) store() *sample.Store {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.o.Store
}

// Grant returns the watts the node may apply now and the grant's generation: the grant while
// etcd answered within the lease TTL, else the floor (generation 0); the node's minimum before
// a first grant; 0 W before the controller reported the node's bounds. It never blocks on
// etcd. The node's limits follow; Applied then records them.
func (m *Member) Grant() (watts float64, generation int64) {
	now := m.o.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.node.bounded {
		return 0, 0
	}
	w, gen := m.node.minW, int64(0)
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
		m.wake()
	}
	m.publish(m.o.Now())
}

// wake tells the report loop to write the node record now rather than at its next period.
func (m *Member) wake() {
	select {
	case m.nudge <- struct{}{}:
	default:
	}
}

// Floor is what the group keeps for the node once it is gone or cut off; 0 W before the
// controller reported the node's bounds.
func (m *Member) Floor() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.node.bounded {
		return 0
	}
	return m.floorLocked()
}

// floorLocked is what a node cut off from etcd drops to: the budget's floor per node, never below
// its own minimum.
func (m *Member) floorLocked() float64 {
	f := m.node.minW
	if m.haveBudget {
		f = math.Max(f, m.budget.FloorPerNodeW)
	}
	return f
}

// Stopped is closed once Run has returned (and revoked the lease): close the client after it.
func (m *Member) Stopped() <-chan struct{} { return m.stopped }

// AppliedW returns what the node's limits were last reported within (see Applied); the node's
// minimum from its first report until then, 0 W before it.
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
