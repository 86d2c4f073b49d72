package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/capstan-power/capstan/internal/cli"
)

// simulator is the binary that `capstan simulate …` runs, the git way (`git foo` runs
// git-foo): the simulator and its plotting (gonum/plot parses a dozen embedded fonts at start)
// would otherwise be in the agent's binary, and its pages in the agent's memory.
const simulator = "capstan-simulate"

// newSimulateCommand is `capstan simulate`: it hands its arguments, unparsed, to
// capstan-simulate, which parses them and prints simulate's help.
func newSimulateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "simulate",
		Short: "Run the capping controller against the simulated fleet, faster than real time, and report",
		Long: "simulate runs the real capping controller against the simulated GPU fleet on a simulated\n" +
			"clock, and simulate fleet a fleet of nodes in a power domain tree. Both are the\n" +
			simulator + " program, found beside capstan or else on $PATH, which `capstan simulate`\n" +
			"runs with the same arguments; `capstan simulate --help` shows its flags.",
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			path, err := findSimulator()
			if err != nil {
				return cli.UsageError{Err: err}
			}
			return runSimulator(path, args)
		},
	}
	// `capstan help simulate` shows the simulator's own help, as `capstan simulate --help` does;
	// without the simulator, what simulate is and why it cannot run, with simulate's exit status.
	cmd.SetHelpFunc(func(c *cobra.Command, _ []string) {
		path, err := findSimulator()
		if err == nil {
			err = runSimulator(path, []string{"--help"})
		}
		fmt.Fprintln(c.OutOrStdout(), c.Long)
		fmt.Fprintln(c.ErrOrStderr(), "capstan:", err)
		os.Exit(cli.ExitUsage)
	})
	return cmd
}

// findSimulator looks for capstan-simulate beside this binary, then on $PATH.
func findSimulator() (string, error) {
	var looked string
	if self, err := os.Executable(); err != nil {
		looked = fmt.Sprintf("not beside capstan (its path is unknown: %v)", err)
	} else {
		beside := filepath.Join(filepath.Dir(self), simulator)
		if path, err := exec.LookPath(beside); err == nil {
			return path, nil
		}
		looked = "no " + beside
	}
	if path, err := exec.LookPath(simulator); err == nil {
		return path, nil
	}
	path := os.Getenv("PATH")
	if path == "" {
		path = "empty"
	}
	return "", fmt.Errorf("simulate runs the %s program, which is not installed: %s, and none on $PATH (%s). "+
		"`make build` builds it into bin/ beside bin/capstan (package ./cmd/%s); the capstan RPM and DEB packages "+
		"and the container image install it as /usr/bin/%s", simulator, looked, path, simulator, simulator)
}

// runSimulator replaces this process with the simulator: its exit status, its output and the
// signals sent to this process (Ctrl-C) are then the simulator's own, exactly.
func runSimulator(path string, args []string) error {
	err := syscall.Exec(path, append([]string{path}, args...), os.Environ())
	return fmt.Errorf("running %s: %w", path, err)
}
