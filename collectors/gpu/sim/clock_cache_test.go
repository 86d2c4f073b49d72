package sim

import (
	"math"
	"testing"
)

// The SM clock a GPU computes with its cached cube root is the clock the law gives afresh,
// bit for bit, whether the share it may draw holds still or moves.
func TestClockForCacheExact(t *testing.T) {
	f, _ := newFleet(t, "H100", "steady", 1)
	g := f.GPU(0)
	m := &f.model
	fresh := func(demandW, drawnW, capW float64) float64 {
		switch {
		case demandW <= m.busyThresholdW():
			return float64(m.IdleSMClockMHz)
		case demandW <= capW:
			return float64(m.MaxSMClockMHz)
		}
		return max(float64(m.IdleSMClockMHz), float64(m.MaxSMClockMHz)*math.Cbrt(min(1, drawnW/demandW)))
	}
	n := noise(3)
	for k := range int64(20000) {
		demand := 60 + 700*n.unit(streamLevel, 0, k/7) // holds for a few steps at a time
		capW := 200 + 500*n.unit(streamCuts, 0, k/5)
		drawn := min(demand, capW)
		if got, want := g.clockFor(demand, drawn, capW), fresh(demand, drawn, capW); math.Float64bits(got) != math.Float64bits(want) {
			t.Fatalf("step %d: demand %v, drawn %v, cap %v: clock %v, want %v", k, demand, drawn, capW, got, want)
		}
	}
}
