package soak

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/capstan-power/capstan/internal/soak/devstate"
)

// fileBudgetNode is the index of the node that takes its budget from a file (budget.source
// file) instead of the group's etcd allocation. Two things need one: a budget below its GPUs'
// minimums reaches the controller (the allocator grants every node at least its floor, so no
// etcd node ever sees one), and without a cluster budget a restore brings the originals back
// whole, which tells a crashed agent's restoring successor from an adopting one.
const fileBudgetNode = 2

// oversubscription is capping.oversubscription-percent's default, which the agents run with:
// their GPUs' caps may sum this share above the budget while they draw less than them.
const oversubscription = 0.05

// hasEtcd tells whether the node takes its budget from the group (etcd).
func hasEtcd(a *agent) bool { return a.budgetFile == "" }

// ownBudget is the node's own budget (file); 0 for a node of the group.
func (a *agent) ownBudget() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.budgetW
}

// setOwnBudget writes the node's budget file (by rename: the agent never reads half a file)
// and tells the checker.
func (a *agent) setOwnBudget(w float64) error {
	tmp := a.budgetFile + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "watts: %.0f\n", w), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, a.budgetFile); err != nil {
		return err
	}
	a.mu.Lock()
	a.budgetW = w
	a.mu.Unlock()
	a.h.check.SetNodeBudget(a.name, time.Now(), w, oversubscription)
	return nil
}

// grantOf is what the node is granted now: its own budget, or its grant from etcd.
func (h *harness) grantOf(a *agent) float64 {
	if !hasEtcd(a) {
		return a.ownBudget()
	}
	return h.grantW(a.name)
}

// leaveW is what a restore of the node stays within: the group's floor for the node, or, for a
// node with its own budget, no bound at all (-1: every original comes back).
func (a *agent) leaveW(s *devstate.State) float64 {
	if !hasEtcd(a) {
		return -1
	}
	return a.h.leaveW(s)
}

// makeFileBudget gives node a its budget file: half its GPUs' Σ maximum, as the group gets.
func (h *harness) makeFileBudget(a *agent) error {
	a.budgetFile = filepath.Join(a.dir, "budget.yaml")
	return a.setOwnBudget(0.5 * float64(h.cfg.GPUs) * 700)
}

// fileBudgetBelowMinimums writes the node's budget file below its GPUs' Σ minimums: the
// controller cannot meet it (budget.unmet), holds every GPU at its minimum, and
// CapstanNodeOverBudget fires with reason budget_below_gpu_minimums.
func fileBudgetBelowMinimums(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	s := h.readState(a)
	if s == nil {
		return fmt.Errorf("no device state of %s", a.name)
	}
	was := a.ownBudget()
	low := 0.9 * s.SumMinW()
	hold := h.alertFor("CapstanNodeOverBudget") + 15*time.Second
	if err := a.setOwnBudget(low); err != nil {
		return err
	}
	r.note("the node's budget file set to %.0f W, below its GPUs' Σ minimums %.0f W, for %v", low, s.SumMinW(), hold)
	sleep(ctx, hold)
	return a.setOwnBudget(was)
}
