// Command capstan is the per-host agent: GPU and host telemetry exported as OTLP and Prometheus.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	// Every collector Capstan ships registers itself, with its flags.
	_ "github.com/capstan-power/capstan/collectors/all"
	"github.com/capstan-power/capstan/internal/agent"
	"github.com/capstan-power/capstan/internal/cli"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/version"
)

// Exit codes: 2 when what the user gave is wrong (a flag, an argument, the configuration, or a
// file the configuration names for the simulator, such as a CSV trace), which no restart fixes
// (the systemd unit does not restart on 2); 1 for a failure at run time, including files that
// other systems provide and may yet appear (certificates, the budget file).
const (
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks errors that exit with code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCommand(stdout, stderr)
	root.SetArgs(args)
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

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	cfg := config.Default()
	root := &cobra.Command{
		Use:   "capstan",
		Short: "Capstan: GPU node telemetry and power capping",
		Long: "Capstan gathers GPU (NVML), CPU, thermal and NIC telemetry on this host and exports it\n" +
			"as OTLP and on a Prometheus endpoint. Without a subcommand it runs the agent until\n" +
			"SIGTERM or SIGINT; SIGHUP reloads the configuration file.\n\n" +
			"Exit status: 2 when a flag, an argument, the configuration or a file it names for the\n" +
			"simulator is wrong (no restart fixes that); 1 for a failure while running.",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{cli.FlagError(cmd, err)} })
	root.Version = version.String()
	root.SetVersionTemplate("{{.Version}}\n")
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

	root.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := resolve()
		if err != nil {
			return err
		}
		log := agent.NewLogger(stderr, c.Log.Level, c.Log.Format)
		log.Info("starting capstan", "version", version.Version, "node", c.Node.Name)

		ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		return agent.Run(ctx, c, agent.Options{Log: log, Reload: resolve, Hangup: hup, Terminal: stdout})
	}

	root.AddCommand(newCollectCommand(resolve, stdout, stderr), newConfigCommand(stdout), newVersionCommand(stdout))
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

func newCollectCommand(resolve func() (*config.Config, error), stdout, stderr io.Writer) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "collect",
		Short: "Run one collection of every enabled collector, print it and exit",
		Long: "collect runs every enabled collector once and prints what it measured, as a table or\n" +
			"with --json as a JSON array with one element per data point.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := resolve()
			if err != nil {
				return err
			}
			log := agent.NewLogger(stderr, c.Log.Level, c.Log.Format)
			got, err := agent.CollectOnce(cmd.Context(), c, log)
			if err != nil {
				return err
			}
			if asJSON {
				return agent.WriteJSON(stdout, got.Points)
			}
			if err := agent.WriteTable(stdout, got.Points); err != nil {
				return err
			}
			if got.NoGPU != nil {
				// A table without GPUs should say why, below it, where the reader ends up.
				_, err = fmt.Fprintf(stdout, "\nNo GPUs: %v\n", got.NoGPU)
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of {name, unit, type, value, attributes, resource}")
	return cmd
}

func newConfigCommand(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with configuration files"}
	cmd.AddCommand(&cobra.Command{
		Use:   "check FILE",
		Short: "Validate a configuration file and print the effective configuration",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			c, err := config.Load(args[0])
			if err != nil {
				return err
			}
			if err := c.Validate(); err != nil {
				return err
			}
			out, err := c.Effective().Redacted().YAML()
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "# %s is valid; effective configuration (header values redacted):\n", args[0])
			_, err = stdout.Write(out)
			return err
		},
	})
	return cmd
}

func newVersionCommand(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintln(stdout, version.String())
		},
	}
}
