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
	upW    float64
	drawW  float64 // instant power this period
	limitW float64 // the limit in force now
	weight float64 // priority weight, > 0
	bound  bool    // drawing at its limit: more watts would be used
	allocW float64 // result
}

// distribute splits capW: every GPU first gets its minimum; GPUs that are not power-bound get
// their draw plus headroomW (they cannot use more now, and headroom lets them rise until the
// next period); power-bound GPUs share the rest by weight up to their maximum; what is still
// left is shared by weight among all GPUs. No GPU gets more than its upW. When capW cannot
// cover the draws plus headroom, the non-bound GPUs' extra is cut in proportion. It returns the
// sum allocated, which is min(capW, Σ up) when capW ≥ Σ min.
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
	// Non-bound GPUs: draw plus headroom, scaled down together when C is short.
	want := 0.0
	for i := range shares {
		s := &shares[i]
		if !s.bound {
			want += extra(s, s.drawW+headroomW)
		}
	}
	if want > 0 {
		scale := min(1, rem/want)
		for i := range shares {
			s := &shares[i]
			if !s.bound {
				add := scale * extra(s, s.drawW+headroomW)
				s.allocW += add
				rem -= add
			}
		}
	}
	// Power-bound GPUs first, by weight, up to what this period may give; then every GPU. A
	// small array keeps the fill's working memory on the stack for any real node's GPU count.
	var scratch [16]waterfill.Slot
	rem, idx := waterfill.Raise(boundShares(shares), rem, scratch[:0])
	rem, _ = waterfill.Raise(allShares(shares), rem, idx)
	return capW - max(0, rem)
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
