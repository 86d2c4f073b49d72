package sim

import (
	"math"
	"testing"
	"time"
)

// At a coarse step a GPU takes the inference trace's day once a second: its demand stays
// within the day's move over a second (2.2e-5 of the top limit) of the trace's own at every
// substep, on several models, GPUs and times of day; at the 10 ms step, and on every other
// trace, it is the trace's demand bit for bit.
func TestCoarseStepDayCycleWithinASecond(t *testing.T) {
	for _, model := range []string{"H100", "A100", "B200"} {
		for _, trace := range TraceNames() {
			coarse, _ := steppedFleet(t, model, trace, 4, 3, MaxStep)
			fine, _ := steppedFleet(t, model, trace, 4, 3, 0)
			m := coarse.Model()
			bound := 0.30 * 2 * math.Pi / day.Seconds() * m.MaxLimitW // the day's most per second
			worst := 0.0
			for _, f := range []*Fleet{coarse, fine} {
				for i := range f.Count() {
					g := f.GPU(i)
					for k := range int64(20000) {
						at := k*977 + int64(i)*13 // substeps across most of a day
						want := f.trace.Demand(i, time.Duration(at)*substep)
						got := g.traceDemand(at, f.stepN > 1)
						diff := math.Abs(got - want)
						if f == fine || trace != "inference" {
							if math.Float64bits(got) != math.Float64bits(want) {
								t.Fatalf("%s %s step %s GPU %d at substep %d: demand %v, the trace's %v; want them equal", model, trace, f.Step(), i, at, got, want)
							}
							continue
						}
						worst = max(worst, diff)
					}
				}
			}
			if worst > bound {
				t.Errorf("%s %s: a coarse step's demand off the trace's by up to %.6f W; want ≤ %.6f W", model, trace, worst, bound)
			}
			if trace == "inference" {
				t.Logf("%s: coarse step's demand within %.6f W of the trace's (bound %.6f W)", model, worst, bound)
			}
		}
	}
}
