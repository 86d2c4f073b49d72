package gpu

import (
	"fmt"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/testkit"
)

func condition(name string) attribute.KeyValue {
	return attribute.String(metrics.AttrHealthCondition, name)
}

// A power brake that comes and goes between collections reads as one condition: it is raised
// on the first sighting, held while it recurs, and cleared only conditionHold after the last.
func TestHealthConditionsDoNotFlap(t *testing.T) {
	lib := newFakeLib(1)
	brake := false
	lib.gpus[0].GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
		if brake {
			return nvml.ClocksThrottleReasonHwPowerBrakeSlowdown | nvml.ClocksThrottleReasonHwSlowdown, nvml.SUCCESS
		}
		return 0, nvml.SUCCESS
	}
	now := time.Unix(1_700_000_000, 0)
	c := mustNew(t, lib, nil, func() time.Time { return now })
	var got []float64
	for i := range 45 {
		brake = i >= 2 && i < 12 && i%3 == 0 // seen at 3, 6, 9 s; clear in between
		b := collect(t, c)
		v, ok := b.Find(metrics.GPUHealth, condition("power_brake"))
		if !ok {
			t.Fatal("no power_brake condition exported")
		}
		got = append(got, v)
		now = now.Add(time.Second)
	}
	for i, v := range got {
		want := 0.0
		if i >= 3 && i < 9+int(conditionHold/time.Second) {
			want = 1
		}
		if v != want {
			t.Errorf("power_brake at %d s = %v, want %v (seen at 3, 6 and 9 s; held %v)", i, v, want, conditionHold)
		}
	}
}

// Over the sim, a 200 ms power brake between two collections a second apart shows in the
// power violation time and raises the debounced condition, though neither collection saw the
// brake's reason bit.
func TestSimPowerBrakeBetweenCollections(t *testing.T) {
	c, fleet, clk := simCollector(t, sim.Options{Model: "H100", Count: 2, Trace: "inference", Seed: 2}, nil)
	gpu1 := attribute.Int(metrics.AttrGPUIndex, 1)
	power := attribute.String(metrics.AttrViolationPolicy, "power")
	b := collect(t, c)
	before, _ := b.Find(metrics.GPUViolationTime, gpu1, power)
	clk.Advance(400 * time.Millisecond)
	fleet.InjectPowerBrake(1, 200*time.Millisecond)
	clk.Advance(600 * time.Millisecond)
	b = collect(t, c)
	after, _ := b.Find(metrics.GPUViolationTime, gpu1, power)
	if d := after - before; d < 0.2-1e-9 || d > 0.2+1e-9 {
		t.Errorf("power violation time grew %v s over a 200 ms brake", d)
	}
	if v, _ := b.Find(metrics.GPUThrottle, gpu1, attribute.String(metrics.AttrThrottleReason, "power_brake")); v != 0 {
		t.Errorf("the brake's reason bit is %v at the collection after it ended, want 0", v)
	}
	if other, _ := b.Find(metrics.GPUViolationTime, attribute.Int(metrics.AttrGPUIndex, 0), power); other != 0 {
		t.Errorf("GPU 0 shows %v s of power violation from GPU 1's brake", other)
	}
	for _, cond := range []string{"power_brake", "hw_slowdown"} {
		c := attribute.String(metrics.AttrHealthCondition, cond)
		if v, ok := b.Find(metrics.GPUHealth, gpu1, c); v != 1 {
			t.Errorf("GPU 1 %s = %v (present %v) after a brake between collections, want 1", cond, v, ok)
		}
		if v, _ := b.Find(metrics.GPUHealth, attribute.Int(metrics.AttrGPUIndex, 0), c); v != 0 {
			t.Errorf("GPU 0 %s = %v from GPU 1's brake", cond, v)
		}
	}
}

