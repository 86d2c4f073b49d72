// Package simulation runs the real capping controller against the simulated GPU fleet on a
// manual clock, far faster than real time, next to two baselines on identical fleets: static
// uniform caps (B / n per GPU, what `nvidia-smi -pl` gives) and an oracle that knows every GPU's
// demand over the coming period and a little past it, and splits the budget to do the most
// work under the simulator's own law, never less than static caps do (oracle.go). `capstan
// simulate` prints its Report.
package simulation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"sort"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
)

// Step changes the budget At a time from the start.
type Step struct {
	At    time.Duration
	Watts float64
}

// Options configure a run.
type Options struct {
	Model, Trace string
	Count        int
	Seed         int64
	BudgetW      float64
	Steps        []Step
	Duration     time.Duration
	// Settings are the controller's; Period is also the sampling period of the report. The
	// state file goes to a temporary directory the caller names in StateDir.
	Settings capping.Settings
	StateDir string
	Log      *slog.Logger
	// Sample, when set, receives every period's figures (for CSV and plots). The Limits slice
	// is reused; copy it to keep it.
	Sample func(Sample)
}

// Sample is one period of a run.
type Sample struct {
	Elapsed   time.Duration
	BudgetW   float64
	MeasuredW float64 // the controller's own reading (instant power)
	DrawnW    float64 // what our fleet truly drew
	CapW      float64
	StaticW   float64 // what the static-caps fleet drew
	// StaticCapW is the static fleet's Σ limits: the budget, within the GPUs' constraints.
	StaticCapW float64
	OracleW    float64 // what the oracle fleet drew
	// OracleCapW is the oracle fleet's Σ requested limits in the period.
	OracleCapW float64
	Limits     []float64
}

// Figures describe one policy over a run.
type Figures struct {
	EnergyJ float64 `json:"energy_j"`
	// Work is the work done, in GPU-seconds at full clock.
	Work              float64 `json:"work"`
	TimeOverBudgetPct float64 `json:"time_over_budget_pct"`
	MaxOvershootPct   float64 `json:"max_overshoot_pct"`
	// MaxRiseWps is the steepest rise of the fleet's true Σ draw between two fast steps
	// (capping.FastInterval apart), in W/s: the power ramp the supply sees.
	MaxRiseWps float64 `json:"max_rise_wps"`
}

// Report is the outcome of a run.
type Report struct {
	Ours, Static, Oracle Figures
	// SettlePeriods is, per budget step, how many periods after it drawn power came under the
	// new budget and stayed within 2 % above it for the following 10 periods; -1 when it never
	// did.
	SettlePeriods []int
	// StepOvershootPct is, per budget step, the largest overshoot of our fleet before that
	// step settled: the transient left out of MaxOvershootPct.
	StepOvershootPct []float64
	// Startup is our fleet's first periods, from the GPUs' default limits: its overshoot in
	// the first StartupPeriods (left out of MaxOvershootPct) and how many periods it took to
	// come under the budget and stay within 2 % above it (the SettlePeriods rule).
	Startup Transient
	Periods int
	Wall    time.Duration
}

// Transient is a disturbance our fleet went through: the start or a budget step.
type Transient struct {
	// OvershootPct is the largest draw above the budget during it, as a share of the budget.
	OvershootPct float64
	// SettlePeriods is how many periods it took to settle; -1 when it did not (before the
	// run or the next budget step ended).
	SettlePeriods int
}

// StartupPeriods are the periods at the start left out of MaxOvershootPct: the controller
// starts from the GPUs' default limits, a transient no budget step caused; Report.Startup
// describes it.
const StartupPeriods = warmup

// settleHold is how long power must stay within settleBand after settling to count as settled.
const (
	settleHold = 10
	settleBand = 0.02
	// warmup periods at the start are left out of the overshoot figure: the controller starts
	// from the GPUs' default limits, a transient no budget step caused.
	warmup = 10
)

// fleetOf builds one of the three identical fleets.
func fleetOf(o *Options, clock clock.Clock) (*sim.Fleet, error) {
	f, err := sim.New(sim.Options{Model: o.Model, Count: o.Count, Trace: o.Trace, Seed: o.Seed, Clock: clock})
	if err != nil {
		return nil, err
	}
	if ret := f.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("initialising the simulated fleet: %w", ret)
	}
	return f, nil
}

