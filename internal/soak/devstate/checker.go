package devstate

import (
	"fmt"
	"math"
	"sort"
	"sync"
	"time"
)

// Kinds of invariant, as the soak report names them.
const (
	// KindConstraints: a GPU's limit outside its own constraints, ever.
	KindConstraints = "limit_within_constraints"
	// KindBudget: Σ enforced limits of the group's GPUs above the group budget, outside the
	// settle window after a cut and outside faults that move limits behind the agent's back. A
	// budget below the nodes' floors (each node's minimums, or the budget's floor per node when
	// higher) binds at those floors: the allocator grants every node its floor.
	KindBudget = "sum_within_budget"
	// KindExit: the limits an agent leaves when it stops, as configured (restore or keep).
	KindExit = "limits_on_exit"
	// KindSuccessor: after a SIGKILL, the next agent restores or adopts as configured.
	KindSuccessor = "successor_after_kill"
)

// ToleranceW absorbs rounding: grants are watts as floats, limits whole milliwatts.
const ToleranceW = 1.0

// Violation is one broken invariant.
type Violation struct {
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"`
	Node   string    `json:"node,omitempty"`
	Detail string    `json:"detail"`
}

// Checker checks the group-wide invariants on successive rounds of every node's device state.
// It is told, as they happen, the budget the group is given and the windows in which a fault
// moves limits behind the agents' backs.
// Its methods may be called from several goroutines.
type Checker struct {
	// Settle is how long after a budget cut Σ limits may still be above the new budget.
	Settle time.Duration

	mu         sync.Mutex
	budgets    []budgetStep
	excused    map[string][]window
	from       time.Time
	checks     map[string]int
	excusedN   int
	counts     map[string]int
	violations []Violation
	// open is the over-budget episode in progress: one violation per episode, not per sample.
	open *Violation
	// keep caps how many violations of a kind are stored; the count goes on.
	keep int
	// nodeBudgets are the budgets of the nodes that take their own (SetNodeBudget), nodeOpen
	// their over-budget episodes in progress.
	nodeBudgets map[string][]budgetStep
	nodeOpen    map[string]*Violation
}

type budgetStep struct {
	at    time.Time
	watts float64
	// floorW is what the allocator grants every node at least (never below its Σ minimums).
	floorW float64
}

type window struct{ from, until time.Time }

// NewChecker returns a checker whose Σ check starts at from (once the agents have settled).
func NewChecker(settle time.Duration, from time.Time) *Checker {
	return &Checker{Settle: settle, from: from, excused: map[string][]window{}, checks: map[string]int{},
		counts: map[string]int{}, keep: 50}
}

// StartAt moves the start of the Σ check to t.
func (c *Checker) StartAt(t time.Time) *Checker {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.from = t
	return c
}

// SetBudget records the group budget and its floor per node from t on.
func (c *Checker) SetBudget(t time.Time, watts, floorW float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.budgets = append(c.budgets, budgetStep{t, watts, floorW})
}

// Excuse exempts node's GPUs from the Σ check between from and until plus the settle window:
// a fault there moves limits behind the agent's back (an out-of-band write, a GPU back at its
// default after a driver reload) or keeps it from writing (refused writes, a hung NVML call).
// The other nodes are still checked: their Σ must stay within the budget less what the
// allocator grants the excused nodes at least (their floors).
func (c *Checker) Excuse(node string, from, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.excused[node] = append(c.excused[node], window{from, until.Add(c.Settle)})
}

// bound is the budget Σ must keep to at t: the highest budget of the settle window before t
// (a cut is given its window), or NaN before any budget; and the lowest floor per node then.
func (c *Checker) bound(t time.Time) (budgetW, floorW float64) {
	b, f := math.NaN(), math.Inf(1)
	for i, s := range c.budgets {
		if s.at.After(t) {
			break
		}
		// The step was in force at some point of [t − Settle, t].
		if i+1 == len(c.budgets) || c.budgets[i+1].at.After(t.Add(-c.Settle)) {
			if math.IsNaN(b) || s.watts > b {
				b = s.watts
			}
			f = math.Min(f, s.floorW)
		}
	}
	return b, f
}

func (c *Checker) isExcused(node string, t time.Time) bool {
	for _, w := range c.excused[node] {
		if !t.Before(w.from) && !t.After(w.until) {
			return true
		}
	}
	return false
}

