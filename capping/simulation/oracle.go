package simulation

import (
	"cmp"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
)

// oracleSample is how often the oracle reads the trace: the simulator's own step.
const oracleSample = 10 * time.Millisecond

// oracleLead is how far past the period the oracle looks. A limit raised at the start of the
// next period binds only after the write's latency and then climbs with the power
// controller's ~100 ms lag; a GPU whose demand surges just after the period ends needs its
// limit before then. Three time constants and the longest latency cover 95 % of the climb.
const oracleLead = 3*sim.PowerControllerLag + sim.LimitWriteLatencyMax

// planner is the oracle: it plans the limits of the oracle fleet for one period at a time. It knows every GPU's
// demand over the period and chooses the limits that maximise the work the fleet does in it,
// under the simulator's own work law (sim.Model.WorkRate), with Σ limits within the budget and
// each limit within the GPU's constraints. Static caps (B / n each) are one of the choices it
// weighs, so on the demand it plans for it never does less work than they do.
//
// Under a limit L that has held, a GPU whose demand d is above L runs at the clock share
// ∛(L / d), and does its full work otherwise. Over a period's samples the work is therefore
// concave in L and its slope is S(L) / (3 L^⅔), where S(L) sums busy / ∛d over the samples
// whose demand is above L. The best split gives every GPU that is neither at a bound nor above
// all its demand the same slope λ; the oracle finds λ by bisection.
type planner struct {
	model    sim.Model
	gpus     []oracleGPU
	plan     []float64     // watts per GPU, the last plan
	windowAt time.Duration // start of the loaded window; -1 before the first
}

// oracleGPU is one GPU's demand over the period being planned: its samples in time order (kept
// from one period to the next, as the windows overlap), the same sorted by demand, and the
// sums of busy / ∛d over each sample and those above it (tail) and of busy below it (head).
type oracleGPU struct {
	window  []oracleSampleOf
	samples []oracleSampleOf
	tail    []float64 // tail[k] = Σ_{j ≥ k} busy_j / ∛demand_j; tail[len] = 0
	head    []float64 // head[k] = Σ_{j < k} busy_j
}

// oracleSampleOf is the demand at one instant, the busy share it implies and busy / ∛demand.
type oracleSampleOf struct{ demand, busy, weight float64 }

func newOracle(m sim.Model, gpus int, period time.Duration) *planner {
	n := max(1, int((period+oracleLead)/oracleSample)+1)
	o := &planner{model: m, gpus: make([]oracleGPU, gpus), plan: make([]float64, gpus), windowAt: -1}
	for i := range o.gpus {
		o.gpus[i] = oracleGPU{window: make([]oracleSampleOf, 0, n), samples: make([]oracleSampleOf, 0, n),
			tail: make([]float64, 0, n+1), head: make([]float64, 0, n+1)}
	}
	return o
}

// load reads every GPU's demand over [from, to) from the trace, every oracleSample; samples
// already read for the previous window are kept.
func (o *planner) load(tr sim.Trace, from, to time.Duration) {
	// drop is how many samples at the front of the window fall before from; -1: none can be
	// kept.
	drop := -1
	if o.windowAt >= 0 && from >= o.windowAt && (from-o.windowAt)%oracleSample == 0 {
		drop = int((from - o.windowAt) / oracleSample)
	}
	for i := range o.gpus {
		g := &o.gpus[i]
		if drop >= 0 && drop < len(g.window) {
			g.window = g.window[:copy(g.window, g.window[drop:])]
			if end := int((to - from + oracleSample - 1) / oracleSample); len(g.window) > end {
				g.window = g.window[:end]
			}
		} else {
			g.window = g.window[:0]
		}
		for t := from + time.Duration(len(g.window))*oracleSample; t < to; t += oracleSample {
			d, busy := o.model.BusyDemand(tr.Demand(i, t))
			g.window = append(g.window, oracleSampleOf{d, busy, busy / math.Cbrt(d)})
		}
		g.samples = append(g.samples[:0], g.window...)
		slices.SortFunc(g.samples, func(a, b oracleSampleOf) int { return cmp.Compare(a.demand, b.demand) })
		n := len(g.samples)
		g.tail = slices.Grow(g.tail[:0], n+1)[:n+1]
		g.head = slices.Grow(g.head[:0], n+1)[:n+1]
		g.tail[n], g.head[0] = 0, 0
		for k := n - 1; k >= 0; k-- {
			g.tail[k] = g.tail[k+1] + g.samples[k].weight
		}
		for k := range n {
			g.head[k+1] = g.head[k] + g.samples[k].busy
		}
	}
	o.windowAt = from
}

// workAt is the GPU's work over the loaded samples under limit l, in busy sample-steps: full
// work for the samples at or under l, ∛(l / d) of it above. It is sim.Model.WorkRate summed,
// for limits within the constraints (where the idle clock's floor never binds).
func (g *oracleGPU) workAt(l float64) float64 {
	k := sort.Search(len(g.samples), func(k int) bool { return g.samples[k].demand > l })
	return g.head[k] + math.Cbrt(l)*g.tail[k]
}

