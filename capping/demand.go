package capping

import (
	"math"
	"time"
)

// What the controller learns of the GPUs' demand over a window of recent periods, from every
// reading of instant power (the period's own and the fast samples between periods). One sample
// says little about a GPU that computes for two seconds and waits for an all-reduce for half a
// second; the window's peak and the share of it the GPU spent at its limit say what it needs.

const (
	// FastInterval is how often the controller reads instant power between periods: the rate at
	// which NVML updates its power counters (about 10 Hz), so a faster poll would learn nothing.
	FastInterval = 100 * time.Millisecond
	// demandWindow is how far back a GPU's demand is remembered: longer than a training job's
	// wait on its peers (an all-reduce of a fraction of a second to a couple of seconds), so a
	// GPU waiting keeps its share, and short against a job's phases (minutes), so power moves
	// soon after the load really moved.
	demandWindow = 5 * time.Second
	// maxWindowSlots bounds the window's memory (one slot per period): at a 100 ms period the
	// window is demandWindow long, at longer periods it holds fewer, longer slots.
	maxWindowSlots = 100
	// boundShareMin is the share of the window's samples a GPU must have spent at its limit to
	// count as power-bound; a GPU bound in most of the last period's samples counts at once.
	boundShareMin = 0.1
)

// windowSlots is the number of periods the demand window holds.
func windowSlots(period time.Duration) int {
	n := int((demandWindow + period - 1) / period)
	return min(max(n, 1), maxWindowSlots)
}

// gpuWindow is one GPU's recent demand: per period, the peak instant power and how many of the
// period's samples found it at its limit.
type gpuWindow struct {
	peakW []float64 // per slot; sized once in New
	bound []int32
	n     []int32
	// the period in progress
	curPeakW      float64
	curBound, cur int32
	// results at the last period's end
	winPeakW   float64 // largest instant power in the window
	boundShare float64 // share of the window's samples spent at the limit
	boundLast  bool    // at its limit in most of the last period's samples
}

// nodeWindow is the node's recent power: per period, the peak and trough of Σ instant power,
// and the steepest rise and fall between consecutive samples.
type nodeWindow struct {
	peakW, troughW []float64
	head, filled   int
	curPeakW       float64
	curTroughW     float64
	curN           int
	// prevW and prevAt are the last complete sample, for the ramp; prevOK is false after a
	// sample with a GPU missing.
	prevW  float64
	prevAt time.Time
	prevOK bool
	// riseWps and fallWps are the steepest rise and fall of the period in progress; the last
	// period's are published.
	riseWps, fallWps         float64
	lastRiseWps, lastFallWps float64
	// winPeakW and swingW are the window's peak and peak-to-trough.
	winPeakW, swingW float64
}

func newGPUWindow(slots int) gpuWindow {
	return gpuWindow{peakW: make([]float64, slots), bound: make([]int32, slots), n: make([]int32, slots)}
}

func newNodeWindow(slots int) nodeWindow {
	return nodeWindow{peakW: make([]float64, slots), troughW: make([]float64, slots), curTroughW: math.Inf(1)}
}

// observe records one instant power reading of the GPU against the limit in force.
func (w *gpuWindow) observe(drawW float64, bound bool) {
	w.curPeakW = max(w.curPeakW, drawW)
	w.cur++
	if bound {
		w.curBound++
	}
}

// closePeriod moves the period in progress into slot head and recomputes the window's figures.
func (w *gpuWindow) closePeriod(head int) {
	w.peakW[head], w.bound[head], w.n[head] = w.curPeakW, w.curBound, w.cur
	w.boundLast = w.cur > 0 && 2*w.curBound > w.cur
	w.curPeakW, w.curBound, w.cur = 0, 0, 0
	w.winPeakW = 0
	var bound, n int32
	for i := range w.peakW {
		w.winPeakW = max(w.winPeakW, w.peakW[i])
		bound += w.bound[i]
		n += w.n[i]
	}
	w.boundShare = 0
	if n > 0 {
		w.boundShare = float64(bound) / float64(n)
	}
}

// powerBound reports whether the GPU counts as power-bound: it would use more watts.
func (w *gpuWindow) powerBound() bool { return w.boundLast || w.boundShare >= boundShareMin }

// observe records one complete reading of Σ instant power at at.
func (w *nodeWindow) observe(sumW float64, at time.Time) {
	w.curPeakW = max(w.curPeakW, sumW)
	w.curTroughW = min(w.curTroughW, sumW)
	w.curN++
	if w.prevOK {
		if dt := at.Sub(w.prevAt).Seconds(); dt > 0 {
			rate := (sumW - w.prevW) / dt
			w.riseWps = max(w.riseWps, rate)
			w.fallWps = max(w.fallWps, -rate)
		}
	}
	w.prevW, w.prevAt, w.prevOK = sumW, at, true
}

// broken marks a sample with a GPU missing: the next ramp is not measured across it.
func (w *nodeWindow) broken() { w.prevOK = false }

// closePeriod moves the period in progress into the ring and recomputes the window's figures.
func (w *nodeWindow) closePeriod() {
	w.lastRiseWps, w.lastFallWps = w.riseWps, w.fallWps
	w.riseWps, w.fallWps = 0, 0
	if w.curN == 0 {
		return // nothing read this period: the window keeps what it knew
	}
	w.head = (w.head + 1) % len(w.peakW)
	w.peakW[w.head], w.troughW[w.head] = w.curPeakW, w.curTroughW
	w.filled = min(w.filled+1, len(w.peakW))
	w.curPeakW, w.curTroughW, w.curN = 0, math.Inf(1), 0
	w.winPeakW = 0
	trough := math.Inf(1)
	for k := range w.filled {
		i := (w.head - k + len(w.peakW)) % len(w.peakW)
		w.winPeakW = max(w.winPeakW, w.peakW[i])
		trough = min(trough, w.troughW[i])
	}
	w.swingW = w.winPeakW - trough
}
