package capping

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/metrics"
)

// fast advances the clock by d in steps of FastInterval, as Run does: a fast sample at each
// step and a period every FastEvery steps. after, when set, runs after each step.
func (r *rig) fast(d time.Duration, after func()) {
	every := r.c.FastEvery()
	step := r.set.Period / time.Duration(every)
	for range int(d / step) {
		r.clock.Advance(step)
		r.fastK++
		if r.fastK%every == 0 {
			r.c.Tick(r.clock.Now())
		} else {
			r.c.Sample(r.clock.Now())
		}
		if after != nil {
			after()
		}
	}
}

// csvTrace writes a demand trace for the rig's fleet and returns its path.
func csvTrace(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "trace.csv")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkLimits fails when a GPU's requested limit is outside its constraints or Σ limits exceed
// ceilW.
func (r *rig) checkLimits(ceilW float64, when string) {
	r.t.Helper()
	m := r.fleet.Model()
	lim := r.requested()
	for i, l := range lim {
		if l < m.MinLimitW || l > m.MaxLimitW {
			r.t.Fatalf("%s: GPU %d limit %v W outside %v..%v", when, i, l, m.MinLimitW, m.MaxLimitW)
		}
	}
	if s := sum(lim); s > ceilW+mW {
		r.t.Fatalf("%s: Σ limits %.3f W above %.3f W (limits %v)", when, s, ceilW, lim)
	}
}

// Between two 10 s periods, the fast cut takes back the power lent above the budget's static
// share as soon as Σ draw crosses the budget, without raising any GPU's limit; the period does
// not wait for it.
func TestFastCutBetweenPeriods(t *testing.T) {
	// Two GPUs busy, two light until 60 s, when the light ones surge to their limits. A large
	// headroom leaves the light GPUs more than the guard band holds, to lend.
	trace := csvTrace(t, "time_s,gpu0,gpu1,gpu2,gpu3\n0,690,690,250,250\n60,690,690,250,250\n60.01,690,690,690,690\n600,690,690,690,690\n")
	const b = 1800.0
	r := newRigOn(t, trace, 4, b, func(s *Settings) { s.Period = 10 * time.Second; s.HeadroomW = 100 })
	r.fast(60*time.Second, nil)
	if r.c.CapW() <= b {
		t.Fatalf("Σ caps %v W after a minute of two light GPUs: want some of their headroom lent above the %v W budget", r.c.CapW(), b)
	}
	before, cuts := r.requested(), r.c.FastCuts()
	var cutAt time.Duration
	start := r.clock.Now()
	r.fast(5*time.Second, func() {
		if cutAt == 0 && r.c.FastCuts() > cuts {
			cutAt = r.clock.Now().Sub(start)
			after := r.requested()
			for i := range after {
				if after[i] > before[i] {
					t.Errorf("GPU %d's limit rose from %v to %v W in a cut", i, before[i], after[i])
				}
			}
			r.checkLimits(b, "after the cut")
		}
	})
	if cutAt == 0 || cutAt > time.Second {
		t.Fatalf("fast cut %v after the surge (cuts %v), want within a second, not at the next period", cutAt, r.c.FastCuts())
	}
	if r.c.CapW() > b {
		t.Errorf("Σ caps %v W after the cut, want at most the budget %v W", r.c.CapW(), b)
	}
	if got := metricValue(t, r.store, metrics.CappingFastCuts, metrics.AttrCappingScope, "gpu"); got < 1 {
		t.Errorf("capstan.capping.fast_cuts = %v, want at least 1", got)
	}
	if p := r.drawn(); p > b+mW {
		t.Errorf("fleet draws %.1f W after the cut, over the %v W budget", p, b)
	}
}

// Under dry-run the fast cut computes and writes nothing.
func TestFastCutDryRunWritesNothing(t *testing.T) {
	trace := csvTrace(t, "time_s,gpu0,gpu1,gpu2,gpu3\n0,690,690,250,250\n60,690,690,250,250\n60.01,690,690,690,690\n600,690,690,690,690\n")
	r := newRigOn(t, trace, 4, 1800, func(s *Settings) { s.Period = 10 * time.Second; s.HeadroomW = 100; s.DryRun = true })
	r.fast(70*time.Second, nil)
	for i, l := range r.requested() {
		if l != r.fleet.Model().DefaultLimitW {
			t.Errorf("GPU %d limit %v W under dry-run, want its untouched %v", i, l, r.fleet.Model().DefaultLimitW)
		}
	}
}

// A lock-step job: every GPU computes, then every GPU waits on an all-reduce together. Nothing
// is gained by moving power between them, so the controller behaves as static caps do: each
// GPU keeps B / n through the all-reduce, and nothing is lent that the GPUs would surge into.
func TestLockStepKeepsStaticShares(t *testing.T) {
	for _, tc := range []struct {
		n      int
		b      float64
		period time.Duration
	}{{8, 3000, time.Second}, {4, 1700, time.Second}, {8, 3400, 100 * time.Millisecond}, {16, 6000, 2 * time.Second}} {
		r := newRigOn(t, "lockstep", tc.n, tc.b, func(s *Settings) { s.Period = tc.period })
		r.fast(30*time.Second, nil)
		per := tc.b / float64(tc.n)
		over := 0
		r.fast(30*time.Second, func() {
			for i, l := range r.requested() {
				if l < per-1 || l > per {
					t.Fatalf("%d GPUs, %v W, period %v: GPU %d limit %v W, want its static share %v W", tc.n, tc.b, tc.period, i, l, per)
				}
			}
			if r.drawn() > tc.b+mW {
				over++
			}
		})
		if over > 0 {
			t.Errorf("%d GPUs, %v W: over budget in %d fast steps", tc.n, tc.b, over)
		}
	}
}

