package capping

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

// varBudget is a budget source a test moves by hand.
type varBudget struct {
	mu sync.Mutex
	b  budget.Budget
	ok bool
}

func (v *varBudget) Name() string { return "static" }
func (v *varBudget) Current() (budget.Budget, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.b, v.ok
}
func (v *varBudget) Run(context.Context) {}
func (v *varBudget) set(w float64) {
	v.mu.Lock()
	v.b.Watts, v.b.Source, v.ok = w, "static", true
	v.mu.Unlock()
}

// rig is a controller driving a simulated fleet on a manual clock.
type rig struct {
	t     *testing.T
	clock *clock.Manual
	fleet *sim.Fleet
	src   *staticSource
	store *sample.Store
	c     *Controller
	logs  *testkit.LogBuffer
	set   Settings
	// host is the HostPower of the controllers the rig builds; beforeTick, when set, runs
	// after the clock advanced and before each tick (to move a RAPL fixture's counters).
	host       HostPower
	beforeTick func()
	// fastK counts the fast steps of rig.fast.
	fastK int
}

// staticSource is a movable budget satisfying budget.Source.
type staticSource struct{ varBudget }

func newRig(t *testing.T, trace string, count int, budgetW float64, edit func(*Settings)) *rig {
	t.Helper()
	clock := clock.NewManual(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	fleet, err := sim.New(sim.Options{Model: "H100", Count: count, Trace: trace, Seed: 7, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	set := Defaults()
	set.StateFile = filepath.Join(t.TempDir(), "state.json")
	if edit != nil {
		edit(&set)
	}
	r := &rig{t: t, clock: clock, fleet: fleet, src: &staticSource{}, store: sample.NewStore(), logs: &testkit.LogBuffer{}, set: set}
	r.src.set(budgetW)
	r.c = r.newController()
	if err := r.c.Start(); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) newController() *Controller { return r.newControllerWith(r.src) }

// newControllerWith builds (and does not start) a controller on the rig's fleet with the given
// budget source.
func (r *rig) newControllerWith(src budget.Source) *Controller {
	return r.newControllerOn(r.fleet, src)
}

// newControllerOn builds (and does not start) a controller that reaches the fleet through lib
// (a wrapper injecting NVML behaviour) and takes its budget from src.
func (r *rig) newControllerOn(lib nvml.Interface, src budget.Source) *Controller {
	r.t.Helper()
	c, err := New(Options{Settings: r.set, Lib: lib, Budget: src, Store: r.store, Host: r.host,
		Log: slog.New(slog.NewTextHandler(r.logs, nil)), Now: r.clock.Now})
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// startOn replaces the rig's controller, already stopped, with a started one on lib and src.
func (r *rig) startOn(lib nvml.Interface, src budget.Source) {
	r.t.Helper()
	c := r.newControllerOn(lib, src)
	if err := c.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.c = c
}

// die ends the rig's controller as a killed agent ends: no Stop, and the kernel drops the
// process's lock on the state file.
func (r *rig) die() {
	r.c.started = false
	unlockState(r.set.StateFile, false)
	processToken = newProcessToken() // the successor is another process
}

// step advances the clock one period and ticks.
func (r *rig) step() {
	r.clock.Advance(r.set.Period)
	if r.beforeTick != nil {
		r.beforeTick()
	}
	r.c.Tick(r.clock.Now())
}

// run ticks for d of simulated time.
func (r *rig) run(d time.Duration) {
	for range int(d / r.set.Period) {
		r.step()
	}
}

// drawn is the fleet's true drawn power now.
func (r *rig) drawn() float64 {
	sum := 0.0
	for i := range r.fleet.Count() {
		sum += r.fleet.GPU(i).State().DrawnW
	}
	return sum
}

func (r *rig) requested() []float64 {
	out := make([]float64, r.fleet.Count())
	for i := range out {
		out[i] = r.fleet.GPU(i).State().RequestedLimitW
	}
	return out
}
