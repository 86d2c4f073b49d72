package gpu

import (
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

// migSeries lists the profile of every MIG device GPU gpu exports, with its memory limit.
func migProfiles(b *sample.Batch, gpu int) map[string]int {
	out := map[string]int{}
	for i := range b.Points {
		p := &b.Points[i]
		if p.Series.Def != metrics.GPUMIGInfo {
			continue
		}
		if v, _ := p.Series.Attrs.Value(metrics.AttrGPUIndex); int(v.AsInt64()) != gpu {
			continue
		}
		v, _ := p.Series.Attrs.Value(metrics.AttrMIGProfile)
		out[v.AsString()]++
	}
	return out
}

// Every MIG device of every simulated GPU is exported with its profile, ids, MIG UUID and
// memory; GPM per GPU instance on the models that have GPM (not A100), each instance as busy as
// its processes (the GPU's work spread evenly on a GPU without processes).
func TestSimMIGDevices(t *testing.T) {
	for _, tc := range []struct {
		model, layout, profile string
		n                      int
		memMiB                 float64
	}{
		{"H100", "7x1g.10gb", "1g.10gb", 7, 9856},
		{"H200", "3x2g.35gb", "2g.35gb", 3, 35456},
		{"B200", "2x3g.90gb", "3g.90gb", 2, 92160},
		{"A100", "7x1g.10gb", "1g.10gb", 7, 9728},
	} {
		t.Run(tc.model, func(t *testing.T) {
			const gpus = 3
			fleet, clk := simOn(t, sim.Options{Model: tc.model, Count: gpus, Trace: "training", Seed: 3, MIG: tc.layout})
			if err := fleet.SetProcesses(0, []sim.Process{{PID: 100, GPUInstance: 1, SMShare: 0.2}, {PID: 101, GPUInstance: 1, SMShare: 0.3},
				{PID: 102, GPUInstance: 2, SMShare: 0.25}}); err != nil {
				t.Fatal(err)
			}
			c := mustNew(t, fleet, nil, clk.Now)
			collect(t, c)
			clk.Advance(time.Second)
			b := collect(t, c)
			for g := range gpus {
				if v, _ := b.Find(metrics.GPUMIGMode, attribute.Int(metrics.AttrGPUIndex, g)); v != 1 {
					t.Errorf("GPU %d MIG mode %v, want 1", g, v)
				}
				if got := migProfiles(b, g); got[tc.profile] != tc.n || len(got) != 1 {
					t.Errorf("GPU %d MIG devices %v, want %d × %s", g, got, tc.n, tc.profile)
				}
			}
			if n := b.Count(metrics.GPUMIGMemoryLimit); n != gpus*tc.n {
				t.Fatalf("%d MIG memory limits, want %d", n, gpus*tc.n)
			}
			for i := range b.Points {
				p := &b.Points[i]
				switch p.Series.Def {
				case metrics.GPUMIGMemoryLimit:
					if p.Value != tc.memMiB*(1<<20) {
						t.Errorf("MIG memory limit %v, want %v MiB", p.Value, tc.memMiB)
					}
				case metrics.GPUMIGInfo:
					if v, _ := p.Series.Attrs.Value(metrics.AttrMIGUUID); !strings.HasPrefix(v.AsString(), "MIG-") {
						t.Errorf("MIG device UUID %q", v.AsString())
					}
				}
			}
			if n := b.Count(metrics.GPUMIGProcesses); n != gpus*tc.n {
				t.Errorf("%d MIG process counts, want %d", n, gpus*tc.n)
			}
			for gi, want := range map[int]float64{1: 2, 2: 1} {
				if v, _ := b.Find(metrics.GPUMIGProcesses, attribute.Int(metrics.AttrGPUIndex, 0), attribute.Int(metrics.AttrMIGGPUInstance, gi)); v != want {
					t.Errorf("GPU 0 instance %d runs %v processes, want %v", gi, v, want)
				}
			}
			wantGPM := tc.model != "A100"
			sm := 0
			gpu0 := map[int64]float64{}
			for i := range b.Points {
				p := &b.Points[i]
				if p.Series.Def != metrics.GPUMIGActivity {
					continue
				}
				if v, _ := p.Series.Attrs.Value(metrics.AttrGPUEngine); v.AsString() == "sm" {
					sm++
					gpu, _ := p.Series.Attrs.Value(metrics.AttrGPUIndex)
					gi, _ := p.Series.Attrs.Value(metrics.AttrMIGGPUInstance)
					switch {
					case gpu.AsInt64() == 0:
						gpu0[gi.AsInt64()] = p.Value
					case p.Value <= 0 || p.Value > 1:
						t.Errorf("GPU %d instance %d SM activity %v, want in (0, 1] on a training trace", gpu.AsInt64(), gi.AsInt64(), p.Value)
					}
				}
			}
			if wantGPM {
				// GPU 0: instance 1's processes hold 0.5 of its SMs, instance 2's 0.25, the others none.
				if a1, a2 := gpu0[1], gpu0[2]; a1 <= 0 || a1 > 1 || math.Abs(a1-2*a2) > 1e-9 {
					t.Errorf("GPU 0 instances 1 and 2 SM activity %v and %v, want the first twice the second, in (0, 1]", a1, a2)
				}
				for gi, v := range gpu0 {
					if gi > 2 && v != 0 {
						t.Errorf("GPU 0 instance %d, which runs no process, SM activity %v", gi, v)
					}
				}
			}
			if wantGPM && sm != gpus*tc.n {
				t.Errorf("%d GPU instances report SM activity, want %d", sm, gpus*tc.n)
			}
			if !wantGPM && sm != 0 {
				t.Errorf("an A100 (no GPM) reports GPU instance activity")
			}
		})
	}
}

// A GPU reconfigured while the agent runs shows its new layout without a restart; the old
// instances' series are no longer exported. An instance destroyed under a collection is noticed
// at once (its handle answers not found), not only at the next discovery.
func TestSimMIGReconfiguredWhileRunning(t *testing.T) {
	log, logs := testkit.NewLogger()
	c, fleet, clk := simCollector(t, sim.Options{Model: "H100", Count: 2, Trace: "training", Seed: 3, MIG: "7x1g.10gb"}, log)
	collect(t, c)
	if err := fleet.SetMIGLayout(0, "3g.40gb,4g.40gb"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	b := collect(t, c) // the old handles answer not found: discovery is due
	if n := b.Count(metrics.GPUMIGMemoryUsage); n != 7 {
		t.Errorf("%d MIG memory series in the collection that found the old instances gone, want GPU 1's 7", n)
	}
	if n := b.Count(metrics.GPUMIGInfo); n != 7 {
		t.Errorf("%d MIG devices listed in the collection that found the old ones gone, want GPU 1's 7", n)
	}
	clk.Advance(time.Second)
	b = collect(t, c)
	if got := migProfiles(b, 0); got["3g.40gb"] != 1 || got["4g.40gb"] != 1 || len(got) != 2 {
		t.Errorf("GPU 0 after reconfiguration: %v, want one 3g.40gb and one 4g.40gb", got)
	}
	if got := migProfiles(b, 1); got["1g.10gb"] != 7 {
		t.Errorf("GPU 1 changed with GPU 0: %v", got)
	}
	// The GPM activity of the new instances carries their profiles, though the GPU instance ids
	// are those the 1g.10gb instances had, and is a ratio taken on the new instances alone.
	clk.Advance(time.Second)
	b = collect(t, c)
	activity := map[string]string{}
	for i := range b.Points {
		p := &b.Points[i]
		if p.Series.Def != metrics.GPUMIGActivity {
			continue
		}
		if v, _ := p.Series.Attrs.Value(metrics.AttrGPUIndex); v.AsInt64() != 0 {
			continue
		}
		gi, _ := p.Series.Attrs.Value(metrics.AttrMIGGPUInstance)
		prof, _ := p.Series.Attrs.Value(metrics.AttrMIGProfile)
		if was, ok := activity[gi.String()]; ok && was != prof.AsString() {
			t.Errorf("GPU instance %s exports activity under profiles %s and %s", gi.String(), was, prof.AsString())
		}
		activity[gi.String()] = prof.AsString()
		if p.Value < 0 || p.Value > 1 {
			t.Errorf("GPU instance %s activity %v, not a ratio", gi.String(), p.Value)
		}
	}
	if got := slices.Sorted(maps.Values(activity)); !slices.Equal(got, []string{"3g.40gb", "4g.40gb"}) {
		t.Errorf("GPU 0's activity after reconfiguration is under profiles %v, want 3g.40gb and 4g.40gb", activity)
	}
	if err := fleet.SetMIGLayout(0, "off"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(migRediscoverEvery)
	b = collect(t, c)
	if v, _ := b.Find(metrics.GPUMIGMode, attribute.Int(metrics.AttrGPUIndex, 0)); v != 0 {
		t.Errorf("GPU 0 MIG mode %v after MIG was turned off, want 0", v)
	}
	if got := migProfiles(b, 0); len(got) != 0 {
		t.Errorf("GPU 0 still exports MIG devices after MIG was turned off: %v", got)
	}
	if n := logs.Count("GPU query failed"); n != 0 {
		t.Errorf("a reconfiguration was logged as a failure:\n%s", logs.String())
	}
}

// The sim refuses a layout that does not fit or names a profile the model does not have.
func TestSimMIGLayoutErrors(t *testing.T) {
	for _, tc := range []struct{ model, layout, want string }{
		{"H100", "8x1g.10gb", "count"},
		{"H100", "2x4g.40gb", "at most 1"},
		{"H100", "4g.40gb,3g.40gb,1g.10gb", "slices"},
		{"A100", "1g.18gb", `no profile "1g.18gb"`},
		{"H100", "7x1g.10gb;off", "2 layouts for 3 GPUs"},
	} {
		_, err := sim.New(sim.Options{Model: tc.model, Count: 3, Trace: "steady", MIG: tc.layout})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %q: error %v, want one saying %q", tc.model, tc.layout, err, tc.want)
		}
	}
	fleet, err := sim.New(sim.Options{Model: "H100", Count: 3, Trace: "steady", MIG: "7x1g.10gb;off;3g.40gb,2x2g.20gb"})
	if err != nil {
		t.Fatalf("per-GPU layouts: %v", err)
	}
	_ = fleet.Init()
	if mode, _, _ := fleet.GPU(1).GetMigMode(); mode != nvml.DEVICE_MIG_DISABLE {
		t.Error("GPU 1 is in MIG mode with layout off")
	}
}

// On go-nvml's DGX mocks, which give GPU and compute instances but no MIG device handles, the
// collector finds the MIG devices by walking the instances.
func TestMIGDiscoveryOnDGXMocks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		srv     *server.Server
		profile int
		want    string
	}{
		{"dgxh100", dgxh100.New(), nvml.GPU_INSTANCE_PROFILE_1_SLICE, "1g.10gb"},
		{"dgxa100", dgxa100.New(), nvml.GPU_INSTANCE_PROFILE_3_SLICE, "3g.20gb"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := tc.srv.Devices[0].(*server.Device)
			dev.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
			if ret, _ := dev.SetMigMode(nvml.DEVICE_MIG_ENABLE); ret != nvml.SUCCESS {
				t.Fatal(ret)
			}
			info, ret := dev.GetGpuInstanceProfileInfo(tc.profile)
			if ret != nvml.SUCCESS {
				t.Fatal(ret)
			}
			for range 2 {
				gi, ret := dev.CreateGpuInstance(&info)
				if ret != nvml.SUCCESS {
					t.Fatal(ret)
				}
				ciInfo, ret := gi.GetComputeInstanceProfileInfo(int(info.SliceCount)-1, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
				if tc.profile == nvml.GPU_INSTANCE_PROFILE_3_SLICE {
					ciInfo, ret = gi.GetComputeInstanceProfileInfo(nvml.COMPUTE_INSTANCE_PROFILE_3_SLICE, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
				}
				if ret != nvml.SUCCESS {
					t.Fatal(ret)
				}
				if _, ret := gi.CreateComputeInstance(&ciInfo); ret != nvml.SUCCESS {
					t.Fatal(ret)
				}
			}
			c := &Collector{lib: tc.srv, log: slog.New(slog.DiscardHandler), now: time.Now}
			d := &device{index: 0, dev: dev, uuid: dev.UUID}
			d.buildSeries("mock", "", "", "")
			b := &sample.Batch{}
			c.collectMIG(d, b)
			if v, _ := b.Find(metrics.GPUMIGMode); v != 1 {
				t.Errorf("MIG mode %v, want 1", v)
			}
			if got := migProfiles(b, 0); got[tc.want] != 2 || len(got) != 1 {
				t.Errorf("MIG devices %v, want 2 × %s", got, tc.want)
			}
		})
	}
}

// An error from the MIG mode query is said once per GPU (not supported: once, at debug, for all
// GPUs) and the GPU's other metrics go on; a lost GPU is reported failed.
func TestMIGModeErrors(t *testing.T) {
	for _, tc := range []struct {
		ret  nvml.Return
		line string
	}{
		{nvml.ERROR_NOT_SUPPORTED, `query="MIG mode" gpus=[1]`},
		{nvml.ERROR_TIMEOUT, `msg="GPU query failed" collector=gpu gpu=1 query="MIG mode" err=ERROR_TIMEOUT`},
		{nvml.ERROR_GPU_IS_LOST, `msg="GPU fell off the bus`},
	} {
		t.Run(tc.ret.String(), func(t *testing.T) {
			lib := newFakeLib(2)
			lib.gpus[1].GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, tc.ret }
			log, logs := testkit.NewLogger()
			now := time.Unix(1_700_000_000, 0)
			c := mustNew(t, lib, log, func() time.Time { return now })
			var b *sample.Batch
			for range 3 {
				b = collect(t, c)
				now = now.Add(migRediscoverEvery)
			}
			if n := logs.Count(tc.line); n != 1 {
				t.Errorf("want one line %q, got %d:\n%s", tc.line, n, logs.String())
			}
			if v, ok := b.Find(metrics.GPUMIGMode, attribute.Int(metrics.AttrGPUIndex, 0)); !ok || v != 0 {
				t.Errorf("GPU 0 MIG mode %v (%v), want 0", v, ok)
			}
			if _, ok := b.Find(metrics.GPUMIGMode, attribute.Int(metrics.AttrGPUIndex, 1)); ok {
				t.Error("GPU 1 exports a MIG mode it could not read")
			}
			if tc.ret != nvml.ERROR_GPU_IS_LOST {
				if _, ok := b.Find(metrics.HWPower, attribute.Int(metrics.AttrGPUIndex, 1)); !ok {
					t.Error("GPU 1 lost its power reading to a failing MIG query")
				}
			}
		})
	}
}

