// Package simcmd is `capstan simulate` and `capstan simulate fleet`: the what-if simulator run
// by the capstan-simulate binary, which `capstan simulate …` executes. It lives apart from the
// agent so that the agent's binary links neither the simulator nor its plotting (gonum/plot
// parses a dozen embedded fonts in its package init, in every process that links it).
package simcmd

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	// simulate accepts every flag and configuration key the agent does (a configuration file
	// written for the agent may set them), so it links the same collector registry.
	_ "github.com/capstan-power/capstan/collectors/all"
	"github.com/capstan-power/capstan/internal/agent"
	"github.com/capstan-power/capstan/internal/cli"
	"github.com/capstan-power/capstan/internal/config"
)

// Exit codes, as the agent's: 2 when what the user gave is wrong (a flag, an argument, the
// configuration, a file it names for the simulator), 1 for a failure while running.
const (
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks errors that exit with code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// Run runs `capstan simulate args…` and returns the exit status.
func Run(args []string, stdout, stderr io.Writer) int {
	root := NewRootCommand(stdout, stderr)
	root.SetArgs(append([]string{"simulate"}, args...))
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "capstan:", err)
	var cfgErr *config.Error
	var uErr usageError
	if errors.As(err, &cfgErr) || errors.As(err, &uErr) {
		return exitUsage
	}
	return exitFailure
}

// NewRootCommand is `capstan` as the simulator sees it: the agent's flags, which simulate
// inherits, and the simulate command under it, so that help, usage lines and flag errors read
// `capstan simulate` as the user typed it. Run goes through it; tests may find commands in it.
func NewRootCommand(stdout, stderr io.Writer) *cobra.Command {
	cfg := config.Default()
	root := &cobra.Command{
		Use:           "capstan",
		Short:         "Capstan's what-if simulator",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{cli.FlagError(cmd, err)} })
	root.CompletionOptions.DisableDefaultCmd = true
	fs := root.PersistentFlags()
	config.BindFlags(fs, cfg)
	resolve := func() (*config.Config, error) {
		c, err := config.Resolve(fs, cfg)
		if err != nil {
			return nil, err
		}
		if err := agent.CheckInputs(c); err != nil {
			return nil, err
		}
		return c, nil
	}
	root.AddCommand(newSimulateCommand(resolve, stdout, stderr))
	usageArgs(root)
	return root
}

// usageArgs makes a wrong number of arguments, or an unknown subcommand, a usage error in cmd
// and every command under it.
func usageArgs(cmd *cobra.Command) {
	if check := cmd.Args; check != nil {
		cmd.Args = func(c *cobra.Command, args []string) error {
			if err := check(c, args); err != nil {
				return usageError{err}
			}
			return nil
		}
	}
	for _, sub := range cmd.Commands() {
		usageArgs(sub)
	}
}
