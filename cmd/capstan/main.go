// Command capstan is the per-host agent: GPU and host telemetry exported as OTLP and Prometheus.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	// Every collector Capstan ships registers itself, with its flags.
	_ "github.com/capstan-power/capstan/collectors/all"
	"github.com/capstan-power/capstan/internal/agent"
	"github.com/capstan-power/capstan/internal/cli"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/panics"
	"github.com/capstan-power/capstan/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCommand(stdout, stderr)
	root.SetArgs(args)
	return cli.Execute(root, stderr)
}

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	cfg := config.Default()
	root := &cobra.Command{
		Use:   "capstan",
		Short: "Capstan: GPU node telemetry and power capping",
		Long: "Capstan gathers GPU (NVML), CPU, thermal and NIC telemetry on this host and exports it\n" +
			"as OTLP and on a Prometheus endpoint. Without a subcommand it runs the agent until\n" +
			"SIGTERM or SIGINT, or until the terminal it runs in hangs up; SIGHUP otherwise reloads\n" +
			"the configuration file.\n\n" +
			"Exit status: 2 when a flag, an argument, the configuration or a file it names for the\n" +
			"simulator is wrong (no restart fixes that); 1 for a failure while running.",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(cli.UsageFlagError)
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
		// A log reader that went away (`| tee` killed by the same Ctrl-C) must not kill the
		// agent before it restores the limits: Go's runtime exits on SIGPIPE from a write to
		// stdout or stderr unless the signal is handled, and then the write only fails (the
		// logger drops lines from there on). It stays handled to the end, so that the exit
		// status stays the agent's own even when the error line cannot be written.
		signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
		logs := agent.NewLogWriter(stderr)
		log := agent.NewLogger(logs, c.Log.Level, c.Log.Format)
		log.Info("starting capstan", "version", version.Version, "node", c.Node.Name)

		ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		ctx, hangup, stopHangups := hangups(ctx, log)
		defer stopHangups()
		return agent.Run(ctx, c, agent.Options{Log: log, LogWriter: logs, Reload: resolve, Hangup: hangup, Terminal: stdout})
	}

	root.AddCommand(newCollectCommand(resolve, stdout, stderr), newConfigCommand(stdout), newVersionCommand(stdout))
	root.AddCommand(newSimulateCommand())
	cli.UsageArgs(root)
	return root
}

// hangups splits SIGHUP in two. Sent by systemd's ExecReload or by hand it reloads the
// configuration: the returned channel delivers it to the agent. Sent by the kernel because the
// controlling terminal the agent was started from hung up (its window closed, the SSH session
// dropped), it means the user who ran the agent in the foreground is gone: the returned
// context ends and the agent stops as on SIGTERM, restoring the limits, instead of capping on
// unattended and writing to a dead terminal.
// SIGHUP stays handled until the returned stop is called, so one arriving while the agent
// restores the limits cannot kill it.
func hangups(parent context.Context, log *slog.Logger) (context.Context, <-chan os.Signal, func()) {
	ctx, cancel := context.WithCancel(parent)
	raw := make(chan os.Signal, 1)
	signal.Notify(raw, syscall.SIGHUP)
	reload := make(chan os.Signal, 1)
	tty := terminalFDs()
	panics.Go("signals", func() {
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-raw:
				if terminalHungUp(tty) {
					log.Info("the controlling terminal hung up; stopping")
					cancel()
					return
				}
				select {
				case reload <- s:
				default: // a reload is already pending
				}
			}
		}
	})
	return ctx, reload, func() { signal.Stop(raw); cancel() }
}

// terminalFDs are the standard descriptors that are terminals at start.
func terminalFDs() []int {
	var fds []int
	for _, fd := range []int{0, 1, 2} {
		if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
			fds = append(fds, fd)
		}
	}
	return fds
}

// terminalHungUp reports whether one of fds, terminals at start, has hung up: the kernel then
// answers EIO to every operation on it.
func terminalHungUp(fds []int) bool {
	for _, fd := range fds {
		if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); errors.Is(err, unix.EIO) {
			return true
		}
	}
	return false
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
