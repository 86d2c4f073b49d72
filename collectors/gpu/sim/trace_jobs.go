package sim

import (
	"math"
	"time"
)

// lockstepTrace is one data-parallel training job over every GPU of the node, in lock-step:
// each iteration computes near the top of the limit range for about 2 s, then every GPU drops
// together to near the bottom of the range for an all-reduce of about 0.5 s. On an H100
// (200–700 W) that is ~690 W and ~250 W. The iteration's length moves a little from one to the
// next, the same for every GPU (they wait for each other); each GPU starts computing a few
// milliseconds late and runs at its own level, within a percent.
type lockstepTrace struct {
	n          noise
	minW, maxW float64
}

const (
	lockstepIteration = 2.5  // seconds, nominal compute + all-reduce
	lockstepCompute   = 2.0  // seconds of compute, nominal
	lockstepWander    = 0.05 // most the compute phase runs longer or shorter, seconds
	lockstepStartLag  = 0.01 // most a GPU starts computing late, seconds
	lockstepHigh      = 0.98 // compute level, share of the limit range above its bottom
	lockstepLow       = 0.10 // all-reduce level, share of the limit range above its bottom
	lockstepSpread    = 0.01 // per-GPU and per-iteration spread of a level, share of the range
)

// computing reports whether gpu computes at t seconds, and the iteration it is in. Iteration k
// starts at k × lockstepIteration; its compute phase ends at a time shared by every GPU.
func (l lockstepTrace) computing(gpu int, t float64) (bool, int64) {
	s := math.Floor(t / lockstepIteration)
	k := int64(s)
	pos := t - s*lockstepIteration
	start := lockstepStartLag * l.n.unit(streamJitter, gpu, k)
	end := lockstepCompute + lockstepWander*l.n.signed(streamCycle, 0, k)
	return pos >= start && pos < end, k
}

func (l lockstepTrace) Demand(gpu int, elapsed time.Duration) float64 {
	compute, k := l.computing(gpu, elapsed.Seconds())
	frac, phase := lockstepLow, 2*k+1
	if compute {
		frac, phase = lockstepHigh, 2*k
	}
	frac += lockstepSpread * (0.5*l.n.signed(streamOffset, gpu, 0) + 0.5*l.n.signed(streamLevel, gpu, phase))
	return l.minW + frac*(l.maxW-l.minW)
}

func (l lockstepTrace) workload(gpu int, elapsed time.Duration) workload {
	w := workload{memoryFraction: 0.9, memoryActivity: 0.5, rxKBps: 1.5 * kbPerGB, txKBps: 0.2 * kbPerGB}
	if compute, _ := l.computing(gpu, elapsed.Seconds()); !compute {
		w.rxKBps, w.txKBps, w.memoryActivity = 20*kbPerGB, 20*kbPerGB, 0.25
	}
	return w
}

// roleswapTrace is two jobs sharing a node, each on half its GPUs (the first half and the
// second): one runs busy near 93 % of the top limit while the other runs light near 35 %, and
// every few minutes they swap roles. Each swap happens at once on every GPU of a job.
type roleswapTrace struct {
	n    noise
	maxW float64
	gpus int
}

const (
	roleswapEpoch   = 4 * time.Minute // how long one job stays the busy one
	roleswapBusy    = 0.93            // share of the top limit
	roleswapLight   = 0.35
	roleswapWobble  = 0.02 // slow per-GPU wobble, share of the top limit
	roleswapSpreadW = 0.01 // fixed per-GPU offset, share of the top limit
)

// busy reports whether gpu's job is the busy one at elapsed. The first job's GPUs are those
// below half the count (with an odd count, the larger half); which job starts busy, and where
// in its epoch the run starts, follow the seed.
func (r roleswapTrace) busy(gpu int, elapsed time.Duration) bool {
	offset := time.Duration(r.n.unit(streamPhase, 0, 0) * float64(roleswapEpoch))
	epoch := int64((elapsed + offset) / roleswapEpoch)
	if elapsed+offset < 0 {
		epoch-- // integer division truncates towards zero; warm-up reads before the start
	}
	first := gpu < (r.gpus+1)/2
	firstBusy := (epoch+int64(r.n.hash(streamPhase, 0, 1)&1))&1 == 0
	return first == firstBusy
}

func (r roleswapTrace) Demand(gpu int, elapsed time.Duration) float64 {
	frac := roleswapLight
	if r.busy(gpu, elapsed) {
		frac = roleswapBusy
	}
	frac += roleswapSpreadW*r.n.signed(streamOffset, gpu, 0) + roleswapWobble*r.n.smooth(streamWobble, gpu, elapsed.Seconds()/5)
	return frac * r.maxW
}

func (roleswapTrace) workload(int, time.Duration) workload {
	return workload{memoryFraction: 0.8, memoryActivity: 0.5, rxKBps: 3 * kbPerGB, txKBps: 1 * kbPerGB}
}
