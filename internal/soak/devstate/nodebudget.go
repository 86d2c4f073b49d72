package devstate

import (
	"fmt"
	"math"
	"time"
)

// SetNodeBudget records, from t on, the budget of a node that takes its own (budget.source
// file or static) rather than a share of the group's: its GPUs are checked against it and
// left out of the group's Σ. Σ may exceed it by the share over (the agent's
// capping.oversubscription-percent: the GPUs' caps may sum above the budget while they draw
// less than them); a budget below the node's GPUs' Σ minimums binds at those.
func (c *Checker) SetNodeBudget(node string, t time.Time, watts, over float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nodeBudgets == nil {
		c.nodeBudgets = map[string][]budgetStep{}
		c.nodeOpen = map[string]*Violation{}
	}
	c.nodeBudgets[node] = append(c.nodeBudgets[node], budgetStep{at: t, watts: watts * (1 + over)})
}

// ownBudget tells whether node takes its own budget. c.mu is held.
func (c *Checker) ownBudget(node string) bool { return len(c.nodeBudgets[node]) > 0 }

// roundOwn checks one node with its own budget, as Round checks the group: the highest budget
// of the settle window binds, the node's Σ minimums when higher; one violation per episode;
// not while a fault moves its limits. c.mu is held.
func (c *Checker) roundOwn(t time.Time, node string, s *State) {
	if t.Before(c.from) || c.isExcused(node, t) {
		return
	}
	b := math.NaN()
	steps := c.nodeBudgets[node]
	for i, st := range steps {
		if st.at.After(t) {
			break
		}
		if i+1 == len(steps) || steps[i+1].at.After(t.Add(-c.Settle)) {
			if math.IsNaN(b) || st.watts > b {
				b = st.watts
			}
		}
	}
	if math.IsNaN(b) {
		return
	}
	c.checks[KindBudget]++
	sum := s.SumEnforcedW()
	if sum <= math.Max(b, s.SumMinW())+ToleranceW {
		delete(c.nodeOpen, node)
		return
	}
	if c.nodeOpen[node] == nil {
		v := &Violation{At: t, Kind: KindBudget, Node: node,
			Detail: fmt.Sprintf("Σ enforced %.0f W above the node's own budget with its oversubscription, %.0f W (its GPUs' Σ minimums %.0f W)", sum, b, s.SumMinW())}
		c.nodeOpen[node] = v
		c.add(*v)
	}
}