// limitAt is the limit in [lo, hi] at which the GPU's work slope falls to lambda: the largest
// L with S(L) ≥ 3 λ L^⅔. Above its highest demand a GPU gains nothing, so it never asks for
// more than that.
func (g *oracleGPU) limitAt(lambda, lo, hi float64) float64 {
	n := len(g.samples)
	if n == 0 {
		return lo
	}
	// slopeAtLeast reports whether the slope just below L, with the samples from k up still
	// above it, is at least lambda: S³ ≥ 27 λ³ L².
	l3 := 27 * lambda * lambda * lambda
	slopeAtLeast := func(k int, l float64) bool {
		s := g.tail[k]
		return s*s*s >= l3*l*l
	}
	// The first sample k whose demand the slope cannot reach: just below demand[k] (samples
	// k.. above) the slope is under lambda. Samples are sorted, so this is monotone in k.
	k := sort.Search(n, func(k int) bool { return !slopeAtLeast(k, g.samples[k].demand) })
	// Between demand[k-1] and demand[k] the samples above are k..n-1, S = tail[k].
	var l float64
	switch {
	case k == n:
		l = g.samples[n-1].demand
	case lambda <= 0:
		l = g.samples[n-1].demand
	default:
		s := g.tail[k] / (3 * lambda)
		l = s * math.Sqrt(s) // (S / 3λ)^{3/2}
		if k > 0 {
			l = max(l, g.samples[k-1].demand)
		}
		l = min(l, g.samples[k].demand)
	}
	return min(max(l, lo), hi)
}

// slopeMax bounds every GPU's slope from above: the slope at the lowest limit.
func (o *planner) slopeMax(lo float64) float64 {
	top := 0.0
	for i := range o.gpus {
		if g := &o.gpus[i]; len(g.samples) > 0 {
			top = max(top, g.tail[0]/(3*math.Pow(lo, 2.0/3)))
		}
	}
	return top
}

// planFor splits budgetW over the GPUs for the loaded period and returns the plan, in watts.
func (o *planner) planFor(budgetW float64) []float64 {
	lo, hi := o.model.MinLimitW, o.model.MaxLimitW
	n := float64(len(o.gpus))
	if budgetW <= n*lo {
		for i := range o.plan {
			o.plan[i] = lo
		}
		return o.plan
	}
	sum := func(lambda float64) float64 {
		s := 0.0
		for i := range o.gpus {
			o.plan[i] = o.gpus[i].limitAt(lambda, lo, hi)
			s += o.plan[i]
		}
		return s
	}
	// The smallest slope whose limits fit the budget; at slope 0 every GPU asks for its whole
	// demand, which may already fit.
	if sum(0) > budgetW {
		a, b := 0.0, o.slopeMax(lo)
		for range 50 {
			mid := (a + b) / 2
			if sum(mid) > budgetW {
				a = mid
			} else {
				b = mid
			}
		}
		sum(b)
	}
	// Budget left once every GPU has what it can use is spread evenly, up to the GPUs' tops:
	// it costs nothing and leaves room for the demand between the samples.
	o.spread(budgetW, hi)
	// The plan must do at least the work of static caps on the demand it plans for; where the
	// bisection's tolerance made it fall short, static caps are the plan.
	if o.work(o.plan) < o.staticWork(budgetW) {
		static := o.staticLimit(budgetW)
		for i := range o.plan {
			o.plan[i] = static
		}
	}
	return o.plan
}

// spread raises the plan's lowest limits together until Σ limits reaches budgetW or every
// limit is at top.
func (o *planner) spread(budgetW, top float64) {
	for range len(o.plan) {
		left := budgetW
		under := 0
		floor := top
		for _, l := range o.plan {
			left -= l
			if l < top {
				under++
				floor = min(floor, l)
			}
		}
		if left <= 1e-9 || under == 0 {
			return
		}
		// The next level: the lowest limit raised by an equal share of what is left, or to
		// the next limit above it, whichever comes first.
		next := top
		for _, l := range o.plan {
			if l > floor && l < next {
				next = l
			}
		}
		atFloor := 0
		for _, l := range o.plan {
			if l == floor {
				atFloor++
			}
		}
		level := min(next, floor+left/float64(atFloor))
		for i, l := range o.plan {
			if l == floor {
				o.plan[i] = level
			}
		}
	}
}

// moveGain is how much more work, as a share of the period's, a new split must promise before
// the oracle moves its limits to it. Moving limits is not free: a raised limit binds after the
// write's latency and the power controller's ~100 ms lag, so a split that is better only by a
// hair (a lock-step job whose GPUs differ by a few watts) loses more in the move than it gains.
// The gain of a split grows with the square of how far it moves power while the cost of the
// move grows linearly, so a small threshold separates the two.
const moveGain = 0.002

// choose returns the limits for the loaded period, given the limits in force now: the plan
// when it promises moveGain more work than keeping them, else the limits in force when they
// fit the budget and do at least the work of static caps, else static caps.
func (o *planner) choose(budgetW float64, current []float64) []float64 {
	plan := o.planFor(budgetW)
	staticW := o.staticLimit(budgetW)
	static := o.staticWork(budgetW)
	sum := 0.0
	for _, l := range current {
		sum += l
	}
	keep := sum <= budgetW && len(current) == len(plan)
	base := static
	if keep {
		if w := o.work(current); w >= static {
			base = w
		} else {
			keep = false
		}
	}
	if o.work(plan) >= base*(1+moveGain) {
		return plan
	}
	if keep {
		copy(plan, current)
		return plan
	}
	for i := range plan {
		plan[i] = staticW
	}
	return plan
}

// staticLimit is what static caps give each GPU: B / n within its constraints, whole watts.
func (o *planner) staticLimit(budgetW float64) float64 {
	return math.Floor(min(max(budgetW/float64(len(o.gpus)), o.model.MinLimitW), o.model.MaxLimitW))
}

// work is the work the loaded period does under limits, by the simulator's law.
func (o *planner) work(limits []float64) float64 {
	w := 0.0
	for i := range o.gpus {
		w += o.gpus[i].workAt(limits[i])
	}
	return w
}

func (o *planner) staticWork(budgetW float64) float64 {
	per := o.staticLimit(budgetW)
	w := 0.0
	for i := range o.gpus {
		w += o.gpus[i].workAt(per)
	}
	return w
}
