package sim

import (
	"math"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/clock"
)

// Options.OnDemand hears every physics step of every GPU, at the fine and coarse steps and
// through a limit write that splits a step: the steps' lengths add up to the time simulated,
// and each step's demand is the one the GPU then ran at (GPUState.DemandW after it).
func TestOnDemandHearsEveryStep(t *testing.T) {
	for _, v := range []struct {
		trace string
		count int
		step  time.Duration
	}{{"inference", 4, 0}, {"training", 3, MaxStep}, {"bursty", 2, 50 * time.Millisecond}} {
		clk := clock.NewManual(epoch)
		heard := make([]float64, v.count) // seconds of steps heard
		last := make([]float64, v.count)
		f, err := New(Options{Model: "H100", Count: v.count, Trace: v.trace, Seed: 5, Clock: clk, Step: v.step,
			OnDemand: func(gpu int, demandW, dtS float64) { heard[gpu] += dtS; last[gpu] = demandW }})
		if err != nil {
			t.Fatal(err)
		}
		if ret := f.Init(); ret != nvml.SUCCESS {
			t.Fatal(ret)
		}
		d, _ := f.DeviceGetHandleByIndex(0)
		const run = 30 * time.Second
		for k := range int(run / (70 * time.Millisecond)) {
			clk.Advance(70 * time.Millisecond) // reads off the step's grid
			if k == 100 {
				if ret := d.SetPowerManagementLimit(400000); ret != nvml.SUCCESS {
					t.Fatal(ret)
				}
			}
			for i := range v.count {
				if s := f.GPU(i).State(); s.DemandW != last[i] {
					t.Fatalf("%s, step %s, GPU %d at %s: demand %v W, the last step heard %v W", v.trace, v.step, i, s.Time.Sub(epoch), s.DemandW, last[i])
				}
			}
		}
		want := float64(int(run/(70*time.Millisecond))) * 0.07
		for i, s := range heard {
			if math.Abs(s-want) > 1e-6 {
				t.Errorf("%s, step %s, GPU %d: steps of %.6f s heard in %.6f s simulated", v.trace, v.step, i, s, want)
			}
		}
	}
}
