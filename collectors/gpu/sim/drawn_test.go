package sim

import (
	"testing"
	"time"
)

// DrawnW is State's DrawnW at the clock's now, at the fine and coarse steps, and advances the
// GPU as State does.
func TestDrawnWIsStates(t *testing.T) {
	for _, step := range []time.Duration{0, 30 * time.Millisecond, MaxStep} {
		a, clkA := steppedFleet(t, "H100", "inference", 2, 4, step)
		b, clkB := steppedFleet(t, "H100", "inference", 2, 4, step)
		for k := range 200 {
			d := time.Duration(37+k%5) * time.Millisecond
			clkA.Advance(d)
			clkB.Advance(d)
			for i := range 2 {
				if got, want := a.GPU(i).DrawnW(), b.GPU(i).State(); got != want.DrawnW || a.GPU(i).State() != want {
					t.Fatalf("step %s, GPU %d at %s: DrawnW %v W, State %v W (or the states differ)", step, i, want.Time.Sub(epoch), got, want.DrawnW)
				}
			}
		}
	}
}
