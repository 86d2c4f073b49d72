package cli

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func TestFlagError(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--gpu.bakend=sim"}, "unknown flag: --gpu.bakend (did you mean --gpu.backend?)"},
		{[]string{"sub", "--gpu.bakend", "sim"}, "unknown flag: --gpu.bakend (did you mean --gpu.backend?)"},
		{[]string{"sub", "--jsn"}, "unknown flag: --jsn (did you mean --json?)"},
		{[]string{"--jsn"}, "unknown flag: --jsn"}, // --json is sub's, not the root's
		{[]string{"--gpu.sim"}, "unknown flag: --gpu.sim (did you mean one of --gpu.sim.a, --gpu.sim.b, --gpu.sim.c, --gpu.sim.count, --gpu.sim.d, …?)"},
		{[]string{"--verbose"}, "unknown flag: --verbose"},
		{[]string{"--gpu.s"}, "unknown flag: --gpu.s (did you mean one of --gpu.sim.a, --gpu.sim.b, --gpu.sim.c, --gpu.sim.count, --gpu.sim.d, …?)"},
		{[]string{"--hiden"}, "unknown flag: --hiden"}, // hidden flags are not advertised
		{[]string{"-q"}, "unknown shorthand flag: 'q' in -q"},
		{[]string{"--gpu.sim.count=x"}, `invalid argument "x" for "--gpu.sim.count" flag: strconv.ParseInt: parsing "x": invalid syntax`},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			root := &cobra.Command{Use: "capstan", Run: func(*cobra.Command, []string) {}, SilenceErrors: true, SilenceUsage: true}
			root.SetOut(io.Discard)
			root.SetFlagErrorFunc(FlagError)
			pf := root.PersistentFlags()
			pf.String("gpu.backend", "", "")
			pf.String("gpu.sim.model", "", "")
			pf.Int("gpu.sim.count", 1, "")
			for _, n := range []string{"a", "b", "c", "d"} {
				pf.Bool("gpu.sim."+n, false, "")
			}
			pf.Bool("hidden", false, "")
			_ = pf.MarkHidden("hidden")
			sub := &cobra.Command{Use: "sub", Run: func(*cobra.Command, []string) {}}
			sub.Flags().Bool("json", false, "")
			root.AddCommand(sub)
			root.SetArgs(tc.args)
			err := root.Execute()
			if err == nil {
				t.Fatalf("%v: no error", tc.args)
			}
			if err.Error() != tc.want {
				t.Errorf("%v:\n got %s\nwant %s", tc.args, err, tc.want)
			}
			var ne *pflag.NotExistError
			if unknown := strings.HasPrefix(tc.want, "unknown"); unknown != errors.As(err, &ne) {
				t.Errorf("%v: errors.As(*pflag.NotExistError) = %v, want %v", tc.args, !unknown, unknown)
			}
		})
	}
}
