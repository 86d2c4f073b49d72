package capping

import (
	"fmt"
	"strconv"
	"strings"
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

// Past oobTrust the controller probes above an out-of-band limit rather than forgetting it: the
// GPU is never allotted more than the probe's step above the limit, a probe comes at most once a
// trust period, the fleet stays under budget throughout, and once the limit is lifted the next
// probe finds it and the GPU gets more again.
func TestOutOfBandLimitIsProbedNotForgotten(t *testing.T) {
	for _, tc := range []struct {
		gpu   int
		oobW  float64
		trace string
	}{
		{2, 250, "steady"}, {1, 400, "training"}, {3, 320, "bursty"},
	} {
		t.Run(fmt.Sprintf("gpu%d-%gW-%s", tc.gpu, tc.oobW, tc.trace), func(t *testing.T) {
			const budgetW = 2300
			r := newRig(t, tc.trace, 4, budgetW, nil)
			r.run(10 * time.Second)
			r.fleet.SetLimitOverride(tc.gpu, tc.oobW)
			r.step()
			ceilW := tc.oobW + r.c.oobProbeW(tc.oobW)
			limit := func(i int) float64 {
				return metricValue(t, r.store, metrics.CappingGPULimit, metrics.AttrGPUIndex, strconv.Itoa(i))
			}
			var probes []int
			for p := range 4 * oobTrust {
				r.step()
				got := limit(tc.gpu)
				if got > ceilW+0.001 {
					t.Fatalf("period %d: GPU %d allotted %.1f W, over its out-of-band limit %g W plus the probe's step (%.1f W)", p, tc.gpu, got, tc.oobW, ceilW)
				}
				if got > tc.oobW+0.001 {
					probes = append(probes, p)
				}
				if d := r.drawn(); d > budgetW {
					t.Fatalf("period %d: the fleet draws %.0f W over its %d W budget", p, d, budgetW)
				}
			}
			if len(probes) == 0 {
				t.Fatalf("no probe above the out-of-band limit in %d periods: a lifted limit would never be noticed", 4*oobTrust)
			}
			for i := 1; i < len(probes); i++ {
				if probes[i]-probes[i-1] < oobTrust {
					t.Fatalf("probes in periods %v: more often than once in %d periods", probes, oobTrust)
				}
			}
			if n := strings.Count(r.logs.String(), "out-of-band limit below ours"); n != 1 {
				t.Errorf("the out-of-band limit was reported %d times, want once:\n%s", n, r.logs)
			}

			r.fleet.SetLimitOverride(tc.gpu, 0) // lifted
			lifted := false
			for range oobTrust + 5 {
				r.step()
				if limit(tc.gpu) > ceilW+0.001 {
					lifted = true
					break
				}
			}
			if !lifted {
				t.Fatalf("the out-of-band limit was lifted but GPU %d is still held at %.1f W after %d periods", tc.gpu, limit(tc.gpu), oobTrust+5)
			}
			if !strings.Contains(r.logs.String(), "out-of-band limit on a GPU is lifted") {
				t.Errorf("no log line for the lifted limit:\n%s", r.logs)
			}
		})
	}
}
