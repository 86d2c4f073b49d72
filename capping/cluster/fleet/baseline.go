package fleet

import (
	"time"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
)

// The baselines (the same nodes uncapped, and under static per-GPU caps) have no controller:
// their limits never move, so what their GPUs draw and do follows from the trace's demand and
// the simulator's own laws in closed form, with no fleet to step. Under a limit that has held
// for a while the simulated board draws min(demand, limit) (the power controller's lag has
// closed) and works at sim.Model.WorkRate(demand, limit); the thermal limit does not bind for
// any model at its own ambient (a board at its top limit settles below its slowdown
// temperature). That leaves out the first ~100 ms after the static caps are written at the
// start and the 10–20 ms of the write's latency, a few joules out of an hour.
//
// The work integral samples the demand once every baselineStep, at one of the step's
// simulator substeps drawn from the seed, the sample standing for the step's ten substeps:
// a fixed position would be biased by the traces whose phases start on whole seconds (the
// lock-step iteration, the training step). TestBaselineMatchesStepped bounds what sampling
// costs against fleets stepped by the simulator.

// baselineStep is how often the closed form samples the demand for the work integral: the
// counters' 100 ms, ten of the simulator's 10 ms substeps. Finer than every trace's own
// features (the inference trace's request noise moves over 0.5 s, a training step's phases
// last seconds).
const baselineStep = 100 * time.Millisecond

// simSubstep is the simulator's step: the draw a reading at t reports is the one of the
// substep that ended at t.
const simSubstep = 10 * time.Millisecond

// baseline is one node's GPUs uncapped and under static caps, in closed form.
type baseline struct {
	trace   sim.Trace
	model   sim.Model
	gpus    int
	off     time.Duration // the node's trace offset: its trace time is run time + off
	maxW    float64       // the uncapped GPUs' limit: the model's default
	staticW float64
	seed    uint64 // draws the substep each step samples
	// done is how far the work integral has reached, in run time; workUncapped and workStatic
	// are the work done (GPU-seconds at the top clock) over all GPUs so far.
	done                     time.Duration
	workUncapped, workStatic float64
	demandW                  []float64 // the GPUs' demands at one instant, reused
}

func newBaseline(d *Domain, m sim.Model, seed int64, off time.Duration, staticW float64) (*baseline, error) {
	tr, err := sim.NewTrace(d.Trace, m, d.GPUs, seed)
	if err != nil {
		return nil, err
	}
	return &baseline{trace: tr, model: m, gpus: d.GPUs, off: off, maxW: m.DefaultLimitW, staticW: staticW, seed: uint64(seed), demandW: make([]float64, d.GPUs)}, nil
}

// advance integrates the work of both baselines up to run time t and returns the static
// baseline's Σ draw at t: what its GPUs' last substep before t drew.
func (b *baseline) advance(t time.Duration) float64 {
	h := baselineStep.Seconds()
	for ; b.done+baselineStep <= t; b.done += baselineStep {
		// Every GPU of the node is sampled at one instant, so what they share is computed once.
		sim.Demands(b.trace, b.off+b.done+b.substep(), b.demandW)
		for _, d := range b.demandW {
			b.workUncapped += b.model.WorkRate(d, b.maxW) * h
			b.workStatic += b.model.WorkRate(d, b.staticW) * h
		}
	}
	return b.drawAt(t)
}

// finish integrates the work up to t when t is not a whole number of steps in: the part step
// left stands for its own substeps.
func (b *baseline) finish(t time.Duration) {
	b.advance(t)
	rest := t - b.done
	if rest < simSubstep {
		return
	}
	sim.Demands(b.trace, b.off+b.done+(rest-simSubstep)/2, b.demandW)
	for _, d := range b.demandW {
		b.workUncapped += b.model.WorkRate(d, b.maxW) * rest.Seconds()
		b.workStatic += b.model.WorkRate(d, b.staticW) * rest.Seconds()
	}
	b.done = t
}

// substep is the offset into the step at b.done of the substep that stands for it.
func (b *baseline) substep() time.Duration {
	x := b.seed ^ uint64(b.done/baselineStep)*0x9e3779b97f4a7c15
	x ^= x >> 31
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 29
	return time.Duration(x%uint64(baselineStep/simSubstep)) * simSubstep
}

// drawAt is the static baseline's Σ draw at run time t.
func (b *baseline) drawAt(t time.Duration) (staticW float64) {
	sim.Demands(b.trace, b.off+t-simSubstep, b.demandW)
	for _, d := range b.demandW {
		w, _ := b.model.BusyDemand(d)
		staticW += min(w, b.staticW)
	}
	return staticW
}
