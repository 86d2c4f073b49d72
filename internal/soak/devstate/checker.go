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
	// settle window after a cut and outside faults that move limits behind the agent's back.
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
}

type budgetStep struct {
	at    time.Time
	watts float64
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

// SetBudget records the group budget from t on.
func (c *Checker) SetBudget(t time.Time, watts float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.budgets = append(c.budgets, budgetStep{t, watts})
}

// Excuse exempts node's GPUs from the Σ check between from and until plus the settle window:
// a fault there moves limits behind the agent's back (an out-of-band write, a GPU back at its
// default after a driver reload) or keeps it from writing (refused writes, a hung NVML call).
func (c *Checker) Excuse(node string, from, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.excused[node] = append(c.excused[node], window{from, until.Add(c.Settle)})
}

// bound is the budget Σ must keep to at t: the highest budget of the settle window before t
// (a cut is given its window), or NaN before any budget.
func (c *Checker) bound(t time.Time) float64 {
	b := math.NaN()
	for i, s := range c.budgets {
		if s.at.After(t) {
			break
		}
		// The step was in force at some point of [t − Settle, t].
		if i+1 == len(c.budgets) || c.budgets[i+1].at.After(t.Add(-c.Settle)) {
			if math.IsNaN(b) || s.watts > b {
				b = s.watts
			}
		}
	}
	return b
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
	sum, minSum := 0.0, 0.0
	excused := false
	for _, n := range nodes {
		s := states[n]
		c.checks[KindConstraints]++
		for _, p := range s.OutOfConstraints() {
			c.add(Violation{At: t, Kind: KindConstraints, Node: n, Detail: p})
		}
		sum += s.SumEnforcedW()
		minSum += s.SumMinW()
		excused = excused || c.isExcused(n, t)
	}
	b := c.bound(t)
	if t.Before(c.from) || math.IsNaN(b) {
		return
	}
	if excused {
		c.excusedN++
		c.closeEpisode()
		return
	}
	c.checks[KindBudget]++
	limit := math.Max(b, minSum) + ToleranceW
	if sum <= limit {
		c.closeEpisode()
		return
	}
	if c.open == nil {
		c.open = &Violation{At: t, Kind: KindBudget, Detail: fmt.Sprintf("Σ enforced %.0f W above the group budget %.0f W (Σ minimums %.0f W)", sum, b, minSum)}
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

// ExcusedRounds is how many rounds the Σ check skipped for a fault that moves limits.
func (c *Checker) ExcusedRounds() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.excusedN
}

// CheckExit checks what a stopped agent left on its GPUs. before is the last state read before
// the signal, after the state once the process is gone; originals are the GPUs' limits before
// capping (by UUID); floorW is what the group keeps for the node once it left (a restore with a
// cluster budget brings the originals back only as far as their sum stays within it), negative
// without a cluster budget (every original must be back).
// It returns "" when the limits are as configured.
func CheckExit(onExit string, originals map[string]int64, before, after *State, floorW float64) string {
	if after == nil || before == nil {
		return "no device state around the exit"
	}
	prev := before.ByUUID()
	switch onExit {
	case "keep":
		for _, g := range after.GPUs {
			if p, ok := prev[g.UUID]; ok && g.Present && p.Present && g.LimitMW != p.LimitMW && g.LimitWriter != "nvml" {
				return fmt.Sprintf("on-exit keep, but GPU %d's limit went %d → %d mW by %s", g.Index, p.LimitMW, g.LimitMW, g.LimitWriter)
			}
			if p, ok := prev[g.UUID]; ok && g.Present && p.Present && g.LimitMW == g.DefaultMW && p.LimitMW != g.DefaultMW && originals[g.UUID] == g.DefaultMW {
				return fmt.Sprintf("on-exit keep, but GPU %d went back to its original %d mW", g.Index, g.LimitMW)
			}
		}
		return ""
	case "restore":
		all := true
		var dist, distBefore int64
		for _, g := range after.GPUs {
			if !g.Present {
				continue
			}
			o, ok := originals[g.UUID]
			if !ok {
				continue
			}
			if g.LimitMW != o {
				all = false
			}
			d := absMW(o - g.LimitMW)
			if p, ok := prev[g.UUID]; ok && p.Present && d > absMW(o-p.LimitMW) {
				return fmt.Sprintf("on-exit restore, but GPU %d moved away from its original %d mW: %d → %d mW", g.Index, o, p.LimitMW, g.LimitMW)
			}
			dist += d
			if p, ok := prev[g.UUID]; ok && p.Present {
				distBefore += absMW(o - p.LimitMW)
			}
		}
		if all {
			return ""
		}
		// Partly restored: only as far as the node's floor allows.
		if floorW >= 0 && after.SumLimitW() <= math.Max(floorW, before.SumLimitW())+ToleranceW {
			return ""
		}
		return fmt.Sprintf("on-exit restore: limits Σ %.0f W neither the originals nor within the node's floor %.0f W", after.SumLimitW(), floorW)
	}
	return "unknown on-exit mode " + onExit
}

// SuccessorResult is what a SIGKILLed agent's successor was seen doing with the held limits.
type SuccessorResult string

// Successor outcomes.
const (
	SuccessorRestored  SuccessorResult = "restored"
	SuccessorAdopted   SuccessorResult = "adopted"
	SuccessorUnchanged SuccessorResult = "unchanged"
)

// ClassifySuccessor says what the successor did within its first moments: crashed is the last
// state read before the SIGKILL, early the states read since the successor started (before its
// loop could move the limits by more than rampW per period). Restored: every GPU back at its
// original, or Σ moved toward the originals by more than one period's ramp at once.
func ClassifySuccessor(originals map[string]int64, crashed *State, early []*State, rampW float64) SuccessorResult {
	if crashed == nil {
		return SuccessorUnchanged
	}
	prev := crashed.ByUUID()
	res := SuccessorUnchanged
	for _, s := range early {
		all, moved, changed := true, 0.0, false
		for _, g := range s.GPUs {
			o, ok := originals[g.UUID]
			p, seen := prev[g.UUID]
			if !ok || !seen || !g.Present {
				continue
			}
			if g.LimitMW != o {
				all = false
			}
			if g.LimitMW != p.LimitMW {
				changed = true
			}
			moved += float64(absMW(o-p.LimitMW)-absMW(o-g.LimitMW)) / 1000
		}
		atOriginals := true
		for _, p := range crashed.GPUs {
			if o, ok := originals[p.UUID]; ok && p.Present && p.LimitMW != o {
				atOriginals = false
			}
		}
		if (all && !atOriginals) || moved > rampW {
			return SuccessorRestored
		}
		if !changed {
			res = SuccessorAdopted
		}
	}
	return res
}

func absMW(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
