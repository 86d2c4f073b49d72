package sim

import (
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/clock"
)

// readInstant returns FI_DEV_POWER_INSTANT in watts and its timestamp.
func readInstant(t *testing.T, d nvml.Device) (float64, int64) {
	t.Helper()
	v := []nvml.FieldValue{{FieldId: nvml.FI_DEV_POWER_INSTANT}}
	mustOK(t, "GetFieldValues", d.GetFieldValues(v))
	mustOK(t, "FI_DEV_POWER_INSTANT", nvml.Return(v[0].NvmlReturn))
	return float64(binary.LittleEndian.Uint32(v[0].Value[:])) / 1000, v[0].Timestamp
}

func seededFleet(t *testing.T, model, trace string, count int, seed int64) (*Fleet, *clock.Manual) {
	t.Helper()
	clk := clock.NewManual(epoch)
	f, err := New(Options{Model: model, Count: count, Trace: trace, Seed: seed, Clock: clk})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if ret := f.Init(); ret != nvml.SUCCESS {
		t.Fatalf("Init: %v", ret)
	}
	return f, clk
}

// counterPhases polls every GPU's instant power every 10 ms for 3 s and returns, per GPU, the
// offset within 100 ms at which its reading changes; it fails the test if a reading changes
// other than once per 100 ms, or its timestamp is not that update's time.
func counterPhases(t *testing.T, f *Fleet, clk *clock.Manual) []time.Duration {
	t.Helper()
	n := f.Count()
	phases := make([]time.Duration, n)
	last := make([]int64, n)
	lastW := make([]float64, n)
	seen := make([]int, n)
	for k := range 300 {
		clk.Advance(10 * time.Millisecond)
		for i := range n {
			w, stamp := readInstant(t, f.GPU(i))
			if k == 0 {
				last[i], lastW[i] = stamp, w
				continue
			}
			if stamp == last[i] {
				if w != lastW[i] {
					t.Fatalf("GPU %d: the instant reading moved from %.3f to %.3f W without a counter update", i, lastW[i], w)
				}
				continue
			}
			if gap := time.Duration(stamp-last[i]) * time.Microsecond; gap != 100*time.Millisecond {
				t.Fatalf("GPU %d: counter updates %v apart, want 100 ms", i, gap)
			}
			if now := clk.Now().UnixMicro(); stamp > now || now-stamp >= 10_000 {
				t.Fatalf("GPU %d: reading stamped %d µs, read at %d µs: want the update just past", i, stamp, now)
			}
			phases[i] = time.Duration(stamp-epoch.UnixMicro()) * time.Microsecond % (100 * time.Millisecond)
			last[i], lastW[i] = stamp, w
			seen[i]++
		}
	}
	for i, s := range seen {
		if s < 29 || s > 30 {
			t.Errorf("GPU %d: %d counter updates in 3 s, want 30", i, s)
		}
	}
	return phases
}

// TestInstantPowerHeldBetweenCounterUpdates checks FI_DEV_POWER_INSTANT changes only at the
// counters' ~10 Hz updates, each GPU at its own phase, the same phases for the same seed.
func TestInstantPowerHeldBetweenCounterUpdates(t *testing.T) {
	for _, model := range []string{"H100", "B200"} {
		f, clk := seededFleet(t, model, "bursty", 8, 3)
		phases := counterPhases(t, f, clk)
		distinct := map[time.Duration]bool{}
		for _, p := range phases {
			distinct[p] = true
		}
		if len(distinct) < 3 {
			t.Errorf("%s: 8 GPUs update their counters at only %d phases %v", model, len(distinct), phases)
		}
		g, clk2 := seededFleet(t, model, "bursty", 8, 3)
		again := counterPhases(t, g, clk2)
		for i := range phases {
			if phases[i] != again[i] {
				t.Errorf("%s: same seed, GPU %d updates at %v then %v", model, i, phases[i], again[i])
			}
		}
	}
}

// TestInstantPowerLagsTheDraw checks the instant reading is the draw of the last counter
// update: between updates it stays where the draw was, while the draw itself moves.
func TestInstantPowerLagsTheDraw(t *testing.T) {
	f, clk := seededFleet(t, "H100", "lockstep", 1, 5)
	d := f.GPU(0)
	stale := 0
	for range 2500 {
		clk.Advance(10 * time.Millisecond)
		s := d.State()
		w, stamp := readInstant(t, d)
		if math.Abs(w-s.InstantPowerW) > 0.001 {
			t.Fatalf("FI_DEV_POWER_INSTANT %.3f W, State().InstantPowerW %.3f W", w, s.InstantPowerW)
		}
		if math.Abs(w-s.DrawnW) > 0.02*s.DrawnW {
			stale++
			if age := s.Time.UnixMicro() - stamp; age <= 0 || age >= 100_000 {
				t.Fatalf("reading %.0f W, draw %.0f W, but the reading is %d µs old", w, s.DrawnW, age)
			}
		}
	}
	// Lock-step moves 440 W twice per 2.5 s: some readings must be caught stale.
	if stale == 0 {
		t.Error("the instant reading always matched the draw; it should hold between updates")
	}
}

