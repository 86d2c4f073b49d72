package sim

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/clock"
)

func steppedFleet(t *testing.T, model, trace string, count int, seed int64, step time.Duration) (*Fleet, *clock.Manual) {
	t.Helper()
	clk := clock.NewManual(epoch)
	f, err := New(Options{Model: model, Count: count, Trace: trace, Seed: seed, Clock: clk, Step: step})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if ret := f.Init(); ret != nvml.SUCCESS {
		t.Fatalf("Init: %v", ret)
	}
	return f, clk
}

// A physics step other than a multiple of 10 ms up to 100 ms is refused, naming the range.
func TestStepRange(t *testing.T) {
	for _, step := range []time.Duration{time.Millisecond, 15 * time.Millisecond, 110 * time.Millisecond, time.Second, -10 * time.Millisecond} {
		_, err := New(Options{Model: "H100", Count: 1, Trace: "steady", Step: step})
		if err == nil || !strings.Contains(err.Error(), "must be a multiple of 10ms from 10ms to 100ms") {
			t.Errorf("step %s: %v", step, err)
		}
	}
	for step, want := range map[time.Duration]time.Duration{0: 10 * time.Millisecond, 10 * time.Millisecond: 10 * time.Millisecond, 50 * time.Millisecond: 50 * time.Millisecond, MaxStep: 100 * time.Millisecond} {
		f, err := New(Options{Model: "H100", Count: 1, Trace: "steady", Step: step})
		if err != nil || f.Step() != want {
			t.Errorf("step %s: %v, runs at %v; want %s", step, err, f, want)
		}
	}
}

// At a coarse step the GPUs do the work, draw the energy and count the power-cap time of the
// 10 ms step, within 0.1 % (the power-cap time 0.5 %), under a limit that moves every second
// (as a controller's would), on every built-in trace and a few models and seeds; the 1 s
// average reads the same.
func TestCoarseStepAgreesWithFineStep(t *testing.T) {
	for i, v := range []struct {
		model, trace string
		step         time.Duration
	}{
		{"H100", "inference", 100 * time.Millisecond}, {"H100", "training", 100 * time.Millisecond},
		{"H200", "lockstep", 100 * time.Millisecond}, {"A100", "bursty", 50 * time.Millisecond},
		{"H100", "roleswap", 20 * time.Millisecond}, {"B200", "imbalanced", 100 * time.Millisecond},
	} {
		fine, fc := steppedFleet(t, v.model, v.trace, 4, int64(i+1), 0)
		coarse, cc := steppedFleet(t, v.model, v.trace, 4, int64(i+1), v.step)
		m := fine.Model()
		var avgFine, avgCoarse float64
		for s := range 300 {
			// A limit between the bottom and the top of the range, new every second.
			w := m.MinLimitW + (m.MaxLimitW-m.MinLimitW)*(0.45+0.5*math.Abs(math.Sin(float64(s)*0.7)))
			for g := range 4 {
				mustOK(t, "set", fine.GPU(g).SetPowerManagementLimit(uint32(w)*1000))
				mustOK(t, "set", coarse.GPU(g).SetPowerManagementLimit(uint32(w)*1000))
			}
			for range 10 {
				fc.Advance(100 * time.Millisecond)
				cc.Advance(100 * time.Millisecond)
				for g := range 4 {
					a, _ := fine.GPU(g).GetPowerUsage()
					b, _ := coarse.GPU(g).GetPowerUsage()
					avgFine += float64(a)
					avgCoarse += float64(b)
				}
			}
		}
		var eF, eC, wF, wC float64
		var vF, vC uint64
		for g := range 4 {
			a, b := fine.GPU(g).State(), coarse.GPU(g).State()
			eF, eC, wF, wC = eF+a.EnergyJ, eC+b.EnergyJ, wF+a.WorkSeconds, wC+b.WorkSeconds
			x, _ := fine.GPU(g).GetViolationStatus(nvml.PERF_POLICY_POWER)
			y, _ := coarse.GPU(g).GetViolationStatus(nvml.PERF_POLICY_POWER)
			vF, vC = vF+x.ViolationTime, vC+y.ViolationTime
		}
		near := func(what string, a, b, share float64) {
			if math.Abs(a-b) > share*math.Abs(a) {
				t.Errorf("%s %s at %s: %s %.6g at 10 ms, %.6g (%+.2f %%)", v.model, v.trace, v.step, what, a, b, 100*(b-a)/a)
			}
		}
		t.Logf("%s %s at %s: energy %+.3f %%, work %+.3f %%, average %+.3f %%, power-cap time %+.3f %%", v.model, v.trace, v.step, 100*(eC-eF)/eF, 100*(wC-wF)/wF, 100*(avgCoarse-avgFine)/avgFine, 100*(float64(vC)-float64(vF))/float64(vF))
		near("energy", eF, eC, 0.001)
		near("work", wF, wC, 0.001)
		near("mean 1 s average", avgFine, avgCoarse, 0.001)
		// 300 s × 4 GPUs: 0.5 % is 6 s of power-cap time.
		near("power-cap time", float64(vF), float64(vC), 0.005)
	}
}

// At a coarse step the power counters still update every 100 ms, each GPU at its own phase
// (the fine step's), and a write still binds 10–20 ms after it, not at the next step.
func TestCoarseStepKeepsCounterPhasesAndWriteLatency(t *testing.T) {
	fine, fc := steppedFleet(t, "H100", "steady", 8, 3, 0)
	coarse, cc := steppedFleet(t, "H100", "steady", 8, 3, MaxStep)
	for range 20 {
		fc.Advance(100 * time.Millisecond)
		cc.Advance(100 * time.Millisecond)
		for g := range 8 {
			_, a := readInstant(t, fine.GPU(g))
			_, b := readInstant(t, coarse.GPU(g))
			if a != b {
				t.Fatalf("GPU %d: counters updated at %d µs at 10 ms, %d µs at 100 ms", g, a, b)
			}
		}
	}
	// A cut to the bottom of the range from a grid instant: 90 ms later the draw has closed
	// the share of the gap the lag closes in 70–80 ms (a write binds 10–20 ms after it).
	d := coarse.GPU(0)
	before := d.State().DrawnW
	mustOK(t, "set", d.SetPowerManagementLimit(200_000))
	cc.Advance(90 * time.Millisecond)
	// The last step ran from the bind to 90 ms and draws the lag's mean over it.
	closed := (before - d.State().DrawnW) / (before - 200)
	mean := func(s float64) float64 { return 1 - (1-math.Exp(-s/0.1))*0.1/s }
	if lo, hi := mean(0.070), mean(0.080); closed < lo-1e-9 || closed > hi+1e-9 {
		t.Errorf("90 ms after a cut the draw closed %.3f of the gap; want %.3f–%.3f (bound 10–20 ms after the write)", closed, lo, hi)
	}
}

// An injected brake shorter than the step counts its own length of power violation time.
func TestCoarseStepCountsABrakeByItsLength(t *testing.T) {
	f, clk := steppedFleet(t, "H100", "steady", 1, 1, MaxStep)
	before, _ := f.GPU(0).GetViolationStatus(nvml.PERF_POLICY_POWER)
	f.InjectPowerBrake(0, 30*time.Millisecond)
	clk.Advance(time.Second)
	after, _ := f.GPU(0).GetViolationStatus(nvml.PERF_POLICY_POWER)
	if got := time.Duration(after.ViolationTime - before.ViolationTime); got != 30*time.Millisecond {
		t.Errorf("a 30 ms brake counted %s of power violation time at a 100 ms step", got)
	}
}
