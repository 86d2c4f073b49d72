package capping

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/rapl"
	"github.com/capstan-power/capstan/internal/sample"
)

func sum(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s
}

// mW is what a test allows the fleet's true draw above Σ limits: Σ caps may sum to the budget
// exactly (static caps do), and a draw coming down onto its cap stops within float rounding
// of it, a hair above.
const mW = 1e-3

// metricValue returns the value of def with attribute key=val in the controller's batch.
func metricValue(t *testing.T, store *sample.Store, def *metrics.Def, key, val string) float64 {
	t.Helper()
	v, found := 0.0, false
	store.View(StoreKey, func(b *sample.Batch) {
		if b == nil {
			return
		}
		for _, p := range b.Points {
			if p.Series.Def != def {
				continue
			}
			if a, ok := p.Series.Attrs.Value(attributeKey(key)); key == "" || ok && a.String() == val {
				v += p.Value
				found = true
			}
		}
	})
	if !found {
		t.Fatalf("no %s{%s=%s} in the capping batch", def.Name, key, val)
	}
	return v
}

// After a 30 % budget step down, power is under the new budget within 3 periods and stays
// within 2 % of it after settling.
func TestStepDown(t *testing.T) {
	r := newRig(t, "steady", 8, 4500, nil)
	r.run(30 * time.Second)
	if p := r.drawn(); p > 4500 || p < 0.9*4500 {
		t.Fatalf("before the step the fleet draws %.0f W under a 4500 W budget", p)
	}
	newB := 0.7 * 4500
	r.src.set(newB)
	settled := -1
	for k := 1; k <= 3; k++ {
		r.step()
		if r.c.MeasuredW() <= newB && settled < 0 {
			settled = k
		}
	}
	if settled < 0 {
		t.Fatalf("measured %.0f W three periods after the budget stepped to %.0f W", r.c.MeasuredW(), newB)
	}
	worst := 0.0
	for range 120 {
		r.step()
		worst = max(worst, r.c.MeasuredW())
		if l := sum(r.requested()); l > newB*(1+r.set.Oversubscription)+1e-6 {
			t.Fatalf("Σ limits %.0f W above the ceiling %.0f W", l, newB*(1+r.set.Oversubscription))
		}
	}
	if over := (worst - newB) / newB; over > 0.02 {
		t.Errorf("after settling measured power peaked %.1f %% above the budget, want ≤ 2 %%", 100*over)
	}
	t.Logf("settled in %d periods; worst after settling %.0f W of %.0f W", settled, worst, newB)
	if got := metricValue(t, r.store, metrics.CappingBudget, metrics.AttrBudgetSource, "static"); got != newB {
		t.Errorf("capstan.capping.budget = %v, want %v", got, newB)
	}
	if got := metricValue(t, r.store, metrics.CappingMode, metrics.AttrCappingMode, "active"); got != 1 {
		t.Errorf("mode active = %v, want 1", got)
	}
}

// A bursty workload under a budget below its peaks stays under the budget almost all the time.
func TestBurstyStaysUnderBudget(t *testing.T) {
	r := newRig(t, "bursty", 8, 0.7*5600, func(s *Settings) { s.Period = 200 * time.Millisecond })
	over, n := 0, 0
	for range int(10 * time.Minute / r.set.Period) {
		r.step()
		n++
		if r.drawn() > 0.7*5600 {
			over++
		}
	}
	if frac := float64(over) / float64(n); frac > 0.01 {
		t.Errorf("over budget %.2f %% of periods, want ≤ 1 %%", 100*frac)
	}
	overS := metricValue(t, r.store, metrics.CappingOverBudgetTime, metrics.AttrCappingScope, "gpu")
	if overS < 0 || overS > 0.02*600 {
		t.Errorf("capstan.capping.over_budget.time = %v s of 600 s", overS)
	}
}