// TestLimitWriteLatency checks a new limit reads back at once but binds only after the write's
// own latency of 10–20 ms, then pulls the draw down with the power controller's ~100 ms lag;
// the latency is drawn per write from the seed.
func TestLimitWriteLatency(t *testing.T) {
	firstEffect := func(seed int64, writes int) []time.Duration {
		f, clk := seededFleet(t, "H100", "testdata/step.csv", 1, seed)
		d := f.GPU(0)
		clk.Advance(601 * time.Second) // the step trace is at 700 W by now
		var out []time.Duration
		limit := uint32(300_000)
		for range writes {
			before := d.State()
			mustOK(t, "SetPowerManagementLimit", d.SetPowerManagementLimit(limit))
			if got, _ := d.GetEnforcedPowerLimit(); got != limit {
				t.Fatalf("enforced limit reads %d mW right after the write, want %d", got, limit)
			}
			var at time.Duration
			for k := 1; k <= 10; k++ {
				clk.Advance(10 * time.Millisecond)
				if s := d.State(); math.Abs(s.DrawnW-before.DrawnW) > 1 {
					at = time.Duration(k) * 10 * time.Millisecond
					break
				}
			}
			out = append(out, at)
			clk.Advance(2 * time.Second)
			limit = 1_000_000 - limit // 700 W, then 300 W again
		}
		return out
	}
	a, b := firstEffect(11, 40), firstEffect(11, 40)
	seen := map[time.Duration]int{}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("write %d: same seed, the draw first moved after %v then %v", i, a[i], b[i])
		}
		// The write binds 10–20 ms after it; the substep that starts then shows its effect
		// 10 ms later.
		if a[i] < 20*time.Millisecond || a[i] > 30*time.Millisecond {
			t.Errorf("write %d: the draw first moved %v after the write, want 20–30 ms", i, a[i])
		}
		seen[a[i]]++
	}
	if len(seen) < 2 {
		t.Errorf("every write took the same latency %v; each should draw its own 10–20 ms", seen)
	}

	// After binding, the draw closes on the lower cap with a ~100 ms time constant.
	f, clk := seededFleet(t, "H100", "testdata/step.csv", 1, 11)
	d := f.GPU(0)
	clk.Advance(601 * time.Second)
	from := d.State().DrawnW
	mustOK(t, "SetPowerManagementLimit", d.SetPowerManagementLimit(300_000))
	clk.Advance(130 * time.Millisecond) // ≤ 30 ms of latency, then ≥ 100 ms of lag
	gap := (d.State().DrawnW - 300) / (from - 300)
	if gap < 0.25 || gap > 0.45 {
		t.Errorf("~100 ms after binding the draw covered %.0f %% of the way to the cap, want about 63 %%", 100*(1-gap))
	}
}

// TestDemandSurgesAreNotLagged checks a compute phase draws its power within one 10 ms step
// when the cap does not bind, and under a cap that has long held lands on the cap, not above:
// the lag belongs to the power controller acting on a new cap, not to the workload.
func TestDemandSurgesAreNotLagged(t *testing.T) {
	for _, model := range Models() {
		f, clk := seededFleet(t, model, "lockstep", 2, 9)
		m := f.Model()
		capW := m.MinLimitW + 0.4*(m.MaxLimitW-m.MinLimitW)
		mustOK(t, "SetPowerManagementLimit", f.GPU(1).SetPowerManagementLimit(milli(capW)))
		surges := 0
		prev := [2]GPUState{f.GPU(0).State(), f.GPU(1).State()}
		for range 3000 {
			clk.Advance(10 * time.Millisecond)
			for i := range 2 {
				s := f.GPU(i).State()
				switch {
				case i == 0 && s.DemandW-prev[i].DemandW > 0.5*(m.MaxLimitW-m.MinLimitW):
					surges++
					if s.DrawnW != s.DemandW {
						t.Errorf("%s: uncapped surge from %.0f to %.0f W drew only %.0f W in its first 10 ms", model, prev[i].DemandW, s.DemandW, s.DrawnW)
					}
				case i == 1 && clk.Now().Sub(f.Start()) > time.Second && s.DrawnW > capW+0.1:
					t.Fatalf("%s: under a %.0f W cap held for over a second the draw reached %.1f W", model, capW, s.DrawnW)
				}
				prev[i] = s
			}
		}
		if surges < 10 {
			t.Errorf("%s: only %d compute phases started in 30 s", model, surges)
		}
	}
}

// TestWritesInFlightSupersede checks two writes in quick succession leave the later limit
// enforced.
func TestWritesInFlightSupersede(t *testing.T) {
	f, clk := seededFleet(t, "H100", "testdata/step.csv", 1, 2)
	d := f.GPU(0)
	clk.Advance(601 * time.Second)
	mustOK(t, "SetPowerManagementLimit", d.SetPowerManagementLimit(250_000))
	clk.Advance(time.Millisecond)
	mustOK(t, "SetPowerManagementLimit", d.SetPowerManagementLimit(450_000))
	clk.Advance(3 * time.Second)
	if s := d.State(); math.Abs(s.DrawnW-450) > 0.5 {
		t.Errorf("after writes of 250 W then 450 W the GPU draws %.1f W, want 450 W", s.DrawnW)
	}
}
