// Package cli holds what Capstan's commands share on the command line: their exit statuses, and
// the flag a user most likely meant when they typed one that does not exist (cobra suggests
// subcommands, not flags).
package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/capstan-power/capstan/internal/suggest"
)

// FlagError is a cobra FlagErrorFunc: an unknown --flag gets " (did you mean --x?)" appended
// when one of cmd's flags is close to it. The result wraps err.
func FlagError(cmd *cobra.Command, err error) error {
	var ne *pflag.NotExistError
	if !errors.As(err, &ne) || ne.GetSpecifiedName() == "" {
		return err
	}
	var names []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			names = append(names, f.Name)
		}
	})
	hint := suggest.DidYouMean(suggest.Closest(ne.GetSpecifiedName(), names), "--")
	if hint == "" {
		return err
	}
	return fmt.Errorf("%w%s", err, hint)
}
