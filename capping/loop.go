package capping

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/internal/panics"
)

// One control period: read the budget and the power, move the total cap with the law, split it
// across the GPUs, write the limits, tell the budget source.

// Run drives the controller until ctx is done, and the budget source beside it: a period every
// Settings.Period and, between periods, a fast sample every FastInterval (Sample), so the fast
// cut runs in the agent exactly as it runs in `capstan simulate`.
func (c *Controller) Run(ctx context.Context) {
	panics.Go("budget source", func() { c.src.Run(ctx) })
	every := c.FastEvery()
	t := time.NewTicker(c.set.Period / time.Duration(every))
	defer t.Stop()
	c.Tick(c.now())
	for k := 1; ; k++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if k%every == 0 {
				c.Tick(c.now())
			} else {
				c.Sample(c.now())
			}
		}
	}
}

// FastEvery is how many fast samples a period holds, the period's own reading included: the
// period divided into steps of about FastInterval (one step when the period is that short).
func (c *Controller) FastEvery() int {
	return max(1, int((c.set.Period+FastInterval/2)/FastInterval))
}

// Tick runs one control period at now. It allocates nothing unless it logs.
func (c *Controller) Tick(now time.Time) {
	dt := c.set.Period.Seconds()
	if !c.lastTick.IsZero() {
		dt = now.Sub(c.lastTick).Seconds()
	}
	c.lastTick = now
	c.ticks++

	prevBudgetW := c.budgetW
	useFallback := c.readBudget(now)
	c.checkBudgetMet()
	c.setW = c.budgetW * (1 - c.set.GuardBand)
	if c.budgetW < prevBudgetW {
		c.tight = true
	}

	missing := c.measure(now)
	if c.measW > c.budgetW && missing == 0 {
		c.overS += dt
	}
	c.errW = c.setW - c.measW
	if c.tight && missing == 0 && (c.measW <= (c.setW+c.budgetW)/2 || c.set.GuardBand == 0) {
		c.tight = false
	}
	hi := c.budgetW * (1 + c.set.Oversubscription)
	c.closeWindows()

	acted := false
	switch {
	case missing > 0:
		c.lost++
		if c.lost >= c.set.LostPeriods {
			c.failsafe(hi)
			acted = true
		}
	default:
		if c.mode == ModeFailsafe {
			c.log.Info("capping: power readings back; leaving failsafe caps")
			c.law.reset(c.law.capW)
		}
		c.lost = 0
		c.mode = ModeActive
		if c.set.DryRun {
			c.mode = ModeDryRun
		}
		c.control(hi, dt)
		c.allocate(false)
		c.actuate()
		acted = true
	}
	if acted && !useFallback {
		c.acknowledge(hi)
	}
	c.report(now, missing == 0)
	c.pub.publish(now, useFallback, &c.periodState, &c.node, c.law.capW, c.gpus)
}

// acknowledge tells a source that wants to know (a cluster grant) that the limits are within its
// budget: the limits the GPUs report (after this period's writes, refused ones included) sum to
// no more than the cap allowed under this budget (the oversubscription ceiling, or Σ min when
// that is higher). Under dry-run the computed limits count: nothing is enforced, and the
// allocator is not kept waiting.
func (c *Controller) acknowledge(hi float64) {
	if c.acker == nil {
		return
	}
	sumMW := 0.0
	for _, g := range c.gpus {
		if c.set.DryRun {
			sumMW += float64(g.ourMW)
		} else {
			sumMW += float64(g.requestedMW)
		}
	}
	if sumMW/1000 > max(hi, c.sumMin)+0.001 {
		return
	}
	c.acker.Applied(c.budget)
}

// report tells a source that wants to know (a cluster group) what the node draws and the range
// the capped GPUs' limits can take. The bounds are those of the GPUs this controller caps, the
// draw what it measured this period; drawOK is false when a power reading was missing.
func (c *Controller) report(at time.Time, drawOK bool) {
	if c.reporter == nil {
		return
	}
	c.reporter.Report(budget.NodeReport{DrawW: c.measW, DrawOK: drawOK, MinW: c.sumMin, MaxW: c.sumMax, At: at})
}

