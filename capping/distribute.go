package capping

import "github.com/capstan-power/capstan/capping/waterfill"

// Distribution of the total cap C across GPUs, in watts. It runs every period and must not
// allocate: every slice it touches is sized once in New.

// gpuShare is one GPU's inputs to the split and its result.
type gpuShare struct {
	minW, maxW float64 // constraints; maxW already lowered to an out-of-band limit
	// upW is the most this period may give: maxW, or less to rate-limit one GPU's rise, so a
	// GPU wrongly taken for power-bound (its draw wobbling up to its limit) gets a step, not
	// the whole budget, and no GPU sits on slack it could surge into.
	upW float64
	// needW is what a GPU that is not power-bound needs: the peak of its instant power over the
	// demand window (a GPU waiting on its peers for a moment keeps its share).
	needW  float64
	limitW float64 // the limit in force now
	// fairW is the GPU's static share of the budget (B × weight / Σ weights, within its
	// constraints): what static caps would give it, and what it gets back at once when it is
	// power-bound, whoever borrowed it.
	fairW  float64
	weight float64 // priority weight, > 0
	bound  bool    // drawing at its limit over the window: more watts would be used
	// pinned is a GPU that refused its last limit: it is given the one in force.
	pinned bool
	allocW float64 // result
}

// distribute splits capW so that no GPU that needs its static share gets less than static caps
// would give it: every GPU first gets its minimum; then each gets up to its fair share, a
// power-bound GPU all of it and the others what they need (window peak plus headroomW); then
// GPUs that are not power-bound get what they need above their fair share; power-bound GPUs
// share the rest by weight; what is still left is shared by weight among all GPUs. No GPU gets
// more than its upW (which the controller keeps at or above the fair share). When capW cannot
// cover a stage, that stage's extras are cut in proportion. It returns the sum allocated, which
// is min(capW, Σ up) when capW ≥ Σ min.
func distribute(shares []gpuShare, capW, headroomW float64) float64 {
	rem := capW
	for i := range shares {
		s := &shares[i]
		s.allocW = s.minW
		rem -= s.minW
	}
	if rem <= 0 {
		return capW - rem
	}
	// Up to the fair share: what static caps would give, unless the GPU needs less.
	rem = raiseTogether(shares, rem, func(s *gpuShare) float64 {
		if s.bound {
			return max(0, min(s.fairW, s.upW)-s.allocW)
		}
		return max(0, min(s.fairW, s.needW+headroomW, s.upW)-s.allocW)
	})
	// Non-bound GPUs: what they need above it.
	rem = raiseTogether(shares, rem, func(s *gpuShare) float64 {
		if s.bound {
			return 0
		}
		return extra(s, s.needW+headroomW)
	})
	// Power-bound GPUs first, by weight, up to what this period may give; then every GPU. A
	// small array keeps the fill's working memory on the stack for any real node's GPU count.
	var scratch [16]waterfill.Slot
	rem, idx := waterfill.Raise(boundShares(shares), rem, scratch[:0])
	rem, _ = waterfill.Raise(allShares(shares), rem, idx)
	return capW - max(0, rem)
}

// raiseTogether gives every GPU want(s) more, scaled down together when rem cannot cover them
// all, and returns what is left of rem.
func raiseTogether(shares []gpuShare, rem float64, want func(*gpuShare) float64) float64 {
	if rem <= 0 {
		return rem
	}
	sum := 0.0
	for i := range shares {
		sum += want(&shares[i])
	}
	if sum <= 0 {
		return rem
	}
	scale := min(1, rem/sum)
	for i := range shares {
		s := &shares[i]
		add := scale * want(s)
		s.allocW += add
		rem -= add
	}
	return rem
}

// extra is how much above its allocation a GPU would need to reach target, within its maximum.
func extra(s *gpuShare, targetW float64) float64 {
	return max(0, min(targetW, s.upW)-s.allocW)
}

// boundShares fills the power-bound GPUs up to upW; allShares fills every GPU.
type (
	boundShares []gpuShare
	allShares   []gpuShare
)

func (s boundShares) Len() int             { return len(s) }
func (s boundShares) Level(i int) float64  { return s[i].allocW }
func (s boundShares) Weight(i int) float64 { return s[i].weight }
func (s boundShares) Set(i int, w float64) { s[i].allocW = w }
func (s boundShares) Top(i int) float64 {
	if !s[i].bound {
		return s[i].allocW
	}
	return s[i].upW
}

func (s allShares) Len() int             { return len(s) }
func (s allShares) Level(i int) float64  { return s[i].allocW }
func (s allShares) Top(i int) float64    { return s[i].upW }
func (s allShares) Weight(i int) float64 { return s[i].weight }
func (s allShares) Set(i int, w float64) { s[i].allocW = w }
