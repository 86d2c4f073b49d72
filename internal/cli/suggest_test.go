package cli

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

var agentFlags = []string{
	"budget.fallback-watts", "budget.file", "budget.source", "budget.watts",
	"capping.enabled", "capping.period", "config.file", "gpu.backend", "gpu.sim.count",
	"gpu.sim.model", "gpu.sim.seed", "gpu.sim.trace", "json", "log.level", "web.listen-address",
}

func TestSuggest(t *testing.T) {
	cases := []struct {
		typed string
		want  []string
	}{
		{"gpu.bakend", []string{"gpu.backend"}},                 // a letter left out
		{"gpu.backedn", []string{"gpu.backend"}},                // two letters swapped
		{"GPU.Backend", []string{"gpu.backend"}},                // case
		{"gpu.sim.cont", []string{"gpu.sim.count"}},             // a letter left out, deeper
		{"gpu.sim.mdel", []string{"gpu.sim.model"}},             // ties broken by distance, not order
		{"log.levle", []string{"log.level"}},                    // swapped at the end
		{"jsno", []string{"json"}},                              // short name, one swap
		{"watts", []string{"budget.watts"}},                     // the last dotted part alone
		{"web.listen-adddress", []string{"web.listen-address"}}, // a letter too many, long name
		{"budget", []string{"budget.fallback-watts", "budget.file", "budget.source", "budget.watts"}},
		{"gpu.sim", []string{"gpu.sim.count", "gpu.sim.model", "gpu.sim.seed", "gpu.sim.trace"}},
		{"c", nil}, // too short to be a prefix worth naming
		{"ca", nil},
		{"cap", []string{"capping.enabled", "capping.period"}},
		{"g", nil},
		{"gp", nil},
		{"gpu", []string{"gpu.backend", "gpu.sim.count", "gpu.sim.model", "gpu.sim.seed", "gpu.sim.trace"}},
		{"gpu.", []string{"gpu.backend", "gpu.sim.count", "gpu.sim.model", "gpu.sim.seed", "gpu.sim.trace"}},
		{"verbose", nil}, // nothing close: no guess
		{"x", nil},
		{"otlp.endpoint", nil},
		{"gpu.sim.cunt0", []string{"gpu.sim.count"}}, // two edits in a 13-character name
		{"gpu.sim.xyz", nil},                         // three edits: too far, and no prefix of it
	}
	for _, tc := range cases {
		t.Run(tc.typed, func(t *testing.T) {
			if got := Suggest(tc.typed, agentFlags); !slices.Equal(got, tc.want) {
				t.Errorf("Suggest(%q) = %q, want %q", tc.typed, got, tc.want)
			}
		})
	}
}

func TestDistance(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"abc", "", 3}, {"", "abc", 3}, {"abc", "abc", 0},
		{"abc", "acb", 1}, {"abc", "abd", 1}, {"abc", "abcd", 1}, {"kitten", "sitting", 3},
		{"ca", "abc", 3}, // optimal string alignment: no edit of a transposed pair
	}
	for _, tc := range cases {
		if got := distance(tc.a, tc.b); got != tc.want {
			t.Errorf("distance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

// TestFlagError runs a cobra command with the hook as a user would type at it.
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
