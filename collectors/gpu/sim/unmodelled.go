package sim

import (
	"fmt"
	"maps"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// The sim models the NVML calls the agent makes; go-nvml's interfaces have hundreds more. Every
// other call answers as NVML does for something the board cannot do: ERROR_NOT_SUPPORTED
// (ERROR_UNINITIALIZED before Init, ERROR_GPU_IS_LOST on a lost GPU) and zero values.
//
// The fleet (the library) and each device, GPU instance, compute instance and GPM sample embed a
// generated type (unmodelled_gen.go, `go generate`) with one plain method per call of its
// interface, which asks the handle's ready check and counts the call by name in the fleet
// (Fleet.UnmodelledCalls): a simulated device costs one interface value for the calls it does not
// model, not a closure per call, and the record is one counter per method. A library call that
// takes a handle (DeviceGetViolationStatus(dev, …)) calls the handle's method, as go-nvml's own
// library does, so the modelled device method answers whichever way it is called.
//
// The agent's own calls must all be modelled, which a test of the collector over the sim checks
// (UnmodelledCalls stays empty).

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

// UnmodelledCalls returns how many times each library, device, GPU instance, compute instance
// and GPM sample call the sim does not model was made ("Device.GetBoardId": 3).
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

// Extensions is the one library call with no nvml.Return to say "not supported" with.
func (f *Fleet) Extensions() nvml.ExtendedInterface {
	return &mock.ExtendedInterface{LookupSymbolFunc: func(symbol string) error {
		return fmt.Errorf("symbol %s: the simulated library has no symbols: %w", symbol, nvml.ERROR_NOT_SUPPORTED)
	}}
}

// ready is the check NVML makes before a library call.
func (f *Fleet) ready() nvml.Return {
	if !f.initialized() {
		return nvml.ERROR_UNINITIALIZED
	}
	return nvml.SUCCESS
}
