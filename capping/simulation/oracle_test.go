package simulation

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
)

// TestOracleNeverLosesToStaticCaps runs the oracle beside static caps (B / n per GPU) on every
// built-in trace, on several models, GPU counts, seeds, budgets and periods: it must do at
// least the work static caps do, and its Σ requested limits must stay within the budget in
// every period.
func TestOracleNeverLosesToStaticCaps(t *testing.T) {
	type variant struct {
		model  string
		count  int
		seed   int64
		share  float64 // budget, share of Σ max
		period time.Duration
	}
	variants := []variant{
		{"H100", 8, 1, 0.536, time.Second}, // the lock-step example: 3000 W on 8 × H100
		{"H100", 8, 2, 0.7, 100 * time.Millisecond},
		{"A100", 4, 3, 0.6, time.Second},
		{"B200", 5, 4, 0.5, 2 * time.Second},
		{"H200", 16, 5, 0.65, 500 * time.Millisecond},
	}
	traces := append(sim.TraceNames(), "../../collectors/gpu/sim/testdata/sample.csv")
	for _, trace := range traces {
		for _, v := range variants {
			name := fmt.Sprintf("%s/%s×%d/seed%d/%.0f%%/%v", trace, v.model, v.count, v.seed, 100*v.share, v.period)
			t.Run(name, func(t *testing.T) {
				m, err := sim.LookupModel(v.model)
				if err != nil {
					t.Fatal(err)
				}
				budgetW := math.Round(v.share * m.MaxLimitW * float64(v.count))
				set := capping.Defaults()
				set.Period = v.period
				periods, overs := 0, 0
				r, err := Run(Options{Model: v.model, Trace: trace, Count: v.count, Seed: v.seed, BudgetW: budgetW,
					Duration: 8 * time.Minute, Settings: set, StateDir: t.TempDir(),
					Sample: func(s Sample) {
						periods++
						if s.OracleCapW > s.BudgetW+1e-9 {
							overs++
							if overs == 1 {
								t.Errorf("at %v the oracle's Σ limits %.3f W exceed the budget %.0f W", s.Elapsed, s.OracleCapW, s.BudgetW)
							}
						}
					}})
				if err != nil {
					t.Fatal(err)
				}
				if periods == 0 {
					t.Fatal("no period sampled")
				}
				// Identical limits give identical fleets; 1e-9 leaves room for the last bits of
				// the sums only.
				if r.Oracle.Work < r.Static.Work*(1-1e-9) {
					t.Errorf("oracle work %.3f < static caps' %.3f (%.3f %%)", r.Oracle.Work, r.Static.Work, pct(r.Oracle.Work, r.Static.Work))
				}
				t.Logf("oracle %.3f %% of static caps", pct(r.Oracle.Work, r.Static.Work))
			})
		}
	}
}

// TestOracleGainsWhereDemandDiffers checks the oracle is more than static caps where the GPUs
// want different power: on the imbalanced and role-swap traces it moves the light GPUs'
// surplus to the busy ones.
func TestOracleGainsWhereDemandDiffers(t *testing.T) {
	for _, trace := range []string{"imbalanced", "roleswap"} {
		r := run(t, trace, 0.6*5600, 10*time.Minute, time.Second)
		if gain := pct(r.Oracle.Work, r.Static.Work); gain < 104 {
			t.Errorf("%s: oracle %.2f %% of static caps, want the light GPUs' surplus used (≥ 104 %%)", trace, gain)
		}
	}
}

