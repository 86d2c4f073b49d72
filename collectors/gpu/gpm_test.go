package gpu

import (
	"math"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

func engine(name string) attribute.KeyValue { return attribute.String(metrics.AttrGPUEngine, name) }

func link(l, dir string) []attribute.KeyValue {
	return []attribute.KeyValue{attribute.String(metrics.AttrGPULink, l), attribute.String(metrics.AttrIODirection, dir)}
}

// GPM metrics are those between consecutive samples, the first taken when the collector opens
// the GPU: percentages become fractions, MiB/s bytes per second, and the video engines of a
// kind are averaged over those present.
func TestGPMConvertsUnits(t *testing.T) {
	lib := newFakeLib(1)
	c := mustNew(t, lib, nil, nil)
	b := collect(t, c)
	if v, _ := b.Find(metrics.GPUGPMSupported); v != 1 {
		t.Errorf("gpm.supported = %v, want 1", v)
	}
	cases := []struct {
		attrs []attribute.KeyValue
		def   *metrics.Def
		want  float64
	}{
		{[]attribute.KeyValue{engine("sm")}, metrics.GPUActivity, 0.8},
		{[]attribute.KeyValue{engine("tensor")}, metrics.GPUActivity, 0.6},
		{[]attribute.KeyValue{engine("fp64")}, metrics.GPUActivity, 0},
		{[]attribute.KeyValue{engine("nvdec")}, metrics.GPUActivity, 0.075}, // 2 of 8 at 30 %
		{[]attribute.KeyValue{engine("nvofa")}, metrics.GPUActivity, 0.1},   // the one present
		{link("pcie", "transmit"), metrics.GPUIOThroughput, 100 << 20},
		{link("nvlink", "receive"), metrics.GPUIOThroughput, 2048 << 20},
	}
	for _, tc := range cases {
		got, ok := b.Find(tc.def, tc.attrs...)
		if !ok || math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s %v = %v (present %v), want %v", tc.def.Name, tc.attrs, got, ok, tc.want)
		}
	}
}

// A failing GPM call is logged once, the GPU's other metrics carry on, and GPM resumes with a
// fresh pair of samples when the call works again.
func TestGPMErrors(t *testing.T) {
	for _, ret := range []nvml.Return{nvml.ERROR_TIMEOUT, nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_UNKNOWN} {
		t.Run(ret.Error(), func(t *testing.T) {
			lib := newFakeLib(1)
			fail := true
			lib.gpus[0].GpmSampleGetFunc = func(nvml.GpmSample) nvml.Return {
				if fail {
					return ret
				}
				return nvml.SUCCESS
			}
			log, logs := testkit.NewLogger()
			c := mustNew(t, lib, log, nil)
			for range 3 {
				b := collect(t, c)
				if _, ok := b.Find(metrics.HWPower); !ok {
					t.Fatal("a failing GPM sample took the GPU's other metrics with it")
				}
				if _, ok := b.Find(metrics.GPUActivity); ok {
					t.Fatal("GPM activity exported without samples")
				}
			}
			if n := logs.Count(`query="GPM sample"`); n != 1 {
				t.Errorf("GPM sample failure logged %d times, want once:\n%s", n, logs.String())
			}
			fail = false
			collect(t, c)
			b := collect(t, c)
			_, ok := b.Find(metrics.GPUActivity, engine("sm"))
			if want := ret != nvml.ERROR_NOT_SUPPORTED; ok != want {
				t.Errorf("after the call works again: GPM activity present %v, want %v (unsupported stays skipped)", ok, want)
			}
			if v, _ := b.Find(metrics.GPUGPMSupported); (v == 1) != (ret != nvml.ERROR_NOT_SUPPORTED) {
				t.Errorf("gpm.supported = %v after GPM samples answered %v", v, ret)
			}
		})
	}
}

