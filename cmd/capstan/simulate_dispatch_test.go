package main

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/capstan-power/capstan/internal/testkit"
)

// `capstan simulate …` is capstan-simulate run with the same arguments: what it prints and
// its exit status, for success, a usage error and a failure while running, are the
// simulator's; agent flags before the word simulate reach it too.
func TestSimulateRunsTheSimulator(t *testing.T) {
	short := []string{"--gpu.sim.count=2", "--budget.watts=1000", "--duration=1m"}
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string // a key of the JSON report it must print; "": it prints nothing
		stderr string
	}{
		{"report", append(append([]string{"simulate"}, short...), "--json"), 0, "settle_periods", ""},
		{"agent flag before simulate", []string{"--gpu.sim.count=2", "simulate", "--budget.watts=1000", "--duration=1m", "--json"}, 0, "throughput_vs_static_pct", ""},
		{"fleet", []string{"simulate", "fleet", "--duration=1m"}, 2, "", "capstan: --fleet.file: required"},
		{"usage error", []string{"simulate", "--budget.watts=0"}, 2, "", "capstan: --budget.watts: 0 is out of range"},
		{"unknown flag", []string{"simulate", "--budget.wats=10"}, 2, "", "--budget.wats"},
		{"failure while running", append(append([]string{"simulate"}, short...), "--plot="+filepath.Join(t.TempDir(), "no", "such", "dir.png")), 1, "", "writing --plot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCapstan(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.stderr) {
				t.Fatalf("capstan %s: exit %d, stderr %q; want exit %d and %q", strings.Join(tc.args, " "), code, errOut, tc.code, tc.stderr)
			}
			if tc.stdout == "" {
				if out != "" {
					t.Errorf("stdout %q; want nothing", out)
				}
				return
			}
			var report map[string]any
			if err := json.Unmarshal([]byte(out), &report); err != nil {
				t.Fatalf("stdout is not the simulator's JSON report: %v\n%s", err, out)
			}
			if _, ok := report[tc.stdout]; !ok {
				t.Errorf("the report lacks %q: %s", tc.stdout, out)
			}
		})
	}
}

// simulate's help is the simulator's, however it is asked for.
func TestSimulateHelpIsTheSimulators(t *testing.T) {
	want, errOut, code := runCapstan(t, "simulate", "--help")
	if code != 0 || !strings.Contains(want, "Usage:\n  capstan simulate [flags]") || !strings.Contains(want, "--budget.step") {
		t.Fatalf("simulate --help: exit %d, %q, stderr %q", code, want, errOut)
	}
	for _, args := range [][]string{{"help", "simulate"}, {"simulate", "-h"}} {
		if got, errOut, code := runCapstan(t, args...); code != 0 || got != want {
			t.Errorf("capstan %s: exit %d, stderr %q, printed\n%s\nwant simulate --help's\n%s", strings.Join(args, " "), code, errOut, got, want)
		}
	}
	fleet, errOut, code := runCapstan(t, "simulate", "fleet", "--help")
	if code != 0 || !strings.Contains(fleet, "Usage:\n  capstan simulate fleet [flags]") || !strings.Contains(fleet, "--fleet.file") {
		t.Errorf("simulate fleet --help: exit %d, %q, stderr %q", code, fleet, errOut)
	}
}

// The simulator replaces capstan's process: it is the process the caller started, with the
// caller's standard input, and a Ctrl-C (SIGINT) sent to it ends the simulation itself.
func TestSimulateReplacesTheProcess(t *testing.T) {
	stdin, err := os.Open(filepath.Join("testdata", "simulate-help.golden.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	wantStdin, err := filepath.Abs(stdin.Name())
	if err != nil {
		t.Fatal(err)
	}
	// A month simulated: far longer than the test waits.
	cmd := exec.Command(binary, "simulate", "--budget.watts=3000", "--duration=744h")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	proc := "/proc/" + strconv.Itoa(cmd.Process.Pid)
	simulator := filepath.Join(filepath.Dir(binary), "capstan-simulate")
	testkit.WaitFor(t, "capstan to become "+simulator, func() bool {
		exe, _ := os.Readlink(proc + "/exe")
		return exe == simulator
	})
	if in, err := os.Readlink(proc + "/fd/0"); err != nil || in != wantStdin {
		t.Errorf("the simulator's standard input is %q (%v), want the caller's %s", in, err, wantStdin)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("the simulation ended with %v after SIGINT; want it killed by the signal", err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Errorf("the simulation ended with %v after SIGINT; want it killed by SIGINT", ee)
	}
}

// Without capstan-simulate beside capstan, capstan simulate looks on $PATH; found nowhere, it
// says where it looked and what provides it, and exits 2.
func TestSimulateWithoutTheSimulator(t *testing.T) {
	alone := filepath.Join(t.TempDir(), "capstan")
	copyFile(t, binary, alone)
	emptyDir := t.TempDir()

	run := func(path string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(alone, args...)
		cmd.Env = append(os.Environ(), "PATH="+path)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out.String(), errb.String(), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), 0
	}

	out, errOut, code := run(emptyDir, "simulate", "--help")
	if code != 2 || out != "" {
		t.Errorf("exit %d, stdout %q; want exit 2 and nothing on stdout", code, out)
	}
	for _, want := range []string{"capstan-simulate", filepath.Join(filepath.Dir(alone), "capstan-simulate"), emptyDir, "make build", "./cmd/capstan-simulate"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("the error does not name %q: %s", want, errOut)
		}
	}

	// capstan help simulate says the same.
	out, errOut, code = run(emptyDir, "help", "simulate")
	if code != 2 || !strings.Contains(out, "capstan-simulate") || !strings.Contains(errOut, "make build") {
		t.Errorf("help simulate: exit %d, stdout %q, stderr %q; want what simulate is, the error, exit 2", code, out, errOut)
	}

	// On $PATH it is found there.
	out, errOut, code = run(emptyDir+":"+filepath.Dir(binary), "simulate", "--help")
	if code != 0 || !strings.Contains(out, "Usage:\n  capstan simulate [flags]") {
		t.Errorf("with capstan-simulate on $PATH: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
