package config

import (
	"strings"
	"testing"
)

// A simulated MIG layout is checked against the simulated model and GPU count, and a bad one
// names the key, its value, its line and what is wrong.
func TestSimMIGLayout(t *testing.T) {
	for _, tc := range []struct {
		yaml, want string
	}{
		{"gpu:\n  sim:\n    model: H100\n    count: 2\n    mig: 7x1g.10gb\n", ""},
		{"gpu:\n  sim:\n    model: H100\n    count: 2\n    mig: 7x1g.10gb;3g.40gb,4g.40gb\n", ""},
		{"gpu:\n  sim:\n    model: A100\n    count: 2\n    mig: off\n", ""},
		{"gpu:\n  sim:\n    model: H100\n    count: 2\n    mig: 8x1g.10gb\n", `capstan.yaml:5: gpu.sim.mig: "8x1g.10gb" is not a MIG layout of H100`},
		{"gpu:\n  sim:\n    model: H200\n    count: 2\n    mig: 1g.10gb\n", `no profile "1g.10gb"`},
		{"gpu:\n  sim:\n    model: H100\n    count: 3\n    mig: off;7x1g.10gb\n", "2 layouts for 3 GPUs"},
	} {
		c, err := Parse("capstan.yaml", []byte(tc.yaml))
		if err == nil {
			err = c.Validate()
		}
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.yaml, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: error %v, want one containing %q", tc.yaml, err, tc.want)
		}
	}
}
