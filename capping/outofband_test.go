package capping

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/metrics"
)

// An out-of-band limit (a BMC capping a GPU below the requested limit) is the GPU's ceiling
// where the controller reads its bounds: the controller never allots it more, at any ceiling,
// on any GPU, and gives the watts it cannot take to the others.
func TestOutOfBandLimitIsTheCeiling(t *testing.T) {
	for _, tc := range []struct {
		gpu   int
		oobW  float64
		trace string
	}{
		{2, 250, "steady"}, {0, 400, "steady"}, {3, 550, "training"}, {1, 300, "bursty"},
	} {
		t.Run(fmt.Sprintf("gpu%d-%gW-%s", tc.gpu, tc.oobW, tc.trace), func(t *testing.T) {
			r := newRig(t, tc.trace, 4, 2300, nil)
			r.run(10 * time.Second)
			r.fleet.SetLimitOverride(tc.gpu, tc.oobW)
			r.step() // the period that finds it
			for range 20 {
				r.step()
				got := metricValue(t, r.store, metrics.CappingGPULimit, metrics.AttrGPUIndex, strconv.Itoa(tc.gpu))
				if got > tc.oobW+0.001 {
					t.Fatalf("the controller allots GPU %d %.1f W above its out-of-band ceiling %g W", tc.gpu, got, tc.oobW)
				}
			}
			if p := r.drawn(); p > 2300 {
				t.Errorf("the fleet draws %.0f W over its 2300 W budget", p)
			}
		})
	}
}
