// Package simulation runs the real capping controller against the simulated GPU fleet on a
// manual clock, far faster than real time, next to two baselines on identical fleets: static
// uniform caps (B / n per GPU, what `nvidia-smi -pl` gives) and an oracle that knows every GPU's
// demand for the coming period and water-fills the budget over it with no lag. `capstan
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
	OracleW   float64 // what the oracle fleet drew
	Limits    []float64
}

// Figures describe one policy over a run.
type Figures struct {
	EnergyJ float64 `json:"energy_j"`
	// Work is the work done, in GPU-seconds at full clock.
	Work              float64 `json:"work"`
	TimeOverBudgetPct float64 `json:"time_over_budget_pct"`
	MaxOvershootPct   float64 `json:"max_overshoot_pct"`
}

// Report is the outcome of a run.
type Report struct {
	Ours, Static, Oracle Figures
	// SettlePeriods is, per budget step, how many periods after it drawn power came under the
	// new budget and stayed within 2 % above it for the following 10 periods; -1 when it never
	// did.
	SettlePeriods []int
	Periods       int
	Wall          time.Duration
}

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

// Run simulates o.Duration and returns the report.
func Run(o Options) (*Report, error) {
	if o.Duration <= 0 || o.Settings.Period <= 0 {
		return nil, errors.New("simulation: duration and period must be positive")
	}
	if !(o.BudgetW > 0) {
		return nil, errors.New("simulation: the budget must be a positive number of watts")
	}
	steps := append([]Step(nil), o.Steps...)
	sort.SliceStable(steps, func(i, j int) bool { return steps[i].At < steps[j].At })
	wallStart := time.Now()
	clock := clock.NewManual(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	ours, err := fleetOf(&o, clock)
	if err != nil {
		return nil, err
	}
	static, err := fleetOf(&o, clock)
	if err != nil {
		return nil, err
	}
	oracle, err := fleetOf(&o, clock)
	if err != nil {
		return nil, err
	}
	trace, err := sim.NewTrace(o.Trace, ours.Model(), o.Count, o.Seed)
	if err != nil {
		return nil, err
	}
	set := o.Settings
	set.StateFile = filepath.Join(o.StateDir, "simulate-state.json")
	src := &sourceAdapter{b: budget.Budget{Watts: o.BudgetW, Source: "static", Received: clock.Now()}}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctl, err := capping.New(capping.Options{Settings: set, Lib: ours, Budget: src, Log: log, Now: clock.Now})
	if err != nil {
		return nil, err
	}
	if err := ctl.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = ctl.Stop(capping.ExitConfigured) }()

	r := &Report{}
	n := o.Count
	model := ours.Model()
	staticDevs := devices(static)
	oracleDevs := devices(oracle)
	if err := applyStatic(staticDevs, model, o.BudgetW); err != nil {
		return nil, err
	}
	demand := make([]float64, n)
	shares := make([]float64, n)
	limits := make([]float64, 0, n)
	base := [3]start{snapshot(ours), snapshot(static), snapshot(oracle)}
	var over [3]int
	var peak [3]float64
	budgetW := o.BudgetW
	next := 0
	stepAt := 0 // period of the last budget step
	settle := -1
	holdLeft := 0
	periods := int(o.Duration / set.Period)
	for k := 1; k <= periods; k++ {
		elapsed := time.Duration(k) * set.Period
		// Budget steps that fall in this period apply at its start.
		for next < len(steps) && steps[next].At < elapsed {
			if settle >= 0 && len(r.SettlePeriods) > 0 {
				r.SettlePeriods[len(r.SettlePeriods)-1] = settle // the next step came before the hold ended
			}
			budgetW = steps[next].Watts
			src.b.Watts = budgetW
			if err := applyStatic(staticDevs, model, budgetW); err != nil {
				return nil, err
			}
			r.SettlePeriods = append(r.SettlePeriods, -1)
			stepAt, settle, holdLeft = k-1, -1, 0
			next++
		}
		// The oracle sees the demand of the period ahead and sets its caps before it starts.
		from := elapsed - set.Period
		for i := range n {
			d := 0.0
			for t := from; t < elapsed; t += 10 * time.Millisecond {
				d = max(d, trace.Demand(i, t))
			}
			demand[i] = min(max(d, model.IdleW), 1.05*model.MaxLimitW)
		}
		waterFill(demand, shares, budgetW, model)
		for i, d := range oracleDevs {
			if ret := d.SetPowerManagementLimit(uint32(math.Floor(shares[i])) * 1000); ret != nvml.SUCCESS {
				return nil, fmt.Errorf("simulation: setting the oracle's limit of GPU %d: %w", i, ret)
			}
		}

		clock.Advance(set.Period)
		ctl.Tick(clock.Now())

		drawn := [3]float64{drawnW(ours), drawnW(static), drawnW(oracle)}
		for p := range drawn {
			if drawn[p] > budgetW {
				over[p]++
			}
		}
		// Settling after the latest step, and overshoot once settled.
		sinceStep := k - stepAt
		settled := len(r.SettlePeriods) == 0 && k > warmup
		if len(r.SettlePeriods) > 0 {
			switch {
			case settle < 0 && drawn[0] <= budgetW:
				settle, holdLeft = sinceStep, settleHold
			case settle >= 0 && holdLeft > 0 && drawn[0] > budgetW*(1+settleBand):
				settle = -1
			}
			if settle >= 0 && holdLeft > 0 {
				holdLeft--
				if holdLeft == 0 {
					r.SettlePeriods[len(r.SettlePeriods)-1] = settle
				}
			}
			settled = settle >= 0 && holdLeft == 0
		}
		if settled {
			for p := range drawn {
				peak[p] = max(peak[p], (drawn[p]-budgetW)/budgetW)
			}
		}
		if o.Sample != nil {
			limits = ctl.Limits(limits[:0])
			o.Sample(Sample{Elapsed: elapsed, BudgetW: budgetW, MeasuredW: ctl.MeasuredW(), DrawnW: drawn[0],
				CapW: ctl.CapW(), StaticW: drawn[1], OracleW: drawn[2], Limits: limits})
		}
	}
	r.Periods = periods
	figs := [3]*Figures{&r.Ours, &r.Static, &r.Oracle}
	for p, f := range []*sim.Fleet{ours, static, oracle} {
		end := snapshot(f)
		figs[p].EnergyJ = end.energyJ - base[p].energyJ
		figs[p].Work = end.work - base[p].work
		figs[p].TimeOverBudgetPct = 100 * float64(over[p]) / float64(max(1, periods))
		figs[p].MaxOvershootPct = 100 * max(0, peak[p])
	}
	r.Wall = time.Since(wallStart)
	return r, nil
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

// applyStatic sets every GPU to B / n within its constraints.
func applyStatic(devs []nvml.Device, m sim.Model, budgetW float64) error {
	per := min(max(budgetW/float64(len(devs)), m.MinLimitW), m.MaxLimitW)
	for i, d := range devs {
		if ret := d.SetPowerManagementLimit(uint32(math.Floor(per)) * 1000); ret != nvml.SUCCESS {
			return fmt.Errorf("simulation: setting the static limit of GPU %d: %w", i, ret)
		}
	}
	return nil
}

// waterFill gives each GPU min(demand, level) within its constraints, with the level chosen so
// the caps sum to the budget (or every demand is met).
func waterFill(demand, caps []float64, budgetW float64, m sim.Model) {
	capAt := func(level float64) float64 {
		sum := 0.0
		for i, d := range demand {
			caps[i] = min(max(min(d, level), m.MinLimitW), m.MaxLimitW)
			sum += caps[i]
		}
		return sum
	}
	lo, hi := 0.0, m.MaxLimitW
	if capAt(hi) <= budgetW {
		return
	}
	for range 50 {
		mid := (lo + hi) / 2
		if capAt(mid) > budgetW {
			hi = mid
		} else {
			lo = mid
		}
	}
	capAt(lo)
}