// Run simulates o.Duration and returns the report. Each period has four phases: budget steps
// that fall in it apply, the oracle sets its caps for the demand ahead, the clock advances and
// the controller ticks, and the three fleets are scored.
func Run(o Options) (*Report, error) {
	wallStart := time.Now()
	r, err := newRun(o)
	if err != nil {
		return nil, err
	}
	defer func() { _ = r.ctl.Stop(capping.ExitConfigured) }()
	periods := int(o.Duration / r.period)
	// The controller runs as the agent runs it: fast samples between periods, then the period.
	// Every fast step is scored, so an overshoot between two periods is seen.
	every := r.ctl.FastEvery()
	origin := r.clock.Now()
	r.ctl.Tick(origin) // as Run does: the first period at the start
	for k := 1; k <= periods; k++ {
		elapsed := time.Duration(k) * r.period
		if err := r.applySteps(k, elapsed); err != nil {
			return nil, err
		}
		if err := r.setOracle(elapsed); err != nil {
			return nil, err
		}
		var drawn, peak [3]float64
		for j := 1; j <= every; j++ {
			r.clock.Set(origin.Add(elapsed - r.period + r.period*time.Duration(j)/time.Duration(every)))
			if j < every {
				r.ctl.Sample(r.clock.Now())
			} else {
				r.ctl.Tick(r.clock.Now())
			}
			drawn = [3]float64{drawnW(r.fleets[0]), drawnW(r.fleets[1]), drawnW(r.fleets[2])}
			r.scoreFast(drawn, &peak)
		}
		r.score(k, drawn, peak)
		if o.Sample != nil {
			r.limits = r.ctl.Limits(r.limits[:0])
			o.Sample(Sample{Elapsed: elapsed, BudgetW: r.budgetW, MeasuredW: r.ctl.MeasuredW(), DrawnW: drawn[0],
				CapW: r.ctl.CapW(), StaticW: drawn[1], StaticCapW: r.staticCapW, OracleW: drawn[2], OracleCapW: r.oracleCapW, Limits: r.limits})
		}
	}
	r.rep.Periods = periods
	r.figures(periods)
	r.rep.Wall = time.Since(wallStart)
	return &r.rep, nil
}

// FastSteps is how many fast steps a period of the settings holds: the controller's fast
// samples between periods, and the period's own reading.
func FastSteps(s capping.Settings) int {
	return max(1, int((s.Period+capping.FastInterval/2)/capping.FastInterval))
}

// Policies, in the order of a run's fleets.
const (
	ours = iota
	static
	oracle
)

// runState is one simulation in progress: three identical fleets on one clock (ours steered by the
// controller, static caps, the oracle), the budget steps and the scores so far.
type runState struct {
	clock  *clock.Manual
	period time.Duration
	fleets [3]*sim.Fleet
	model  sim.Model
	trace  sim.Trace
	ctl    *capping.Controller
	src    *sourceAdapter

	staticDevs, oracleDevs []nvml.Device
	limits                 []float64
	orc                    *planner
	oracleMW               []uint32  // the oracle fleet's requested limits
	oracleW                []float64 // the same in watts, for the planner
	oracleCapW             float64   // their sum

	steps      []Step
	next       int // the next budget step
	budgetW    float64
	staticCapW float64 // the static fleet's Σ limits

	base [3]start
	over [3]int     // fast steps above budget
	peak [3]float64 // largest overshoot once settled, as a share of the budget
	// fastSteps counts fast steps; prev is the last one's draw, maxRise the steepest rise of
	// the true Σ draw between two of them.
	fastSteps int
	prev      [3]float64
	prevOK    bool
	maxRise   [3]float64
	// stepAt is the period of the last budget step, step follows it; startup follows the
	// start until the first step.
	stepAt        int
	step, startup settling
	rep           Report
}

// settling follows our fleet after a disturbance until its draw came under the budget and
// stayed within settleBand above it for settleHold periods.
type settling struct {
	// settle is the periods it took to come under the budget (-1: not yet), holdLeft the
	// periods left to confirm it.
	settle, holdLeft int
}

// observe takes the draw of the period sinceStart periods after the disturbance began and
// reports whether the fleet has settled: under the budget, then held within the band.
func (s *settling) observe(sinceStart int, drawnW, budgetW float64) (settled bool) {
	switch {
	case s.settle < 0 && !overBudget(drawnW, budgetW):
		s.settle, s.holdLeft = sinceStart, settleHold
	case s.settle >= 0 && s.holdLeft > 0 && drawnW > budgetW*(1+settleBand):
		s.settle = -1
	}
	if s.settle >= 0 && s.holdLeft > 0 {
		s.holdLeft--
	}
	return s.settle >= 0 && s.holdLeft == 0
}

