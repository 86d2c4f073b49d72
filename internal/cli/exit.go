package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/capstan-power/capstan/internal/config"
)

// Exit statuses of capstan and capstan-simulate: ExitUsage when what the user gave is wrong (a
// flag, an argument, the configuration, or a file the configuration names for the simulator,
// such as a CSV trace), which no restart fixes (the systemd unit does not restart on it);
// ExitFailure for a failure at run time, including files that other systems provide and may yet
// appear (certificates, the budget file).
const (
	ExitFailure = 1
	ExitUsage   = 2
)

// UsageError marks an error that exits with ExitUsage.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// Execute runs root, prints its error to stderr as "capstan: …" and returns the exit status: 0,
// ExitUsage for a UsageError or a configuration error, ExitFailure for anything else.
func Execute(root *cobra.Command, stderr io.Writer) int {
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "capstan:", err)
	var cfgErr *config.Error
	var uErr UsageError
	if errors.As(err, &cfgErr) || errors.As(err, &uErr) {
		return ExitUsage
	}
	return ExitFailure
}

// UsageFlagError is a cobra FlagErrorFunc: FlagError's hint, as a UsageError.
func UsageFlagError(cmd *cobra.Command, err error) error {
	return UsageError{FlagError(cmd, err)}
}

// UsageArgs makes a wrong number of arguments, or an unknown subcommand, a UsageError in cmd and
// every command under it.
func UsageArgs(cmd *cobra.Command) {
	if check := cmd.Args; check != nil {
		cmd.Args = func(c *cobra.Command, args []string) error {
			if err := check(c, args); err != nil {
				return UsageError{err}
			}
			return nil
		}
	}
	for _, sub := range cmd.Commands() {
		UsageArgs(sub)
	}
}
