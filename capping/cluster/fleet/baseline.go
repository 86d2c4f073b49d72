package fleet

import (
	"math"
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
	gpus    int
	off     time.Duration // the node's trace offset: its trace time is run time + off
	staticW float64
	seed    uint64 // draws the substep each step samples
	// done is how far the work integral has reached, in run time; workUncapped and workStatic
	// are the work done (GPU-seconds at the top clock) over all GPUs so far.
	done                     time.Duration
	workUncapped, workStatic float64
	demandW                  []float64 // the GPUs' demands at one instant, reused
	rate                     workRates // uncapped at the model's default limit, and static
}

func newBaseline(d *Domain, m sim.Model, seed int64, off time.Duration, staticW float64) (*baseline, error) {
	tr, err := sim.NewTrace(d.Trace, m, d.GPUs, seed)
	if err != nil {
		return nil, err
	}
	return &baseline{trace: tr, gpus: d.GPUs, off: off, staticW: staticW, seed: uint64(seed), demandW: make([]float64, d.GPUs),
		rate: newWorkRates(m, m.DefaultLimitW, staticW)}, nil
}

// advance integrates the work of both baselines up to run time t and returns the static
// baseline's Σ draw at t: what its GPUs' last substep before t drew.
func (b *baseline) advance(t time.Duration) float64 {
	h := baselineStep.Seconds()
	for ; b.done+baselineStep <= t; b.done += baselineStep {
		// Every GPU of the node is sampled at one instant, so what they share is computed once.
		sim.Demands(b.trace, b.off+b.done+b.substep(), b.demandW)
		for _, d := range b.demandW {
			u, s := b.rate.at(d)
			b.workUncapped += u * h
			b.workStatic += s * h
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
		u, s := b.rate.at(d)
		b.workUncapped += u * rest.Seconds()
		b.workStatic += s * rest.Seconds()
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
		staticW += min(b.rate.clamp(d), b.staticW)
	}
	return staticW
}

// workRates is sim.Model.WorkRate at a demand under the uncapped and the static limit, bit for
// bit, with what the two share (the demand kept physical, its busy share, the model's
// thresholds) computed once per demand rather than once per limit, and the cube root of the
// last capped share kept: a training phase holds one demand for a second or more.
type workRates struct {
	idleW, maxDemandW     float64 // the demand's physical range
	busyW                 float64 // the demand above which the GPU runs work
	busyScale             float64 // 0.5·MaxLimitW − IdleW: the demand at which it is always busy
	floor                 float64 // the idle clock's share of the top clock
	limitW                [2]float64
	lastRatio, lastFactor [2]float64 // the cube root last taken, by limit
}

func newWorkRates(m sim.Model, uncappedW, staticW float64) workRates {
	maxDemandW, _ := m.BusyDemand(math.Inf(1))
	r := workRates{idleW: m.IdleW, maxDemandW: maxDemandW, busyW: m.IdleW + 0.02*m.MaxLimitW, busyScale: 0.5*m.MaxLimitW - m.IdleW,
		floor: float64(m.IdleSMClockMHz) / float64(m.MaxSMClockMHz), limitW: [2]float64{uncappedW, staticW}}
	r.lastRatio = [2]float64{math.NaN(), math.NaN()}
	return r
}

// clamp is the demand a GPU runs at for a trace's value: sim.Model.BusyDemand's watts.
func (r *workRates) clamp(demandW float64) float64 {
	if !(demandW >= r.idleW) {
		return r.idleW
	}
	return min(demandW, r.maxDemandW)
}

// at returns the work rates uncapped and static at a trace's demand.
func (r *workRates) at(demandW float64) (uncapped, static float64) {
	d := r.clamp(demandW)
	if d <= r.busyW {
		return 0, 0
	}
	busy := min(1, (d-r.idleW)/r.busyScale)
	return r.under(0, d, busy), r.under(1, d, busy)
}

// under is the work rate of a busy GPU at demand d under limit i.
func (r *workRates) under(i int, d, busy float64) float64 {
	limitW := r.limitW[i]
	if d <= limitW {
		return busy
	}
	ratio := max(0, limitW) / d
	if ratio != r.lastRatio[i] {
		r.lastRatio[i], r.lastFactor[i] = ratio, math.Cbrt(ratio)
	}
	return busy * max(r.floor, r.lastFactor[i])
}
