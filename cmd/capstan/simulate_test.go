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
