package fleet

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/clock"
)

// The closed-form baselines agree with the same GPUs stepped by the simulator at the 10 ms
// step: the static baseline's Σ draw at every period within 0.1 W per GPU (the power lag's
// tail after the static caps are written, then nothing), and both baselines' work within
// 0.05 % over the run, whatever the trace, model, GPU count, seed, offset, static cap and
// period. The closed form's work takes the demand a node's GPUs sampled at the fleet's own
// physics step (sim.Options.OnDemand), as in a run.
func TestBaselineMatchesStepped(t *testing.T) {
	for i, v := range []struct {
		trace, model string
		gpus         int
		staticW      float64
		offset       time.Duration
		period       time.Duration
	}{
		{"inference", "H100", 8, 450, 17 * time.Minute, time.Second},
		{"training", "H100", 4, 500, 0, time.Second},
		{"bursty", "A100", 2, 250, time.Hour, 2 * time.Second},
		{"steady", "B200", 3, 700, 0, time.Second},
		{"imbalanced", "H200", 4, 400, 3 * time.Minute, 500 * time.Millisecond},
		{"lockstep", "H100", 8, 550, 0, 250 * time.Millisecond},
		{"roleswap", "H100", 8, 500, 5 * time.Minute, 150 * time.Millisecond},
		{"inference", "A100", 1, 100, 6 * time.Hour, time.Second},
	} {
		t.Run(fmt.Sprintf("%s-%s-%d", v.trace, v.model, v.gpus), func(t *testing.T) {
			clk := clock.NewManual(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			r := &run{clock: clk}
			d := &Domain{GPUs: v.gpus, Model: v.model, Trace: v.trace}
			seed := int64(100 + i)
			uncapped, err := r.fleet(clk, d, seed, v.offset, nil)
			if err != nil {
				t.Fatal(err)
			}
			static, err := r.fleet(clk, d, seed, v.offset, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := setAll(static, v.staticW); err != nil {
				t.Fatal(err)
			}
			// The fleets' work counts from their trace's start, the offset before the run.
			work0 := [2]float64{workOf(uncapped), workOf(static)}
			b, err := newBaseline(d, static.Model(), seed, v.offset, v.staticW)
			if err != nil {
				t.Fatal(err)
			}
			// The node's own GPUs, at the fleet's physics step, whose steps the baselines take.
			capped, err := (&run{clock: clk, o: Options{File: &File{PhysicsStep: DefaultPhysicsStep}}}).fleet(clk, d, seed, v.offset, b.step)
			if err != nil {
				t.Fatal(err)
			}
			workOf(capped) // brings it through its offset, as a run's build does
			b.restart()
			const run = 20 * time.Minute
			periods := int(run / v.period)
			worst := 0.0
			for k := 1; k <= periods; k++ {
				clk.Advance(v.period)
				want := drawn(static)
				drawn(uncapped)
				drawn(capped)
				got := b.drawAt(time.Duration(k) * v.period)
				if k*int(v.period/time.Millisecond) >= 1000 { // after the static caps' first second
					worst = math.Max(worst, math.Abs(got-want)/float64(v.gpus))
				}
			}
			workUncapped, workStatic := b.done()
			t.Logf("static Σ draw: closed form off the stepped fleet by up to %.4f W per GPU", worst)
			if worst > 0.1 {
				t.Errorf("static Σ draw: closed form off the stepped fleet by up to %.3f W per GPU; want ≤ 0.1", worst)
			}
			for _, c := range []struct {
				name      string
				got, want float64
			}{{"uncapped", workUncapped, workOf(uncapped) - work0[0]}, {"static", workStatic, workOf(static) - work0[1]}} {
				if c.want <= 0 || math.Abs(c.got-c.want)/c.want > 0.0005 {
					t.Errorf("%s work: closed form %.3f GPU-s, stepped %.3f GPU-s (%+.4f %%); want within 0.05 %%", c.name, c.got, c.want, 100*(c.got-c.want)/c.want)
				}
				t.Logf("%s work: closed form %.3f GPU-s, stepped %.3f (%+.4f %%)", c.name, c.got, c.want, 100*(c.got-c.want)/c.want)
			}
		})
	}
}

// A run's report is the same whether its baselines are stepped by the simulator or in closed
// form, within the closed form's tolerance, and counts only the run's work: a node's trace
// starts its offset before the run, and what its GPUs did then is no part of any figure.
func TestRunBaselinesClosedForm(t *testing.T) {
	f, err := Parse("f.yaml", []byte(`
domains:
  site: {limit_w: 40000}
  site/a: {limit_w: 12000, nodes: 3, gpus: 8, trace: inference, offset: 40m}
  site/b: {limit_w: 9000, nodes: 2, gpus: 8, trace: training, offset: 1h}
`))
	if err != nil {
		t.Fatal(err)
	}
	const dur = 3 * time.Minute
	var reps [2]*Report
	for i := range reps {
		reps[i], err = Run(Options{File: f, Duration: dur, Settings: settings(), Seed: 9, Baselines: true, StateDir: t.TempDir(), stepped: i == 0})
		if err != nil {
			t.Fatal(err)
		}
	}
	for j, s := range reps[0].Jobs {
		c := reps[1].Jobs[j]
		if s.WorkGPUSeconds != c.WorkGPUSeconds {
			t.Errorf("%s: our fleet's work %.3f stepped, %.3f closed form; the baselines must not change it", s.Domain, s.WorkGPUSeconds, c.WorkGPUSeconds)
		}
		if most := dur.Seconds() * float64(s.Nodes*s.GPUs); s.WorkGPUSeconds > most {
			t.Errorf("%s: %.0f GPU-s of work in a run of at most %.0f", s.Domain, s.WorkGPUSeconds, most)
		}
		if math.Abs(s.ThroughputVsUncappedPct-c.ThroughputVsUncappedPct) > 0.05 || math.Abs(s.ThroughputVsStaticPct-c.ThroughputVsStaticPct) > 0.05 {
			t.Errorf("%s: throughput vs uncapped %.3f / %.3f %%, vs static %.3f / %.3f %% (stepped / closed form); want within 0.05", s.Domain,
				s.ThroughputVsUncappedPct, c.ThroughputVsUncappedPct, s.ThroughputVsStaticPct, c.ThroughputVsStaticPct)
		}
		t.Logf("%s: throughput vs uncapped %.4f / %.4f %%, vs static %.4f / %.4f %%", s.Domain,
			s.ThroughputVsUncappedPct, c.ThroughputVsUncappedPct, s.ThroughputVsStaticPct, c.ThroughputVsStaticPct)
	}
	for d, s := range reps[0].Domains {
		if c := reps[1].Domains[d]; s.StaticTimeOverLimitPct != c.StaticTimeOverLimitPct {
			t.Errorf("%s: static time over limit %.2f %% stepped, %.2f %% closed form", s.Path, s.StaticTimeOverLimitPct, c.StaticTimeOverLimitPct)
		}
	}
}
