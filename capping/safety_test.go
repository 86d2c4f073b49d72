package capping

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
)

// The original limits are in the state file before the first write, and SIGTERM's restore
// puts them back and removes it.
func TestStateFileRestoreOnExit(t *testing.T) {
	r := newRig(t, "steady", 4, 1500, nil)
	st, err := ReadState(r.set.StateFile)
	if err != nil || st == nil {
		t.Fatalf("no state file after Start: %v", err)
	}
	if st.Clean || len(st.GPUs) != 4 || st.GPUs[2].OriginalMilliwatts != 700_000 {
		t.Fatalf("state file %+v, want 4 GPUs at 700000 mW, not clean", st)
	}
	r.run(10 * time.Second)
	if sum(r.requested()) > 1500*1.05 {
		t.Fatalf("not capping: limits %v", r.requested())
	}
	if err := r.c.Stop(ExitConfigured); err != nil {
		t.Fatal(err)
	}
	for i, l := range r.requested() {
		if l != 700 {
			t.Errorf("GPU %d limit %v after restore, want 700", i, l)
		}
	}
	if _, err := os.Stat(r.set.StateFile); !os.IsNotExist(err) {
		t.Errorf("state file still there after a restore: %v", err)
	}
}

// on_exit keep and a reload (ExitHold) leave the limits and a clean state file; the next
// controller adopts them without restoring and keeps the true originals.
func TestHoldThenResume(t *testing.T) {
	r := newRig(t, "steady", 4, 1500, func(s *Settings) { s.OnExit = "keep" })
	r.run(10 * time.Second)
	held := r.requested()
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	st, err := ReadState(r.set.StateFile)
	if err != nil || st == nil || !st.Clean {
		t.Fatalf("state after hold %+v, %v; want a clean state file", st, err)
	}
	r.c = r.newController()
	if err := r.c.Start(); err != nil {
		t.Fatal(err)
	}
	for i, l := range r.requested() {
		if l != held[i] {
			t.Errorf("GPU %d limit %v after resuming, want the held %v", i, l, held[i])
		}
	}
	r.set.OnExit = "restore"
	r.c.set.OnExit = "restore"
	if err := r.c.Stop(ExitConfigured); err != nil {
		t.Fatal(err)
	}
	for i, l := range r.requested() {
		if l != 700 {
			t.Errorf("GPU %d limit %v, want the original 700 carried through the hand-over", i, l)
		}
	}
}

// A state file left by a crash is restored (after_crash restore) or adopted.
func TestCrashRecovery(t *testing.T) {
	for _, mode := range []string{"restore", "adopt"} {
		t.Run(mode, func(t *testing.T) {
			r := newRig(t, "steady", 4, 1500, func(s *Settings) { s.AfterCrash = mode })
			r.run(10 * time.Second)
			capped := r.requested()
			// The agent dies: no Stop. A new one starts on the same GPUs and file.
			r.die()
			r.c = r.newController()
			if err := r.c.Start(); err != nil {
				t.Fatal(err)
			}
			for i, l := range r.requested() {
				want := capped[i]
				if mode == "restore" {
					want = 700
				}
				if l != want {
					t.Errorf("GPU %d limit %v after a crash with after_crash %s, want %v", i, l, mode, want)
				}
			}
			st, err := ReadState(r.set.StateFile)
			if err != nil || st == nil || st.GPUs[0].OriginalMilliwatts != 700_000 {
				t.Errorf("state after recovery %+v %v: the originals must survive", st, err)
			}
		})
	}
}

