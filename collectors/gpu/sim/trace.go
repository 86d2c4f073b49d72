package sim

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Trace gives the power each GPU would draw uncapped.
type Trace interface {
	// Demand returns the watts GPU gpu would draw at elapsed time since the fleet started, if
	// nothing capped it. It must be safe for concurrent use.
	Demand(gpu int, elapsed time.Duration) float64
}

// TraceNames lists the built-in traces NewTrace accepts besides a CSV file.
func TraceNames() []string {
	return []string{"steady", "bursty", "training", "inference", "imbalanced", "lockstep", "roleswap"}
}

// NewTrace builds the trace spec names for gpus GPUs of model m. Built-in traces are pure
// functions of seed, GPU and time, so they are deterministic and need no state.
func NewTrace(spec string, m Model, gpus int, seed int64) (Trace, error) {
	if gpus < 1 {
		return nil, fmt.Errorf("building trace %q: gpu count %d must be at least 1", spec, gpus)
	}
	n := noise(seed)
	switch name := strings.ToLower(strings.TrimSpace(spec)); {
	case name == "steady":
		return steadyTrace{n: n, maxW: m.MaxLimitW}, nil
	case name == "bursty":
		return burstyTrace{n: n, maxW: m.MaxLimitW}, nil
	case name == "training":
		return trainingTrace{n: n, maxW: m.MaxLimitW, keys: gpuKeysTable(n, gpus, trainingGPUOf)}, nil
	case name == "inference":
		return inferenceTrace{n: n, maxW: m.MaxLimitW, keys: gpuKeysTable(n, gpus, inferenceGPUOf)}, nil
	case name == "imbalanced":
		return imbalancedTrace{n: n, maxW: m.MaxLimitW, gpus: gpus}, nil
	case name == "lockstep":
		return lockstepTrace{n: n, minW: m.MinLimitW, maxW: m.MaxLimitW}, nil
	case name == "roleswap":
		return roleswapTrace{n: n, maxW: m.MaxLimitW, gpus: gpus}, nil
	case strings.HasSuffix(name, ".csv"):
		return LoadCSVTrace(strings.TrimSpace(spec))
	}
	return nil, fmt.Errorf("unknown trace %q: use one of %s, or a path ending in .csv",
		spec, strings.Join(TraceNames(), ", "))
}

// workload is what a trace implies besides power: memory footprint, memory and PCIe traffic,
// decoder use. Fractions and rates are at full utilisation.
type workload struct {
	memoryFraction float64 // of total memory, allocated while the GPU is busy
	memoryActivity float64 // memory-controller busy fraction
	rxKBps, txKBps float64 // PCIe throughput
	decoder        float64 // video-decoder busy fraction
}

// workloadTrace is implemented by traces that know more about their work than its power.
type workloadTrace interface {
	workload(gpu int, elapsed time.Duration) workload
}

const kbPerGB = 1e9 / 1024

// defaultWorkload describes a GPU running an unknown job, as a CSV trace does.
var defaultWorkload = workload{memoryFraction: 0.7, memoryActivity: 0.45, rxKBps: 2 * kbPerGB, txKBps: 1 * kbPerGB}

// Noise streams keep the random draws of different purposes independent.
const (
	streamOffset uint64 = iota + 1
	streamWobble
	streamPhase
	streamCuts
	streamLevel
	streamJitter
	streamRequests
	streamPermutation
	streamInstant
	streamPCIe
	streamIdentity
	streamAmbient
	streamMemory
	streamCycle
	// Streams of the power model, not of a trace.
	streamCounterPhase
	streamWriteLatency
	streamDemandSample
)

// noise is a seeded, stateless random source: every draw is a hash of (seed, stream, GPU, k),
// so a value never depends on the order or number of earlier calls.
type noise int64

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func (n noise) hash(stream uint64, gpu int, k int64) uint64 {
	return keyed(n.key(stream, gpu), k)
}

// key is the part of hash that depends on the stream and GPU only: a caller that hashes one
// stream of one GPU at many k keeps it, and keyed(key, k) is hash(stream, gpu, k).
func (n noise) key(stream uint64, gpu int) uint64 {
	h := mix64(uint64(n) ^ stream*0x9e3779b97f4a7c15)
	return mix64(h ^ uint64(gpu)*0xd6e8feb86659fd93)
}

func keyed(key uint64, k int64) uint64 { return mix64(key + uint64(k)) }

// unitOf and signedOf are unit and signed of a hash.
func unitOf(h uint64) float64   { return float64(h>>11) * 0x1p-53 }
func signedOf(h uint64) float64 { return 2*unitOf(h) - 1 }

// smoothKeyed is smooth with the stream's and GPU's key.
func smoothKeyed(key uint64, x float64) float64 {
	f := math.Floor(x)
	k := int64(f)
	t := x - f
	t = t * t * (3 - 2*t)
	a, b := signedOf(keyed(key, k)), signedOf(keyed(key, k+1))
	return a + (b-a)*t
}

