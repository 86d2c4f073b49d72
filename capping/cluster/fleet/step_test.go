package fleet

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
)

// Tolerances within which a fleet run at the default (coarse) physics step must agree with the
// same run at the agent's 10 ms step. docs/cluster-budget.md says why they are enough for the
// oversubscription answer.
const (
	stepThroughputPoints = 0.3 // throughput vs uncapped and vs static, percentage points
	stepOverLimitPoints  = 0.5 // time over limit, percentage points
	stepDrawShare        = 0.01
	stepMaxNodes         = 1 // the oversubscription answer, nodes
	// A few nodes of the lockstep trace swing together between ~250 and ~690 W every 2.5 s,
	// and the controllers' fast cuts land on one swing or the next: the job's trajectory moves
	// with any perturbation (its fast cuts differ by a third between the steps), and so do
	// its figures, by as much between 50 ms and 10 ms as between 100 ms and 10 ms.
	stepLockstepThroughputPoints = 1.0
	stepLockstepDrawShare        = 0.03
)

// stepFleet is a small fleet of every kind of job the issue names, each leaf and the site
// binding: diurnal inference at per-node offsets, lock-step training across nodes, and the
// node-wide lockstep job, on GPU counts and models other than the 1,000-node file's.
func stepFleet(t *testing.T, variant int) *File {
	t.Helper()
	models := []string{"H100", "A100", "H200"}
	gpus := []int{8, 4, 2}
	m, g := models[variant%len(models)], gpus[variant%len(gpus)]
	maxW := map[string]float64{"H100": 700, "H200": 700, "A100": 400}[m]
	node := maxW * float64(g)
	f, err := Parse("step.yaml", fmt.Appendf(nil, `
domains:
  site: {limit_w: %g}
  site/infer: {limit_w: %g, nodes: 6, gpus: %d, model: %s, trace: inference, offset: 10m}
  site/train: {limit_w: %g, nodes: 5, gpus: %d, model: %s, trace: training}
  site/lock: {limit_w: %g, nodes: 4, gpus: %d, model: %s, trace: lockstep}
`, 11*node, 4*node, g, m, 4*node, g, m, 3.2*node, g, m))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func withStep(f *File, step time.Duration) *File {
	c := *f
	c.PhysicsStep = step
	return &c
}

// A run at the default physics step reports what the same run at the 10 ms step reports, within
// the stated tolerances, on several seeds, models and GPU counts.
func TestCoarseStepAgreesWithFineStep(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a small fleet at the 10 ms step")
	}
	for v, seed := range []int64{1, 7, 23} {
		f := stepFleet(t, v)
		if f.PhysicsStep != DefaultPhysicsStep {
			t.Fatalf("the file's physics step is %s; want the default %s", f.PhysicsStep, DefaultPhysicsStep)
		}
		o := Options{Duration: 10 * time.Minute, Settings: settings(), Seed: seed, Baselines: true}
		fine, coarse := o, o
		fine.File, fine.StateDir = withStep(f, 10*time.Millisecond), t.TempDir()
		coarse.File, coarse.StateDir = f, t.TempDir()
		a, err := Run(fine)
		if err != nil {
			t.Fatal(err)
		}
		b, err := Run(coarse)
		if err != nil {
			t.Fatal(err)
		}
		for i, da := range a.Domains {
			db := b.Domains[i]
			drawShare := stepDrawShare
			if da.Path == "site/lock" {
				drawShare = stepLockstepDrawShare
			}
			t.Logf("seed %d %s: over %.2f/%.2f p50 %.0f/%.0f p95 %.0f/%.0f p99 %.0f/%.0f max %.0f/%.0f", seed, da.Path,
				da.TimeOverLimitPct, db.TimeOverLimitPct, da.DrawP50W, db.DrawP50W, da.DrawP95W, db.DrawP95W, da.DrawP99W, db.DrawP99W, da.DrawMaxW, db.DrawMaxW)
			if d := math.Abs(da.TimeOverLimitPct - db.TimeOverLimitPct); d > stepOverLimitPoints {
				t.Errorf("seed %d %s: time over limit %.2f %% at 10 ms, %.2f %% at %s", seed, da.Path, da.TimeOverLimitPct, db.TimeOverLimitPct, DefaultPhysicsStep)
			}
			for _, q := range [][3]any{{"p50", da.DrawP50W, db.DrawP50W}, {"p95", da.DrawP95W, db.DrawP95W}, {"p99", da.DrawP99W, db.DrawP99W}} {
				x, y := q[1].(float64), q[2].(float64)
				if math.Abs(x-y) > drawShare*x {
					t.Errorf("seed %d %s: Σ draw %s %.0f W at 10 ms, %.0f W at %s", seed, da.Path, q[0], x, y, DefaultPhysicsStep)
				}
			}
		}
		for i, ja := range a.Jobs {
			jb := b.Jobs[i]
			points := stepThroughputPoints
			if ja.Trace == "lockstep" {
				points = stepLockstepThroughputPoints
			}
			t.Logf("seed %d %s: vs uncapped %.3f/%.3f vs static %.3f/%.3f", seed, ja.Domain, ja.ThroughputVsUncappedPct, jb.ThroughputVsUncappedPct, ja.ThroughputVsStaticPct, jb.ThroughputVsStaticPct)
			if d := math.Abs(ja.ThroughputVsUncappedPct - jb.ThroughputVsUncappedPct); d > points {
				t.Errorf("seed %d %s: throughput vs uncapped %.2f %% at 10 ms, %.2f %% at %s", seed, ja.Domain, ja.ThroughputVsUncappedPct, jb.ThroughputVsUncappedPct, DefaultPhysicsStep)
			}
			if d := math.Abs(ja.ThroughputVsStaticPct - jb.ThroughputVsStaticPct); d > points {
				t.Errorf("seed %d %s: throughput vs static %.2f %% at 10 ms, %.2f %% at %s", seed, ja.Domain, ja.ThroughputVsStaticPct, jb.ThroughputVsStaticPct, DefaultPhysicsStep)
			}
		}
	}
}