// newRun checks the options, builds the three fleets and starts the controller on ours.
func newRun(o Options) (*runState, error) {
	if o.Duration <= 0 || o.Settings.Period <= 0 {
		return nil, errors.New("simulation: duration and period must be positive")
	}
	if !(o.BudgetW > 0) {
		return nil, errors.New("simulation: the budget must be a positive number of watts")
	}
	r := &runState{period: o.Settings.Period, budgetW: o.BudgetW, step: settling{settle: -1}, startup: settling{settle: -1}}
	r.rep.Startup.SettlePeriods = -1
	r.steps = append([]Step(nil), o.Steps...)
	sort.SliceStable(r.steps, func(i, j int) bool { return r.steps[i].At < r.steps[j].At })
	r.clock = clock.NewManual(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	for p := range r.fleets {
		f, err := fleetOf(&o, r.clock)
		if err != nil {
			return nil, err
		}
		r.fleets[p] = f
	}
	r.model = r.fleets[ours].Model()
	trace, err := sim.NewTrace(o.Trace, r.model, o.Count, o.Seed)
	if err != nil {
		return nil, err
	}
	r.trace = trace
	set := o.Settings
	set.StateFile = filepath.Join(o.StateDir, "simulate-state.json")
	r.src = &sourceAdapter{b: budget.Budget{Watts: o.BudgetW, Source: "static", Received: r.clock.Now()}}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctl, err := capping.New(capping.Options{Settings: set, Lib: r.fleets[ours], Budget: r.src, Log: log, Now: r.clock.Now})
	if err != nil {
		return nil, err
	}
	if err := ctl.Start(); err != nil {
		return nil, err
	}
	r.ctl = ctl
	r.staticDevs, r.oracleDevs = devices(r.fleets[static]), devices(r.fleets[oracle])
	if r.staticCapW, err = applyStatic(r.staticDevs, r.model, o.BudgetW); err != nil {
		_ = ctl.Stop(capping.ExitConfigured)
		return nil, err
	}
	r.limits = make([]float64, 0, o.Count)
	r.orc = newOracle(r.model, o.Count, r.period)
	r.oracleMW, r.oracleW = make([]uint32, o.Count), make([]float64, o.Count)
	for i, d := range r.oracleDevs {
		var ret nvml.Return
		if r.oracleMW[i], ret = d.GetPowerManagementLimit(); ret != nvml.SUCCESS {
			_ = ctl.Stop(capping.ExitConfigured)
			return nil, fmt.Errorf("simulation: reading the oracle's limit of GPU %d: %w", i, ret)
		}
	}
	for p, f := range r.fleets {
		r.base[p] = snapshot(f)
	}
	return r, nil
}

// applySteps applies the budget steps that fall in period k (ending at elapsed) at its start.
func (r *runState) applySteps(k int, elapsed time.Duration) error {
	for r.next < len(r.steps) && r.steps[r.next].At < elapsed {
		// A step that comes before the hold of the previous disturbance ended takes its
		// settling as it stands.
		if n := len(r.rep.SettlePeriods); n > 0 && r.step.settle >= 0 {
			r.rep.SettlePeriods[n-1] = r.step.settle
		}
		if len(r.rep.SettlePeriods) == 0 && r.startup.settle >= 0 {
			r.rep.Startup.SettlePeriods = r.startup.settle
		}
		r.budgetW = r.steps[r.next].Watts
		r.src.b.Watts = r.budgetW
		var err error
		if r.staticCapW, err = applyStatic(r.staticDevs, r.model, r.budgetW); err != nil {
			return err
		}
		r.rep.SettlePeriods = append(r.rep.SettlePeriods, -1)
		r.rep.StepOvershootPct = append(r.rep.StepOvershootPct, 0)
		r.stepAt, r.step = k-1, settling{settle: -1}
		r.next++
	}
	return nil
}

// setOracle gives the oracle fleet the limits the oracle plans for the period ending at
// elapsed, before it starts. It writes the decreases before the increases, as a controller
// must, so that Σ requested limits stays within the budget between any two writes.
func (r *runState) setOracle(elapsed time.Duration) error {
	r.orc.load(r.trace, elapsed-r.period, elapsed+oracleLead)
	for i, mw := range r.oracleMW {
		r.oracleW[i] = float64(mw) / 1000
	}
	plan := r.orc.choose(r.budgetW, r.oracleW)
	for _, lower := range [2]bool{true, false} {
		for i, d := range r.oracleDevs {
			mw := uint32(math.Floor(plan[i] * 1000))
			if mw == r.oracleMW[i] || (mw < r.oracleMW[i]) != lower {
				continue
			}
			if ret := d.SetPowerManagementLimit(mw); ret != nvml.SUCCESS {
				return fmt.Errorf("simulation: setting the oracle's limit of GPU %d: %w", i, ret)
			}
			r.oracleMW[i] = mw
		}
	}
	r.oracleCapW = 0
	for _, mw := range r.oracleMW {
		r.oracleCapW += float64(mw) / 1000
	}
	return nil
}

// overBudget reports whether drawn is above the budget. A milliwatt (NVML's resolution) is
// allowed: caps may sum to the budget exactly, as static caps do, and a draw coming down onto
// its cap stops within float rounding of it, a hair above.
func overBudget(drawnW, budgetW float64) bool { return drawnW > budgetW+1e-3 }

// scoreFast counts one fast step's time over budget and keeps the period's peak draw.
func (r *runState) scoreFast(drawn [3]float64, peak *[3]float64) {
	r.fastSteps++
	for p := range drawn {
		if overBudget(drawn[p], r.budgetW) {
			r.over[p]++
		}
		peak[p] = max(peak[p], drawn[p])
		if r.prevOK {
			rise := (drawn[p] - r.prev[p]) / (r.period.Seconds() / float64(r.ctl.FastEvery()))
			r.maxRise[p] = max(r.maxRise[p], rise)
		}
	}
	r.prev, r.prevOK = drawn, true
}

// score follows settling after the start or the latest step (on the draw at the period's end),
// and once settled (the start: past the first StartupPeriods) the overshoot (on the period's
// peak draw).
func (r *runState) score(k int, drawn, peak [3]float64) {
	overPct := 100 * (peak[ours] - r.budgetW) / r.budgetW
	var settled bool
	if n := len(r.rep.SettlePeriods); n > 0 {
		settled = r.step.observe(k-r.stepAt, drawn[ours], r.budgetW)
		if settled {
			r.rep.SettlePeriods[n-1] = r.step.settle
		} else {
			r.rep.StepOvershootPct[n-1] = max(r.rep.StepOvershootPct[n-1], overPct)
		}
	} else {
		if r.startup.observe(k, drawn[ours], r.budgetW) {
			r.rep.Startup.SettlePeriods = r.startup.settle
		}
		if k <= warmup {
			r.rep.Startup.OvershootPct = max(r.rep.Startup.OvershootPct, overPct)
		}
		settled = k > warmup
	}
	if settled {
		for p := range peak {
			r.peak[p] = max(r.peak[p], (peak[p]-r.budgetW)/r.budgetW)
		}
	}
}

// figures sums up each policy over the run's periods.
func (r *runState) figures(periods int) {
	figs := [3]*Figures{&r.rep.Ours, &r.rep.Static, &r.rep.Oracle}
	for p, f := range r.fleets {
		end := snapshot(f)
		figs[p].EnergyJ = end.energyJ - r.base[p].energyJ
		figs[p].Work = end.work - r.base[p].work
		figs[p].TimeOverBudgetPct = 100 * float64(r.over[p]) / float64(max(1, r.fastSteps))
		figs[p].MaxOvershootPct = 100 * max(0, r.peak[p])
		figs[p].MaxRiseWps = r.maxRise[p]
	}
}

// sourceAdapter is the run's budget source: static, moved by the budget steps.
type sourceAdapter struct{ b budget.Budget }

func (s *sourceAdapter) Name() string                   { return "static" }
func (s *sourceAdapter) Current() (budget.Budget, bool) { return s.b, true }
func (s *sourceAdapter) Run(context.Context)            {}

type start struct{ energyJ, work float64 }

func snapshot(f *sim.Fleet) start {
	var s start
	for i := range f.Count() {
		st := f.GPU(i).State()
		s.energyJ += st.EnergyJ
		s.work += st.WorkSeconds
	}
	return s
}

func drawnW(f *sim.Fleet) float64 {
	sum := 0.0
	for i := range f.Count() {
		sum += f.GPU(i).State().DrawnW
	}
	return sum
}

func devices(f *sim.Fleet) []nvml.Device {
	out := make([]nvml.Device, f.Count())
	for i := range out {
		out[i], _ = f.DeviceGetHandleByIndex(i)
	}
	return out
}

// applyStatic sets every GPU to B / n within its constraints and returns the Σ limits.
func applyStatic(devs []nvml.Device, m sim.Model, budgetW float64) (float64, error) {
	per := math.Floor(min(max(budgetW/float64(len(devs)), m.MinLimitW), m.MaxLimitW))
	for i, d := range devs {
		if ret := d.SetPowerManagementLimit(uint32(per) * 1000); ret != nvml.SUCCESS {
			return 0, fmt.Errorf("simulation: setting the static limit of GPU %d: %w", i, ret)
		}
	}
	return per * float64(len(devs)), nil
}
