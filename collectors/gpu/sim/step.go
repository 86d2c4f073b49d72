package sim

import (
	"fmt"
	"time"
)

// A coarser physics step (Options.Step) is for simulating many nodes, where the 10 ms step's
// cost is the whole run's: a fleet of 8,000 GPUs takes 2.9 billion 10 ms steps per simulated
// hour. The model keeps counting time in 10 ms substeps, so every instant it knows of (a
// write's binding, a counter update, an injected brake) stays where it was; only how many
// substeps one integration covers changes:
//
//   - The lags (power, die and memory temperature) are exact first-order solutions for the
//     step's length, as the catch-up's 1 s steps already are; the step draws the power lag's
//     mean over it, not its end value, so a cut's transient costs the energy and work it
//     costs at the fine step.
//   - The demand is sampled once per step, at one of its substeps drawn from the seed, so that
//     a trace's phases that start on whole seconds bias nothing and the step's energy and work
//     are those of its substeps on average (as the fleet's closed-form baselines sample).
//   - A step ends where a pending limit write binds, so a write still binds 10–20 ms after it,
//     as at the fine step; the steps are otherwise aligned on the clock (every Step of its
//     time), so reads on whole periods and fast samples split none.
//   - The power counters still update every 100 ms at each GPU's own phase: an update inside a
//     step records the energy at its substep (the step's draw is constant, so that is exact)
//     and the step's draw.
//   - A trace's day cycle (the inference trace's 24 h sine, the same for all GPUs) is taken at
//     the whole second the step's sample falls in, once a second per GPU rather than per step:
//     over a second it moves the demand by at most 2.2e-5 of the top limit (15 mW on an H100),
//     under the readings' milliwatt only in the mean, far under the request noise.
//   - Violation time counts the step for the reasons set at its end, and an injected brake for
//     the substeps it covers; the GPM integrals hold whole steps.
//
// What is lost is what happens inside a step: a demand change shows at the step's sample, and
// firmware power smoothing's hysteresis holds at least one step.

// MaxStep is the coarsest physics step: the power counters' update period, which the 1 s power
// average and the fast sample read at.
const MaxStep = markEvery * substep

// ValidStep checks a physics step for Options.Step; 0 is valid (the 10 ms step).
func ValidStep(step time.Duration) error {
	if step != 0 && (step < substep || step > MaxStep || step%substep != 0) {
		return fmt.Errorf("simulated physics step %s out of range: must be a multiple of %s from %s to %s", step, substep, substep, MaxStep)
	}
	return nil
}

// stepSubsteps checks a physics step and returns it in substeps.
func stepSubsteps(step time.Duration) (int64, error) {
	if err := ValidStep(step); err != nil {
		return 0, err
	}
	return max(1, int64(step/substep)), nil
}

// setStep makes the fleet integrate n substeps at a time.
func (f *Fleet) setStep(n int64) {
	f.stepN = n
	if n == 1 {
		return
	}
	f.steps = make([]stepFactors, n+1)
	for k := int64(1); k <= n; k++ {
		f.steps[k] = newStepFactors(substepS * float64(k))
		f.steps[k].pick = true
		dtS := substepS * float64(k)
		f.steps[k].powerMean = 1 - f.steps[k].power*powerTauS/dtS
	}
	// The steps end on multiples of the step in the clock's time.
	f.gridPhase = (f.start.UnixNano() / int64(substep)) % n
	f.cycle, _ = f.trace.(cycleTrace)
}

// cycleTrace is a trace whose demand has a slow part common to its GPUs, its cycle, which a
// coarse step need not compute for every GPU and step.
type cycleTrace interface {
	// cycle is the common part at t seconds; demand is gpu's demand at t, given it.
	cycle(t float64) float64
	demand(gpu int, t, cycle float64) float64
}

var _ cycleTrace = inferenceTrace{}

// traceDemand is the trace's demand at substep at. A coarse step takes a trace's cycle at the
// whole second at falls in, computed once per GPU and second.
func (g *GPU) traceDemand(at int64, coarse bool) float64 {
	elapsed := time.Duration(at) * substep
	c := g.fleet.cycle
	if !coarse || c == nil {
		return g.fleet.trace.Demand(g.index, elapsed)
	}
	if sec := int64(elapsed / time.Second); sec != g.cycleSec {
		g.cycleSec, g.cycleW = sec, c.cycle(float64(sec))
	}
	return c.demand(g.index, elapsed.Seconds(), g.cycleW)
}

// Step returns the fleet's physics step.
func (f *Fleet) Step() time.Duration { return time.Duration(f.stepN) * substep }

// advanceCoarse integrates up to substep target in steps of up to the fleet's step, each ending
// at the next step boundary, at target, or where a pending write binds.
func (g *GPU) advanceCoarse(target int64) {
	k := g.fleet.stepN
	for g.step < target {
		n := k - (g.step+g.fleet.gridPhase)%k
		n = min(n, target-g.step)
		if p := g.pendingStep; p > g.step && p < g.step+n {
			n = p - g.step
		}
		g.integrate(n, &g.fleet.steps[n])
	}
}