// The oversubscription answer at the default physics step is the 10 ms step's, within a node.
func TestCoarseStepKeepsOversubscriptionAnswer(t *testing.T) {
	if testing.Short() {
		t.Skip("searches at the 10 ms step")
	}
	for _, trace := range []string{"inference", "lockstep"} {
		f, err := Parse("step.yaml", fmt.Appendf(nil, "domains:\n  site: {limit_w: 100000}\n  site/rack: {limit_w: 22400, nodes: 4, gpus: 4, model: H100, trace: %s, offset: 10m}\n", trace))
		if err != nil {
			t.Fatal(err)
		}
		search := func(step time.Duration) Oversubscription {
			o := Options{File: withStep(f, step), Settings: settings(), Seed: 3, StateDir: t.TempDir()}
			out, err := Search(o, SearchOptions{MaxLossPct: 1, Duration: 10 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			return out[0]
		}
		a, b := search(10*time.Millisecond), search(DefaultPhysicsStep)
		t.Logf("%s: nameplate %d, max nodes %d (loss %.2f %%) at 10 ms, %d (loss %.2f %%) at %s", trace, a.NameplateNodes, a.MaxNodes, a.ThroughputLossPct, b.MaxNodes, b.ThroughputLossPct, DefaultPhysicsStep)
		if d := a.MaxNodes - b.MaxNodes; d > stepMaxNodes || d < -stepMaxNodes {
			t.Errorf("%s: max nodes %d at 10 ms, %d at %s", trace, a.MaxNodes, b.MaxNodes, DefaultPhysicsStep)
		}
	}
}

// The fleet file's physics_step sets the simulated GPUs' step; a bad one is refused with the key.
func TestPhysicsStepKey(t *testing.T) {
	const body = "domains:\n  site: {limit_w: 10000, nodes: 1, gpus: 1}\n"
	f, err := Parse("f.yaml", []byte("physics_step: 10ms\n"+body))
	if err != nil {
		t.Fatal(err)
	}
	if f.PhysicsStep != 10*time.Millisecond {
		t.Errorf("physics_step: 10ms gave %s", f.PhysicsStep)
	}
	g, err := Parse("f.yaml", []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if g.PhysicsStep != DefaultPhysicsStep {
		t.Errorf("no physics_step gave %s; want %s", g.PhysicsStep, DefaultPhysicsStep)
	}
	for _, bad := range []string{"0s", "5ms", "15ms", "200ms", "-10ms"} {
		_, err := Parse("f.yaml", []byte("physics_step: "+bad+"\n"+body))
		if err == nil || !strings.Contains(err.Error(), "f.yaml: physics_step: ") || !strings.Contains(err.Error(), "out of range (allowed: a multiple of 10ms from 10ms to 100ms)") {
			t.Errorf("physics_step: %s: %v", bad, err)
		}
	}
	run := func(f *File) *sim.Fleet {
		r, err := start(Options{File: f, Duration: time.Minute, Settings: settings(), Seed: 1, StateDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer r.stop()
		return r.nodes[0].gpus
	}
	if s := run(f).Step(); s != 10*time.Millisecond {
		t.Errorf("physics_step: 10ms ran the GPUs at %s", s)
	}
	if s := run(g).Step(); s != DefaultPhysicsStep {
		t.Errorf("the default ran the GPUs at %s", s)
	}
}