// While the clock-event reasons cannot be read, a condition still held stays exported (an alert
// on it does not resolve because a call failed), and one that is not held is left out.
func TestHealthConditionHeldThroughAFailedRead(t *testing.T) {
	lib := newFakeLib(1)
	fail := false
	lib.gpus[0].GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
		if fail {
			return 0, nvml.ERROR_TIMEOUT
		}
		return nvml.ClocksThrottleReasonHwPowerBrakeSlowdown, nvml.SUCCESS
	}
	clk := time.Unix(1_700_000_000, 0)
	c := mustNew(t, lib, nil, func() time.Time { return clk })
	brake := attribute.String(metrics.AttrHealthCondition, "power_brake")
	if v, _ := collect(t, c).Find(metrics.GPUHealth, brake); v != 1 {
		t.Fatalf("power_brake %v while the reason is set, want 1", v)
	}
	fail = true
	clk = clk.Add(time.Second)
	if v, ok := collect(t, c).Find(metrics.GPUHealth, brake); !ok || v != 1 {
		t.Errorf("power_brake %v (present %v) a second after it was seen, with the reasons unreadable; want held at 1", v, ok)
	}
	clk = clk.Add(conditionHold)
	if _, ok := collect(t, c).Find(metrics.GPUHealth, brake); ok {
		t.Error("power_brake exported past its hold with the reasons unreadable: nothing says whether it is on")
	}
}

// Each health call that fails gives one clear log line, whatever the error, and the rest of the
// GPU's metrics are still exported; a lost GPU is reported failed, its neighbour carries on.
func TestHealthCallErrors(t *testing.T) {
	calls := map[string]func(g *fakeGPU, ret nvml.Return){
		"power violation time": func(g *fakeGPU, ret nvml.Return) {
			g.GetViolationStatusFunc = func(p nvml.PerfPolicyType) (nvml.ViolationTime, nvml.Return) {
				if p == nvml.PERF_POLICY_POWER {
					return nvml.ViolationTime{}, ret
				}
				return nvml.ViolationTime{ViolationTime: 1e9}, nvml.SUCCESS
			}
		},
		"remapped rows": func(g *fakeGPU, ret nvml.Return) {
			g.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, ret }
		},
		"PCIe replay counter": func(g *fakeGPU, ret nvml.Return) {
			g.GetPcieReplayCounterFunc = func() (int, nvml.Return) { return 0, ret }
		},
		"aggregate corrected ECC errors": func(g *fakeGPU, ret nvml.Return) {
			g.GetTotalEccErrorsFunc = func(k nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
				if k == nvml.MEMORY_ERROR_TYPE_CORRECTED && c == nvml.AGGREGATE_ECC {
					return 0, ret
				}
				return 1, nvml.SUCCESS
			}
		},
	}
	wantLog := map[nvml.Return]string{
		nvml.ERROR_NOT_SUPPORTED: "GPUs do not support this query",
		nvml.ERROR_TIMEOUT:       "GPU query failed",
		nvml.ERROR_GPU_IS_LOST:   "GPU fell off the bus",
	}
	for query, inject := range calls {
		for ret, line := range wantLog {
			t.Run(fmt.Sprintf("%s/%v", query, ret), func(t *testing.T) {
				lib := newFakeLib(2)
				inject(lib.gpus[1], ret)
				log, logs := testkit.NewLogger()
				c := mustNew(t, lib, log, nil)
				for range 3 {
					b := collect(t, c)
					if _, ok := b.Find(metrics.HWPower, attribute.Int(metrics.AttrGPUIndex, 0)); !ok {
						t.Fatal("GPU 0 stopped reporting")
					}
					_, ok := b.Find(metrics.GPUMemoryFree, attribute.Int(metrics.AttrGPUIndex, 1))
					if ret == nvml.ERROR_GPU_IS_LOST {
						if failed, _ := b.Find(metrics.GPUStatus, attribute.Int(metrics.AttrGPUIndex, 1), attribute.String(metrics.AttrHWState, "failed")); failed != 1 {
							t.Fatal("a lost GPU is not reported failed")
						}
					} else if !ok {
						t.Fatal("a failing health call took the GPU's other metrics with it")
					}
				}
				if n := logs.Count(line); n != 1 {
					t.Errorf("%q logged %d times, want once:\n%s", line, n, logs.String())
				}
				if ret != nvml.ERROR_GPU_IS_LOST && logs.Count(query) != 1 {
					t.Errorf("the log does not name the query %q once:\n%s", query, logs.String())
				}
			})
		}
	}
}
