package capping

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
	rem = waterFill(shares, rem, true)
	rem = waterFill(shares, rem, false)
	return capW - rem
}

// extra is how much above its allocation a GPU would need to reach target, within its maximum.
func extra(s *gpuShare, targetW float64) float64 {
	return max(0, min(targetW, s.upW)-s.allocW)
}

// waterFill shares rem by weight among GPUs below their maximum (only bound ones when
// boundOnly), handing a GPU's surplus above its maximum to the others; it returns what is left.
func waterFill(shares []gpuShare, rem float64, boundOnly bool) float64 {
	for range len(shares) + 1 { // each pass fills at least one GPU to its maximum or ends
		if rem <= 1e-9 {
			return max(0, rem)
		}
		totalW := 0.0
		for i := range shares {
			s := &shares[i]
			if (s.bound || !boundOnly) && s.allocW < s.upW {
				totalW += s.weight
			}
		}
		if totalW == 0 {
			return rem
		}
		given := 0.0
		for i := range shares {
			s := &shares[i]
			if (s.bound || !boundOnly) && s.allocW < s.upW {
				add := min(rem*s.weight/totalW, s.upW-s.allocW)
				s.allocW += add
				given += add
			}
		}
		rem -= given
	}
	return max(0, rem)
}