// readBudget sets budgetW from the source, or the fallback when its budget expired or never
// came; it reports whether the fallback is in use.
func (c *Controller) readBudget(now time.Time) bool {
	b, ok := c.src.Current()
	if ok && !b.Expired(now) && b.Valid() {
		if c.fallbackLogged {
			c.log.Info("capping: budget back from its source", "watts", b.Watts, "source", b.Source)
			c.fallbackLogged = false
		}
		c.budgetW, c.budget = b.Watts, b
		return false
	}
	c.budgetW = c.set.FallbackW
	if c.budgetW <= 0 {
		c.budgetW = c.sumMin
	}
	if !c.fallbackLogged {
		c.log.Warn("capping: no current budget (expired or never received); using the fallback budget", "fallback_watts", c.budgetW, "last_watts", b.Watts, "ttl", b.TTL)
		c.fallbackLogged = true
	}
	return true
}

// checkBudgetMet says, once each time it happens, that the budget is below what the GPUs can
// be capped to: the law then holds every GPU at its minimum and the node stays over budget.
func (c *Controller) checkBudgetMet() {
	unmet := c.budgetW < c.sumMin
	switch {
	case unmet && !c.unmet:
		c.log.Warn("capping: the budget is below the GPUs' summed minimum limits and cannot be met; every GPU is held at its minimum",
			"budget_watts", c.budgetW, "min_watts", c.sumMin, "gpus", len(c.gpus))
	case !unmet && c.unmet:
		c.log.Info("capping: the budget can be met again", "budget_watts", c.budgetW, "min_watts", c.sumMin)
	}
	c.unmet = unmet
}

// measure reads every GPU's instant power and limits, counts limits changed behind our back
// and returns how many GPUs gave no power reading.
func (c *Controller) measure(now time.Time) int {
	missing := 0
	c.measW = 0
	for _, g := range c.gpus {
		g.ok = false
		if !c.readInstant(g) {
			missing++
			continue
		}
		c.measW += g.drawW
		req, ret := g.dev.GetPowerManagementLimit()
		if ret != nvml.SUCCESS {
			missing++
			continue
		}
		enf, ret := g.dev.GetEnforcedPowerLimit()
		if ret != nvml.SUCCESS {
			enf = req
		}
		g.requestedMW, g.enforcedMW, g.ok = req, enf, true
		if !c.set.DryRun && c.mode != ModeFailsafe && g.ourMW != 0 && req != g.ourMW {
			g.overrides++
			// Once per value found: a re-apply the GPU refuses finds the same value every
			// period, and that is one event, not one per period.
			if req != g.loggedOverrideMW {
				g.loggedOverrideMW = req
				c.log.Warn("capping: GPU power limit changed behind our back; re-applying ours",
					"gpu", g.index, "found_watts", watts(req), "ours_watts", watts(g.ourMW))
			}
		} else {
			g.loggedOverrideMW = 0
		}
		c.checkOutOfBand(g)
		c.observe(g)
	}
	if missing == 0 {
		c.node.observe(c.measW, now)
	} else {
		c.node.broken()
	}
	c.hostW = 0
	if c.set.Scope == "node" {
		c.hostW = c.hostWatts(now)
		c.measW += c.hostW
	}
	return missing
}

// readInstant reads g's instant power into drawW; it reports false when there is none.
func (c *Controller) readInstant(g *gpu) bool {
	ret := g.dev.GetFieldValues(g.fields[:])
	if ret != nvml.SUCCESS || nvml.Return(g.fields[0].NvmlReturn) != nvml.SUCCESS {
		return false
	}
	g.drawW = float64(binary.LittleEndian.Uint32(g.fields[0].Value[:4])) / 1000
	return true
}

// observe adds g's instant power to its demand window, against the limit in force.
func (c *Controller) observe(g *gpu) {
	limitW := watts(g.enforcedMW)
	g.win.observe(g.drawW, g.drawW >= limitW-c.bindMargin(limitW))
}

// closeWindows ends the period in the demand windows.
func (c *Controller) closeWindows() {
	c.winHead = (c.winHead + 1) % len(c.gpus[0].win.peakW)
	for _, g := range c.gpus {
		g.win.closePeriod(c.winHead)
	}
	c.node.closePeriod()
}

// floorW is the budget's static share of Σ caps: the budget (less the host's power under scope
// node) within the GPUs' Σ min and Σ max. After the budget fell, until the draw came down, it
// is the setpoint instead: GPUs above a new cap come down onto it with a lag, and only caps a
// guard band below the budget bring the node under it within a few periods.
func (c *Controller) floorW() float64 {
	b := c.budgetW
	if c.tight {
		b = c.setW
	}
	return max(c.sumMin, min(c.sumMax, b-c.hostW))
}

