package gpu

import (
	"errors"
	"fmt"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
)

// Backend is an initialised GPU library: real NVML or the simulated fleet behind the same
// nvml.Interface. The agent opens one for whoever needs it: the GPU collector, the workload
// collector and the capping controller.
type Backend struct {
	// Kind is "nvml" or "sim".
	Kind string
	Lib  nvml.Interface
	// Sim is the simulated fleet when Kind is "sim", for reports and tests.
	Sim *sim.Fleet
}

// Shutdown releases the library.
func (b *Backend) Shutdown() error {
	if ret := b.Lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("shutting down %s: %w", b.Kind, ret)
	}
	return nil
}

// Open initialises the backend kind names (gpu.backend: auto, nvml, sim or none); simulated
// configures the fleet of "sim". It returns collectors.ErrNoSource (wrapped, with the reason)
// when the host has no GPU backend: with "none", and with "auto" when NVML does not load. "auto"
// never falls back to the simulator.
func Open(kind string, simulated sim.Options) (*Backend, error) {
	switch strings.ToLower(kind) {
	case "none":
		return nil, fmt.Errorf("gpu.backend is none: %w", collectors.ErrNoSource)
	case "sim":
		fleet, err := sim.New(simulated)
		if err != nil {
			return nil, fmt.Errorf("starting the simulated GPU fleet: %w", err)
		}
		if ret := fleet.Init(); ret != nvml.SUCCESS {
			return nil, fmt.Errorf("initialising the simulated GPU fleet: %w", ret)
		}
		return &Backend{Kind: "sim", Lib: fleet, Sim: fleet}, nil
	case "nvml", "auto", "":
		lib := nvml.New()
		// After a failed Init no other NVML call may be made: with the library missing, any
		// call but Init kills the process.
		if ret := lib.Init(); ret != nvml.SUCCESS {
			err := fmt.Errorf("initialising NVML: %w", ret)
			if kind == "nvml" {
				return nil, err
			}
			// A host without NVIDIA's library is where people first try Capstan: say what is
			// missing and how to see GPUs anyway.
			missing := ""
			switch {
			case errors.Is(ret, nvml.ERROR_LIBRARY_NOT_FOUND):
				missing = "no GPU library found (libnvidia-ml.so.1)"
			case errors.Is(ret, nvml.ERROR_DRIVER_NOT_LOADED):
				missing = "the NVIDIA driver is not loaded"
			}
			if missing != "" {
				return nil, fmt.Errorf("gpu.backend auto: NVML not available (%w): %s; for simulated GPUs, use --gpu.backend=sim: %w",
					ret, missing, collectors.ErrNoSource)
			}
			return nil, err
		}
		return &Backend{Kind: "nvml", Lib: lib}, nil
	}
	return nil, fmt.Errorf("gpu.backend %q is not one of auto, nvml, sim, none", kind)
}