// unit is uniform in [0, 1).
func (n noise) unit(stream uint64, gpu int, k int64) float64 {
	return unitOf(n.hash(stream, gpu, k))
}

// signed is uniform in [-1, 1).
func (n noise) signed(stream uint64, gpu int, k int64) float64 {
	return signedOf(n.hash(stream, gpu, k))
}

// smooth is value noise in [-1, 1) that varies continuously with x, one new value per unit of x.
func (n noise) smooth(stream uint64, gpu int, x float64) float64 {
	return smoothKeyed(n.key(stream, gpu), x)
}

// steadyTrace holds every GPU near 85 % of its top limit, each with a small offset and wobble.
type steadyTrace struct {
	n    noise
	maxW float64
}

func (s steadyTrace) Demand(gpu int, elapsed time.Duration) float64 {
	frac := 0.85 + 0.03*s.n.signed(streamOffset, gpu, 0) + 0.01*s.n.smooth(streamWobble, gpu, elapsed.Seconds()/7)
	return frac * s.maxW
}

func (steadyTrace) workload(int, time.Duration) workload {
	return workload{memoryFraction: 0.75, memoryActivity: 0.5, rxKBps: 2 * kbPerGB, txKBps: 0.5 * kbPerGB}
}

// burstyTrace jumps between levels of 30–100 % of the top limit, each held for 1–10 s.
type burstyTrace struct {
	n    noise
	maxW float64
}

// burstWindow is cut into one to three bursts, which keeps every burst between 1 s and the
// window long without any state to carry from one burst to the next.
const burstWindow = 10.0

func (b burstyTrace) Demand(gpu int, elapsed time.Duration) float64 {
	x := elapsed.Seconds() + burstWindow*b.n.unit(streamPhase, gpu, 0)
	w := math.Floor(x / burstWindow)
	k := int64(w)
	pos := x - w*burstWindow
	segment := int64(0)
	switch cuts := b.n.hash(streamCuts, gpu, k) % 3; cuts {
	case 1:
		if pos >= 1+8*b.n.unit(streamCuts, gpu, 2*k) {
			segment = 1
		}
	case 2:
		c1 := 1 + 4*b.n.unit(streamCuts, gpu, 2*k)
		c2 := c1 + 1 + (8-c1)*b.n.unit(streamCuts, gpu, 2*k+1)
		if pos >= c1 {
			segment++
		}
		if pos >= c2 {
			segment++
		}
	}
	return (0.30 + 0.70*b.n.unit(streamLevel, gpu, 4*k+segment)) * b.maxW
}

func (burstyTrace) workload(int, time.Duration) workload {
	return workload{memoryFraction: 0.5, memoryActivity: 0.4, rxKBps: 4 * kbPerGB, txKBps: 1 * kbPerGB}
}

// trainingTrace is synchronous data-parallel training: every 10 s step computes for 8 s near
// 95 % of the top limit, then communicates for 2 s near 45 %. GPUs stay in phase; each starts
// its compute a little late (a straggler's jitter).
type trainingTrace struct {
	n    noise
	maxW float64
	keys []trainingGPU // by GPU, for the GPUs it was built for
}

// gpuKeysTable is what of hashes for GPUs 0 to gpus-1: a trace hashes each GPU's keys once, not
// at every instant.
func gpuKeysTable[K any](n noise, gpus int, of func(noise, int) K) []K {
	out := make([]K, gpus)
	for i := range out {
		out[i] = of(n, i)
	}
	return out
}

// gpuKeysOf is gpu's keys: from the table, or computed for a GPU beyond it.
func gpuKeysOf[K any](table []K, n noise, gpu int, of func(noise, int) K) K {
	if gpu >= 0 && gpu < len(table) {
		return table[gpu]
	}
	return of(n, gpu)
}

// trainingGPU is what a training GPU's demand hashes without the time: its streams' keys and
// its offset.
type trainingGPU struct {
	jitter, level uint64
	offset        float64
}

func trainingGPUOf(n noise, gpu int) trainingGPU {
	return trainingGPU{jitter: n.key(streamJitter, gpu), level: n.key(streamLevel, gpu), offset: n.signed(streamOffset, gpu, 0)}
}

// gpuKeys is gpu's keys.
func (tr trainingTrace) gpuKeys(gpu int) trainingGPU {
	return gpuKeysOf(tr.keys, tr.n, gpu, trainingGPUOf)
}

const (
	trainingStep    = 10.0 // seconds
	trainingCompute = 8.0
	trainingJitter  = 0.15 // most a GPU starts late, seconds
)

// computing reports whether gpu is in its compute phase at t seconds, and the step it is in.
func (tr trainingTrace) computing(gpu int, t float64) (bool, int64) {
	return computingKeyed(tr.gpuKeys(gpu), t)
}

