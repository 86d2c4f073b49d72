package cli

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/spf13/cobra"

	"github.com/capstan-power/capstan/internal/config"
)

func TestExecuteExitStatus(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		runErr error
		want   int
		stderr string
	}{
		{"success", nil, nil, 0, ""},
		{"runtime failure", nil, errors.New("budget file vanished"), ExitFailure, "capstan: budget file vanished\n"},
		{"usage error", nil, UsageError{Err: errors.New("--duration: 0s is out of range")}, ExitUsage, "capstan: --duration: 0s is out of range\n"},
		{"wrapped usage error", nil, fmt.Errorf("simulate: %w", UsageError{Err: errors.New("bad")}), ExitUsage, "capstan: simulate: bad\n"},
		{"configuration error", nil, &config.Error{Key: "gpu.sim.count", Value: "0", Problem: "is out of range (allowed: 1 to 64)"}, ExitUsage, "capstan: gpu.sim.count: 0 is out of range (allowed: 1 to 64)\n"},
		{"unknown flag", []string{"--gpu.bakend=sim"}, nil, ExitUsage, "capstan: unknown flag: --gpu.bakend (did you mean --gpu.backend?)\n"},
		{"argument to a command that takes none", []string{"extra"}, nil, ExitUsage, "capstan: unknown command \"extra\" for \"capstan\"\n"},
		{"wrong argument count in a subcommand", []string{"sub", "a", "b"}, nil, ExitUsage, "capstan: accepts 1 arg(s), received 2\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := &cobra.Command{
				Use:           "capstan",
				Args:          cobra.NoArgs,
				SilenceErrors: true,
				SilenceUsage:  true,
				RunE:          func(*cobra.Command, []string) error { return tc.runErr },
			}
			root.PersistentFlags().String("gpu.backend", "sim", "")
			root.AddCommand(&cobra.Command{Use: "sub", Args: cobra.ExactArgs(1), RunE: func(*cobra.Command, []string) error { return nil }})
			root.SetFlagErrorFunc(UsageFlagError)
			UsageArgs(root)
			root.SetArgs(tc.args)
			var stderr bytes.Buffer
			if got := Execute(root, &stderr); got != tc.want {
				t.Errorf("exit status %d, want %d (stderr %q)", got, tc.want, stderr.String())
			}
			if stderr.String() != tc.stderr {
				t.Errorf("stderr %q, want %q", stderr.String(), tc.stderr)
			}
		})
	}
}
