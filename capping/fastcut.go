package capping

import "time"

// The fast path between periods: every FastInterval the controller reads each GPU's instant
// power (FI_DEV_POWER_INSTANT, which NVML updates at about 10 Hz), adds it to the demand
// windows and the ramp figures, and, when Σ draw crosses the budget while Σ caps are above the
// budget's static share, cuts Σ caps to that share at once: a long control period never means a
// long overshoot. Increases stay with the period.

// Sample runs one fast sample at now, between two periods. It does nothing before Start, in
// failsafe (the period handles lost readings) and before the first period. It allocates
// nothing unless it logs.
func (c *Controller) Sample(now time.Time) {
	if !c.started || c.mode == ModeFailsafe || c.lastTick.IsZero() {
		return
	}
	sumW, complete := 0.0, true
	for _, g := range c.gpus {
		if !c.readInstant(g) {
			complete = false
			continue
		}
		sumW += g.drawW
		c.observe(g)
	}
	if !complete {
		// A missing reading is the period's to judge; Σ draw is unknown, so no cut.
		c.node.broken()
		return
	}
	c.node.observe(sumW, now)
	c.lowerBudget(now)
	if c.set.Scope == "node" {
		c.hostW = c.hostFastW(now)
	}
	if sumW+c.hostW > c.budgetW {
		c.fastCut()
	}
}

// lowerBudget adopts a lower budget from the source at once, so a cut of the budget is a cut
// of the caps within a fast sample, not a period; a higher one waits for the period, as every
// increase does.
func (c *Controller) lowerBudget(now time.Time) {
	b, ok := c.src.Current()
	if ok && !b.Expired(now) && b.Valid() && b.Watts < c.budgetW {
		c.budgetW, c.budget = b.Watts, b
		c.setW = c.budgetW * (1 - c.set.GuardBand)
		c.tight = true
	}
}

// fastCut takes back what is lent above the budget's static share: Σ caps drop to it, each
// GPU's limit only falls, and the law starts from there (the window, which holds the surge,
// keeps it from lending again until the surge is past). Caps already at or below that share
// bind as static caps do; cutting them deeper would cost throughput and gain nothing.
func (c *Controller) fastCut() {
	floor := c.floorW()
	if c.law.capW <= floor+0.5 {
		return
	}
	c.cuts++
	c.law.settle(floor)
	c.allocate(true)
	c.actuate()
}

// hostFastW is the host's power for a fast sample under scope node: RAPL's latest reading when
// it is no older than a period, else the period's.
func (c *Controller) hostFastW(now time.Time) float64 {
	if c.host.src == nil {
		return c.hostW
	}
	if w, at, ok := c.host.src.PackageWatts(); ok && now.Sub(at) <= c.set.Period {
		return w
	}
	return c.hostW
}

// FastCuts returns how many fast cuts the controller made.
func (c *Controller) FastCuts() float64 { return c.cuts }