func computingKeyed(g trainingGPU, t float64) (bool, int64) {
	s := math.Floor(t / trainingStep)
	pos := t - s*trainingStep
	k := int64(s)
	start := trainingJitter * unitOf(keyed(g.jitter, k))
	return pos >= start && pos < start+trainingCompute, k
}

func (tr trainingTrace) Demand(gpu int, elapsed time.Duration) float64 {
	g := tr.gpuKeys(gpu)
	compute, k := computingKeyed(g, elapsed.Seconds())
	frac := 0.45 + 0.02*signedOf(keyed(g.level, 2*k+1))
	if compute {
		frac = 0.95 + 0.015*signedOf(keyed(g.level, 2*k))
	}
	return (frac + 0.01*g.offset) * tr.maxW
}

func (tr trainingTrace) workload(gpu int, elapsed time.Duration) workload {
	w := workload{memoryFraction: 0.9, memoryActivity: 0.45, rxKBps: 1.5 * kbPerGB, txKBps: 0.2 * kbPerGB}
	if compute, _ := tr.computing(gpu, elapsed.Seconds()); !compute {
		// The gradient all-reduce leaves the node through the NIC behind the GPU's PCIe switch.
		w.rxKBps, w.txKBps, w.memoryActivity = 20*kbPerGB, 20*kbPerGB, 0.25
	}
	return w
}

// inferenceTrace follows a 24 h cycle of requests between about 30 % and 90 % of the top limit,
// starting at the mean on the way up, with request noise on top.
type inferenceTrace struct {
	n    noise
	maxW float64
	keys []inferenceGPU // by GPU, for the GPUs it was built for
}

// inferenceGPU is what an inference GPU's demand hashes without the time.
type inferenceGPU struct {
	requests uint64
	offset   float64
}

func inferenceGPUOf(n noise, gpu int) inferenceGPU {
	return inferenceGPU{requests: n.key(streamRequests, gpu), offset: n.signed(streamOffset, gpu, 0)}
}

const day = 24 * time.Hour

func (in inferenceTrace) Demand(gpu int, elapsed time.Duration) float64 {
	t := elapsed.Seconds()
	return in.demand(gpu, t, in.cycle(t))
}

// cycle is the day's part of the demand at t seconds, the same for every GPU.
func (inferenceTrace) cycle(t float64) float64 { return math.Sin(2 * math.Pi * t / day.Seconds()) }

// demand is gpu's demand at t seconds, the day's part given.
func (in inferenceTrace) demand(gpu int, t, cycle float64) float64 {
	g := gpuKeysOf(in.keys, in.n, gpu, inferenceGPUOf)
	frac := 0.60 + 0.30*cycle +
		0.06*smoothKeyed(g.requests, t/0.5) + 0.02*g.offset
	return frac * in.maxW
}

// demands is Demand for GPUs 0 to len(out)-1 at one instant, the day computed once.
func (in inferenceTrace) demands(elapsed time.Duration, out []float64) {
	t := elapsed.Seconds()
	c := in.cycle(t)
	for i := range out {
		out[i] = in.demand(i, t, c)
	}
}

func (inferenceTrace) workload(int, time.Duration) workload {
	return workload{memoryFraction: 0.6, memoryActivity: 0.6, rxKBps: 0.8 * kbPerGB, txKBps: 0.3 * kbPerGB, decoder: 0.12}
}

// imbalancedTrace runs half the GPUs heavy (~95 %) and half light (~35 %); which half is heavy
// changes every few minutes.
type imbalancedTrace struct {
	n    noise
	maxW float64
	gpus int
}

const imbalanceEpoch = 3 * time.Minute

// heavy reports whether gpu is in the heavy set during the given epoch. The set is the first
// half of a random affine permutation of the GPUs, which needs no table per epoch.
func (im imbalancedTrace) heavy(gpu int, epoch int64) bool {
	n := int64(im.gpus)
	g := int64(gpu) % n
	a := 1 + int64(im.n.hash(streamPermutation, 0, 2*epoch)%uint64(n))
	for gcd(a, n) != 1 {
		a = a%n + 1
	}
	b := int64(im.n.hash(streamPermutation, 0, 2*epoch+1) % uint64(n))
	// With an odd count the heavy set alternates between the smaller and the larger half.
	return (a*g+b)%n < (n+(epoch&1)*(n&1))/2
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func (im imbalancedTrace) Demand(gpu int, elapsed time.Duration) float64 {
	epoch := int64(elapsed / imbalanceEpoch)
	frac := 0.35
	if im.heavy(gpu, epoch) {
		frac = 0.95
	}
	return (frac + 0.02*im.n.smooth(streamWobble, gpu, elapsed.Seconds()/5)) * im.maxW
}

func (imbalancedTrace) workload(int, time.Duration) workload {
	return workload{memoryFraction: 0.8, memoryActivity: 0.5, rxKBps: 3 * kbPerGB, txKBps: 1 * kbPerGB}
}
