package sim

import "time"

// demandsTrace is a trace that computes its GPUs' demands at one instant cheaper together than
// one by one (a part common to its GPUs computed once).
type demandsTrace interface {
	demands(elapsed time.Duration, out []float64)
}

// Demands sets out[i] to tr.Demand(i, elapsed) for every i, bit for bit, computing what the
// GPUs share once where the trace knows how: a caller that samples every GPU of a node at
// one instant (the fleet's closed-form baselines) pays for the shared part once.
func Demands(tr Trace, elapsed time.Duration, out []float64) {
	if d, ok := tr.(demandsTrace); ok {
		d.demands(elapsed, out)
		return
	}
	for i := range out {
		out[i] = tr.Demand(i, elapsed)
	}
}
