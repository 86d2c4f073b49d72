// Package cmdline checks capstan command lines written outside Go (the systemd unit, the
// Kubernetes manifests, the Helm chart) against the agent's real flags and validation, so that
// a renamed flag or an out-of-range value fails a test instead of a deployment.
package cmdline

import (
	"fmt"
	"io"

	"github.com/spf13/pflag"

	// The collectors cmd/capstan links in, so that their flags exist here too; a test keeps
	// this import equal to cmd/capstan's.
	_ "github.com/capstan-power/capstan/collectors/all"
	"github.com/capstan-power/capstan/internal/config"
)

// Parse parses args (without the program name) as the agent's command line, with the flag set
// cmd/capstan binds, and returns the effective, validated configuration. A --config.file is
// read, so pass a path that exists here.
func Parse(args []string) (*config.Config, error) {
	fs := pflag.NewFlagSet("capstan", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	flags := config.Default()
	config.BindFlags(fs, flags)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: the agent takes flags only", fs.Arg(0))
	}
	return config.Resolve(fs, flags)
}
