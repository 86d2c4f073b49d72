package sim

import (
	"math"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/clock"
)

func violationS(t *testing.T, g *GPU, p nvml.PerfPolicyType) float64 {
	t.Helper()
	v, ret := g.GetViolationStatus(p)
	if ret != nvml.SUCCESS {
		t.Fatalf("GetViolationStatus(%d): %v", p, ret)
	}
	return float64(v.ViolationTime) / 1e9
}

// The power violation time runs exactly while the cap binds (the power-cap reason is set), on
// every model and trace, at any limit: the counter is the integral of the reason, so it misses
// nothing between readings.
func TestViolationTimeIsTheTimeTheCapBinds(t *testing.T) {
	cases, bound := 0, 0
	for _, model := range Models() {
		for _, trace := range []string{"steady", "training", "bursty", "inference"} {
			for seed := int64(1); seed <= 2; seed++ {
				clk := clock.NewManual(time.Unix(1_700_000_000, 0))
				f, err := New(Options{Model: model, Count: 2, Trace: trace, Seed: seed, Clock: clk})
				if err != nil {
					t.Fatal(err)
				}
				if ret := f.Init(); ret != nvml.SUCCESS {
					t.Fatal(ret)
				}
				m := f.Model()
				g := f.GPU(1)
				// Halfway between the limits: the cap binds part of the time on most traces.
				if ret := g.SetPowerManagementLimit(milli((m.MinLimitW + m.MaxLimitW) / 2)); ret != nvml.SUCCESS {
					t.Fatal(ret)
				}
				power0, idle0 := violationS(t, g, nvml.PERF_POLICY_POWER), violationS(t, g, nvml.PERF_POLICY_LOW_UTILIZATION)
				var capped, idle float64
				for range 3000 { // 30 s in 10 ms steps
					clk.Advance(substep)
					r := g.State().Reasons
					if r&nvml.ClocksEventReasonSwPowerCap != 0 {
						capped += substepS
					}
					if r&nvml.ClocksEventReasonGpuIdle != 0 {
						idle += substepS
					}
				}
				power := violationS(t, g, nvml.PERF_POLICY_POWER) - power0
				idleV := violationS(t, g, nvml.PERF_POLICY_LOW_UTILIZATION) - idle0
				if math.Abs(power-capped) > 1e-6 || math.Abs(idleV-idle) > 1e-6 {
					t.Errorf("%s %s seed %d: power violation %.3f s, cap bound %.3f s; low-utilisation %.3f s, idle %.3f s",
						model, trace, seed, power, capped, idleV, idle)
				}
				if sb := violationS(t, g, nvml.PERF_POLICY_SYNC_BOOST); sb != 0 {
					t.Errorf("%s %s: sync boost violation %v s; nothing models it", model, trace, sb)
				}
				cases++
				if capped > 0 {
					bound++
				}
			}
		}
	}
	if bound < cases/2 {
		t.Errorf("the cap bound in only %d of %d runs: the test shows too little", bound, cases)
	}
}

// A 200 ms power brake between two readings a second apart sets no reason at either reading,
// yet the power violation time grows by its length.
func TestShortPowerBrakeShowsInTheViolationTime(t *testing.T) {
	for _, model := range Models() {
		clk := clock.NewManual(time.Unix(1_700_000_000, 0))
		f, err := New(Options{Model: model, Count: 1, Trace: "inference", Seed: 4, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		if ret := f.Init(); ret != nvml.SUCCESS {
			t.Fatal(ret)
		}
		g := f.GPU(0)
		// The default limit is the top one: nothing else moves the power violation time.
		before := violationS(t, g, nvml.PERF_POLICY_POWER)
		clk.Advance(300 * time.Millisecond)
		f.InjectPowerBrake(0, 200*time.Millisecond)
		clk.Advance(100 * time.Millisecond)
		if r := g.State().Reasons; r&nvml.ClocksThrottleReasonHwPowerBrakeSlowdown == 0 || r&nvml.ClocksThrottleReasonHwSlowdown == 0 {
			t.Errorf("%s: reasons %#x during the brake, want power brake and hardware slowdown", model, r)
		}
		clk.Advance(600 * time.Millisecond)
		if r, _ := g.GetCurrentClocksEventReasons(); r&nvml.ClocksThrottleReasonHwPowerBrakeSlowdown != 0 {
			t.Errorf("%s: power brake still set after it ended", model)
		}
		grew := violationS(t, g, nvml.PERF_POLICY_POWER) - before
		if math.Abs(grew-0.2) > 1e-9 {
			t.Errorf("%s: a 200 ms brake grew the power violation time by %v s", model, grew)
		}
	}
}

func TestRemappedRowsAndReplaysAccumulate(t *testing.T) {
	f, err := New(Options{Model: "H100", Count: 2, Trace: "steady", Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if ret := f.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	f.InjectRemappedRows(1, 2, 1, true, false)
	f.InjectRemappedRows(1, 1, 0, false, false)
	f.InjectPCIeReplays(1, 5)
	corr, unc, pending, failed, ret := f.GPU(1).GetRemappedRows()
	if ret != nvml.SUCCESS || corr != 3 || unc != 1 || !pending || failed {
		t.Errorf("remapped rows = %d, %d, pending %v, failed %v, %v; want 3, 1, true, false", corr, unc, pending, failed, ret)
	}
	if n, _ := f.GPU(1).GetPcieReplayCounter(); n != 5 {
		t.Errorf("PCIe replays %d, want 5", n)
	}
	if n, _ := f.GPU(0).GetPcieReplayCounter(); n != 0 {
		t.Errorf("GPU 0 got GPU 1's replays: %d", n)
	}
	fv := []nvml.FieldValue{{FieldId: nvml.FI_DEV_PCIE_REPLAY_COUNTER}, {FieldId: nvml.FI_DEV_RETIRED_SBE}}
	if ret := f.GPU(1).GetFieldValues(fv); ret != nvml.SUCCESS || nvml.Return(fv[0].NvmlReturn) != nvml.SUCCESS ||
		nvml.Return(fv[1].NvmlReturn) != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("field values: %v, replay field %v, retired pages field %v; want SUCCESS, SUCCESS, NOT_SUPPORTED",
			ret, nvml.Return(fv[0].NvmlReturn), nvml.Return(fv[1].NvmlReturn))
	}
}
