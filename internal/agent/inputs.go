package agent

import (
	"strings"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/config"
)

// CheckInputs reads the files a valid configuration names that only the user provides, before
// anything starts: the simulator's CSV trace and device-state file. A missing or malformed one is then a
// *config.Error naming the flag or line that set it (a usage error), not a collector that fails
// to start. Files other systems provide (certificates, the budget file) are not checked here:
// they may yet appear, and the agent says so at run time.
func CheckInputs(c *config.Config) error {
	if c.GPU.Backend == "sim" && c.GPU.Sim.StateFile != "" {
		if _, err := sim.ReadStateFile(c.GPU.Sim.StateFile); err != nil {
			return c.ErrorAt("gpu.sim.state-file", c.GPU.Sim.StateFile, "is not a usable simulated GPU state file: "+err.Error(), err)
		}
	}
	path := strings.TrimSpace(c.GPU.Sim.Trace)
	if !strings.HasSuffix(strings.ToLower(path), ".csv") {
		return nil
	}
	if _, err := sim.LoadCSVTrace(path); err != nil {
		return c.ErrorAt("gpu.sim.trace", c.GPU.Sim.Trace, "is not a usable trace file: "+err.Error(), err)
	}
	return nil
}