// Round checks one round of device state, states keyed by node, read at t.
func (c *Checker) Round(t time.Time, states map[string]*State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	nodes := make([]string, 0, len(states))
	for n := range states {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	b, floor := c.bound(t)
	sum, minSum, reserved := 0.0, 0.0, 0.0
	var excused []string
	for _, n := range nodes {
		s := states[n]
		c.checks[KindConstraints]++
		for _, p := range s.OutOfConstraints() {
			c.add(Violation{At: t, Kind: KindConstraints, Node: n, Detail: p})
		}
		if c.ownBudget(n) {
			c.roundOwn(t, n, s)
			continue
		}
		if c.isExcused(n, t) {
			excused = append(excused, n)
			reserved += math.Max(floor, s.SumMinW())
			continue
		}
		sum += s.SumEnforcedW()
		// What the node is granted at least: the budget's floor, never below its minimums.
		minSum += math.Max(floor, s.SumMinW())
	}
	if t.Before(c.from) || math.IsNaN(b) {
		return
	}
	if len(excused) > 0 {
		c.excusedN++
	}
	c.checks[KindBudget]++
	limit := math.Max(b-reserved, minSum) + ToleranceW
	if sum <= limit {
		c.closeEpisode()
		return
	}
	if c.open == nil {
		d := fmt.Sprintf("Σ enforced %.0f W above the group budget %.0f W (Σ floors %.0f W)", sum, b, minSum)
		if len(excused) > 0 {
			d = fmt.Sprintf("Σ enforced of the nodes outside faults %.0f W above the group budget %.0f W less the floors of %v (%.0f W)", sum, b, excused, reserved)
		}
		c.open = &Violation{At: t, Kind: KindBudget, Detail: d}
		c.add(*c.open)
	}
}

func (c *Checker) closeEpisode() { c.open = nil }

// Add records a violation found outside Round (exit and successor checks); checks counts the
// check itself.
func (c *Checker) Add(kind string, v *Violation) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checks[kind]++
	if v != nil {
		v.Kind = kind
		c.add(*v)
	}
}

func (c *Checker) add(v Violation) {
	c.counts[v.Kind]++
	if c.counts[v.Kind] <= c.keep {
		c.violations = append(c.violations, v)
	}
}

// Checks counts the checks made per kind.
func (c *Checker) Checks() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checks
}

// Counts counts the violations per kind.
func (c *Checker) Counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts
}

// Violations lists the stored violations (the first ones of each kind).
func (c *Checker) Violations() []Violation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.violations
}

// ExcusedRounds is how many rounds checked Σ without a node whose fault moves its limits.
func (c *Checker) ExcusedRounds() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.excusedN
}

// RestoreTarget is the limit each GPU (by UUID) must hold after a restore within w watts
// (docs/capping.md): every original when their sum fits, else each GPU its minimum plus the
// same fraction of the way to its original, in whole watts rounded down. w < 0: no bound.
func RestoreTarget(originals map[string]int64, s *State, w float64) map[string]int64 {
	var sumMin, sumOrig float64
	for _, g := range s.GPUs {
		o, ok := originals[g.UUID]
		if !ok || !g.Present {
			continue
		}
		sumMin += float64(g.MinMW)
		sumOrig += float64(min(max(o, g.MinMW), g.MaxMW))
	}
	frac := 1.0
	if w >= 0 && sumOrig > w*1000 && sumOrig > sumMin {
		frac = max(0, (w*1000-sumMin)/(sumOrig-sumMin))
	}
	out := map[string]int64{}
	for _, g := range s.GPUs {
		o, ok := originals[g.UUID]
		if !ok || !g.Present {
			continue
		}
		o = min(max(o, g.MinMW), g.MaxMW)
		mw := o
		if frac < 1 {
			mw = max(g.MinMW, (g.MinMW+int64(float64(o-g.MinMW)*frac))/1000*1000)
		}
		out[g.UUID] = mw
	}
	return out
}

// restoreShaped tells whether s holds a restore within some budget between the GPUs' Σ
// minimums and leaveW: every GPU its minimum plus one same fraction of the way to its original
// (whole watts, rounded down), Σ within leaveW. A node that does not know its group's floor
// (before its first grant, or in a configuration that did not start) restores within what it
// does know, which is safe as long as it stays within the floor. Without a cluster budget
// (leaveW < 0) only the originals themselves are a restore.
func restoreShaped(originals map[string]int64, s *State, leaveW float64) bool {
	if leaveW < 0 || s.SumLimitW() > leaveW+ToleranceW {
		return false
	}
	// The fraction, from the GPU with the widest range (the most precise).
	frac, widest := 0.0, int64(0)
	for _, g := range s.GPUs {
		o, ok := originals[g.UUID]
		if !ok || !g.Present {
			continue
		}
		o = min(max(o, g.MinMW), g.MaxMW)
		if r := o - g.MinMW; r > widest {
			widest, frac = r, float64(g.LimitMW-g.MinMW)/float64(r)
		}
	}
	if frac < 0 || frac > 1 {
		return false
	}
	for _, g := range s.GPUs {
		o, ok := originals[g.UUID]
		if !ok || !g.Present {
			continue
		}
		o = min(max(o, g.MinMW), g.MaxMW)
		want := max(g.MinMW, (g.MinMW+int64(float64(o-g.MinMW)*frac))/1000*1000)
		if absMW(g.LimitMW-want) > 1000 {
			return false
		}
	}
	return true
}