// A GPU that stops reporting power sends the node to static caps B / n after LostPeriods, and
// the loop resumes when it comes back.
func TestSensorLossFailsafe(t *testing.T) {
	const b = 4000.0
	r := newRig(t, "steady", 8, b, nil)
	r.run(10 * time.Second)
	r.fleet.SetLost(3, true)
	for k := 1; k < r.set.LostPeriods; k++ {
		r.step()
		if r.c.Mode() == ModeFailsafe {
			t.Fatalf("failsafe after %d lost periods, want %d", k, r.set.LostPeriods)
		}
	}
	r.step()
	if r.c.Mode() != ModeFailsafe {
		t.Fatalf("mode %v after %d lost periods, want failsafe", r.c.Mode(), r.set.LostPeriods)
	}
	for i, l := range r.requested() {
		if i != 3 && l != b/8 {
			t.Errorf("GPU %d limit %v W in failsafe, want %v", i, l, b/8)
		}
	}
	if got := metricValue(t, r.store, metrics.CappingMode, metrics.AttrCappingMode, "failsafe"); got != 1 {
		t.Errorf("mode failsafe = %v, want 1", got)
	}
	if !strings.Contains(r.logs.String(), "power readings lost") {
		t.Errorf("failsafe not logged:\n%s", r.logs.String())
	}
	r.fleet.SetLost(3, false)
	r.run(20 * time.Second)
	if r.c.Mode() != ModeActive {
		t.Errorf("mode %v after readings came back, want active", r.c.Mode())
	}
	if p := r.drawn(); p > b+mW {
		t.Errorf("back from failsafe the fleet draws %.0f W over %.0f W", p, b)
	}
}

// A budget past its TTL gives way to the fallback budget.
func TestBudgetTTLFallback(t *testing.T) {
	r := newRig(t, "steady", 4, 2200, func(s *Settings) { s.FallbackW = 1200 })
	r.src.mu.Lock()
	r.src.b.TTL, r.src.b.Received = 5*time.Second, r.clock.Now()
	r.src.mu.Unlock()
	r.run(4 * time.Second)
	if r.c.BudgetW() != 2200 {
		t.Fatalf("budget %v within the TTL, want 2200", r.c.BudgetW())
	}
	r.run(10 * time.Second)
	if r.c.BudgetW() != 1200 {
		t.Fatalf("budget %v past the TTL, want the fallback 1200", r.c.BudgetW())
	}
	if p := r.drawn(); p > 1200+mW {
		t.Errorf("under the fallback budget the fleet draws %.0f W", p)
	}
	if got := metricValue(t, r.store, metrics.CappingBudget, metrics.AttrBudgetSource, "fallback"); got != 1200 {
		t.Errorf("capstan.capping.budget{source=fallback} = %v", got)
	}
}

// Another agent setting a limit is noticed, counted and undone.
func TestLimitChangedBehindOurBack(t *testing.T) {
	r := newRig(t, "steady", 4, 1800, nil)
	r.run(20 * time.Second)
	dev, _ := r.fleet.DeviceGetHandleByIndex(1)
	if ret := dev.SetPowerManagementLimit(690_000); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	r.step()
	if got := r.requested()[1]; got == 690 {
		t.Errorf("GPU 1 limit still 690 W, set by another agent; want ours re-applied")
	}
	r.run(10 * time.Second)
	if p := r.drawn(); p > 1800+mW {
		t.Errorf("after another agent raised a limit the fleet draws %.0f W over 1800", p)
	}
	if r.c.Overrides() != 1 {
		t.Errorf("overrides %v, want 1", r.c.Overrides())
	}
	// An out-of-band limit (a BMC) below ours is counted once and respected.
	r.fleet.SetLimitOverride(2, 250)
	r.run(10 * time.Second)
	if r.c.Overrides() != 2 {
		t.Errorf("overrides %v after an out-of-band limit, want 2", r.c.Overrides())
	}
	if got := metricValue(t, r.store, metrics.CappingOverrides, metrics.AttrGPUIndex, "2"); got != 1 {
		t.Errorf("capstan.capping.overrides{gpu.index=2} = %v, want 1", got)
	}
	if p := r.drawn(); p > 1800+mW {
		t.Errorf("with an out-of-band limit the fleet draws %.0f W over 1800", p)
	}
}

// refusingLib is the simulated fleet with GPU refuse's SetPowerManagementLimit failing, as
// NVML does without permission.
type refusingLib struct {
	*sim.Fleet
	refuse int
	ret    nvml.Return
	writes *[]write
}

type write struct {
	gpu int
	mw  uint32
}

type refusingDev struct {
	*sim.GPU
	lib   *refusingLib
	index int
}

func (l *refusingLib) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	d, ret := l.Fleet.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return d, ret
	}
	return &refusingDev{GPU: d.(*sim.GPU), lib: l, index: i}, nvml.SUCCESS
}

