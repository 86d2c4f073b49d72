package suggest

import (
	"slices"
	"testing"
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
			if got := Closest(tc.typed, agentFlags); !slices.Equal(got, tc.want) {
				t.Errorf("Closest(%q) = %q, want %q", tc.typed, got, tc.want)
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

func TestDidYouMean(t *testing.T) {
	for _, tc := range []struct {
		hint   []string
		prefix string
		want   string
	}{
		{nil, "--", ""},
		{[]string{"gpu.backend"}, "--", " (did you mean --gpu.backend?)"},
		{[]string{"hw.power", "hw.energy"}, "", " (did you mean one of hw.power, hw.energy?)"},
		{[]string{"a", "b", "c", "d", "e", More}, "--", " (did you mean one of --a, --b, --c, --d, --e, …?)"},
	} {
		if got := DidYouMean(tc.hint, tc.prefix); got != tc.want {
			t.Errorf("DidYouMean(%q, %q) = %q, want %q", tc.hint, tc.prefix, got, tc.want)
		}
	}
}
