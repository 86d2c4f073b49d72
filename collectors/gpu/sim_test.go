package gpu

import (
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

// The collector walks every query it knows over every simulated model: the simulator must
// answer each one (an unmodelled call would panic), and the values must be the model's.
func TestCollectorOverEverySimModel(t *testing.T) {
	for _, model := range sim.Models() {
		t.Run(model, func(t *testing.T) {
			m, err := sim.LookupModel(model)
			if err != nil {
				t.Fatal(err)
			}
			// Every model has MIG: two GPUs split, two whole.
			oneG := "2x" + m.MIGProfiles()[0].Name
			c, fleet, clock := simCollector(t, sim.Options{Model: model, Count: 4, Trace: "steady", Seed: 7,
				MIG: oneG + ";off;" + oneG + ";off"}, nil)
			fleet.InjectXID(2, 79)
			var b *sample.Batch
			for range 3 {
				clock.Advance(time.Second)
				b = collect(t, c)
			}
			got := map[*metrics.Def]bool{}
			for _, p := range b.Points {
				got[p.Series.Def] = true
			}
			for _, d := range metrics.Table {
				if !d.From(Name) {
					continue
				}
				if want := onSim(d, m); got[d] != want {
					t.Errorf("%s present=%v, want %v", d.Name, got[d], want)
				}
			}
			for i := range 4 {
				gpu := attribute.Int(metrics.AttrGPUIndex, i)
				power, _ := b.Find(metrics.HWPower, gpu)
				if power < m.IdleW*0.5 || power > m.MaxLimitW {
					t.Errorf("GPU %d power %v W outside %v–%v", i, power, m.IdleW, m.MaxLimitW)
				}
				lo, _ := b.Find(metrics.GPUPowerLimit, gpu, attribute.String(metrics.AttrLimitKind, "min"))
				hi, _ := b.Find(metrics.GPUPowerLimit, gpu, attribute.String(metrics.AttrLimitKind, "max"))
				if lo != m.MinLimitW || hi != m.MaxLimitW {
					t.Errorf("GPU %d limits %v–%v W, model says %v–%v", i, lo, hi, m.MinLimitW, m.MaxLimitW)
				}
			}
			xid, _ := b.Find(metrics.GPUErrors, attribute.Int(metrics.AttrGPUIndex, 2), attribute.Int64(metrics.AttrXID, 79))
			if xid != 1 {
				t.Errorf("injected XID 79 counted %v times, want 1", xid)
			}
		})
	}
}

// onSim reports whether the collector exports d for a simulated GPU of model m: boards without
// a fan have no fan speed, and every modelled board remaps rows rather than retiring pages.
func onSim(d *metrics.Def, m sim.Model) bool {
	switch d {
	case metrics.GPUFanSpeed:
		return m.HasFan
	case metrics.GPURetiredPages, metrics.GPURetirementPending:
		return false
	case metrics.GPUActivity, metrics.GPUIOThroughput, metrics.GPUMIGActivity:
		return m.Architecture >= nvml.DEVICE_ARCH_HOPPER // GPM
	case metrics.GPUPowerSmoothing, metrics.GPUPowerSmoothingFloor:
		return m.PowerSmoothing
	}
	return true
}

// A simulated GPU lost mid-run is reported failed, the others carry on.
func TestSimGPULost(t *testing.T) {
	c, fleet, clock := simCollector(t, sim.Options{Model: "H100", Count: 2, Trace: "training", Seed: 1}, nil)
	collect(t, c)
	fleet.SetLost(1, true)
	clock.Advance(time.Second)
	collect(t, c)
	b := collect(t, c)
	failed, _ := b.Find(metrics.GPUStatus, attribute.Int(metrics.AttrGPUIndex, 1), attribute.String(metrics.AttrHWState, "failed"))
	if failed != 1 {
		t.Errorf("lost simulated GPU: status failed=%v, want 1", failed)
	}
	if _, ok := b.Find(metrics.HWPower, attribute.Int(metrics.AttrGPUIndex, 0)); !ok {
		t.Error("GPU 0 stopped reporting when GPU 1 was lost")
	}
}

// Eight simulated H100 SXM boards have no fan: the collector says so once, at debug, in one
// line that lists the GPUs, and nothing at info.
func TestSimUnsupportedQueriesAreOneDebugLinePerQuery(t *testing.T) {
	log, logs := testkit.NewLogger()
	c, _, clock := simCollector(t, sim.Options{Model: "H100", Count: 8, Trace: "training", Seed: 1}, log)
	for range 3 {
		clock.Advance(time.Second)
		collect(t, c)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	var info, fan []string
	for _, l := range lines {
		if strings.Contains(l, "level=INFO") && strings.Contains(l, "support") {
			info = append(info, l)
		}
		if strings.Contains(l, `query="fan speed"`) {
			fan = append(fan, l)
		}
	}
	if len(info) != 0 {
		t.Errorf("%d info lines about unsupported queries, want none:\n%s", len(info), strings.Join(info, "\n"))
	}
	if len(fan) != 1 || !strings.Contains(fan[0], "level=DEBUG") || !strings.Contains(fan[0], `gpus="[0 1 2 3 4 5 6 7]"`) {
		t.Errorf("fan speed: want one debug line listing GPUs 0–7, got %d:\n%s", len(fan), strings.Join(fan, "\n"))
	}
}

// A simulated GPU that comes back on the bus (a reset, a driver reload) is looked for at a slow
// pace and collected again, without a restart; one line says so.
func TestSimLostGPUComesBack(t *testing.T) {
	for _, model := range []string{"H100", "A100", "B200"} {
		t.Run(model, func(t *testing.T) {
			log, logs := testkit.NewLogger()
			c, fleet, clock := simCollector(t, sim.Options{Model: model, Count: 3, Trace: "training", Seed: 7}, log)
			gpu2 := attribute.Int(metrics.AttrGPUIndex, 2)
			state := func(b *sample.Batch) string {
				if v, _ := b.Find(metrics.GPUStatus, gpu2, attribute.String(metrics.AttrHWState, "ok")); v == 1 {
					return "ok"
				}
				return "failed"
			}
			collect(t, c)
			fleet.SetLost(2, true)
			clock.Advance(time.Second)
			if b := collect(t, c); state(b) != "failed" {
				t.Fatal("a lost GPU is not reported failed")
			}
			fleet.SetLost(2, false)
			clock.Advance(reprobeEvery / 2)
			if b := collect(t, c); state(b) != "failed" {
				t.Fatal("a lost GPU was looked for again before its pace")
			}
			clock.Advance(reprobeEvery / 2)
			b := collect(t, c)
			if state(b) != "ok" {
				t.Fatalf("a GPU back on the bus is still reported failed:\n%s", logs.String())
			}
			if _, ok := b.Find(metrics.HWPower, gpu2); !ok {
				t.Error("a GPU back on the bus reports no power")
			}
			if n := logs.Count("lost GPU answers again"); n != 1 {
				t.Errorf("the return was logged %d times, want once:\n%s", n, logs.String())
			}
			clock.Advance(time.Second)
			if b := collect(t, c); state(b) != "ok" {
				t.Error("a GPU that came back failed again on the next collection")
			}
		})
	}
}