// oobTrust is how many periods an out-of-band limit is taken as the GPU's maximum, as found.
// After that the controller allots the GPU up to oobProbeW above it: a GPU that then takes the
// higher limit shows that the out-of-band limit was lifted, and one that does not renews the
// trust. A probe costs the other GPUs at most that much, for one period in oobTrust.
const oobTrust = 60

// oobMarginMW is how far below the requested limit the enforced one must be to count as an
// out-of-band limit (the collector's signal uses the same 1 W): a driver's rounding is not one.
const oobMarginMW = 1000

// oobCeilingW is the most the controller allots a GPU under an out-of-band limit.
func (c *Controller) oobCeilingW(g *gpu) float64 {
	ceil := watts(g.oobMW)
	if c.ticks >= g.oobUntil {
		ceil += c.oobProbeW(ceil)
	}
	return ceil
}

// oobProbeW is how far above an out-of-band limit a probe asks: the margin that counts a GPU as
// power-bound, so that a GPU held at the limit would draw into it.
func (c *Controller) oobProbeW(limitW float64) float64 { return c.bindMargin(limitW) }

// checkOutOfBand counts an enforced limit below the requested one (a BMC, the driver) once per
// distinct value; the controller then treats it as the GPU's maximum (oobCeilingW). A GPU that
// takes a requested limit above that maximum has had it lifted.
func (c *Controller) checkOutOfBand(g *gpu) {
	if g.enforcedMW+oobMarginMW <= g.requestedMW {
		if g.enforcedMW != g.oobMW {
			g.overrides++
			c.log.Warn("capping: an out-of-band limit below ours is in force on a GPU", "gpu", g.index,
				"enforced_watts", watts(g.enforcedMW), "requested_watts", watts(g.requestedMW))
		}
		g.oobMW, g.oobUntil = g.enforcedMW, c.ticks+oobTrust
		return
	}
	if g.oobMW > 0 && g.requestedMW >= g.oobMW+oobMarginMW {
		c.log.Info("capping: the out-of-band limit on a GPU is lifted", "gpu", g.index,
			"was_watts", watts(g.oobMW), "enforced_watts", watts(g.enforcedMW))
		g.oobMW, g.oobUntil = 0, 0
	}
}

// control moves the total cap with the law. Σ caps at the budget's static share are safe
// whatever the GPUs do; above it the law lends stranded power only while the window's peak of
// measured power stays under the setpoint: a surplus that lasted, not one sample's.
//
// What is lent is also bounded by the headroom the GPUs that are not power-bound hold above the
// peak of their draw: power they keep for a surge within their recent range and do not use.
// Lending more would let a GPU's surge to a limit it held all along put the node over budget
// until the fast cut bites.
func (c *Controller) control(hi, dt float64) {
	slack := 0.0
	for _, g := range c.gpus {
		if !g.win.powerBound() {
			slack += c.set.HeadroomW
		}
	}
	floor := c.floorW()
	b := c.bounds(max(floor, min(hi, c.setW+slack)))
	b.FloorW = floor
	if r := c.set.MaxRiseWps; r > 0 {
		b.RiseW = r * dt
	}
	c.law.step(c.setW, c.node.winPeakW+c.hostW, b)
}

// bindMargin is how close to its limit a GPU draws to count as power-bound: it would use more.
func (c *Controller) bindMargin(limitW float64) float64 {
	return max(0.5*c.set.HeadroomW, 0.02*limitW)
}

// allocate splits the cap across GPUs into their shares. Under a cut no GPU's share rises above
// the limit it has.
func (c *Controller) allocate(cut bool) {
	floor := c.floorW()
	for i, g := range c.gpus {
		s := &c.shares[i]
		s.minW, s.maxW = watts(g.minMW), watts(g.maxMW)
		if g.oobMW > 0 {
			s.maxW = max(s.minW, min(s.maxW, c.oobCeilingW(g)))
		}
		s.limitW = watts(g.enforcedMW)
		s.fairW = max(s.minW, min(s.maxW, floor*g.weight/c.sumWeight))
		s.pinned = g.refusedRet != nvml.SUCCESS && g.ok
		if s.pinned {
			// A GPU that refuses our limits keeps the one in force: the others make room.
			s.minW, s.maxW, s.upW = s.limitW, s.limitW, s.limitW
			s.needW, s.weight, s.bound = s.limitW, g.weight, false
			continue
		}
		s.needW = g.win.winPeakW
		s.weight = g.weight
		s.bound = g.win.powerBound()
		step := max(2*c.set.HeadroomW, c.set.Ramp*2*s.maxW)
		s.upW = max(s.minW, min(s.maxW, max(max(s.limitW, watts(g.ourMW))+step, s.fairW)))
		if cut {
			s.upW = max(s.minW, min(s.upW, watts(max(g.ourMW, g.minMW))))
		}
	}
	given := distribute(c.shares, c.law.capW, c.set.HeadroomW)
	for i, g := range c.gpus {
		if s := &c.shares[i]; s.pinned {
			// Still ask it for no more than its fair share: once it takes a limit again, Σ
			// limits are within the cap at once.
			s.allocW = max(watts(g.minMW), min(s.allocW, s.fairW))
		}
	}
	// What the GPUs could not take this period is not kept as cap: C is what is applied, so
	// it cannot float up on slack the GPUs would surge into.
	if given < c.law.capW && given >= c.sumMin {
		c.law.settle(given)
	}
}

