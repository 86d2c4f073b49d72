package gpu

import (
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

func sumOf(b *sample.Batch, def *metrics.Def, match ...attribute.KeyValue) (sum float64, n int) {
	for i := range b.Points {
		p := &b.Points[i]
		if p.Series.Def != def {
			continue
		}
		ok := true
		for _, kv := range match {
			if v, has := p.Series.Attrs.Value(kv.Key); !has || v != kv.Value {
				ok = false
			}
		}
		if ok {
			sum += p.Value
			n++
		}
	}
	return sum, n
}

// Each NVLink link of each simulated GPU is exported with its state, version and remote end;
// injected errors show per link and in the GPU's totals; a link taken down is counted down and
// moves no more bytes while the others carry the traffic.
func TestSimNVLinkPerLink(t *testing.T) {
	for _, tc := range []struct {
		model   string
		links   int
		version int64
	}{{"H100", 18, 4}, {"B200", 18, 5}, {"A100", 12, 3}} {
		t.Run(tc.model, func(t *testing.T) {
			c, fleet, clk := simCollector(t, sim.Options{Model: tc.model, Count: 2, Trace: "training", Seed: 11}, nil)
			gpu1 := attribute.Int(metrics.AttrGPUIndex, 1)
			link := func(l int) attribute.KeyValue { return attribute.Int(metrics.AttrNVLink, l) }
			collect(t, c)
			clk.Advance(time.Minute)
			before := collect(t, c)
			if _, n := sumOf(before, metrics.GPUNVLinkLinkState, gpu1, attribute.String(metrics.AttrNVLinkRemote, "switch"),
				attribute.Int64(metrics.AttrNVLinkVersion, tc.version)); n != tc.links {
				t.Fatalf("%d links of version %d to a switch, want %d", n, tc.version, tc.links)
			}
			if err := fleet.InjectNVLinkErrors(1, 3, nvml.NVLINK_ERROR_DL_CRC_FLIT, 5); err != nil {
				t.Fatal(err)
			}
			if err := fleet.InjectNVLinkErrors(1, tc.links-1, nvml.NVLINK_ERROR_DL_REPLAY, 2); err != nil {
				t.Fatal(err)
			}
			if err := fleet.InjectNVLinkErrors(1, 0, nvml.NVLINK_ERROR_DL_CRC_DATA, 7); err != nil {
				t.Fatal(err)
			}
			if err := fleet.SetNVLinkDown(1, 5, true); err != nil {
				t.Fatal(err)
			}
			if err := fleet.InjectNVLinkErrors(1, tc.links, nvml.NVLINK_ERROR_DL_REPLAY, 1); err == nil {
				t.Error("an error injected on a link the model does not have was accepted")
			}
			clk.Advance(time.Minute)
			b := collect(t, c)
			for _, e := range []struct {
				kind string
				l    int
				n    float64
			}{{"crc_flit", 3, 5}, {"replay", tc.links - 1, 2}, {"crc_data", 0, 7}} {
				typ := attribute.String(metrics.AttrErrorType, e.kind)
				if v, _ := b.Find(metrics.GPUNVLinkLinkErrors, gpu1, link(e.l), typ); v != e.n {
					t.Errorf("link %d %s errors %v, want %v", e.l, e.kind, v, e.n)
				}
				if v, _ := b.Find(metrics.GPUNVLinkErrors, gpu1, typ); v != e.n {
					t.Errorf("GPU %s errors %v, want %v", e.kind, v, e.n)
				}
			}
			if v, _ := b.Find(metrics.GPUNVLinkErrors, attribute.Int(metrics.AttrGPUIndex, 0), attribute.String(metrics.AttrErrorType, "crc_flit")); v != 0 {
				t.Errorf("GPU 0 has %v CRC errors injected on GPU 1", v)
			}
			if up, _ := b.Find(metrics.GPUNVLinkLinks, gpu1, attribute.String(metrics.AttrHWState, "up")); up != float64(tc.links-1) {
				t.Errorf("%v links up, want %d", up, tc.links-1)
			}
			if v, _ := b.Find(metrics.GPUNVLinkLinkState, gpu1, link(5)); v != 0 {
				t.Errorf("link 5 state %v after it went down, want 0", v)
			}
			dir := attribute.String(metrics.AttrIODirection, "transmit")
			down0, _ := before.Find(metrics.GPUNVLinkLinkIO, gpu1, link(5), dir)
			down1, _ := b.Find(metrics.GPUNVLinkLinkIO, gpu1, link(5), dir)
			up0, _ := before.Find(metrics.GPUNVLinkLinkIO, gpu1, link(4), dir)
			up1, _ := b.Find(metrics.GPUNVLinkLinkIO, gpu1, link(4), dir)
			if down1 != down0 || up1 <= up0 {
				t.Errorf("bytes over the down link %v → %v (want unchanged), over an up link %v → %v (want more)", down0, down1, up0, up1)
			}
			perLink, _ := sumOf(b, metrics.GPUNVLinkLinkIO, gpu1, dir)
			total, _ := b.Find(metrics.GPUNVLinkIO, gpu1, dir)
			if total <= 0 || total != perLink {
				t.Errorf("GPU NVLink bytes %v, the links' sum %v: want them equal and positive on a training trace", total, perLink)
			}
		})
	}
}

// With the default selection the per-link series are not built nor exported; the GPU's totals
// are.
func TestNVLinkPerLinkOffByDefault(t *testing.T) {
	fleet, clk := simOn(t, sim.Options{Model: "H100", Count: 2, Trace: "training", Seed: 11})
	c, err := newCollector(fleet, nil, clk.Now, (*metrics.Def).OnByDefault)
	if err != nil {
		t.Fatal(err)
	}
	b := collect(t, c)
	for _, d := range []*metrics.Def{metrics.GPUNVLinkLinkState, metrics.GPUNVLinkLinkIO, metrics.GPUNVLinkLinkErrors} {
		if n := b.Count(d); n != 0 {
			t.Errorf("%s: %d series with the default selection, want none", d.Name, n)
		}
	}
	if n := b.Count(metrics.GPUNVLinkErrors); n != 2*4 {
		t.Errorf("%d NVLink error totals, want 4 per GPU", n)
	}
	if c.devices[0].nvlink.perLink != nil {
		t.Error("per-link series built although none is exported")
	}
}

// NVLink call errors: a failing CRC-data counter is said once and the other NVLink totals and
// the GPU's metrics go on; a GPU without NVLink says so once at debug; a GPU lost while its
// links are read is reported failed.
func TestNVLinkCallErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(g *fakeGPU)
		line  string
	}{
		{"crc data timeout", func(g *fakeGPU) {
			calls := 0
			g.GetNvLinkErrorCounterFunc = func(int, nvml.NvLinkErrorCounter) (uint64, nvml.Return) {
				calls++
				if calls == 1 { // the probe at open succeeds, the reads time out
					return 0, nvml.SUCCESS
				}
				return 0, nvml.ERROR_TIMEOUT
			}
		}, `msg="GPU query failed" collector=gpu gpu=1 query="NVLink CRC data errors" link=0 err=ERROR_TIMEOUT`},
		{"no nvlink", func(g *fakeGPU) {
			g.GetNvLinkStateFunc = func(int) (nvml.EnableState, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
		}, `query=NVLink gpus=[1]`},
		{"lost", func(g *fakeGPU) {
			g.GetNvLinkStateFunc = func(int) (nvml.EnableState, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
		}, `msg="GPU fell off the bus`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lib := newFakeLib(2)
			tc.setup(lib.gpus[1])
			log, logs := testkit.NewLogger()
			c := mustNew(t, lib, log, nil)
			var b *sample.Batch
			for range 3 {
				b = collect(t, c)
			}
			if n := logs.Count(tc.line); n != 1 {
				t.Errorf("want one line %q, got %d:\n%s", tc.line, n, logs.String())
			}
			gpu1 := attribute.Int(metrics.AttrGPUIndex, 1)
			if tc.name != "lost" {
				if _, ok := b.Find(metrics.HWPower, gpu1); !ok {
					t.Error("GPU 1 lost its power reading to a failing NVLink call")
				}
			}
			if tc.name == "crc data timeout" {
				if _, ok := b.Find(metrics.GPUNVLinkLinks, gpu1, attribute.String(metrics.AttrHWState, "up")); !ok {
					t.Error("GPU 1's link states went missing with its CRC-data counter")
				}
			}
			if _, ok := b.Find(metrics.GPUNVLinkLinks, attribute.Int(metrics.AttrGPUIndex, 0), attribute.String(metrics.AttrHWState, "up")); !ok {
				t.Error("GPU 0 stopped reporting its links")
			}
		})
	}
}