// A GPU without GPM says so once, in one line naming every such GPU, exports support 0 and its
// NVML utilisation, and is not asked for GPM samples.
func TestNoGPMSaysSoOnce(t *testing.T) {
	lib := newFakeLib(3)
	for _, i := range []int{0, 2} {
		lib.gpus[i].GpmQueryDeviceSupportFunc = func() (nvml.GpmSupport, nvml.Return) {
			return nvml.GpmSupport{Version: 1}, nvml.SUCCESS
		}
		lib.gpus[i].GpmSampleGetFunc = func(nvml.GpmSample) nvml.Return {
			t.Error("GPM sample taken on a GPU without GPM")
			return nvml.ERROR_NOT_SUPPORTED
		}
	}
	log, logs := testkit.NewLogger()
	c := mustNew(t, lib, log, nil)
	var b *sample.Batch
	for range 3 {
		b = collect(t, c)
	}
	if n := logs.Count(`msg="GPUs without GPM profiling metrics; exporting NVML utilisation for them" collector=gpu gpus="[0 2]"`); n != 1 {
		t.Errorf("want one line naming GPUs 0 and 2:\n%s", logs.String())
	}
	for i, want := range []float64{0, 1, 0} {
		gpu := attribute.Int(metrics.AttrGPUIndex, i)
		if v, _ := b.Find(metrics.GPUGPMSupported, gpu); v != want {
			t.Errorf("GPU %d gpm.supported = %v, want %v", i, v, want)
		}
		if _, ok := b.Find(metrics.GPUUtilization, gpu, attribute.String(metrics.AttrGPUTask, "general")); !ok {
			t.Errorf("GPU %d: no NVML utilisation", i)
		}
		if _, ok := b.Find(metrics.GPUActivity, gpu, engine("sm")); ok != (want == 1) {
			t.Errorf("GPU %d: GPM activity present %v, want %v", i, ok, want == 1)
		}
	}
}

// A GPU that cannot say whether it has GPM when the collector opens it (a timeout, not "not
// supported") is asked again at each collection: no support gauge while undecided, one warning,
// and GPM metrics once it answers yes.
func TestGPMSupportAskedAgainAfterATimeout(t *testing.T) {
	lib := newFakeLib(1)
	answers := 0
	lib.gpus[0].GpmQueryDeviceSupportFunc = func() (nvml.GpmSupport, nvml.Return) {
		answers++
		if answers <= 2 {
			return nvml.GpmSupport{}, nvml.ERROR_TIMEOUT
		}
		return nvml.GpmSupport{Version: 1, IsSupportedDevice: 1}, nvml.SUCCESS
	}
	log, logs := testkit.NewLogger()
	c := mustNew(t, lib, log, nil)
	b := collect(t, c) // asks again: a second timeout
	if _, ok := b.Find(metrics.GPUGPMSupported); ok {
		t.Error("gpm.supported exported while the GPU could not say")
	}
	collect(t, c) // yes: the first sample
	b = collect(t, c)
	if v, _ := b.Find(metrics.GPUGPMSupported); v != 1 {
		t.Errorf("gpm.supported = %v after the GPU answered yes, want 1", v)
	}
	if _, ok := b.Find(metrics.GPUActivity, engine("sm")); !ok {
		t.Error("no GPM activity after the GPU answered yes")
	}
	if n := logs.Count("could not say whether it has GPM"); n != 1 {
		t.Errorf("undecided GPM support logged %d times, want once:\n%s", n, logs.String())
	}
	if n := logs.Count("without GPM"); n != 0 {
		t.Errorf("a timeout was reported as a GPU without GPM:\n%s", logs.String())
	}
}

// Over the sim, GPM follows the trace: a training step's compute phase raises SM and tensor
// activity, its all-reduce lowers them and moves bytes over NVLink. Every GPU of every GPM
// model and several seeds: the phase is told from the trace's own demand, never from a fixed
// time, so it holds for whichever GPU starts late.
func TestSimGPMFollowsTheTrace(t *testing.T) {
	for _, model := range []string{"H100", "H200", "B200"} {
		for seed := int64(1); seed <= 3; seed++ {
			c, fleet, clk := simCollector(t, sim.Options{Model: model, Count: 4, Trace: "training", Seed: seed}, nil)
			m := fleet.Model()
			type phase struct{ sm, tensor, nvlink, n float64 }
			var compute, reduce [4]phase
			collect(t, c)
			for range 60 { // six training steps at 1 s
				clk.Advance(time.Second)
				b := collect(t, c)
				for i := range 4 {
					gpu := attribute.Int(metrics.AttrGPUIndex, i)
					sm, _ := b.Find(metrics.GPUActivity, gpu, engine("sm"))
					tensor, _ := b.Find(metrics.GPUActivity, gpu, engine("tensor"))
					nvlink, _ := b.Find(metrics.GPUIOThroughput, append(link("nvlink", "transmit"), gpu)...)
					// The whole last second in one phase: the demand at both ends says which.
					demand := fleet.GPU(i).State().DemandW
					var p *phase
					switch {
					case demand > 0.8*m.MaxLimitW:
						p = &compute[i]
					case demand < 0.6*m.MaxLimitW:
						p = &reduce[i]
					default:
						continue
					}
					p.sm += sm
					p.tensor += tensor
					p.nvlink += nvlink
					p.n++
				}
			}
			for i := range 4 {
				cp, rp := compute[i], reduce[i]
				if cp.n == 0 || rp.n == 0 {
					t.Fatalf("%s seed %d GPU %d: %v compute and %v all-reduce seconds seen", model, seed, i, cp.n, rp.n)
				}
				if cp.sm/cp.n < rp.sm/rp.n+0.2 || cp.tensor/cp.n < 2*rp.tensor/rp.n || rp.nvlink/rp.n < 2*cp.nvlink/cp.n {
					t.Errorf("%s seed %d GPU %d: compute sm %.2f tensor %.2f nvlink %.3g B/s; all-reduce sm %.2f tensor %.2f nvlink %.3g B/s",
						model, seed, i, cp.sm/cp.n, cp.tensor/cp.n, cp.nvlink/cp.n, rp.sm/rp.n, rp.tensor/rp.n, rp.nvlink/rp.n)
				}
			}
		}
	}
}

