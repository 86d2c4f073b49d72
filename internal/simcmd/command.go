// Package simcmd is `capstan simulate` and `capstan simulate fleet`: the what-if simulator run
// by the capstan-simulate binary, which `capstan simulate …` executes. It lives apart from the
// agent so that the agent's binary links neither the simulator nor its plotting (gonum/plot
// parses a dozen embedded fonts in its package init, in every process that links it).
package simcmd

import (
	"io"

	"github.com/spf13/cobra"

	// simulate accepts every flag and configuration key the agent does (a configuration file
	// written for the agent may set them), so it links the same collector registry.
	_ "github.com/capstan-power/capstan/collectors/all"
	"github.com/capstan-power/capstan/internal/agent"
	"github.com/capstan-power/capstan/internal/cli"
	"github.com/capstan-power/capstan/internal/config"
)

// Run runs `capstan simulate args…` and returns the exit status.
func Run(args []string, stdout, stderr io.Writer) int {
	root := NewRootCommand(stdout, stderr)
	root.SetArgs(append([]string{"simulate"}, args...))
	return cli.Execute(root, stderr)
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
	root.SetFlagErrorFunc(cli.UsageFlagError)
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
	cli.UsageArgs(root)
	return root
}