// A MIG mode set but not yet applied (it takes a GPU reset) shows as pending, said once, while
// capstan.gpu.mig.mode keeps the mode in force; once applied, nothing is pending.
func TestSimMIGModePending(t *testing.T) {
	log, logs := testkit.NewLogger()
	c, fleet, clk := simCollector(t, sim.Options{Model: "H100", Count: 2, Trace: "steady", Seed: 3}, log)
	gpu0 := attribute.Int(metrics.AttrGPUIndex, 0)
	var b *sample.Batch
	wantModes := func(when string, mode, pending float64) {
		t.Helper()
		if v, ok := b.Find(metrics.GPUMIGMode, gpu0); !ok || v != mode {
			t.Errorf("%s: mig.mode %v (present %v), want %v", when, v, ok, mode)
		}
		if v, ok := b.Find(metrics.GPUMIGModePending, gpu0); !ok || v != pending {
			t.Errorf("%s: mig.mode.pending %v (present %v), want %v", when, v, ok, pending)
		}
	}
	b = collect(t, c)
	wantModes("nothing set", 0, 0)
	h, _ := fleet.DeviceGetHandleByIndex(0)
	if _, ret := h.SetMigMode(nvml.DEVICE_MIG_ENABLE); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	for range 2 {
		clk.Advance(migRediscoverEvery)
		b = collect(t, c)
	}
	wantModes("MIG set on, before the reset", 0, 1)
	if v, _ := b.Find(metrics.GPUMIGModePending, attribute.Int(metrics.AttrGPUIndex, 1)); v != 0 {
		t.Errorf("GPU 1 mig.mode.pending %v, want 0", v)
	}
	if n := logs.Count("MIG mode changes at the GPU's next reset"); n != 1 {
		t.Errorf("pending mode logged %d times, want once:\n%s", n, logs.String())
	}
	if err := fleet.SetMIGLayout(0, "7x1g.10gb"); err != nil { // reset, and instances made
		t.Fatal(err)
	}
	clk.Advance(migRediscoverEvery)
	b = collect(t, c)
	wantModes("after the reset", 1, 0)
}
