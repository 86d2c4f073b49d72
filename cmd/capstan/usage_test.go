package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capstan-power/capstan/internal/version"
)

// TestExitCodesAndMessages runs the binary as a user types at it: what the user gave wrong
// exits 2, a failure at run time 1, and the last line of stderr says what is wrong, exactly.
func TestExitCodesAndMessages(t *testing.T) {
	dir := t.TempDir()
	badTrace := filepath.Join(dir, "bad.csv")
	if err := os.WriteFile(badTrace, []byte("time_s,gpu0\n0,300\n1,lots\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	traceFile := filepath.Join(dir, "capstan.yaml")
	if err := os.WriteFile(traceFile, []byte("gpu:\n  backend: sim\n  sim:\n    trace: /nope.csv\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badDevices := filepath.Join(dir, "devices.json")
	if err := os.WriteFile(badDevices, []byte(`{"version":1,"gpus":[}`), 0o600); err != nil {
		t.Fatal(err)
	}
	// A port that is taken makes the agent fail at run time, after its configuration was good.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()

	missing := `"/nope.csv" is not a usable trace file: opening trace: open /nope.csv: no such file or directory`
	cases := []struct {
		name string
		args []string
		code int
		want string // the last line of stderr
	}{
		{"missing trace, agent", []string{"--gpu.backend=sim", "--gpu.sim.trace=/nope.csv", "--web.listen-address="}, 2,
			"capstan: --gpu.sim.trace: " + missing},
		{"missing trace, collect", []string{"collect", "--gpu.backend=sim", "--gpu.sim.trace=/nope.csv"}, 2,
			"capstan: --gpu.sim.trace: " + missing},
		{"missing trace, simulate", []string{"simulate", "--gpu.sim.trace=/nope.csv", "--budget.watts=1000"}, 2,
			"capstan: --gpu.sim.trace: " + missing},
		{"missing trace in the file", []string{"--config.file", traceFile, "--web.listen-address="}, 2,
			"capstan: " + traceFile + ":4: gpu.sim.trace: " + missing},
		{"malformed trace", []string{"simulate", "--gpu.sim.trace=" + badTrace, "--budget.watts=1000"}, 2,
			"capstan: --gpu.sim.trace: " + `"` + badTrace + `" is not a usable trace file: trace ` + badTrace + ` line 3: gpu0 value "lots" is not a number`},
		{"unparsable device-state file", []string{"--gpu.backend=sim", "--gpu.sim.state-file=" + badDevices, "--web.listen-address="}, 2,
			"capstan: --gpu.sim.state-file: " + `"` + badDevices + `" is not a usable simulated GPU state file: simulated GPU state file ` + badDevices +
				" does not parse: invalid character '}' looking for beginning of value"},
		{"negative budget, simulate", []string{"simulate", "--budget.watts=-100"}, 2,
			"capstan: --budget.watts: -100 is out of range (allowed: 1 to 1000000)"},
		{"zero budget, simulate", []string{"simulate", "--budget.watts=0"}, 2,
			"capstan: --budget.watts: 0 is out of range (allowed: 1 to 1000000)"},
		{"no budget, simulate", []string{"simulate"}, 2,
			"capstan: --budget.watts: must be set to the node budget in watts (allowed: 1 to 1000000)"},
		{"negative budget, agent", []string{"--capping.enabled", "--budget.watts=-100"}, 2,
			"capstan: --budget.watts: -100 is out of range (allowed: 1 to 1000000)"},
		{"unknown flag", []string{"--gpu.bakend=sim"}, 2,
			"capstan: unknown flag: --gpu.bakend (did you mean --gpu.backend?)"},
		{"unknown flag of a subcommand", []string{"collect", "--jsn"}, 2,
			"capstan: unknown flag: --jsn (did you mean --json?)"},
		{"unknown flag, nothing close", []string{"--verbose"}, 2, "capstan: unknown flag: --verbose"},
		{"bad flag value", []string{"--gpu.sim.count=many"}, 2,
			`capstan: invalid argument "many" for "--gpu.sim.count" flag: "many" is not an integer`},
		{"argument to the agent", []string{"run"}, 2, `capstan: unknown command "run" for "capstan"`},
		{"argument to collect", []string{"collect", "now"}, 2, `capstan: unknown command "now" for "capstan collect"`},
		{"config check without a file", []string{"config", "check"}, 2, "capstan: accepts 1 arg(s), received 0"},
		{"config check of a missing file", []string{"config", "check", filepath.Join(dir, "nope.yaml")}, 2,
			"capstan: " + filepath.Join(dir, "nope.yaml") + ": cannot open the configuration file: no such file or directory"},
		{"port taken", []string{"--gpu.backend=sim", "--gpu.sim.count=1", "--web.listen-address=" + taken.Addr().String()}, 1,
			"capstan: starting exporters: listening on " + taken.Addr().String() + ": listen tcp " + taken.Addr().String() + ": bind: address already in use"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := runCapstan(t, tc.args...)
			lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
			if last := lines[len(lines)-1]; code != tc.code || last != tc.want {
				t.Errorf("capstan %s:\n got exit %d, %s\nwant exit %d, %s", strings.Join(tc.args, " "), code, last, tc.code, tc.want)
			}
		})
	}
}

func TestHelpNamesExitStatus(t *testing.T) {
	out, _, code := runCapstan(t, "--help")
	want := "Exit status: 2 when a flag, an argument, the configuration or a file it names for the\n" +
		"simulator is wrong (no restart fixes that); 1 for a failure while running.\n"
	if code != 0 || !strings.Contains(out, want) {
		t.Errorf("capstan --help: exit %d, lacks %q:\n%s", code, want, out)
	}
}

func TestVersionFlag(t *testing.T) {
	want := version.String() + "\n"
	for _, args := range [][]string{{"--version"}, {"-v"}, {"version"}} {
		out, errOut, code := runCapstan(t, args...)
		if code != 0 || out != want || errOut != "" {
			t.Errorf("capstan %s: exit %d, stdout %q, stderr %q; want exit 0, stdout %q", args[0], code, out, errOut, want)
		}
	}
}

// config check prints each collector's timeout in force: the interval when the file says 0 or
// nothing, and its output is a configuration file that checks the same.
func TestConfigCheckPrintsTimeoutsInForce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "capstan.yaml")
	if err := os.WriteFile(path, []byte("collector:\n  gpu:\n    enabled: true\n    interval: 5s\n    timeout: 0s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCapstan(t, "config", "check", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "  gpu:\n    enabled: true\n    interval: 5s\n    timeout: 5s\n") || strings.Contains(out, "timeout: 0s") {
		t.Errorf("config check does not print the timeouts in force:\n%s", out)
	}
	again := filepath.Join(dir, "effective.yaml")
	if err := os.WriteFile(again, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	out2, errOut, code := runCapstan(t, "config", "check", again)
	if code != 0 {
		t.Fatalf("config check of its own output: exit %d: %s", code, errOut)
	}
	_, body, _ := strings.Cut(out, "\n")
	_, body2, _ := strings.Cut(out2, "\n")
	if body != body2 {
		t.Errorf("config check of its own output differs:\n%s\nthen\n%s", body, body2)
	}
}