// actuate writes the shares as limits. Each limit is rounded down to a whole watt and clamped
// to the GPU's constraints. Changes smaller than the deadband are skipped, except decreases
// needed to keep Σ limits within the total cap.
func (c *Controller) actuate() {
	deadMW := uint32(c.set.DeadbandW * 1000)
	sumMW := 0.0
	for i, g := range c.gpus {
		target := c.targetMW(g, c.shares[i].allocW)
		c.targets[i] = target
		c.shares[i].allocW = watts(target)
		if g.ok && absDiff(target, g.requestedMW) < deadMW && g.requestedMW == g.ourMW {
			sumMW += float64(g.requestedMW)
			continue
		}
		sumMW += float64(target)
	}
	capMW := math.Max(c.law.capW, c.sumMin) * 1000
	for i, g := range c.gpus {
		target := c.targets[i]
		skip := g.ok && absDiff(target, g.requestedMW) < deadMW && g.requestedMW == g.ourMW
		if skip && target < g.requestedMW && sumMW > capMW {
			skip = false
			sumMW -= float64(g.requestedMW - target)
		}
		if !skip {
			c.write(g, target)
		}
	}
}

func absDiff(a, b uint32) uint32 {
	if a > b {
		return a - b
	}
	return b - a
}

// targetMW turns a share in watts into a limit NVML accepts.
func (c *Controller) targetMW(g *gpu, w float64) uint32 {
	mw := uint32(math.Floor(max(0, w))) * 1000
	return g.clamp(mw)
}

// write sets one GPU's limit and reads it back; under dry-run it only records it. The limit is
// clamped to the GPU's constraints here too, so no path can ask NVML for one outside them.
func (c *Controller) write(g *gpu, mw uint32) {
	mw = g.clamp(mw)
	if c.set.DryRun {
		g.ourMW = mw
		return
	}
	if !g.ok && g.ourMW == mw {
		return // unreadable GPU already at the value: do not hammer it
	}
	if ret := g.dev.SetPowerManagementLimit(mw); ret != nvml.SUCCESS {
		g.actRefused++
		if g.refusedRet != ret {
			c.log.Error("capping: GPU refused a power limit; leaving its limit as it was",
				"gpu", g.index, "watts", watts(mw), "constraints_watts", fmt.Sprintf("%g..%g", watts(g.minMW), watts(g.maxMW)), "err", ret)
			g.refusedRet = ret
		}
		return
	}
	g.refusedRet = nvml.SUCCESS
	g.actOK++
	g.ourMW, g.requestedMW = mw, mw
	enf, ret := g.dev.GetEnforcedPowerLimit()
	if ret == nvml.SUCCESS {
		g.enforcedMW = enf
		c.checkOutOfBand(g)
	}
}

// failsafe applies static caps B / n when power readings are lost: safe whatever the GPUs draw.
func (c *Controller) failsafe(hi float64) {
	if c.mode != ModeFailsafe {
		c.log.Error("capping: power readings lost; applying static failsafe caps of budget / GPUs",
			"periods", c.lost, "per_gpu_watts", c.budgetW/float64(len(c.gpus)))
	}
	c.mode = ModeFailsafe
	per := c.budgetW / float64(len(c.gpus))
	sum := 0.0
	for _, g := range c.gpus {
		mw := c.targetMW(g, per)
		sum += watts(mw)
		if mw != g.ourMW || g.requestedMW != mw {
			c.write(g, mw)
		}
	}
	c.law.reset(c.bounds(hi).clamp(sum))
}