// The GPU's NVLink totals are counters: a read that fails on one link leaves that link's last
// count in the total rather than dropping it (a total that fell would read as a reset, and the
// next collection as a burst of errors). A timeout when CRC-data support is first asked turns
// nothing off: support is asked again until the driver says yes or not supported.
func TestNVLinkTotalsNeverGoBack(t *testing.T) {
	lib := newFakeLib(1)
	calls := map[int]int{}
	counts := map[int]uint64{}
	lib.gpus[0].GetNvLinkErrorCounterFunc = func(l int, _ nvml.NvLinkErrorCounter) (uint64, nvml.Return) {
		calls[l]++
		if l == 0 && calls[l] == 1 {
			return 0, nvml.ERROR_TIMEOUT // the first support probe
		}
		if l == 1 && calls[l]%2 == 0 {
			return 0, nvml.ERROR_TIMEOUT // link 1 fails every other read
		}
		counts[l] += 5
		return counts[l], nvml.SUCCESS
	}
	log, _ := testkit.NewLogger()
	c := mustNew(t, lib, log, nil)
	gpu0, crcData := attribute.Int(metrics.AttrGPUIndex, 0), attribute.String(metrics.AttrErrorType, "crc_data")
	prev, seen := -1.0, 0
	for i := range 8 {
		b := collect(t, c)
		v, ok := b.Find(metrics.GPUNVLinkErrors, gpu0, crcData)
		if !ok {
			continue
		}
		seen++
		if v < prev {
			t.Fatalf("collection %d: CRC-data errors over all links went from %v down to %v", i, prev, v)
		}
		prev = v
	}
	if seen < 6 {
		t.Fatalf("CRC-data errors exported in %d of 8 collections: a timeout at the first support probe turned them off", seen)
	}
	if want := float64(counts[0] + counts[1]); prev != want {
		t.Errorf("last total %v, want the links' last counts added, %v", prev, want)
	}
}

