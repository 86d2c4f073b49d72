package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/sample"
)

// Without a driver the check says so and exits 2, having made no NVML call after Init.
func TestNoDriverExits2(t *testing.T) {
	var out bytes.Buffer
	c := &check{lib: nvml.New(nvml.WithLibraryPath(filepath.Join(t.TempDir(), "libnvidia-ml.so.1"))), out: &out}
	if code := c.run(); code != exitNoDriver {
		t.Errorf("exit %d, want %d:\n%s", code, exitNoDriver, out.String())
	}
	if !strings.Contains(out.String(), "No NVIDIA driver on this host") {
		t.Errorf("the report does not say why:\n%s", out.String())
	}
}

// The command itself, as make hwcheck runs it, on a host without the NVIDIA library.
func TestNoDriverCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command")
	}
	bin := filepath.Join(t.TempDir(), "hwcheck")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building hwcheck: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "--nvml-library", filepath.Join(t.TempDir(), "libnvidia-ml.so.1"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitNoDriver {
		t.Fatalf("hwcheck without a driver: %v, want exit status %d", err, exitNoDriver)
	}
	if !strings.Contains(stderr.String(), "no NVIDIA driver") {
		t.Errorf("stderr does not say why: %q", stderr.String())
	}
}

// simNode is a simulated GPU node: the fleet as the NVML library, the GPU collector over it as
// `capstan collect --json`, and an nvidia-smi that reads the same fleet.
type simNode struct {
	fleet *sim.Fleet
	clk   *clock.Manual
	// smiEdit changes nvidia-smi's fields of GPU 0 before they are printed.
	smiEdit func(fields map[string]string)
}

