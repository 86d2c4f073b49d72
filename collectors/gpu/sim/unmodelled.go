package sim

import (
	"fmt"
	"maps"
	"reflect"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// The sim models the NVML calls the agent makes; go-nvml's interfaces have hundreds more. Every
// other call answers as NVML does for something the board cannot do: ERROR_NOT_SUPPORTED
// (ERROR_UNINITIALIZED before Init, ERROR_GPU_IS_LOST on a lost GPU) and zero values.
//
// A device, GPU instance, compute instance and GPM sample embed a generated type
// (unmodelled_gen.go, `go generate`) with one plain method per call of its interface, which asks
// the handle's ready check and counts the call by name in the fleet (Fleet.UnmodelledCalls): a
// simulated device costs one interface value for the calls it does not model, not a closure per
// call, and the record is one counter per method. The library, of which there is one,
// keeps go-nvml's moq mock with every unset function answered through reflection; a library call
// that takes a handle (DeviceGetViolationStatus(dev, …)) forwards to the handle's method, as
// go-nvml's own library does, so the modelled device method answers whichever way it is called.
//
// The library mock records each call it passes through, so an unmodelled library call the agent
// made every collection would grow memory: the agent's own calls must all be modelled, which a
// test of the collector over the sim checks.

//go:generate go run ./gen -o unmodelled_gen.go

// readier is a simulated handle: unmodelled counts an unmodelled call ("Device.GetBoardId") and
// returns what NVML would say before looking at it (SUCCESS when the call may proceed).
type readier interface{ unmodelled(call string) nvml.Return }

// unmodelledCalls counts the handle calls answered "not supported", by name: a bounded record
// (one entry per method) from which a test shows that the agent's calls are all modelled.
type unmodelledCalls struct {
	mu    sync.Mutex
	calls map[string]int
}

func (u *unmodelledCalls) count(call string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.calls == nil {
		u.calls = map[string]int{}
	}
	u.calls[call]++
}

// UnmodelledCalls returns how many times each device, GPU instance, compute instance and GPM
// sample call the sim does not model was made ("Device.GetBoardId": 3). Library calls are
// recorded by the library's mock (Fleet.Interface).
func (f *Fleet) UnmodelledCalls() map[string]int {
	f.unmodelledCalls.mu.Lock()
	defer f.unmodelledCalls.mu.Unlock()
	return maps.Clone(f.unmodelledCalls.calls)
}

func (f *Fleet) unmodelled(call string) nvml.Return {
	f.unmodelledCalls.count(call)
	return f.ready()
}

func (g *GPU) unmodelled(call string) nvml.Return {
	g.fleet.unmodelledCalls.count(call)
	return g.ready()
}

func (d *MigDevice) unmodelled(call string) nvml.Return {
	d.parent.fleet.unmodelledCalls.count(call)
	return d.ready()
}

// notSupported is what an unmodelled call answers after the handle's check said ret.
func notSupported(ret nvml.Return) nvml.Return {
	if ret == nvml.SUCCESS {
		return nvml.ERROR_NOT_SUPPORTED
	}
	return ret
}

var returnType = reflect.TypeFor[nvml.Return]()

// answerUnmodelled sets every nil XxxFunc field of the moq mock m points to. check returns what
// NVML would say before looking at the call (SUCCESS when the call may proceed). Each field gets
// its own closure: only for the library, of which a process has one.
func answerUnmodelled(m any, check func() nvml.Return) {
	v := reflect.ValueOf(m).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Type.Kind() != reflect.Func || !strings.HasSuffix(f.Name, "Func") || !v.Field(i).IsNil() {
			continue
		}
		name := strings.TrimSuffix(f.Name, "Func")
		v.Field(i).Set(reflect.MakeFunc(f.Type, unmodelled(name, f.Type, check)))
	}
}

// unmodelled answers one call of a function of type ft named name.
func unmodelled(name string, ft reflect.Type, check func() nvml.Return) func([]reflect.Value) []reflect.Value {
	return func(args []reflect.Value) []reflect.Value {
		ret := check()
		if ret == nvml.SUCCESS {
			if out, ok := forward(name, ft, args); ok {
				return out
			}
			ret = nvml.ERROR_NOT_SUPPORTED
		}
		return zeroResults(ft, ret)
	}
}

// zeroResults are ft's results: zero values, and ret for every nvml.Return.
func zeroResults(ft reflect.Type, ret nvml.Return) []reflect.Value {
	out := make([]reflect.Value, ft.NumOut())
	for i := range out {
		out[i] = reflect.Zero(ft.Out(i))
		if ft.Out(i) == returnType {
			out[i] = reflect.ValueOf(ret)
		}
	}
	return out
}

// handlePrefixes are the go-nvml library methods that take a handle first and call the handle's
// method of the rest of the name (DeviceGetPowerUsage(dev) is dev.GetPowerUsage()).
var handlePrefixes = []string{"Device", "GpmSample", "GpuInstance", "ComputeInstance", "VgpuInstance", "VgpuTypeId", "Unit", "EventSet"}

// forward calls the method of the handle in args[0] that the library method name stands for,
// when there is one with the same remaining parameters and results.
func forward(name string, ft reflect.Type, args []reflect.Value) ([]reflect.Value, bool) {
	if len(args) == 0 || ft.In(0).Kind() != reflect.Interface || args[0].IsNil() {
		return nil, false
	}
	handle := args[0].Elem()
	candidates := []string{name}
	for _, p := range handlePrefixes {
		if rest, ok := strings.CutPrefix(name, p); ok && rest != "" {
			candidates = append([]string{rest}, candidates...)
		}
	}
	for _, c := range candidates {
		m := handle.MethodByName(c)
		if !m.IsValid() || !sameTail(m.Type(), ft) {
			continue
		}
		return m.Call(args[1:]), true
	}
	return nil, false
}

// sameTail reports whether method type m is fn without its first parameter.
func sameTail(m, fn reflect.Type) bool {
	if m.NumIn() != fn.NumIn()-1 || m.NumOut() != fn.NumOut() || m.IsVariadic() != fn.IsVariadic() {
		return false
	}
	for i := range m.NumIn() {
		if m.In(i) != fn.In(i+1) {
			return false
		}
	}
	for i := range m.NumOut() {
		if m.Out(i) != fn.Out(i) {
			return false
		}
	}
	return true
}

// answerUnmodelledLibrary makes f's library calls that the sim does not model answer.
func answerUnmodelledLibrary(f *Fleet) {
	// Extensions is the one call with no nvml.Return to say "not supported" with.
	f.ExtensionsFunc = func() nvml.ExtendedInterface {
		return &mock.ExtendedInterface{LookupSymbolFunc: func(symbol string) error {
			return fmt.Errorf("symbol %s: the simulated library has no symbols: %w", symbol, nvml.ERROR_NOT_SUPPORTED)
		}}
	}
	answerUnmodelled(f.Interface, f.ready)
}

// ready is the check NVML makes before a library call.
func (f *Fleet) ready() nvml.Return {
	if !f.initialized() {
		return nvml.ERROR_UNINITIALIZED
	}
	return nvml.SUCCESS
}