// A query made per link (or per GPU instance) that fails on one part while its siblings answer
// is logged once for that part, and its recovery once: not a failure and a recovery at every
// collection, as when the bookkeeping was per GPU.
func TestPartFailureLoggedOnce(t *testing.T) {
	lib := newFakeLib(1)
	failing := true
	lib.gpus[0].GetNvLinkErrorCounterFunc = func(l int, _ nvml.NvLinkErrorCounter) (uint64, nvml.Return) {
		if l == 1 && failing {
			return 0, nvml.ERROR_TIMEOUT
		}
		return 3, nvml.SUCCESS
	}
	log, logs := testkit.NewLogger()
	c := mustNew(t, lib, log, nil)
	for range 5 {
		collect(t, c)
	}
	failed := `msg="GPU query failed" collector=gpu gpu=0 query="NVLink CRC data errors" link=1 err=ERROR_TIMEOUT`
	if n, m := logs.Count(failed), logs.Count("works again"); n != 1 || m != 0 {
		t.Errorf("link 1 failing for 5 collections: %d failure lines, %d recovery lines; want 1 and 0:\n%s", n, m, logs.String())
	}
	failing = false
	collect(t, c)
	collect(t, c)
	if n := logs.Count(`msg="GPU query works again" collector=gpu gpu=0 query="NVLink CRC data errors" link=1`); n != 1 {
		t.Errorf("link 1's recovery logged %d times, want once:\n%s", n, logs.String())
	}
}
