package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// simulate --help lists its own flags and the agent's flags it uses, not the ~90 others
// (exporters, collectors, etcd) that change nothing in a simulation.
//
//	go test ./cmd/capstan -run SimulateHelp -update
func TestSimulateHelpGolden(t *testing.T) {
	out, errOut, code := runCapstan(t, "simulate", "--help")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	checkGolden(t, filepath.Join("testdata", "simulate-help.golden.txt"), []byte(out))
	for _, ignored := range []string{"--otlp.", "--web.", "--nic.", "--etcd.", "--collector."} {
		if strings.Contains(out, ignored) {
			t.Errorf("simulate --help lists %s flags, which do nothing there", ignored)
		}
	}
}

// wallTime is the report's only figure that is not the simulation's: the wall-clock time it took.
var wallTime = regexp.MustCompile(`simulated at a (\S+) period in \S+`)

// The report of a short run with a budget step, as a user reads it: the overshoot column says
// it is the figure once settled, and the start-up and the step have their own lines.
//
//	go test ./cmd/capstan -run SimulateReport -update
func TestSimulateReportGolden(t *testing.T) {
	out, errOut, code := runCapstan(t, "simulate", "--gpu.sim.count=4", "--gpu.sim.trace=training",
		"--budget.watts=1800", "--duration=2m", "--budget.step=1m:1500")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	out = wallTime.ReplaceAllString(out, "simulated at a $1 period in WALL")
	checkGolden(t, filepath.Join("testdata", "simulate-report.golden.txt"), []byte(out))
}

// Every agent flag simulate --help lists changes the run it reports (config.file and log.*
// aside, which change how it is read and logged).
func TestSimulateFlagsItListsChangeTheRun(t *testing.T) {
	// An imbalanced load, and a budget that rises: on a symmetric load at a steady budget the
	// controller holds static caps, which no tuning changes.
	base := []string{"simulate", "--gpu.sim.count=4", "--gpu.sim.trace=imbalanced", "--budget.watts=1500", "--duration=4m",
		"--budget.step=2m:1800", "--json"}
	changed := map[string]string{
		"gpu.sim.model": "A100", "gpu.sim.count": "3", "gpu.sim.trace": "bursty", "gpu.sim.seed": "2",
		"budget.watts": "1400", "capping.period": "500ms", "capping.guard-band-percent": "10",
		"capping.oversubscription-percent": "0", "capping.headroom-watts": "60", "capping.deadband-watts": "40",
		"capping.ramp-percent": "1", "capping.max-rise-watts-per-second": "20", "capping.weights": "0=5",
	}
	want, errOut, code := runCapstan(t, base...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, name := range simulateUses {
		if name == "config.file" || strings.HasPrefix(name, "log.") {
			continue
		}
		value, ok := changed[name]
		if !ok {
			t.Errorf("--%s: listed by simulate --help but not tested here", name)
			continue
		}
		got, errOut, code := runCapstan(t, append(base, "--"+name+"="+value)...)
		if code != 0 {
			t.Errorf("--%s=%s: exit %d: %s", name, value, code, errOut)
			continue
		}
		if got == want {
			t.Errorf("--%s=%s changes nothing in the report: %s", name, value, got)
		}
	}
}
