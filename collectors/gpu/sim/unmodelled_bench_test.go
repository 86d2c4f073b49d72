package sim

import (
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/clock"
)

// The memory a simulated device costs, which the agent keeps for as long as it runs on the sim:
// B/op is per GPU (a whole GPU, then one split into seven MIG devices) and per GPM sample.
func BenchmarkDeviceMemory(b *testing.B) {
	clk := clock.NewManual(time.Unix(1_700_000_000, 0))
	for _, bc := range []struct{ name, mig string }{{"whole", ""}, {"7x1g.10gb", "7x1g.10gb"}} {
		b.Run("GPU/"+bc.name, func(b *testing.B) {
			f, err := New(Options{Model: "H100", Count: 1, Trace: "steady", Seed: 1, Clock: clk})
			if err != nil {
				b.Fatal(err)
			}
			_, profiles, err := ParseMIGLayout("H100", bc.mig)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				g := newGPU(f, i%MaxGPUs)
				if profiles != nil {
					g.setMIG(true, profiles)
				}
			}
		})
	}
	b.Run("GpmSample", func(b *testing.B) {
		f, err := New(Options{Model: "H100", Count: 1, Trace: "steady", Seed: 1, Clock: clk})
		if err != nil {
			b.Fatal(err)
		}
		if ret := f.Init(); ret != nvml.SUCCESS {
			b.Fatal(ret)
		}
		b.ReportAllocs()
		for b.Loop() {
			s, ret := f.GpmSampleAlloc()
			if ret != nvml.SUCCESS {
				b.Fatal(ret)
			}
			_ = s.Free()
		}
	})
}

// A GPU split seven ways is a few dozen allocations, not one per unmodelled NVML call per
// device: the agent keeps every one for as long as it runs on the sim.
func TestDeviceAllocations(t *testing.T) {
	clk := clock.NewManual(time.Unix(1_700_000_000, 0))
	f, err := New(Options{Model: "H100", Count: 1, Trace: "steady", Seed: 1, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	_, profiles, err := ParseMIGLayout("H100", "7x1g.10gb")
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(20, func() { newGPU(f, 3).setMIG(true, profiles) })
	// 11 for the GPU, 11 for each MIG device with its two instances; thousands when every
	// unmodelled call of every handle had its own closure.
	if allocs > 120 {
		t.Errorf("a GPU with 7 MIG devices takes %v allocations, want at most 120", allocs)
	}
}