// TestPlannerSplitsByWorkSlope checks the planner's split on hand-made demand: a GPU whose
// demand the budget covers gets just that, and the rest goes to the power-bound GPUs so that
// their work slopes match; its plan never does less work than B / n on the same demand, and
// never exceeds the budget.
func TestPlannerSplitsByWorkSlope(t *testing.T) {
	m, _ := sim.LookupModel("H100")
	tests := []struct {
		name    string
		demand  []float64 // constant per GPU
		budgetW float64
		check   func(t *testing.T, plan []float64)
	}{
		{"equal demand is static caps", []float64{690, 690, 690, 690}, 1500, func(t *testing.T, plan []float64) {
			for i, l := range plan {
				if math.Abs(l-375) > 0.01 {
					t.Errorf("GPU %d gets %.2f W, want 375 W", i, l)
				}
			}
		}},
		{"a light GPU gives its surplus", []float64{690, 690, 250, 690}, 1500, func(t *testing.T, plan []float64) {
			if math.Abs(plan[2]-250) > 0.01 || math.Abs(plan[0]-plan[1]) > 0.01 || math.Abs(plan[0]-(1500-250)/3.0) > 0.01 {
				t.Errorf("plan %.2f, want 250 W for the light GPU and the rest split evenly", plan)
			}
		}},
		{"a budget over every demand is spread", []float64{300, 400, 250, 500}, 2400, func(t *testing.T, plan []float64) {
			for i, l := range plan {
				if l < []float64{300, 400, 250, 500}[i] {
					t.Errorf("GPU %d gets %.2f W, under its demand", i, l)
				}
			}
		}},
		{"a budget under Σ min leaves every GPU at its minimum", []float64{690, 690}, 300, func(t *testing.T, plan []float64) {
			if plan[0] != 200 || plan[1] != 200 {
				t.Errorf("plan %.2f, want the minimum", plan)
			}
		}},
		{"unequal demand above the cap", []float64{700, 500, 600, 650}, 1600, func(t *testing.T, plan []float64) {
			// The slope ∛(L/d)' = 1 / (3 L^⅔ d^⅓) is equal when L ∝ d^{-1/2}: the lower the
			// demand, the more of it a watt buys.
			for i := range plan {
				for j := range plan {
					want := math.Sqrt([]float64{700, 500, 600, 650}[j] / []float64{700, 500, 600, 650}[i])
					if got := plan[i] / plan[j]; math.Abs(got-want) > 1e-3 {
						t.Errorf("GPUs %d:%d split %.4f, want %.4f", i, j, got, want)
					}
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newOracle(m, len(tt.demand), time.Second)
			p.load(constTrace(tt.demand), 0, time.Second)
			plan := append([]float64(nil), p.planFor(tt.budgetW)...)
			sum := 0.0
			for _, l := range plan {
				sum += l
				if l < m.MinLimitW || l > m.MaxLimitW {
					t.Errorf("limit %.2f W outside the constraints", l)
				}
			}
			if sum > max(tt.budgetW, m.MinLimitW*float64(len(plan)))+1e-9 {
				t.Errorf("Σ plan %.3f W over the budget %.0f W", sum, tt.budgetW)
			}
			if p.work(plan) < p.staticWork(tt.budgetW)-1e-9 {
				t.Errorf("plan work %.4f under static caps' %.4f", p.work(plan), p.staticWork(tt.budgetW))
			}
			tt.check(t, plan)
		})
	}
}

type constTrace []float64

func (c constTrace) Demand(gpu int, _ time.Duration) float64 { return c[gpu] }

// TestPlannerWorkIsTheSimulatorsLaw checks the planner's closed-form work over a window equals
// sim.Model.WorkRate summed over the same samples, on every model and trace, for limits across
// the constraints, also when the window slides and keeps samples it read before.
func TestPlannerWorkIsTheSimulatorsLaw(t *testing.T) {
	for _, model := range sim.Models() {
		m, _ := sim.LookupModel(model)
		for _, trace := range sim.TraceNames() {
			tr, err := sim.NewTrace(trace, m, 3, 5)
			if err != nil {
				t.Fatal(err)
			}
			p := newOracle(m, 3, 700*time.Millisecond)
			for k := range 4 {
				from := time.Duration(k) * 700 * time.Millisecond
				to := from + 700*time.Millisecond + oracleLead
				p.load(tr, from, to)
				for _, l := range []float64{m.MinLimitW, (m.MinLimitW + m.MaxLimitW) / 2, m.MaxLimitW} {
					for i := range 3 {
						want := 0.0
						for at := from; at < to; at += oracleSample {
							want += m.WorkRate(tr.Demand(i, at), l)
						}
						if got := p.gpus[i].workAt(l); math.Abs(got-want) > 1e-9*max(1, want) {
							t.Fatalf("%s %s window %d GPU %d at %.0f W: planner work %.9f, simulator's law %.9f", model, trace, k, i, l, got, want)
						}
					}
				}
			}
		}
	}
}