// A GPU that turns busy gets its fair share back at the next period, taken from the GPU that
// borrowed it, even though that one still remembers needing it.
func TestBusyGPUReclaimsItsShareAtOnce(t *testing.T) {
	trace := csvTrace(t, "time_s,gpu0,gpu1\n0,690,200\n30,690,200\n30.01,200,690\n600,200,690\n")
	r := newRigOn(t, trace, 2, 900, nil)
	r.fast(30*time.Second, nil)
	if l := r.requested(); l[0] < 600 {
		t.Fatalf("limits %v after 30 s with GPU 1 light: want GPU 0 to have borrowed its share", l)
	}
	r.fast(2*time.Second, nil)
	if l := r.requested(); l[1] < 450 {
		t.Errorf("limits %v 2 s after GPU 1 turned busy: want at least its fair share 450 W", l)
	}
	r.fast(10*time.Second, nil)
	if l := r.requested(); l[1] < 600 {
		t.Errorf("limits %v 10 s after the swap: want GPU 1 to have the power GPU 0 no longer uses", l)
	}
}

// The ramp and swing of Σ GPU power are published: a lock-step job swings by the difference
// between its compute and all-reduce power, within about 100 ms.
func TestRampAndSwingPublished(t *testing.T) {
	r := newRigOn(t, "lockstep", 8, 3000, nil)
	maxRise := 0.0
	r.fast(30*time.Second, func() {
		if r.fastK%r.c.FastEvery() == 0 {
			maxRise = max(maxRise, metricValue(t, r.store, metrics.CappingPowerRamp, metrics.AttrRampDirection, "rise"))
		}
	})
	// Compute draws 8 × 375 W (capped), the all-reduce about 8 × 250 W.
	swing := metricValue(t, r.store, metrics.CappingPowerSwing, metrics.AttrCappingScope, "gpu")
	if swing < 800 || swing > 1200 {
		t.Errorf("swing %.0f W, want about 1000 W", swing)
	}
	if maxRise < 2000 {
		t.Errorf("steepest rise %.0f W/s, want the ~1000 W surge within a few 100 ms samples", maxRise)
	}
}

// The rise limit holds Σ caps back after a budget increase to the configured watts per second.
func TestMaxRiseLimitsTheCapsRise(t *testing.T) {
	r := newRigOn(t, "steady", 4, 1200, func(s *Settings) { s.MaxRiseWps = 50 })
	r.fast(20*time.Second, nil)
	r.src.set(2000)
	prev := r.c.CapW()
	for range 10 {
		r.fast(time.Second, nil)
		if rise := r.c.CapW() - prev; rise > 50+1e-9 {
			t.Fatalf("Σ caps rose %.1f W in a 1 s period, want at most 50", rise)
		}
		prev = r.c.CapW()
	}
	if prev < 1200+9*50 {
		t.Errorf("Σ caps %v W 10 s after the budget rose to 2000 W, want them rising at 50 W/s", prev)
	}
}

// newRigOn is newRig on any trace, a CSV path included.
func newRigOn(t *testing.T, trace string, count int, budgetW float64, edit func(*Settings)) *rig {
	t.Helper()
	if strings.HasSuffix(trace, ".csv") {
		if _, err := sim.LoadCSVTrace(trace); err != nil {
			t.Fatal(err)
		}
	}
	return newRig(t, trace, count, budgetW, edit)
}

// BenchmarkSample measures one fast sample between periods for 8 GPUs, simulated NVML calls
// included.
func BenchmarkSample(b *testing.B) {
	clk := clock.NewManual(time.Unix(0, 0))
	fleet, _ := sim.New(sim.Options{Model: "H100", Count: 8, Trace: "lockstep", Clock: clk})
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		b.Fatal(ret)
	}
	set := Defaults()
	set.StateFile = filepath.Join(b.TempDir(), "s.json")
	src := &staticSource{}
	src.set(3000)
	c, err := New(Options{Settings: set, Lib: fleet, Budget: src, Now: clk.Now})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Start(); err != nil {
		b.Fatal(err)
	}
	c.Tick(clk.Now())
	b.ReportAllocs()
	for b.Loop() {
		clk.Advance(10 * time.Millisecond)
		c.Sample(clk.Now())
	}
}

// With scope node, the host's power counts in the fast path too: when the CPU packages' power
// jumps between two 10 s periods, the GPUs' caps come down to what the budget leaves them
// within a fast sample.
func TestFastCutFollowsHostPower(t *testing.T) {
	r := newRigOn(t, "steady", 4, 2000, func(s *Settings) { s.Scope = "node"; s.Period = 10 * time.Second })
	host := &fixedHost{w: 300, at: r.clock.Now()}
	r.host = host
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	r.startOn(r.fleet, r.src)
	r.fast(40*time.Second, func() { host.at = r.clock.Now() })
	r.checkLimits(2000-300, "with the packages at 300 W")
	host.w = 600
	cuts := r.c.FastCuts()
	r.fast(200*time.Millisecond, func() { host.at = r.clock.Now() })
	if r.c.FastCuts() == cuts {
		t.Fatalf("no fast cut within 200 ms of the packages' power rising to 600 W; limits %v", r.requested())
	}
	r.checkLimits(2000-600, "after the packages rose to 600 W")
}
