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
// The work integral takes the demand at the instants the capped node's own GPUs sample it:
// every physics step of a GPU (100 ms at the fleet's step) runs at the demand of one of its
// substeps drawn from the seed, which the simulator hands to the baseline with the step's
// length (sim.Options.OnDemand). The same trace, seed and offset make the same demand, so the
// baselines sample as densely as a trace of their own did (one substep in ten, at a position a
// phase starting on whole seconds cannot bias), without computing the demand again, and the
// throughput shares compare the capped and the uncapped GPUs at the same instants.
// TestBaselineMatchesStepped bounds what sampling costs against fleets stepped by the
// simulator.

// simSubstep is the simulator's step: the draw a reading at t reports is the one of the
// substep that ended at t.
const simSubstep = 10 * time.Millisecond

// baseline is one node's GPUs uncapped and under static caps, in closed form.
type baseline struct {
	trace   sim.Trace
	off     time.Duration // the node's trace offset: its trace time is run time + off
	staticW float64
	// work is each GPU's work (GPU-seconds at the top clock) uncapped and static so far; rate
	// its work rates, one per GPU so that GPUs stepped apart share nothing.
	work    [][2]float64
	rate    []workRates
	demandW []float64 // the GPUs' demands at one instant, reused
}

func newBaseline(d *Domain, m sim.Model, seed int64, off time.Duration, staticW float64) (*baseline, error) {
	tr, err := sim.NewTrace(d.Trace, m, d.GPUs, seed)
	if err != nil {
		return nil, err
	}
	b := &baseline{trace: tr, off: off, staticW: staticW, work: make([][2]float64, d.GPUs), rate: make([]workRates, d.GPUs), demandW: make([]float64, d.GPUs)}
	for i := range b.rate {
		b.rate[i] = newWorkRates(m, m.DefaultLimitW, staticW) // uncapped: the model's default limit
	}
	return b, nil
}

// step is the capped GPU's physics step at demandW for dtS seconds: the baselines' GPU did
// the same step's work at their own limits (sim.Options.OnDemand).
func (b *baseline) step(gpu int, demandW, dtS float64) {
	u, s := b.rate[gpu].at(demandW)
	b.work[gpu][0] += u * dtS
	b.work[gpu][1] += s * dtS
}

// restart forgets the work done so far: the steps that brought the GPUs through their trace
// offset before the run started.
func (b *baseline) restart() { clear(b.work) }

// done is the work both baselines did over all GPUs, uncapped and static.
func (b *baseline) done() (uncapped, static float64) {
	for _, w := range b.work {
		uncapped += w[0]
		static += w[1]
	}
	return uncapped, static
}

// drawAt is the static baseline's Σ draw at run time t: what its GPUs' last substep before t
// drew.
func (b *baseline) drawAt(t time.Duration) (staticW float64) {
	sim.Demands(b.trace, b.off+t-simSubstep, b.demandW)
	for i, d := range b.demandW {
		staticW += min(b.rate[i].clamp(d), b.staticW)
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