func (d *refusingDev) SetPowerManagementLimit(mw uint32) nvml.Return {
	if d.lib.writes != nil {
		*d.lib.writes = append(*d.lib.writes, write{d.index, mw})
	}
	if d.index == d.lib.refuse {
		return d.lib.ret
	}
	return d.GPU.SetPowerManagementLimit(mw)
}

func TestWriteRefused(t *testing.T) {
	r := newRig(t, "steady", 4, 1600, nil)
	if err := r.c.Stop(ExitConfigured); err != nil { // restores 700 W and removes the state file
		t.Fatal(err)
	}
	lib := &refusingLib{Fleet: r.fleet, refuse: 0, ret: nvml.ERROR_NO_PERMISSION}
	r.startOn(lib, r.src)
	r.run(30 * time.Second)
	if l := r.requested()[0]; l != 700 {
		t.Errorf("refusing GPU 0 has limit %v, want its untouched 700", l)
	}
	if n := strings.Count(r.logs.String(), "refused a power limit"); n != 1 {
		t.Errorf("refusal logged %d times, want once", n)
	}
	if got := metricValue(t, r.store, metrics.CappingActuations, metrics.AttrCappingResult, "refused"); got < 10 {
		t.Errorf("refused actuations %v, want one per period", got)
	}
	// The others carry the budget: GPU 0 draws its demand, the rest are cut to make room.
	if p := r.drawn(); p > 1600*1.01 {
		t.Errorf("with GPU 0 refusing, the fleet draws %.0f W over 1600", p)
	}
}

// Under dry-run the controller computes and exports limits but writes none, and leaves no state
// file.
func TestDryRunWritesNothing(t *testing.T) {
	r := newRig(t, "steady", 4, 1500, func(s *Settings) { s.DryRun = true })
	r.run(20 * time.Second)
	for i, l := range r.requested() {
		if l != 700 {
			t.Errorf("GPU %d limit %v under dry-run, want 700", i, l)
		}
	}
	if got := metricValue(t, r.store, metrics.CappingMode, metrics.AttrCappingMode, "dry_run"); got != 1 {
		t.Errorf("mode dry_run = %v", got)
	}
	computed := sum(r.c.Limits(nil))
	if computed > 1500*(1+r.set.Oversubscription) || computed < 800 {
		t.Errorf("dry-run computed Σ limits %.0f W for a 1500 W budget", computed)
	}
	if _, err := os.Stat(r.set.StateFile); !os.IsNotExist(err) {
		t.Errorf("dry-run left a state file: %v", err)
	}
}

func attributeKey(k string) attribute.Key { return attribute.Key(k) }

// The file budget source feeds the loop: a change applies within one period, a corrupt file is
// rejected and the last good budget keeps the fleet capped.
func TestBudgetFileThroughTheLoop(t *testing.T) {
	r := newRig(t, "steady", 4, 1, nil)
	path := filepath.Join(t.TempDir(), "budget.yaml")
	write := func(body string, at time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, at, at); err != nil {
			t.Fatal(err)
		}
	}
	write("watts: 2000\n", r.clock.Now())
	src := budget.NewFile(path, r.set.Period, r.clock.Now, r.c.log)
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	r.c = r.newControllerWith(src)
	if err := r.c.Start(); err != nil {
		t.Fatal(err)
	}
	// Each period the source polls, as its Run goroutine would, then the controller ticks.
	step := func(n int) {
		for range n {
			_ = src.Poll()
			r.step()
		}
	}
	step(20)
	if p := r.drawn(); p > 2000+mW {
		t.Fatalf("fleet draws %.0f W under a 2000 W file budget", p)
	}
	write("watts: 1400\n", r.clock.Now().Add(time.Second))
	step(1)
	if r.c.BudgetW() != 1400 {
		t.Fatalf("budget %v one period after the file changed, want 1400", r.c.BudgetW())
	}
	write("watts: 1400\nttl: [\n", r.clock.Now().Add(2*time.Second))
	step(20)
	if r.c.BudgetW() != 1400 {
		t.Errorf("budget %v after a corrupt file, want the last good 1400", r.c.BudgetW())
	}
	if p := r.drawn(); p > 1400+mW {
		t.Errorf("fleet draws %.0f W over the last good budget", p)
	}
	if n := strings.Count(r.logs.String(), "budget file rejected"); n != 1 {
		t.Errorf("corrupt file logged %d times, want once", n)
	}
}