func TestUnwritableStateFileRefusesToCap(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	clock := clock.NewManual(time.Unix(0, 0))
	fleet, _ := sim.New(sim.Options{Model: "H100", Count: 2, Trace: "steady", Clock: clock})
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	set := Defaults()
	set.StateFile = filepath.Join(blocker, "state.json") // a directory that is a file
	src := &staticSource{}
	src.set(1000)
	c, err := New(Options{Settings: set, Lib: fleet, Budget: src, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err == nil {
		t.Fatal("Start succeeded without a state file")
	}
	if l := fleet.GPU(0).State().RequestedLimitW; l != 700 {
		t.Errorf("a limit was written (%v W) without the originals saved", l)
	}
}

// checkingLib records every limit write of the simulated fleet.
func newCheckingLib(f *sim.Fleet, writes *[]write) *refusingLib {
	return &refusingLib{Fleet: f, refuse: -1, writes: writes}
}

// For random budgets, models, workloads, out-of-band limits and lost sensors, every written
// limit is inside the GPU's constraints and Σ limits never exceeds the ceiling
// max(Σ min, min(Σ max, B × (1 + oversubscription))).
func FuzzLimitsRespectConstraints(f *testing.F) {
	f.Add(uint64(1), 0.6, uint8(1), uint8(8), uint8(0))
	f.Add(uint64(2), 0.05, uint8(0), uint8(3), uint8(2))
	f.Add(uint64(3), 1.5, uint8(3), uint8(16), uint8(4))
	f.Fuzz(func(t *testing.T, seed uint64, budgetFrac float64, model, count, trace uint8) {
		if !(budgetFrac > 0.01 && budgetFrac < 3) {
			t.Skip()
		}
		models := sim.Models()
		traces := sim.TraceNames()
		n := 1 + int(count)%16
		clock := clock.NewManual(time.Unix(0, 0))
		fleet, err := sim.New(sim.Options{Model: models[int(model)%len(models)], Count: n, Trace: traces[int(trace)%len(traces)], Seed: int64(seed), Clock: clock})
		if err != nil {
			t.Fatal(err)
		}
		if ret := fleet.Init(); ret != nvml.SUCCESS {
			t.Fatal(ret)
		}
		var writes []write
		lib := newCheckingLib(fleet, &writes)
		rng := rand.New(rand.NewPCG(seed, 99))
		set := Defaults()
		set.StateFile = filepath.Join(t.TempDir(), "s.json")
		set.GuardBand = rng.Float64() * 0.2
		set.Oversubscription = rng.Float64() * 0.3
		set.HeadroomW = rng.Float64() * 50
		set.DeadbandW = rng.Float64() * 20
		set.Period = time.Duration(100+rng.IntN(1900)) * time.Millisecond
		m := fleet.Model()
		b := budgetFrac * m.MaxLimitW * float64(n)
		src := &staticSource{}
		src.set(b)
		c, err := New(Options{Settings: set, Lib: lib, Budget: src, Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		sumMin := m.MinLimitW * float64(n)
		for k := range 200 {
			switch rng.IntN(20) {
			case 0:
				b = (0.05 + 2*rng.Float64()) * m.MaxLimitW * float64(n)
				src.set(b)
			case 1:
				fleet.SetLimitOverride(rng.IntN(n), m.MinLimitW+rng.Float64()*(m.MaxLimitW-m.MinLimitW))
			case 2:
				fleet.SetLost(rng.IntN(n), rng.IntN(2) == 0)
			}
			clock.Advance(set.Period)
			c.Tick(clock.Now())
			for _, w := range writes {
				if w.mw < uint32(m.MinLimitW*1000) || w.mw > uint32(m.MaxLimitW*1000) {
					t.Fatalf("period %d: wrote %d mW to GPU %d outside %v..%v W", k, w.mw, w.gpu, m.MinLimitW, m.MaxLimitW)
				}
			}
			writes = writes[:0]
			ceiling := max(sumMin, min(m.MaxLimitW*float64(n), b*(1+set.Oversubscription)))
			if c.Mode() == ModeFailsafe {
				ceiling = max(sumMin, b) // B / n each, held to the minimum
			}
			total := 0.0
			lost := false
			for i := range n {
				st := fleet.GPU(i).State()
				total += st.RequestedLimitW
				lost = lost || st.Lost
			}
			// A lost GPU cannot be written; its last limit stands until it is back.
			if !lost && c.lost == 0 && total > ceiling+1e-6 {
				t.Fatalf("period %d: Σ limits %.3f W above the ceiling %.3f W (budget %.1f)", k, total, ceiling, b)
			}
		}
	})
}

// distribute never gives a GPU less than its minimum or more than its maximum, and hands out
// exactly min(C, Σ max) when C ≥ Σ min.
func FuzzDistribute(f *testing.F) {
	f.Add(uint64(1), 3000.0, 15.0)
	f.Fuzz(func(t *testing.T, seed uint64, capW, headroom float64) {
		if !(capW >= 0 && capW < 1e6 && headroom >= 0 && headroom < 1000) {
			t.Skip()
		}
		rng := rand.New(rand.NewPCG(seed, 1))
		shares := make([]gpuShare, 1+rng.IntN(64))
		sumMin, sumMax := 0.0, 0.0
		for i := range shares {
			lo := 50 + rng.Float64()*300
			hi := lo + rng.Float64()*700
			limit := lo + rng.Float64()*(hi-lo)
			up := lo + rng.Float64()*(hi-lo)
			shares[i] = gpuShare{minW: lo, maxW: hi, upW: up, limitW: limit, needW: rng.Float64() * limit, fairW: rng.Float64() * hi, weight: 0.1 + rng.Float64()*10, bound: rng.IntN(2) == 0}
			sumMin += lo
			sumMax += up
		}
		got := distribute(shares, capW, headroom)
		total := 0.0
		for i, s := range shares {
			if s.allocW < s.minW-1e-9 || s.allocW > s.upW+1e-9 {
				t.Fatalf("GPU %d got %v W outside %v..%v", i, s.allocW, s.minW, s.upW)
			}
			total += s.allocW
		}
		want := max(sumMin, min(capW, sumMax))
		if diff := total - want; diff > 1e-6*want || diff < -1e-6*want || got-total > 1e-6*want || total-got > 1e-6*want {
			t.Fatalf("allocated %v W (reported %v), want %v (C %v, Σmin %v, Σmax %v)", total, got, want, capW, sumMin, sumMax)
		}
	})
}

// Priority weights split the cap among power-bound GPUs.
func TestDistributeByWeight(t *testing.T) {
	shares := []gpuShare{
		{minW: 200, maxW: 700, upW: 700, limitW: 500, needW: 500, weight: 3, bound: true},
		{minW: 200, maxW: 700, upW: 700, limitW: 500, needW: 500, weight: 1, bound: true},
		{minW: 200, maxW: 700, upW: 700, limitW: 500, needW: 250, weight: 1},
	}
	distribute(shares, 1200, 20)
	if shares[2].allocW != 270 {
		t.Errorf("not-bound GPU got %v W, want its draw + headroom 270", shares[2].allocW)
	}
	// 1200 − 600 min − 70 extra = 530 to share 3:1.
	if a, b := shares[0].allocW-200, shares[1].allocW-200; a < 3*b-1e-9 || a > 3*b+1e-9 {
		t.Errorf("bound GPUs got %v and %v W above their minimum, want 3:1", a, b)
	}
}

// BenchmarkTick measures one control period for 8 GPUs. The simulated NVML calls are
// included; BenchmarkTickNoNVML below subtracts them.
func BenchmarkTick(b *testing.B) {
	clock := clock.NewManual(time.Unix(0, 0))
	fleet, _ := sim.New(sim.Options{Model: "H100", Count: 8, Trace: "bursty", Clock: clock})
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		b.Fatal(ret)
	}
	set := Defaults()
	set.StateFile = filepath.Join(b.TempDir(), "s.json")
	src := &staticSource{}
	src.set(3900)
	c, err := New(Options{Settings: set, Lib: fleet, Budget: src, Now: clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Start(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		clock.Advance(10 * time.Millisecond)
		c.Tick(clock.Now())
	}
}