// With the GPM metrics and the violation time turned off, the collector takes no GPM sample
// and reads no violation counter: turning a metric off saves its NVML calls too.
func TestDisabledMetricsSkipTheirReads(t *testing.T) {
	lib := newFakeLib(1)
	var gpmCalls, violationCalls int
	lib.gpus[0].GpmSampleGetFunc = func(nvml.GpmSample) nvml.Return { gpmCalls++; return nvml.SUCCESS }
	lib.gpus[0].GpmQueryDeviceSupportFunc = func() (nvml.GpmSupport, nvml.Return) {
		gpmCalls++
		return nvml.GpmSupport{IsSupportedDevice: 1}, nvml.SUCCESS
	}
	lib.gpus[0].GetViolationStatusFunc = func(nvml.PerfPolicyType) (nvml.ViolationTime, nvml.Return) {
		violationCalls++
		return nvml.ViolationTime{}, nvml.SUCCESS
	}
	off := map[*metrics.Def]bool{metrics.GPUActivity: true, metrics.GPUIOThroughput: true, metrics.GPUViolationTime: true}
	c, err := newCollector(lib, nil, nil, func(d *metrics.Def) bool { return !off[d] })
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		b := collect(t, c)
		if _, ok := b.Find(metrics.HWPower); !ok {
			t.Fatal("no power with GPM off")
		}
	}
	if gpmCalls != 0 || violationCalls != 0 {
		t.Errorf("%d GPM and %d violation calls with their metrics off, want none", gpmCalls, violationCalls)
	}
}

// GpmMetricsGet failing (a driver timeout, no support, a GPU lost) is one log line per GPU,
// and the rest of the GPU's metrics are still exported (but for a lost GPU, reported failed).
func TestGPMMetricsErrors(t *testing.T) {
	for _, tc := range []struct {
		ret  nvml.Return
		line string
	}{
		{nvml.ERROR_TIMEOUT, `level=WARN msg="GPU query failed" collector=gpu gpu=0 query="GPM metrics" err=ERROR_TIMEOUT`},
		{nvml.ERROR_NOT_SUPPORTED, `query="GPM metrics" gpus="[0 1]"`},
		{nvml.ERROR_GPU_IS_LOST, `msg="GPU fell off the bus; reporting it failed and looking for it again every 30 s" collector=gpu gpu=0`},
	} {
		t.Run(tc.ret.Error(), func(t *testing.T) {
			lib := newFakeLib(2)
			lib.GpmMetricsGetFunc = func(mg *nvml.GpmMetricsGetType) nvml.Return {
				if mg.Sample1 == nil {
					return nvml.ERROR_INVALID_ARGUMENT
				}
				return tc.ret
			}
			log, logs := testkit.NewLogger()
			c := mustNew(t, lib, log, nil)
			for range 3 {
				b := collect(t, c)
				if _, ok := b.Find(metrics.GPUActivity); ok {
					t.Fatal("GPM activity exported while GpmMetricsGet fails")
				}
				if _, ok := b.Find(metrics.HWPower, attribute.Int(metrics.AttrGPUIndex, 1)); !ok && tc.ret != nvml.ERROR_GPU_IS_LOST {
					t.Fatal("a failing GPM call took the GPU's other metrics with it")
				}
			}
			if n := logs.Count(tc.line); n != 1 {
				t.Errorf("want one line %q, got %d:\n%s", tc.line, n, logs.String())
			}
		})
	}
}
