package sim

import (
	"fmt"
	"maps"
	"reflect"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/clock"
)

// callAll calls every method of iface (an interface type) on v with zero arguments and returns
// the names of those that panicked, with the panic, and the nvml.Return each answered.
func callAll(t *testing.T, iface reflect.Type, v any) (panics []string, answers map[string]nvml.Return) {
	t.Helper()
	answers = map[string]nvml.Return{}
	rv := reflect.ValueOf(v)
	for i := range iface.NumMethod() {
		name := iface.Method(i).Name
		m := rv.MethodByName(name)
		args := make([]reflect.Value, m.Type().NumIn())
		for k := range args {
			args[k] = reflect.Zero(m.Type().In(k))
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					panics = append(panics, fmt.Sprintf("%s: %v", name, r))
				}
			}()
			var out []reflect.Value
			if m.Type().IsVariadic() {
				out = m.CallSlice(args)
			} else {
				out = m.Call(args)
			}
			for _, o := range out {
				if r, ok := o.Interface().(nvml.Return); ok {
					answers[name] = r
				}
			}
		}()
	}
	return panics, answers
}

// Every method of nvml.Interface and nvml.Device answers on the sim, with zero arguments too:
// none panics, whatever the model, before Init, after it, and on a lost GPU.
func TestEveryNVMLMethodAnswers(t *testing.T) {
	for _, model := range Models() {
		t.Run(model, func(t *testing.T) {
			clk := clock.NewManual(time.Unix(1_700_000_000, 0))
			f, err := New(Options{Model: model, Count: 2, Trace: "training", Seed: 3, Clock: clk})
			if err != nil {
				t.Fatal(err)
			}
			g := f.GPU(0)
			check := func(stage string, wantDevice nvml.Return) {
				t.Helper()
				panics, _ := callAll(t, reflect.TypeFor[nvml.Interface](), f)
				devPanics, answers := callAll(t, reflect.TypeFor[nvml.Device](), g)
				for _, p := range append(panics, devPanics...) {
					t.Errorf("%s: %s", stage, p)
				}
				if wantDevice != nvml.SUCCESS {
					for name, r := range answers {
						// A zero argument NVML may refuse before it looks at the GPU.
						if r != wantDevice && r != nvml.ERROR_INVALID_ARGUMENT {
							t.Errorf("%s: Device.%s answered %v, want %v", stage, name, r, wantDevice)
						}
					}
				}
			}
			check("before Init", nvml.ERROR_UNINITIALIZED)
			// Walking the library calls Init and Shutdown alike; leave it initialised.
			for f.initialized() {
				_ = f.Shutdown()
			}
			_ = f.Init()
			clk.Advance(time.Minute)
			check("initialised", nvml.SUCCESS)
			if !f.initialized() {
				_ = f.Init()
			}
			f.SetLost(0, true)
			check("GPU lost", nvml.ERROR_GPU_IS_LOST)
		})
	}
}

// An unmodelled call answers ERROR_NOT_SUPPORTED; one the library forwards to a handle answers
// what the handle's modelled method does.
func TestUnmodelledCallsAnswerNotSupported(t *testing.T) {
	clk := clock.NewManual(time.Unix(1_700_000_000, 0))
	f, err := New(Options{Model: "H100", Count: 1, Trace: "steady", Seed: 1, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if ret := f.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	g := f.GPU(0)
	if _, ret := g.GetBoardId(); ret != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("GetBoardId answered %v, want ERROR_NOT_SUPPORTED", ret)
	}
	if h, ret := g.GetDeviceHandleFromMigDeviceHandle(); ret != nvml.ERROR_NOT_SUPPORTED || h != nil {
		t.Errorf("GetDeviceHandleFromMigDeviceHandle answered %v, %v; want nil, ERROR_NOT_SUPPORTED", h, ret)
	}
	direct, ret := g.GetPowerManagementLimit()
	viaLib, libRet := f.DeviceGetPowerManagementLimit(g)
	if ret != nvml.SUCCESS || libRet != nvml.SUCCESS || direct != viaLib || direct == 0 {
		t.Errorf("DeviceGetPowerManagementLimit(dev) = %d, %v; dev.GetPowerManagementLimit() = %d, %v",
			viaLib, libRet, direct, ret)
	}
	if err := f.Extensions().LookupSymbol("nvmlDeviceGetPowerUsage"); err == nil {
		t.Error("LookupSymbol found a symbol in the simulated library")
	}
	// Each unmodelled call is counted by name, modelled ones are not; a library call that
	// forwards to a handle's modelled method is the library's unmodelled call.
	_, _ = g.GetBoardId()
	want := map[string]int{"Device.GetBoardId": 2, "Device.GetDeviceHandleFromMigDeviceHandle": 1,
		"Interface.DeviceGetPowerManagementLimit": 1}
	if got := f.UnmodelledCalls(); !maps.Equal(got, want) {
		t.Errorf("UnmodelledCalls() = %v, want %v", got, want)
	}
}

// Every method of a MIG device, its GPU and compute instance, and a GPM sample answers, with
// zero arguments too: none panics, and on a lost GPU each says so.
func TestEveryMIGHandleMethodAnswers(t *testing.T) {
	clk := clock.NewManual(time.Unix(1_700_000_000, 0))
	f, err := New(Options{Model: "H100", Count: 1, Trace: "training", Seed: 3, Clock: clk, MIG: "7x1g.10gb"})
	if err != nil {
		t.Fatal(err)
	}
	if ret := f.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	sample, ret := f.GpmSampleAlloc()
	if ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	d := f.GPU(0).mig.instances[0]
	handles := []struct {
		iface reflect.Type
		v     any
	}{
		{reflect.TypeFor[nvml.Device](), d},
		{reflect.TypeFor[nvml.GpuInstance](), d.gi},
		{reflect.TypeFor[nvml.ComputeInstance](), d.ci},
		{reflect.TypeFor[nvml.GpmSample](), sample},
	}
	for _, lost := range []bool{false, true} {
		f.SetLost(0, lost)
		for _, h := range handles {
			panics, answers := callAll(t, h.iface, h.v)
			for _, p := range panics {
				t.Errorf("lost=%v: %s", lost, p)
			}
			if lost && h.iface != reflect.TypeFor[nvml.GpmSample]() {
				for name, r := range answers {
					if r != nvml.ERROR_GPU_IS_LOST && r != nvml.ERROR_INVALID_ARGUMENT {
						t.Errorf("%s.%s on a lost GPU answered %v, want ERROR_GPU_IS_LOST", h.iface, name, r)
					}
				}
			}
		}
	}
}