// raplHost makes a powercap tree whose zones draw the given watts from start on, and returns it
// with a function that sets every counter to its energy at now.
func raplHost(t *testing.T, start time.Time, zones map[string]float64) (sysfs string, at func(now time.Time)) {
	t.Helper()
	sysfs = t.TempDir()
	names := map[string]string{}
	for id := range zones {
		dir := filepath.Join(sysfs, "class", "powercap", id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		names[id] = "core"
		if strings.Count(id, ":") == 1 {
			names[id] = "package-" + id[strings.IndexByte(id, ':')+1:]
		}
		for file, v := range map[string]string{"name": names[id], "max_energy_range_uj": "262143328850", "energy_uj": "0"} {
			if err := os.WriteFile(filepath.Join(dir, file), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return sysfs, func(now time.Time) {
		for id, w := range zones {
			uj := strconv.FormatUint(uint64(w*now.Sub(start).Seconds()*1e6), 10)
			if err := os.WriteFile(filepath.Join(sysfs, "class", "powercap", id, "energy_uj"), []byte(uj+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// With scope node, RAPL package power is part of P; without it the controller says once that
// it measures GPUs only.
func TestNodeScopeAddsRAPL(t *testing.T) {
	r := newRig(t, "steady", 4, 2000, func(s *Settings) { s.Scope = "node" })
	r.run(30 * time.Second)
	if !strings.Contains(r.logs.String(), "no RAPL package power") {
		t.Errorf("missing RAPL not reported:\n%s", r.logs.String())
	}
	gpuOnly := r.c.MeasuredW()

	// The same node with RAPL: two packages, and a core zone inside package-0.
	sysfs, setCounters := raplHost(t, r.clock.Now(), map[string]float64{"intel-rapl:0": 180, "intel-rapl:1": 170, "intel-rapl:0:0": 120})
	host := rapl.OpenPackages(sysfs, r.clock.Now, nil)
	t.Cleanup(func() { host.Close() })
	host.PackageWatts() // the first reading starts the interval
	r.host = host
	r.beforeTick = func() { setCounters(r.clock.Now()) }
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	r.startOn(r.fleet, r.src)
	r.step()
	if got := r.c.MeasuredW() - gpuOnly; got < 350-30 || got > 350+30 {
		t.Errorf("RAPL added %.0f W to P, want the two packages' 350 W (cores are inside them)", got)
	}
	r.run(30 * time.Second)
	if p := r.drawn() + 350; p > 2000 {
		t.Errorf("GPUs plus packages draw %.0f W over the 2000 W node budget", p)
	}
}

// A host power reading older than a period is not used: P falls back to the GPUs' power, and the
// controller says so once, and once again when fresh readings return.
func TestNodeScopeIgnoresAStaleHostReading(t *testing.T) {
	r := newRig(t, "steady", 4, 2000, func(s *Settings) { s.Scope = "node" })
	host := &fixedHost{w: 300, at: r.clock.Now()}
	host.fresh = func() { host.at = r.clock.Now() }
	r.host = host
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	r.startOn(r.fleet, r.src)
	r.beforeTick = host.fresh
	// hostPart is what P holds beyond the GPUs' true draw (their instant readings are noisy).
	hostPart := func() float64 { return r.c.MeasuredW() - r.drawn() }
	r.run(10 * time.Second)
	if got := hostPart(); got < 300-30 || got > 300+30 {
		t.Fatalf("fresh host readings add %.0f W to P, want 300", got)
	}
	if strings.Contains(r.logs.String(), "no RAPL package power") {
		t.Fatalf("fresh readings reported missing:\n%s", r.logs.String())
	}
	r.beforeTick = nil // the reading stops moving: one period old at the next tick, then older
	r.step()
	if got := hostPart(); got < 300-30 || got > 300+30 {
		t.Errorf("a reading one period old adds %.0f W to P, want the 300 W still counted", got)
	}
	r.step()
	if got := hostPart(); got < -30 || got > 30 {
		t.Errorf("a reading two periods old adds %.0f W to P, want it left out", got)
	}
	r.run(5 * time.Second)
	if n := strings.Count(r.logs.String(), "older than a control period"); n != 1 {
		t.Errorf("stale reading logged %d times over 6 periods, want once:\n%s", n, r.logs.String())
	}
	r.beforeTick = host.fresh
	r.step()
	if got := hostPart(); got < 300-30 || got > 300+30 {
		t.Errorf("fresh reading back: it adds %.0f W to P, want 300", got)
	}
	if !strings.Contains(r.logs.String(), "RAPL package power back") {
		t.Errorf("return of the reading not reported:\n%s", r.logs.String())
	}
}

// fixedHost reads a constant package power, taken at at.
type fixedHost struct {
	w     float64
	at    time.Time
	fresh func()
}

func (h *fixedHost) PackageWatts() (float64, time.Time, bool) { return h.w, h.at, true }

// Priority weights from the settings steer more power to a favoured GPU when all are bound.
func TestWeightsFromSettings(t *testing.T) {
	r := newRig(t, "steady", 4, 1600, func(s *Settings) { s.Weights = map[string]float64{"2": 3, "GPU-nope": 2} })
	r.run(60 * time.Second)
	l := r.requested()
	if !(l[2] > l[0]+50 && l[2] > l[1]+50 && l[2] > l[3]+50) {
		t.Errorf("limits %v: GPU 2 with weight 3 should get clearly more", l)
	}
	if !strings.Contains(r.logs.String(), "a weight names no GPU") {
		t.Errorf("a weight for an unknown GPU was not reported:\n%s", r.logs.String())
	}
}

// A budget below the GPUs' summed minimums (600 W for 4 × 200 W) is said once and published as
// unmet while it lasts; a budget that fits clears both.
func TestBudgetBelowMinimumsIsReported(t *testing.T) {
	r := newRig(t, "steady", 4, 1500, nil)
	r.run(2 * time.Second)
	if got := metricValue(t, r.store, metrics.CappingBudgetUnmet, metrics.AttrCappingScope, "gpu"); got != 0 {
		t.Fatalf("budget.unmet %v with a budget that fits, want 0", got)
	}
	r.src.set(600)
	r.run(5 * time.Second)
	const said = "budget is below the GPUs' summed minimum limits"
	if n := r.logs.Count(said); n != 1 {
		t.Errorf("the unmet budget was said %d times, want once:\n%s", n, r.logs)
	}
	if !r.logs.Contains("budget_watts=600") || !r.logs.Contains("min_watts=800") {
		t.Errorf("the warning does not give the budget and the minimums:\n%s", r.logs)
	}
	if got := metricValue(t, r.store, metrics.CappingBudgetUnmet, metrics.AttrCappingScope, "gpu"); got != 1 {
		t.Errorf("budget.unmet %v under a 600 W budget for 800 W of minimums, want 1", got)
	}
	r.src.set(1000)
	r.run(2 * time.Second)
	if got := metricValue(t, r.store, metrics.CappingBudgetUnmet, metrics.AttrCappingScope, "gpu"); got != 0 {
		t.Errorf("budget.unmet %v after the budget was raised to fit, want 0", got)
	}
	if !r.logs.Contains("budget can be met again") {
		t.Errorf("the budget's return within reach is not said:\n%s", r.logs)
	}
}

// A limit changed behind our back that cannot be undone (the write is refused) is logged once,
// not every period, while it stays the same; a new value is news and is logged again.
func TestLimitChangedBehindOurBackLoggedOncePerValue(t *testing.T) {
	r := newRig(t, "steady", 4, 1800, nil)
	if err := r.c.Stop(ExitConfigured); err != nil {
		t.Fatal(err)
	}
	lib := &refusingLib{Fleet: r.fleet, refuse: -1, ret: nvml.ERROR_NO_PERMISSION}
	r.startOn(lib, r.src)
	r.run(10 * time.Second)
	lib.refuse = 1 // from now on GPU 1 refuses our writes
	dev, _ := r.fleet.DeviceGetHandleByIndex(1)
	if ret := dev.SetPowerManagementLimit(690_000); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	r.run(20 * time.Second)
	const msg = "changed behind our back"
	if n := strings.Count(r.logs.String(), msg); n != 1 {
		t.Errorf("a refused re-apply of one out-of-band value logged %q %d times in 20 periods, want once", msg, n)
	}
	if ret := dev.SetPowerManagementLimit(600_000); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	r.run(5 * time.Second)
	if n := strings.Count(r.logs.String(), msg); n != 2 {
		t.Errorf("a second out-of-band value: %q logged %d times in all, want twice", msg, n)
	}
}