// ownFloor is the least a restore within leaveW may go to: a node that does not know its
// group's floor (at start, before its first grant) takes its GPUs' Σ minimums. Without a
// cluster budget (leaveW < 0) there is no floor at all.
func ownFloor(s *State, leaveW float64) float64 {
	if leaveW < 0 {
		return leaveW
	}
	return s.SumMinW()
}

// atTarget tells whether every present GPU of s holds its target, within a watt.
func atTarget(s *State, target map[string]int64) bool {
	for _, g := range s.GPUs {
		if t, ok := target[g.UUID]; ok && g.Present && absMW(g.LimitMW-t) > 1000 {
			return false
		}
	}
	return true
}

// CheckExit checks what a stopped agent left on its GPUs. before is the last state read before
// the signal, after the state once the process is gone; originals are the GPUs' limits before
// capping (by UUID); leaveW is what the group keeps for the node once it left (with a cluster
// budget a restore brings the originals back only as far as their sum stays within it: see
// RestoreTarget; a node that does not know that floor yet restores within its GPUs' Σ
// minimums, which is accepted too), negative without a cluster budget (every original must be
// back).
// It returns "" when the limits are as configured.
func CheckExit(onExit string, originals map[string]int64, before, after *State, leaveW float64) string {
	if after == nil || before == nil {
		return "no device state around the exit"
	}
	prev := before.ByUUID()
	switch onExit {
	case "keep":
		for _, g := range after.GPUs {
			p, ok := prev[g.UUID]
			if !ok || !g.Present || !p.Present || g.LimitMW == p.LimitMW {
				continue
			}
			if g.LimitWriter != "nvml" {
				return fmt.Sprintf("on-exit keep, but GPU %d's limit went %d → %d mW by %s", g.Index, p.LimitMW, g.LimitMW, g.LimitWriter)
			}
			if o, ok := originals[g.UUID]; ok && g.LimitMW == o && absMW(o-p.LimitMW) > 1000 {
				return fmt.Sprintf("on-exit keep, but GPU %d went back to its original %d mW from %d mW", g.Index, g.LimitMW, p.LimitMW)
			}
		}
		return ""
	case "restore":
		target := RestoreTarget(originals, after, leaveW)
		if atTarget(after, target) || restoreShaped(originals, after, leaveW) {
			return ""
		}
		var got, want []string
		for _, g := range after.GPUs {
			if t, ok := target[g.UUID]; ok && g.Present {
				got = append(got, fmt.Sprint(g.LimitMW/1000))
				want = append(want, fmt.Sprint(t/1000))
			}
		}
		return fmt.Sprintf("on-exit restore: limits %v W, want %v W (the originals, within %.0f W for the node)", got, want, leaveW)
	}
	return "unknown on-exit mode " + onExit
}

// SuccessorResult is what a SIGKILLed agent's successor was seen doing with the held limits.
type SuccessorResult string

// Successor outcomes.
const (
	// SuccessorRestored: the limits went to the restore's target within the node's floor,
	// some of them up: only a restore raises limits before the node's first grant.
	SuccessorRestored SuccessorResult = "restored"
	// SuccessorAdopted: the limits stayed as the crashed agent left them.
	SuccessorAdopted SuccessorResult = "adopted"
	// SuccessorSame: a restore and an adoption look alike: the crashed agent's limits already
	// were the target, or the limits went down to the GPUs' minimums, which a restore within the
	// node's own minimums and a first period without a grant both write.
	SuccessorSame SuccessorResult = "indistinguishable"
	// SuccessorOther: the limits moved, but not to a restore's target.
	SuccessorOther SuccessorResult = "neither"
)

// ClassifySuccessor says what the successor did in its first moments: crashed is the last
// state read before the SIGKILL, early the states read from the successor's start to the end
// of its first control period, leaveW as for CheckExit.
func ClassifySuccessor(originals map[string]int64, crashed *State, early []*State, leaveW float64) SuccessorResult {
	if crashed == nil || len(early) == 0 {
		return SuccessorOther
	}
	target := RestoreTarget(originals, crashed, leaveW)
	own := RestoreTarget(originals, crashed, ownFloor(crashed, leaveW))
	if atTarget(crashed, target) || atTarget(crashed, own) {
		return SuccessorSame
	}
	prev := crashed.ByUUID()
	raised := func(s *State) bool {
		for _, g := range s.GPUs {
			if p, ok := prev[g.UUID]; ok && g.Present && p.Present && g.LimitMW > p.LimitMW+1000 {
				return true
			}
		}
		return false
	}
	for _, s := range early {
		if atTarget(s, target) && raised(s) {
			return SuccessorRestored
		}
	}
	for _, s := range early {
		if atTarget(s, own) || atTarget(s, target) {
			return SuccessorSame
		}
	}
	for _, g := range early[0].GPUs {
		if p, ok := prev[g.UUID]; ok && g.Present && p.Present && g.LimitMW != p.LimitMW {
			return SuccessorOther
		}
	}
	return SuccessorAdopted
}

func absMW(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