func newSimNode(t *testing.T, model string, count int) *simNode {
	t.Helper()
	clk := clock.NewManual(time.Unix(1_700_000_000, 0))
	fleet, err := sim.New(sim.Options{Model: model, Count: count, Trace: "steady", Seed: 3, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return &simNode{fleet: fleet, clk: clk}
}

func (s *simNode) collect() ([]byte, error) {
	if ret := s.fleet.Init(); ret != nvml.SUCCESS {
		return nil, ret
	}
	defer func() { _ = s.fleet.Shutdown() }()
	c, err := gpu.New(s.fleet, nil, s.clk.Now)
	if err != nil {
		return nil, err
	}
	b := &sample.Batch{}
	if err := c.Collect(context.Background(), b); err != nil {
		return nil, err
	}
	var out []map[string]any
	for _, p := range b.Points {
		attrs := map[string]string{}
		for it := p.Series.Attrs.Iter(); it.Next(); {
			kv := it.Attribute()
			attrs[string(kv.Key)] = kv.Value.String()
		}
		out = append(out, map[string]any{"name": p.Series.Def.Name, "value": p.Value, "attributes": attrs})
	}
	return json.Marshal(out)
}

func (s *simNode) smi(query string) ([]byte, error) {
	var buf bytes.Buffer
	for i := range s.fleet.Count() {
		g := s.fleet.GPU(i)
		uuid, _ := g.GetUUID()
		power, _ := g.GetPowerUsage()
		temp, _ := g.GetTemperature(nvml.TEMPERATURE_GPU)
		sm, _ := g.GetClockInfo(nvml.CLOCK_SM)
		mem, _ := g.GetClockInfo(nvml.CLOCK_MEM)
		m, _ := g.GetMemoryInfo_v2()
		u, _ := g.GetUtilizationRates()
		enforced, _ := g.GetEnforcedPowerLimit()
		requested, _ := g.GetPowerManagementLimit()
		f := map[string]string{
			"index": fmt.Sprint(i), "uuid": uuid, "power.draw": fmt.Sprintf("%.2f", float64(power)/1000),
			"temperature.gpu": fmt.Sprint(temp), "clocks.sm": fmt.Sprint(sm), "clocks.mem": fmt.Sprint(mem),
			"memory.total": fmt.Sprint(m.Total >> 20), "memory.used": fmt.Sprint(m.Used >> 20),
			"utilization.gpu": fmt.Sprint(u.Gpu), "enforced.power.limit": fmt.Sprintf("%.2f", float64(enforced)/1000),
			"power.limit": fmt.Sprintf("%.2f", float64(requested)/1000),
		}
		if i == 0 && s.smiEdit != nil {
			s.smiEdit(f)
		}
		var row []string
		for _, q := range strings.Split(query, ",") {
			v, ok := f[q]
			if !ok {
				v = "[N/A]"
			}
			row = append(row, v)
		}
		buf.WriteString(strings.Join(row, ", ") + "\n")
	}
	return buf.Bytes(), nil
}

func (s *simNode) check(out *bytes.Buffer, lib nvml.Interface) *check {
	return &check{lib: lib, out: out, gpu: 1, interrupted: func() bool { return false },
		collect: s.collect, smi: s.smi}
}

// On a healthy node every comparison passes, GPM and MIG support are reported, and the limit
// written on one GPU is read back and restored, on every model.
func TestSimNodePasses(t *testing.T) {
	for _, model := range sim.Models() {
		t.Run(model, func(t *testing.T) {
			node := newSimNode(t, model, 2)
			before := node.fleet.GPU(1).State().RequestedLimitW
			var out bytes.Buffer
			if code := node.check(&out, node.fleet).run(); code != exitOK {
				t.Fatalf("exit %d, want 0:\n%s", code, out.String())
			}
			report := out.String()
			gpm := "| yes |"
			if model == "A100" {
				gpm = "| no |"
			}
			for _, want := range []string{"| 1 | power draw (W) |", "| 0 | memory used (MiB) |", gpm,
				"| requested (power-management) limit | " + fmt.Sprint(node.fleet.Model().MinLimitW+10) + " W | pass |",
				"| restored | " + fmt.Sprint(before) + " W | pass |", "**Result: passed.**"} {
				if !strings.Contains(report, want) {
					t.Errorf("the report lacks %q:\n%s", want, report)
				}
			}
			if strings.Contains(report, "FAIL") {
				t.Errorf("a check failed on a healthy node:\n%s", report)
			}
			if after := node.fleet.GPU(1).State().RequestedLimitW; after != before {
				t.Errorf("GPU 1's limit is %v W after the check, was %v W", after, before)
			}
		})
	}
}

// A quantity nvidia-smi reports differently beyond its tolerance fails the check, in its row.
func TestSimNodeMismatchFails(t *testing.T) {
	node := newSimNode(t, "H100", 2)
	node.smiEdit = func(f map[string]string) { f["temperature.gpu"] = "95" }
	var out bytes.Buffer
	if code := node.check(&out, node.fleet).run(); code != exitFailed {
		t.Fatalf("exit %d, want 1:\n%s", code, out.String())
	}
	var row string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "| 0 | GPU temperature") {
			row = l
		}
	}
	if !strings.HasSuffix(row, "| FAIL |") {
		t.Errorf("GPU 0's temperature row does not fail: %q\n%s", row, out.String())
	}
}

// refusingLib is the fleet with limit writes refused, as NVML refuses them without root.
type refusingLib struct{ *sim.Fleet }

func (l refusingLib) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	d, ret := l.Fleet.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return nil, ret
	}
	return refusingGPU{d.(*sim.GPU)}, nvml.SUCCESS
}

type refusingGPU struct{ *sim.GPU }

func (refusingGPU) SetPowerManagementLimit(uint32) nvml.Return { return nvml.ERROR_NO_PERMISSION }

// A refused write fails the check with a hint, and changes nothing.
func TestLimitWriteRefused(t *testing.T) {
	node := newSimNode(t, "H100", 2)
	before := node.fleet.GPU(1).State().RequestedLimitW
	var out bytes.Buffer
	if code := node.check(&out, refusingLib{node.fleet}).run(); code != exitFailed {
		t.Fatalf("exit %d, want 1:\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "needs root") {
		t.Errorf("no hint about root:\n%s", out.String())
	}
	if after := node.fleet.GPU(1).State().RequestedLimitW; after != before {
		t.Errorf("limit changed from %v to %v W by a refused write", before, after)
	}
}
