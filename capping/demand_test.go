package capping

import (
	"math"
	"testing"
	"time"
)

// The window holds a GPU's need for its whole length: a GPU that drew 690 W a few periods ago
// still needs it, and counts as power-bound while it spent enough of the window at its limit.
func TestGPUWindow(t *testing.T) {
	w := newGPUWindow(windowSlots(time.Second)) // 5 periods of 1 s
	if len(w.peakW) != 5 {
		t.Fatalf("%d slots for a 1 s period, want 5 (5 s)", len(w.peakW))
	}
	period := func(head int, drawW float64, bound bool, n int) {
		for range n {
			w.observe(drawW, bound)
		}
		w.closePeriod(head % len(w.peakW))
	}
	// Two seconds of compute at the limit, then waiting: the peak and the bound share stay.
	period(0, 690, true, 10)
	period(1, 690, true, 10)
	period(2, 250, false, 10)
	if w.winPeakW != 690 || !w.powerBound() || w.boundLast {
		t.Errorf("after an all-reduce: peak %v, bound %v (last %v), want 690, bound from the window", w.winPeakW, w.powerBound(), w.boundLast)
	}
	if math.Abs(w.boundShare-20.0/30) > 1e-9 {
		t.Errorf("bound share %v, want 2/3", w.boundShare)
	}
	// Five light periods later the window has forgotten the compute phase.
	for k := range 5 {
		period(3+k, 250, false, 10)
	}
	if w.winPeakW != 250 || w.powerBound() {
		t.Errorf("after 5 light periods: peak %v, bound %v, want 250, not bound", w.winPeakW, w.powerBound())
	}
	// A GPU at its limit in most of the last period counts at once.
	period(3, 400, true, 6)
	if !w.boundLast || !w.powerBound() {
		t.Errorf("bound in 6 of 6 samples of the last period: bound %v", w.powerBound())
	}
}

// The window is 5 s at periods up to 50 ms (100 slots at most), and one period when it is
// longer than 5 s.
func TestWindowSlots(t *testing.T) {
	for _, tc := range []struct {
		period time.Duration
		want   int
	}{{10 * time.Millisecond, 100}, {100 * time.Millisecond, 50}, {time.Second, 5}, {1500 * time.Millisecond, 4}, {10 * time.Second, 1}} {
		if got := windowSlots(tc.period); got != tc.want {
			t.Errorf("windowSlots(%v) = %d, want %d", tc.period, got, tc.want)
		}
	}
}

// The node's window: steepest rise and fall between consecutive complete samples of the last
// period, and peak-to-trough over the window; no ramp across a sample with a GPU missing.
func TestNodeWindow(t *testing.T) {
	w := newNodeWindow(3)
	at := time.Unix(0, 0)
	sample := func(sumW float64) {
		at = at.Add(100 * time.Millisecond)
		w.observe(sumW, at)
	}
	sample(2000)
	sample(3000) // +1000 W in 100 ms
	sample(2950)
	w.closePeriod()
	if w.lastRiseWps != 10000 || w.lastFallWps != 500 || w.swingW != 1000 || w.winPeakW != 3000 {
		t.Errorf("rise %v fall %v swing %v peak %v, want 10000 W/s, 500 W/s, 1000 W, 3000 W", w.lastRiseWps, w.lastFallWps, w.swingW, w.winPeakW)
	}
	w.broken()
	sample(1000) // not measured as a ramp: a GPU was missing before it
	sample(1000)
	w.closePeriod()
	if w.lastFallWps != 0 || w.swingW != 2000 {
		t.Errorf("after a gap: fall %v, swing %v, want 0 and 2000 W", w.lastFallWps, w.swingW)
	}
}

// The fast path does nothing before the first period and in failsafe, and a sample with a
// reading missing cuts nothing.
func TestSampleIdleOutsideTheLoop(t *testing.T) {
	trace := csvTrace(t, "time_s,gpu0,gpu1,gpu2,gpu3\n0,690,690,250,250\n60,690,690,250,250\n60.01,690,690,690,690\n600,690,690,690,690\n")
	r := newRigOn(t, trace, 4, 1800, func(s *Settings) { s.Period = 10 * time.Second; s.HeadroomW = 100 })
	before := r.requested()
	r.clock.Advance(FastInterval)
	r.c.Sample(r.clock.Now())
	for i, l := range r.requested() {
		if l != before[i] {
			t.Fatalf("a fast sample before the first period wrote GPU %d: %v → %v W", i, before[i], l)
		}
	}
	r.fast(60*time.Second, nil)
	cuts := r.c.FastCuts()
	r.fleet.SetLost(3, true)
	r.fast(time.Second, nil)
	if r.c.FastCuts() != cuts {
		t.Errorf("fast cuts %v → %v with GPU 3's reading missing, want none", cuts, r.c.FastCuts())
	}
}
