package fleet

import (
	"math"
	"testing"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
)

// The baselines' work rates are sim.Model.WorkRate's, bit for bit, for every model, limit and
// demand (below idle, NaN, in the capped range, over the top), whatever demand came before.
func TestWorkRatesAreModelWorkRate(t *testing.T) {
	for _, name := range sim.Models() {
		m, err := sim.LookupModel(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, staticW := range []float64{m.MinLimitW, (m.MinLimitW + m.MaxLimitW) / 2, m.MaxLimitW} {
			r := newWorkRates(m, m.DefaultLimitW, staticW)
			demands := []float64{math.NaN(), -1, 0, m.IdleW, m.IdleW + 0.02*m.MaxLimitW, math.Inf(1)}
			for k := range 2000 {
				demands = append(demands, float64(k)*1.2*m.MaxLimitW/2000)
				demands = append(demands, demands[len(demands)-1]) // a repeat takes the kept cube root
			}
			for _, d := range demands {
				u, s := r.at(d)
				if wu, ws := m.WorkRate(d, m.DefaultLimitW), m.WorkRate(d, staticW); u != wu || s != ws {
					t.Fatalf("%s, static %.0f W, demand %v W: rates %v, %v; Model.WorkRate %v, %v", name, staticW, d, u, s, wu, ws)
				}
				if w, _ := m.BusyDemand(d); r.clamp(d) != w {
					t.Fatalf("%s, demand %v W: kept at %v W, BusyDemand %v W", name, d, r.clamp(d), w)
				}
			}
		}
	}
}
