package simcmd

import (
	"bytes"
	"strings"
	"testing"
)

// runSimulate runs `capstan simulate args…` in this process.
func runSimulate(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Run(args, &out, &errb)
	return out.String(), errb.String(), code
}

// Every agent flag simulate --help lists changes the run it reports (config.file and log.*
// aside, which change how it is read and logged).
func TestSimulateFlagsItListsChangeTheRun(t *testing.T) {
	// An imbalanced load, and a budget that rises: on a symmetric load at a steady budget the
	// controller holds static caps, which no tuning changes.
	base := []string{"--gpu.sim.count=4", "--gpu.sim.trace=imbalanced", "--budget.watts=1500", "--duration=4m",
		"--budget.step=2m:1800", "--json"}
	changed := map[string]string{
		"gpu.sim.model": "A100", "gpu.sim.count": "3", "gpu.sim.trace": "bursty", "gpu.sim.seed": "2",
		"budget.watts": "1400", "capping.period": "500ms", "capping.guard-band-percent": "10",
		"capping.oversubscription-percent": "0", "capping.headroom-watts": "60", "capping.deadband-watts": "40",
		"capping.ramp-percent": "1", "capping.max-rise-watts-per-second": "20", "capping.weights": "0=5",
	}
	want, errOut, code := runSimulate(t, base...)
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
		got, errOut, code := runSimulate(t, append(base, "--"+name+"="+value)...)
		if code != 0 {
			t.Errorf("--%s=%s: exit %d: %s", name, value, code, errOut)
			continue
		}
		if got == want {
			t.Errorf("--%s=%s changes nothing in the report: %s", name, value, got)
		}
	}
}
