// Package all links in every collector Capstan ships: each registers its factory from init().
// The agent and every tool that checks its command line import this package, so they all see
// the same collectors and flags. A new collector adds one line here.
package all

import (
	_ "github.com/capstan-power/capstan/collectors/cpufreq"
	_ "github.com/capstan-power/capstan/collectors/gpu"
	_ "github.com/capstan-power/capstan/collectors/nic"
	_ "github.com/capstan-power/capstan/collectors/thermal"
	_ "github.com/capstan-power/capstan/collectors/workload"
)
